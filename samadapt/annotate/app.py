"""The web application of ``samadapt annotate``: a FastAPI app over an :class:`AnnotateSession` and an
:class:`AnnotationStore`.

Every request needs the access token, as the ``token`` query parameter (what the printed URL
carries) or an ``Authorization: token <token>`` header; without it the answer is 403. Request bodies
are bounded (``max_body`` bytes, 413 beyond). Images are requested by their file name in the folder;
a name that is not one of the folder's images (``../x`` included) is 404.

Routes (JSON unless said otherwise):

- ``GET /``: the page; ``GET /static/<name>``: its script and style (package data, no CDN);
- ``GET /api/state``: model, categories, images (size, annotations, flags), unreadable images, done / total;
- ``GET /api/images/<file name>``: the image as PNG, exactly the RGB pixels the model sees;
- ``POST /api/open`` ``{image}``: encode it (once), encode the next one in the background; returns the
  embedding time, its annotations and its draft;
- ``POST /api/prompt`` ``{image, box | point + positive, compare}``: add a prompt, decode; the draft;
- ``POST /api/undo``, ``/api/clear``, ``/api/draft`` ``{image, compare}``: the draft after the change;
- ``POST /api/accept`` ``{image, revision, category_id}``: store the draft's mask; answered after the
  file is written;
- ``POST /api/delete`` ``{id}``, ``/api/category`` ``{id, category_id}``: change an annotation (written).

``create_app(..., routers=[...])`` mounts more routes on the same token check (the data engine's).
"""

from __future__ import annotations

import io
import math
import secrets
import time
from importlib import resources
from typing import Annotated, Any, Sequence
from urllib.parse import parse_qs

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from ..errors import ConfigError, DataError, SamAdaptError
from .folder import UnknownImageError
from .session import AnnotateSession, Decoded, Draft, mask_runs
from .store import AnnotationStore, UnknownAnnotationError

__all__ = ["MAX_BODY_BYTES", "create_app", "new_token"]

#: the largest request body accepted (prompts are a few hundred bytes)
MAX_BODY_BYTES = 64 * 1024
STATIC = resources.files(__package__) / "static"
_STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}
_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),  # the token is in the URL: never send it on
    (b"cache-control", b"no-store"),
    # no other site may frame the page; scripts are not restricted further, since test drivers
    # (Playwright's wait_for_function) evaluate strings in the page
    (b"content-security-policy", b"frame-ancestors 'none'"),
]


def new_token() -> str:
    """A random access token (URL-safe, 192 bits)."""
    return secrets.token_urlsafe(24)


class Guard:
    """ASGI middleware: the token on every request (403 without), bodies of at most ``max_body``
    bytes (413), and headers that keep the page to itself."""

    def __init__(self, app, token: str, max_body: int) -> None:
        self.app, self.token, self.max_body = app, token.encode(), max_body

    def _authorised(self, scope) -> bool:
        given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[-1].encode()
        for key, value in scope.get("headers", []):
            if key == b"authorization" and value.lower().startswith(b"token "):
                given = value[6:].strip()
        return secrets.compare_digest(given, self.token)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if not self._authorised(scope):
            return await _plain(send, 403, "forbidden: open the URL that `samadapt annotate` printed (it has ?token=)")
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await _plain(send, 413, f"request body over {self.max_body} bytes")
        body, more = b"", True
        while more:  # read it all first (bounded), then hand it on
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                return await _plain(send, 413, f"request body over {self.max_body} bytes")
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        async def with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_HEADERS]}
            await send(message)

        await self.app(scope, replay, with_headers)


async def _plain(send, status: int, text: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8"), *_HEADERS],
        }
    )
    await send({"type": "http.response.body", "body": text.encode()})


# ---------------------------------------------------------------------------- requests
Name = Annotated[str, Field(min_length=1, max_length=4096)]
Coordinate = Annotated[float, Field(allow_inf_nan=False)]


class ImageIn(BaseModel):
    image: Name
    compare: bool = False


class PromptIn(ImageIn):
    box: Annotated[list[Coordinate], Field(min_length=4, max_length=4)] | None = None
    point: Annotated[list[Coordinate], Field(min_length=2, max_length=2)] | None = None
    positive: bool = True


class AcceptIn(ImageIn):
    revision: int
    category_id: int | None = None


class AnnotationIn(BaseModel):
    id: int


class CategoryIn(AnnotationIn):
    category_id: int


def _check_prompt(body: PromptIn, width: int, height: int) -> dict:
    """The prompt of a request, in image pixels, clipped to the image (a box) or checked inside it (a point)."""
    if (body.box is None) == (body.point is None):
        raise ConfigError("a prompt is a box or a point: give exactly one of them")
    if body.box is not None:
        x0, y0, x1, y1 = body.box
        x0, x1 = sorted((min(max(x0, 0.0), width), min(max(x1, 0.0), width)))
        y0, y1 = sorted((min(max(y0, 0.0), height), min(max(y1, 0.0), height)))
        if x1 - x0 < 1 or y1 - y0 < 1:
            raise ConfigError(f"the box {body.box} covers no pixel of the {width}x{height} image")
        return {"box": [x0, y0, x1, y1]}
    x, y = body.point
    if not (0 <= x < width and 0 <= y < height):
        raise ConfigError(f"the point ({x}, {y}) lies outside the {width}x{height} image")
    return {"point": [x, y], "positive": bool(body.positive)}


def _ms(seconds: float) -> float:
    return round(1000 * seconds, 1)


def _output_view(output: Decoded) -> dict[str, Any]:
    return {"mask": mask_runs(output.mask), "score": round(output.score, 4), "decode_ms": _ms(output.seconds)}


# ---------------------------------------------------------------------------- the app
#: library errors -> HTTP status (the most specific class of an error decides)
_STATUS = {
    UnknownImageError: 404,
    UnknownAnnotationError: 404,
    DataError: 409,  # an unreadable image, a stale page, nothing to accept
    ConfigError: 400,  # a bad prompt, an unknown category
    SamAdaptError: 500,  # e.g. the base model's checkpoint is missing
}


def _add_error_answers(app: FastAPI) -> None:
    """Errors answer ``{"error": message}`` with their status (:data:`_STATUS`)."""

    def answer(status: int, prefix: str = ""):
        async def handler(request: Request, exc: Exception):
            return JSONResponse({"error": prefix + str(exc)}, status_code=status)

        return handler

    for cls, status in _STATUS.items():
        app.add_exception_handler(cls, answer(status))
    app.add_exception_handler(OSError, answer(500, "the annotation file could not be written: "))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        # FastAPI's own answer echoes the input, which fails to encode when it holds NaN
        problems = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors())
        return JSONResponse({"error": f"invalid request: {problems}"}, status_code=422)


def create_app(
    session: AnnotateSession,
    store: AnnotationStore,
    token: str,
    *,
    max_body: int = MAX_BODY_BYTES,
    routers: Sequence[APIRouter] = (),
) -> Guard:
    """The ASGI application of the page (module docstring); ``routers`` are mounted beside the API."""
    app = FastAPI(title="samadapt annotate", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.session, app.state.store = session, store
    views = _Views(session, store)
    _add_error_answers(app)
    _add_page_routes(app, token)
    _add_state_routes(app, views)
    _add_draft_routes(app, views)
    _add_annotation_routes(app, views)
    for router in routers:
        app.include_router(router)
    return Guard(app, token, max_body)


class _Views:
    """What the routes share: the session, the store, the folder, and the JSON views of their objects."""

    def __init__(self, session: AnnotateSession, store: AnnotationStore) -> None:
        self.session, self.store, self.folder = session, store, session.folder

    def progress(self) -> dict[str, int]:
        readable = self.folder.readable
        return {"done": len(self.store.done_names() & set(readable)), "total": len(readable)}

    def annotation(self, record: dict) -> dict[str, Any]:
        keys = ("id", "category_id", "bbox", "area", "model", "effort")
        return {**{k: record.get(k) for k in keys}, "mask": self.store.runs(record)}

    def draft(self, draft: Draft | None, compare: bool) -> dict[str, Any] | None:
        session = self.session
        if draft is None or not draft.revision:
            return None
        view = {"revision": draft.revision, "prompts": draft.prompts, "actions": draft.actions}
        view.update(_output_view(draft.outputs[session.predictor.name][-1]))
        if compare and session.compare_available:
            base = session.base()
            view["base"] = {"name": base.name, **_output_view(draft.outputs[base.name][-1])}
        return view

    def usable(self, name: str):
        """The folder's image ``name``; an unreadable or blocked image is a :class:`DataError`."""
        image = self.folder[name]
        if image.error is not None:
            raise DataError(f"image {name!r} is unreadable: {image.error}")
        if name in self.store.blocked:
            raise DataError(f"image {name!r}: {self.store.report.flagged[name]}")
        return image


def _add_page_routes(app: FastAPI, token: str) -> None:
    """``GET /`` (the page, with the token filled in) and ``GET /static/<name>``."""

    @app.get("/")
    def page() -> HTMLResponse:
        html = (STATIC / "index.html").read_text(encoding="utf-8")
        return HTMLResponse(html.replace("__TOKEN__", token))

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        suffix = name[name.rfind(".") :] if "." in name else ""
        if "/" in name or name.startswith(".") or suffix not in _STATIC_TYPES or not (STATIC / name).is_file():
            return JSONResponse({"error": f"no static file {name[:100]!r}"}, status_code=404)
        return Response((STATIC / name).read_bytes(), media_type=_STATIC_TYPES[suffix])


def _add_state_routes(app: FastAPI, views: _Views) -> None:
    """``GET /api/state`` and ``GET /api/images/<name>``."""
    session, store, folder = views.session, views.store, views.folder

    @app.get("/api/state")
    def state() -> dict[str, Any]:
        done = store.done_names()
        counts = store.counts_by_image()
        images = [
            {
                "name": name,
                "width": folder[name].width,
                "height": folder[name].height,
                "annotations": counts.get(store.images[name]["id"], 0) if name in store.images else 0,
                "flag": store.report.flagged.get(name),
                "blocked": name in store.blocked,
            }
            for name in folder.readable
        ]
        return {
            "model": {
                "name": session.predictor.name,
                "compare": session.compare_available,
                "base_name": session.base_name,
                "base_note": session.base_note,
            },
            "categories": store.categories,
            "images": images,
            "unreadable": [{"name": n, "reason": r} for n, r in folder.unreadable.items()],
            "out": str(store.path),
            "done_names": sorted(done & set(folder.readable)),
            **views.progress(),
        }

    @app.get("/api/images/{name:path}")
    def image(name: str) -> Response:
        from PIL import Image

        views.usable(name)
        buffer = io.BytesIO()
        Image.fromarray(folder.read(name)).save(buffer, format="PNG", compress_level=1)
        return Response(buffer.getvalue(), media_type="image/png")


def _add_draft_routes(app: FastAPI, views: _Views) -> None:
    """``POST /api/open``, ``/api/prompt``, ``/api/draft``, ``/api/undo`` and ``/api/clear``."""
    session, store = views.session, views.store

    @app.post("/api/open")
    def open_image(body: ImageIn) -> dict[str, Any]:
        image = views.usable(body.image)
        info = session.open(body.image)
        return {
            "image": body.image,
            "width": image.width,
            "height": image.height,
            "embedding_ms": _ms(info["embedding_s"]),
            "cached": info["cached"],
            "flag": store.report.flagged.get(body.image),
            "annotations": [views.annotation(a) for a in store.annotations_of(body.image)],
            "draft": views.draft(session.current(body.image, compare=body.compare), body.compare),
        }

    @app.post("/api/prompt")
    def prompt(body: PromptIn) -> dict[str, Any]:
        image = views.usable(body.image)
        draft = session.prompt(body.image, _check_prompt(body, image.width, image.height), compare=body.compare)
        return {"image": body.image, "draft": views.draft(draft, body.compare)}

    @app.post("/api/draft")
    def draft(body: ImageIn) -> dict[str, Any]:
        views.usable(body.image)
        if body.compare and session.compare_available:
            session.base()  # the switch was turned on: load the base model now, not at the next prompt
        view = views.draft(session.current(body.image, compare=body.compare), body.compare)
        return {"image": body.image, "draft": view, "base_name": session.base_name}

    @app.post("/api/undo")
    def undo(body: ImageIn) -> dict[str, Any]:
        views.usable(body.image)
        return {"image": body.image, "draft": views.draft(session.undo(body.image, compare=body.compare), body.compare)}

    @app.post("/api/clear")
    def clear(body: ImageIn) -> dict[str, Any]:
        views.usable(body.image)
        session.clear(body.image)
        return {"image": body.image, "draft": None}


def _add_annotation_routes(app: FastAPI, views: _Views) -> None:
    """``POST /api/accept``, ``/api/delete`` and ``/api/category``: the annotation file changes."""
    session, store = views.session, views.store

    @app.post("/api/accept")
    def accept(body: AcceptIn) -> dict[str, Any]:
        views.usable(body.image)
        category_id = store.categories[0]["id"] if body.category_id is None else body.category_id
        if category_id not in store.category_ids():
            raise ConfigError(f"category_id {category_id!r} is not one of {store.category_ids()}")

        def write(draft: Draft, output: Decoded) -> dict:
            extra = {
                "model": session.predictor.name,
                "effort": {"clicks": draft.actions, "seconds": round(time.monotonic() - draft.started, 2)},
                "prompts": draft.prompts,
                "predicted_iou": round(output.score, 4) if math.isfinite(output.score) else None,
            }
            return store.add(body.image, output.mask, category_id, extra)

        record = session.accept(body.image, body.revision, write)
        return {"image": body.image, "annotation": views.annotation(record), **views.progress()}

    @app.post("/api/delete")
    def delete(body: AnnotationIn) -> dict[str, Any]:
        record = store.delete(body.id)
        return {"deleted": record["id"], **views.progress()}

    @app.post("/api/category")
    def category(body: CategoryIn) -> dict[str, Any]:
        return {"annotation": views.annotation(store.set_category(body.id, body.category_id))}

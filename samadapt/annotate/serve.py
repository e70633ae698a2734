"""What ``samadapt annotate`` runs (its options: :mod:`samadapt.cli.annotate`): the model options
checked, the exclusive lock on the output file, the listening socket, the models, and the uvicorn
server of the page until Ctrl-C.

    annotate_folder("IMAGES", "annotations.json", adapter="trashcan-mini", categories="classes.json")
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Iterator

from ..errors import ConfigError

__all__ = ["annotate_folder", "bind_socket", "load_adapter_predictor", "load_predictors"]


def _say(text: str) -> None:
    print(f"annotate: {text}", flush=True)


def _adapter_display_name(adapter: str) -> str:
    """What annotations record for an adapter: its registered name, or its file's name."""
    from ..adapter_store import resolve_adapter
    from ..paths import adapters_dir

    path = resolve_adapter(adapter)
    if path.parent.parent == adapters_dir() or path.name == "adapter.safetensors":
        return path.parent.name
    return path.stem


def load_predictors(
    adapter: str | None = None,
    model_type: str | None = None,
    checkpoint: str | None = None,
    device: str | None = None,
):
    """The models of the page: (the predictor, the base predictor or a function building it or None, a
    note when None). Without ``adapter`` the base model ``model_type`` (default mini) alone."""
    import torch

    from ..adapter_io import read_adapter_metadata
    from ..adapter_store import load, resolve_adapter
    from ..evaluation.run import zero_shot_model
    from .session import Predictor

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not adapter:
        model_type = model_type or "mini"
        name = model_type if checkpoint is None else f"{model_type} ({Path(checkpoint).name})"
        model = zero_shot_model(model_type, checkpoint, device=device)
        return Predictor(name, model, "base"), None, "no --adapter given: the model is the base model"
    meta = read_adapter_metadata(resolve_adapter(adapter))
    model = load(adapter, checkpoint=checkpoint, device=device)
    name = _adapter_display_name(adapter)
    shared = model.encoder_is_frozen  # the encoder is the base's: both models share embeddings
    predictor = Predictor(name, model, "base" if shared else name, source=str(adapter))

    def base() -> Predictor:
        base_model = zero_shot_model(model.model_type, checkpoint, base_id=meta["base_id"], device=device)
        return Predictor(f"{model.model_type} (base)", base_model, "base")

    return predictor, base, ""


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Hold ``<out>.lock`` so two runs never write one file (released by the kernel even on kill -9)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    lock = out.with_name(f".{out.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            raise ConfigError(
                f"another `samadapt annotate` (pid {f.read().strip() or '?'}) is writing {str(out)!r}; "
                "use its page, or stop it first"
            ) from None
        f.truncate(0)
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                lock.unlink()


def bind_socket(host: str, port: int) -> socket.socket:
    """A socket listening on ``host``:``port`` (0: a free port); the errors name --host and --port."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ConfigError(f"--host {host!r} is not an address of this machine ({e})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({e}); choose another --port (0: any free one)") from None
    sock.listen(128)
    return sock


def _url(host: str, sock: socket.socket, token: str) -> str:
    port = sock.getsockname()[1]
    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}/?token={token}"


def _check_model_options(
    adapter: str | None, model_type: str | None, checkpoint: str | None, adapt_epochs: int | None
) -> None:
    """The model options, checked in a moment (no weights read): before any file is written."""
    from ..adapter_store import resolve_adapter
    from ..models.family import get_card

    if adapter and model_type:
        raise ConfigError("--model chooses the base model without --adapter; an adapter names its own model type")
    if adapter:
        resolve_adapter(adapter)
    else:
        get_card(model_type or "mini")
    if adapt_epochs is not None and adapt_epochs < 1:
        raise ConfigError(f"--adapt-epochs must be at least 1, got {adapt_epochs}")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ConfigError(f"--checkpoint {checkpoint!r} does not exist")


def _report(folder, store, images: str) -> None:
    unreadable = folder.unreadable
    _say(
        f"{len(folder.readable)} images in {images}"
        + (f", {len(unreadable)} unreadable (skipped)" if unreadable else "")
    )
    for name, why in list(unreadable.items())[:10]:
        _say(f"  unreadable {name}: {why}")
    for line in store.report.lines():
        _say(line)


def _serve(app, sock: socket.socket) -> None:
    """Serve until Ctrl-C or SIGTERM. uvicorn stops on either and raises the signal again once stopped:
    both end here as KeyboardInterrupt (nothing is pending then: every change was written when it was
    answered)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if main_thread else None
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def load_adapter_predictor(name: str, checkpoint: str | None = None, device: str | None = None):
    """The :class:`Predictor` of an installed adapter (one an Adapt run made), on the page's device."""
    import torch

    from ..adapter_store import load
    from .session import Predictor

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load(name, checkpoint=checkpoint, device=device)
    return Predictor(name, model, "base" if model.encoder_is_frozen else name, source=name)


def annotate_folder(
    images: str,
    out: str | os.PathLike,
    *,
    adapter: str | None = None,
    model_type: str | None = None,
    checkpoint: str | None = None,
    device: str | None = None,
    categories: str | None = None,
    annotation_file: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    open_browser: bool = True,
    progress: bool = True,
    adapt_epochs: int | None = None,
) -> None:
    """Serve the page that labels the images of the folder ``images`` into the COCO file ``out``
    (continued where it exists) until Ctrl-C or SIGTERM; what ``samadapt annotate`` runs.

    Everything that can be refused (model options, images, categories, the file, the port) is checked
    before the model loads; ``out`` is locked against a second run for as long as the page is served.
    """
    from .folder import ImageFolder
    from .store import AnnotationStore, read_categories

    out = Path(out)
    _check_model_options(adapter, model_type, checkpoint, adapt_epochs)
    folder = ImageFolder(images, progress=progress)
    if not folder.readable:
        raise ConfigError(f"no readable image in {images!r}: {dict(list(folder.unreadable.items())[:3])}")
    names = read_categories(categories) if categories else None
    with _exclusive(out):
        store = AnnotationStore.open(out, folder, categories=names, annotation_file=annotation_file)
        sock = bind_socket(host, port)
        try:
            try:
                store.write()  # fails now, not at the first accept, when the file cannot be written
            except OSError as e:
                raise ConfigError(f"cannot write --out {str(out)!r}: {e}") from None
            _report(folder, store, images)
            _serve_page(
                folder,
                store,
                sock,
                images,
                out,
                host=host,
                open_browser=open_browser,
                adapt_epochs=adapt_epochs,
                adapter=adapter,
                model_type=model_type,
                checkpoint=checkpoint,
                device=device,
            )
        finally:
            sock.close()
        done = len(store.done_names() & set(folder.readable))
        _say(f"stopped; {len(store.annotations)} annotations on {done} of {len(folder.readable)} images in {out}")


def _serve_page(
    folder,
    store,
    sock: socket.socket,
    images: str,
    out: Path,
    *,
    host: str,
    open_browser: bool,
    adapt_epochs: int | None,
    adapter: str | None,
    model_type: str | None,
    checkpoint: str | None,
    device: str | None,
) -> None:
    """Load the models (:func:`load_predictors`), say where the page is, and serve it with its Adapt
    button until stopped."""
    from .adapting import AdaptJob, adapt_router
    from .app import create_app, new_token
    from .session import AnnotateSession

    predictor, base, note = load_predictors(adapter, model_type, checkpoint, device)
    session = AnnotateSession(folder, predictor, base, base_note=note)
    token = new_token()
    if host not in ("127.0.0.1", "localhost", "::1"):
        _say(f"warning: --host {host} lets other machines reach the page (plain HTTP; the token guards it)")
    _say(f"model {predictor.name} on {predictor.model.device}; writing {out} after every change")
    url = _url(host, sock, token)
    _say(f"open {url}")
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    job = AdaptJob(
        session,
        store,
        images,
        load=lambda name: load_adapter_predictor(name, checkpoint, device),
        model=model_type,
        checkpoint=checkpoint,
        device=device,
        epochs=adapt_epochs,
    )
    try:
        _serve(create_app(session, store, token, routers=[adapt_router(job)]), sock)
    finally:
        job.close()
        session.close()

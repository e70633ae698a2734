"""The model side of the annotation page: each image is encoded once, a prompt costs only the decoder.

- :class:`Predictor`: a model the page decodes with, under the name annotations record. Predictors
  with the same ``encoder_key`` share image embeddings (an adapter that leaves the encoder as the
  base's, such as ``decoder``, shares them with its base).
- :class:`EmbeddingCache`: the embeddings of the last few images; an image is encoded when it is
  opened, and the next one in a background thread meanwhile.
- :func:`refine`: one step of the interactive protocol (``samadapt.evaluation.clicks``): the prompts
  so far (the latest box and every point) plus the previous step's low-resolution logits as the mask
  prompt; a lone first click takes the most confident of SAM's three masks, every other step the
  single-mask output.
- :class:`AnnotateSession`: the current draft (the prompts of the object being drawn and, per
  predictor, the mask after each of them), undo, accept, the base model beside the adapted one, and
  :meth:`AnnotateSession.swap` to put another model in (the data engine, issue 23).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .folder import ImageFolder

__all__ = ["AnnotateSession", "Decoded", "Draft", "EmbeddingCache", "Predictor", "mask_runs", "refine"]

#: prompts one object may take (a draft longer than this is surely a stuck mouse)
MAX_STEPS = 100


@dataclass(frozen=True)
class Predictor:
    """A model of the page. ``name``: what annotations record as their ``model``; ``encoder_key``:
    predictors with equal keys have equal image encoders and share embeddings; ``source``: the
    adapter (name or file) it was loaded from, None for the base model."""

    name: str
    model: Any  # samadapt.AdaptedSam
    encoder_key: str
    source: str | None = None


@dataclass
class Embedded:
    """An image's embedding (C, S/16, S/16) on the model's device, its (H, W), and the encoding time."""

    embedding: torch.Tensor
    size: tuple[int, int]
    seconds: float


@dataclass
class Decoded:
    """One step's output: low-res ``logits`` (1, 1, S/4, S/4) (the next step's mask prompt), the
    ``mask`` (H, W) bool, the IoU head's ``score`` and the decoder's wall time."""

    logits: torch.Tensor
    mask: np.ndarray
    score: float
    seconds: float


@dataclass
class Draft:
    """The object being drawn on ``file_name``: one entry of ``prompts`` per step (``{"box": [x0, y0,
    x1, y1]}`` or ``{"point": [x, y], "positive": bool}``, image pixels) and, per predictor name, the
    :class:`Decoded` output after each step. ``actions`` counts every prompt given, undone ones
    included (the effort); ``started`` is when the page became ready for this object."""

    file_name: str
    started: float
    prompts: list[dict] = field(default_factory=list)
    outputs: dict[str, list[Decoded]] = field(default_factory=dict)
    actions: int = 0

    @property
    def revision(self) -> int:
        return len(self.prompts)


def mask_runs(mask: np.ndarray) -> list[int]:
    """(H, W) bool -> uncompressed COCO RLE run lengths (column-major, starting with background)."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]]))
    return ([0] if flat.size and flat[0] else []) + runs.tolist()


def _prompts_until(prompts: list[dict]) -> tuple[list[float] | None, list[tuple[float, float, int]]]:
    """The latest box and every point (x, y, label) of a list of prompts."""
    box, points = None, []
    for p in prompts:
        if "box" in p:
            box = p["box"]
        else:
            points.append((p["point"][0], p["point"][1], int(bool(p["positive"]))))
    return box, points


@torch.no_grad()
def refine(
    model,
    embedding: torch.Tensor,
    size: tuple[int, int],
    box: list[float] | None,
    points: list[tuple[float, float, int]],
    previous: torch.Tensor | None,
) -> Decoded:
    """One step of the protocol (module docstring) on an image of ``size`` (H, W).

    Args:
        model: an :class:`~samadapt.AdaptedSam`.
        embedding: the image's (C, S/16, S/16) embedding from ``model``'s encoder.
        box: XYXY in image pixels, or None; points: (x, y, label) in image pixels, label 1 positive
            and 0 negative; previous: the previous step's (1, 1, S/4, S/4) logits, or None.
    """
    if box is None and not points:
        raise ConfigError("refine needs a box or a point")
    tf, device = model.transform, embedding.device
    start = time.perf_counter()
    boxes = [tf.apply_boxes(np.asarray([box], np.float32), size).to(device)] if box is not None else None
    coords = labels = None
    if points:
        coords = [tf.apply_points(np.asarray([[p[:2] for p in points]], np.float32), size).to(device)]
        labels = [torch.tensor([[p[2] for p in points]], dtype=torch.int64, device=device)]
    multimask = previous is None and box is None and len(points) == 1
    out = model.decode(
        embedding[None],
        boxes,
        coords,
        labels,
        multimask=multimask,
        mask_inputs=None if previous is None else [previous.to(embedding.dtype)],
    )
    logits, scores = out.low_res_logits.float(), out.iou_predictions.float()
    k = int(scores[0].argmax()) if multimask else 0  # a lone click: the most confident of the three
    logits = logits[:, k : k + 1]
    mask = tf.postprocess_masks(logits, size, model.mask_threshold)[0, 0].cpu().numpy()
    return Decoded(logits, mask, float(scores[0, k]), time.perf_counter() - start)


class EmbeddingCache:
    """The embeddings of the last ``capacity`` (predictor encoder, image) pairs; one background thread
    encodes ahead. Thread-safe; an image being encoded in the background is waited for, not encoded
    twice."""

    def __init__(self, folder: ImageFolder, capacity: int = 4) -> None:
        self.folder = folder
        self.capacity = max(2, int(capacity))
        self._done: OrderedDict[tuple[str, str], Embedded] = OrderedDict()
        self._pending: dict[tuple[str, str], Future] = {}
        self._lock = threading.Lock()
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="samadapt-encode")

    def _encode(self, predictor: Predictor, name: str) -> Embedded:
        model = predictor.model
        image = self.folder.read(name)
        start = time.perf_counter()
        with torch.no_grad():
            x = model.transform.preprocess_image(image)[None].to(model.device, model.dtype)
            embedding = model.encode(x)[0]
        return Embedded(embedding, image.shape[:2], time.perf_counter() - start)

    def _run(self, key: tuple[str, str], predictor: Predictor, future: Future) -> None:
        try:
            result = self._encode(predictor, key[1])
        except BaseException as e:
            with self._lock:
                self._pending.pop(key, None)
            future.set_exception(e)
            return
        with self._lock:
            self._pending.pop(key, None)
            self._done[key] = result
            while len(self._done) > self.capacity:
                self._done.popitem(last=False)
        future.set_result(result)

    def get(self, predictor: Predictor, name: str) -> tuple[Embedded, bool]:
        """(the embedding of image ``name`` for ``predictor``, whether it was ready before this call)."""
        key = (predictor.encoder_key, name)
        with self._lock:
            if key in self._done:
                self._done.move_to_end(key)
                return self._done[key], True
            future = self._pending.get(key)
            mine = future is None
            if mine:
                future = self._pending[key] = Future()
        if mine:
            self._run(key, predictor, future)
        return future.result(), False

    def prefetch(self, predictor: Predictor, name: str | None) -> None:
        """Encode ``name`` in the background unless it is cached or already being encoded."""
        if name is None:
            return
        key = (predictor.encoder_key, name)
        with self._lock:
            if key in self._done or key in self._pending:
                return
            future = self._pending[key] = Future()
        future.add_done_callback(lambda f: f.exception())  # a failed prefetch is reported when opened
        self._background.submit(self._run, key, predictor, future)

    def wait(self, timeout: float | None = None) -> None:
        """Until the images being encoded now are done (or ``timeout`` seconds have passed)."""
        with self._lock:
            pending = list(self._pending.values())
        for future in pending:
            try:
                future.exception(timeout)
            except TimeoutError:
                return

    def close(self) -> None:
        self._background.shutdown(wait=False, cancel_futures=True)


class AnnotateSession:
    """The interactive state of one annotation page (module docstring).

    Args:
        folder: the images.
        predictor: the model whose masks are accepted (the adapted one).
        base: the base model shown beside it (the switch of the page): a :class:`Predictor`, a
            function building one on first use, or None (``base_note`` says why there is none).
        cache_size: embeddings kept (the current image, the next, and a few visited).
    """

    def __init__(
        self,
        folder: ImageFolder,
        predictor: Predictor,
        base: Predictor | Callable[[], Predictor] | None = None,
        *,
        base_note: str = "",
        cache_size: int = 4,
    ) -> None:
        self.folder = folder
        self.predictor = predictor
        self._base = base
        self.base_note = base_note
        self.cache = EmbeddingCache(folder, cache_size)
        self.draft: Draft | None = None
        self._ready_since: dict[str, float] = {}
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ models
    @property
    def compare_available(self) -> bool:
        return self._base is not None

    def base(self) -> Predictor:
        """The base predictor (built on first use)."""
        with self._lock:
            if self._base is None:
                raise ConfigError(f"no base model to compare with: {self.base_note}")
            if not isinstance(self._base, Predictor):
                self._base = self._base()
            return self._base

    @property
    def base_name(self) -> str | None:
        return self._base.name if isinstance(self._base, Predictor) else None

    def swap(self, predictor: Predictor) -> None:
        """Put another model in (e.g. one just fine-tuned on the annotations); the draft is dropped,
        since its logits came from the old model."""
        with self._lock:
            self.predictor = predictor
            self.draft = None

    # ------------------------------------------------------------------ images
    def open(self, name: str) -> dict[str, Any]:
        """Encode image ``name`` (unless cached), start encoding the next one, and make it current (a
        draft on another image is dropped). Returns ``{"embedding_s", "cached"}``."""
        embedded, cached = self.cache.get(self.predictor, name)
        self.cache.prefetch(self.predictor, self.folder.next_readable(name))
        with self._lock:
            if self.draft is not None and self.draft.file_name != name:
                self.draft = None
            self._ready_since[name] = time.monotonic()
        return {"embedding_s": embedded.seconds, "cached": cached}

    # ------------------------------------------------------------------ the draft
    def _decode_steps(self, draft: Draft, predictor: Predictor) -> list[Decoded]:
        """The outputs of ``predictor`` after each step of ``draft``, decoding the missing ones."""
        outputs = draft.outputs.setdefault(predictor.name, [])
        if len(outputs) < draft.revision:
            embedded, _ = self.cache.get(predictor, draft.file_name)
            for k in range(len(outputs), draft.revision):
                box, points = _prompts_until(draft.prompts[: k + 1])
                previous = outputs[k - 1].logits if k else None
                outputs.append(refine(predictor.model, embedded.embedding, embedded.size, box, points, previous))
        return outputs

    def prompt(self, name: str, prompt: dict, *, compare: bool = False) -> Draft:
        """Add ``prompt`` (``{"box": [x0, y0, x1, y1]}`` or ``{"point": [x, y], "positive": bool}``, image
        pixels, checked by the caller) to the draft of ``name`` and decode it."""
        self.folder[name]  # an unknown name raises here
        with self._lock:
            draft = self.draft
            if draft is None or draft.file_name != name:
                draft = Draft(name, self._ready_since.get(name, time.monotonic()))
            if draft.revision >= MAX_STEPS:
                raise ConfigError(f"an object takes at most {MAX_STEPS} prompts; accept it or clear it (Escape)")
            draft.prompts.append(prompt)
            draft.actions += 1
            try:
                self._decode_steps(draft, self.predictor)
                if compare:
                    self._decode_steps(draft, self.base())
            except BaseException:
                draft.prompts.pop()
                draft.actions -= 1
                for outputs in draft.outputs.values():
                    del outputs[draft.revision :]
                raise
            self.draft = draft
            return draft

    def current(self, name: str, *, compare: bool = False) -> Draft | None:
        """The draft of ``name`` (None if it has none), with the base model's masks when ``compare``."""
        with self._lock:
            draft = self.draft if self.draft is not None and self.draft.file_name == name else None
            if draft is not None and compare and draft.revision:
                self._decode_steps(draft, self.base())
            return draft

    def undo(self, name: str, *, compare: bool = False) -> Draft | None:
        """Take back the last prompt of the draft of ``name``: its mask becomes the one before."""
        with self._lock:
            draft = self.current(name)
            if draft is None or not draft.revision:
                return draft
            draft.prompts.pop()
            for outputs in draft.outputs.values():
                del outputs[draft.revision :]
            return self.current(name, compare=compare)

    def clear(self, name: str) -> None:
        """Drop the draft of ``name``; the next object's time starts now."""
        with self._lock:
            if self.draft is not None and self.draft.file_name == name:
                self.draft = None
            self._ready_since[name] = time.monotonic()

    def accept(self, name: str, revision: int, write: Callable[[Draft, Decoded], dict]) -> dict:
        """Accept the draft of ``name`` as it was at ``revision`` (what the page shows): ``write(draft,
        output)`` stores it (and returns the record); only when it returned is the draft closed."""
        with self._lock:
            draft = self.current(name)
            if draft is None or not draft.revision:
                raise DataError("nothing to accept: draw a box or click on the object first")
            if draft.revision != revision:
                raise DataError(
                    f"the page shows the mask after {revision} prompts but the server has {draft.revision}; "
                    "reload the page"
                )
            output = self._decode_steps(draft, self.predictor)[-1]
            record = write(draft, output)
            self.draft = None
            self._ready_since[name] = time.monotonic()
            return record

    def close(self) -> None:
        self.cache.close()

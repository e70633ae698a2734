"""Evaluate an :class:`~samadapt.adapted.AdaptedSam` on an instance-segmentation dataset, as in
"Don't waste SAM": one prompt per ground-truth instance (its box, by default), the predicted mask
scored against that instance's mask, the metrics averaged over instances.

Two layers, so the trainer can shard validation across processes:

- :func:`evaluate_records` runs the model on some of the dataset's images and returns the
  per-instance numbers and COCO records of those images (:class:`EvalRecords`, picklable, small);
- :func:`summarize_records` merges the records of every process and computes the summary.

:func:`evaluate` does both in one process; :func:`samadapt.evaluation.report.write_report` writes
``metrics.json``, ``metrics.md`` and ``examples.png`` for several models (zero-shot vs fine-tuned).
The options of all three are one :class:`~samadapt.evaluation.config.EvalConfig` (or its fields as
keywords).

Prompts are made by :func:`samadapt.data.prompts.make_prompts`, the builder training uses, from a
generator seeded by (seed, image id), so the same seed gives every model, and every way of sharding
the images, the same prompts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterable, Mapping, Sequence

import numpy as np
import torch

from ..data.prompts import PromptConfig, make_prompts
from ..errors import ConfigError
from .config import CLICK_PROMPT, EvalConfig
from .metrics import (
    METRIC_NAMES,
    build_coco_gt,
    coco_mask_ap,
    encode_mask,
    instance_metrics,
    summarize,
)

__all__ = ["EvalRecords", "EvalResult", "evaluate", "evaluate_records", "prompt_config", "summarize_records"]

#: longest side of the images and masks kept for the examples figure (they are downscaled to it;
#: a figure panel is about 320 px wide)
EXAMPLE_MAX_SIDE = 512


# ---------------------------------------------------------------------------- records
@dataclass
class EvalRecords:
    """Per-instance outcomes of evaluating some images of a dataset (one process' share).

    Per instance (K,): ``iou``, ``precision``, ``recall``, ``f1`` (float64, [0, 1]), ``category_ids``
    (int64), ``areas`` (ground-truth pixels, float64), ``scores`` (the IoU head's prediction),
    ``image_ids`` (int64). Per image: ``images`` (``{"id", "height", "width", "file_name",
    "num_instances"}``, images without instances included). COCO records: ``gt_annotations`` and
    ``detections`` with RLE segmentations (no annotation ids; :func:`summarize_records` numbers them).
    ``examples``: dicts for :func:`~samadapt.evaluation.plots.plot_examples`.
    """

    iou: np.ndarray = field(default_factory=lambda: np.zeros(0))
    precision: np.ndarray = field(default_factory=lambda: np.zeros(0))
    recall: np.ndarray = field(default_factory=lambda: np.zeros(0))
    f1: np.ndarray = field(default_factory=lambda: np.zeros(0))
    category_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    areas: np.ndarray = field(default_factory=lambda: np.zeros(0))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    image_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    images: list[dict] = field(default_factory=list)
    gt_annotations: list[dict] = field(default_factory=list)
    detections: list[dict] = field(default_factory=list)
    examples: list[dict] = field(default_factory=list)

    _ARRAYS = ("iou", "precision", "recall", "f1", "category_ids", "areas", "scores", "image_ids")
    _LISTS = ("images", "gt_annotations", "detections", "examples")

    @property
    def num_instances(self) -> int:
        return int(self.iou.size)

    def select(self, image_ids: Collection[int]) -> "EvalRecords":
        """The records of the images ``image_ids`` only (examples left out), e.g. to score a subset
        of the images from an evaluation of all of them."""
        keep = {int(i) for i in image_ids}
        mask = np.isin(self.image_ids, list(keep))
        out = EvalRecords(**{name: getattr(self, name)[mask] for name in self._ARRAYS})
        out.images = [im for im in self.images if int(im["id"]) in keep]
        out.gt_annotations = [a for a in self.gt_annotations if int(a["image_id"]) in keep]
        out.detections = [d for d in self.detections if int(d["image_id"]) in keep]
        return out

    @classmethod
    def merge(cls, parts: Iterable["EvalRecords"]) -> "EvalRecords":
        """Concatenate the records of several processes (or batches), in order."""
        parts = list(parts)
        out = cls()
        for name in cls._ARRAYS:
            arrays = [getattr(p, name) for p in parts]
            if arrays:
                setattr(out, name, np.concatenate(arrays).astype(getattr(out, name).dtype))
        for name in cls._LISTS:
            setattr(out, name, [x for p in parts for x in getattr(p, name)])
        return out


@dataclass
class EvalResult:
    """What :func:`evaluate` returns.

    metrics: :func:`summarize_records`'s dict (means as fractions in [0, 1], ``coco`` AP, ``prompt``,
        counts).
    per_image: one dict per image: image_id, file_name, num_instances, mean_iou, mean_f1.
    examples: dicts image / gt / pred / iou / category_ids / category_names / boxes / points for
        the examples figure.
    records: the underlying :class:`EvalRecords`.
    """

    metrics: dict[str, Any]
    per_image: list[dict] = field(default_factory=list)
    examples: list[dict] = field(default_factory=list)
    records: EvalRecords | None = None


# ---------------------------------------------------------------------------- prompts
def prompt_config(config: EvalConfig) -> PromptConfig:
    """The :class:`~samadapt.data.prompts.PromptConfig` of an evaluation prompt kind: the exact
    boxes (``box``), SAM's training noise on them (``jitter``: std 10% of the side, at most 20 px),
    boxes grown by ``loose_margin`` (``loose``), random clicks (``points``), the most interior click
    (``center``), or the four extreme clicks with the box they span (``extreme``)."""
    kind = config.prompt
    if kind == CLICK_PROMPT:
        raise ConfigError("prompt 'clicks' is the interactive protocol: run samadapt.evaluation.clicks.evaluate_clicks")
    exact = {"box_noise": 0.0}
    return PromptConfig(
        **{
            "box": exact,
            "jitter": {"box_noise": 0.1, "box_noise_max_px": 20.0},
            "loose": {**exact, "loose_margin": config.loose_margin},
            "points": {
                **exact,
                "use_boxes": False,
                "num_points": config.num_points,
                "num_negative_points": config.num_negative_points,
            },
            "center": {**exact, "use_boxes": False, "points": "center"},
            "extreme": {**exact, "points": "extreme"},
        }[kind]
    )


def _rng_for(seed: int, image_id: int, index: int) -> np.random.Generator:
    """The prompt generator of one image: depends only on (seed, image id), not on batching or sharding."""
    key = image_id if image_id >= 0 else index
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(key)]))


# ---------------------------------------------------------------------------- the loop
def _example_stride(hw: tuple[int, int]) -> int:
    """Keep every k-th pixel so the examples' longest side is at most ``EXAMPLE_MAX_SIDE``."""
    return max(1, math.ceil(max(hw) / EXAMPLE_MAX_SIDE))


@dataclass
class _Pending:
    """An image whose instances are being predicted (maybe in several chunks)."""

    index: int
    sample: dict
    prompts: dict
    chunks_left: int
    want_example: bool
    pred_parts: list = field(default_factory=list)
    score_parts: list = field(default_factory=list)
    iou_parts: list = field(default_factory=list)


def evaluate_records(
    model,
    dataset,
    indices: Sequence[int] | None = None,
    config: EvalConfig | None = None,
    *,
    progress: bool = True,
    desc: str = "evaluation",
    return_examples: int = 0,
    example_indices: Collection[int] | None = None,
    embeddings: Callable[[int], torch.Tensor] | None = None,
    **options: Any,
) -> EvalRecords:
    """Predict one mask per ground-truth instance of the images ``indices`` and score it.

    Args:
        model: an :class:`~samadapt.adapted.AdaptedSam` (its ``predict_batch`` is used, under
            ``torch.no_grad`` and in eval mode; the previous mode is restored).
        dataset: ``len(dataset)`` and ``dataset[i]`` -> dict with ``image`` (H, W, 3) uint8, ``masks``
            (N, H, W) bool, ``category_ids`` (N,), ``image_id``, optional ``boxes`` (N, 4) XYXY and
            ``file_name`` (like :class:`samadapt.data.coco.CocoInstances`).
        indices: the dataset indices to evaluate (default: all), e.g. this process' shard
            (``config.max_images`` is :func:`evaluate`'s, not applied here).
        config: the prompt kind (:func:`prompt_config`) and its options, ``seed`` (prompts are drawn
            from a generator seeded by (seed, image id)), ``batch_size`` (images per
            ``predict_batch`` call), ``coco`` (keep RLE records for COCO mask AP) and
            ``max_mask_pixels`` (full-resolution mask pixels, instances x H x W, per
            ``predict_batch`` call; images with more instances are predicted in chunks of prompts).
        options: :class:`~samadapt.evaluation.config.EvalConfig` fields replacing ``config``'s
            (``prompt="jitter"``).
        progress: show a tqdm bar titled ``desc``.
        return_examples: keep the examples of a figure of this many rows: those of the images
            :func:`~samadapt.evaluation.examples.example_pool` picks among ``indices`` (up to 3 per
            row, spread over sequences and classes; the figure chooses its rows among them by
            IoU), downscaled to at most ``EXAMPLE_MAX_SIDE`` pixels.
        example_indices: keep the examples of these dataset indices instead (a sharded
            evaluation gives each process its part of one pool).
        embeddings: dataset index -> that image's embedding from the model's (frozen) encoder, e.g.
            read from an embedding cache; the encoder is then skipped.

    Returns:
        :class:`EvalRecords` of these images.
    """
    from tqdm.auto import tqdm

    cfg = EvalConfig.of(config, **options)
    prompts_of = prompt_config(cfg)
    indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    category_names = dict(getattr(dataset, "categories", None) or {})  # for the examples figure's legend
    if example_indices is None and return_examples:
        from .examples import example_pool

        example_indices = example_pool(dataset, return_examples, seed=cfg.seed, indices=indices)
    run = _Evaluation(model, cfg, prompts_of, embeddings, {int(i) for i in example_indices or ()}, category_names)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(indices), desc=desc, disable=not progress, unit="img")
    try:
        with torch.no_grad():
            for index in indices:
                run.add(index, *_load_sample(dataset, index))
                bar.update(1)
            run.flush()
    finally:
        bar.close()
        model.train(was_training)
    return run.records()


def _load_sample(dataset, index: int) -> tuple[dict, Any, int, int]:
    """``dataset[index]`` (its masks lazy where the dataset can), its masks and its image's height
    and width; masks of another size than the image are an error."""
    sample = dataset.item(index, lazy_masks=True) if hasattr(dataset, "instance_masks") else dataset[index]
    masks = sample["masks"] if hasattr(sample["masks"], "shape") else np.asarray(sample["masks"], dtype=bool)
    h, w = np.asarray(sample["image"]).shape[:2]
    if masks.ndim != 3 or masks.shape[1:] != (h, w):
        raise ConfigError(f"dataset[{index}]: masks of shape {masks.shape} do not match the image ({h}, {w})")
    return sample, masks, h, w


@dataclass
class _Evaluation:
    """One :func:`evaluate_records` run: images are added one by one, their prompts queued in
    chunks, and the queue predicted in one ``predict_batch`` call when it is full (``batch_size``
    chunks, or ``max_mask_pixels`` mask pixels) and scored into the records."""

    model: Any
    cfg: EvalConfig
    prompts_of: PromptConfig
    embeddings: Callable[[int], torch.Tensor] | None
    keep_examples: set[int]
    category_names: dict
    out: dict[str, list] = field(default_factory=lambda: {name: [] for name in EvalRecords._ARRAYS})
    rec: EvalRecords = field(default_factory=EvalRecords)
    queue: list[tuple[_Pending, slice]] = field(default_factory=list)
    queued_pixels: int = 0

    def add(self, index: int, sample: dict, masks: Any, h: int, w: int) -> None:
        """Record image ``index`` and queue its prompts, in chunks of at most ``max_mask_pixels``."""
        n = masks.shape[0]
        image_id = int(sample["image_id"])
        self.rec.images.append(
            {
                "id": image_id,
                "height": int(h),
                "width": int(w),
                "file_name": str(sample.get("file_name", "")),
                "num_instances": int(n),
            }
        )
        if n == 0:
            return
        boxes = sample.get("boxes")
        prompts = make_prompts(
            masks,
            self.prompts_of,
            _rng_for(self.cfg.seed, image_id, index),
            boxes=None if boxes is None else np.asarray(boxes, dtype=np.float32),
        )
        per_chunk = max(1, self.cfg.max_mask_pixels // (h * w))
        slices = [slice(s, min(n, s + per_chunk)) for s in range(0, n, per_chunk)]
        pending = _Pending(index, sample, prompts, len(slices), index in self.keep_examples)
        for sl in slices:
            self._enqueue(pending, sl, (sl.stop - sl.start) * h * w)

    def _enqueue(self, pending: _Pending, sl: slice, pixels: int) -> None:
        if self.queue and (
            len(self.queue) >= self.cfg.batch_size or self.queued_pixels + pixels > self.cfg.max_mask_pixels
        ):
            self.flush()
        self.queue.append((pending, sl))
        self.queued_pixels += pixels

    def flush(self) -> None:
        """Predict the queued chunks in one ``predict_batch`` call and score them."""
        if not self.queue:
            return
        images, boxes, points, labels = [], [], [], []
        for p, sl in self.queue:
            images.append(p.sample["image"])
            pr = p.prompts
            boxes.append(None if pr["boxes"] is None else pr["boxes"][sl])
            points.append(None if pr["points"] is None else pr["points"][sl])
            labels.append(None if pr["labels"] is None else pr["labels"][sl])
        use_points = any(x is not None for x in points)
        results = self.model.predict_batch(
            images,
            boxes,
            points if use_points else None,
            labels if use_points else None,
            batch_size=self.cfg.batch_size,
            image_embeddings=None if self.embeddings is None else [self.embeddings(p.index) for p, _ in self.queue],
        )
        for (p, sl), (masks, scores) in zip(self.queue, results):
            self._score(p, sl, masks, scores)
        self.queue.clear()
        self.queued_pixels = 0

    def _score(self, p: _Pending, sl: slice, masks: np.ndarray, scores: np.ndarray) -> None:
        """Score the predicted masks of one chunk of an image's instances."""
        s = p.sample
        gt = np.asarray(s["masks"][sl], dtype=bool)  # this chunk's masks only (lazy masks decode just these)
        cats = np.asarray(s["category_ids"], dtype=np.int64).reshape(-1)[sl]
        m = instance_metrics(masks, gt)
        for name in METRIC_NAMES:
            self.out[name].append(m[name])
        self.out["category_ids"].append(cats)
        self.out["areas"].append(m["gt_area"].astype(np.float64))
        self.out["scores"].append(np.asarray(scores, dtype=np.float64).reshape(-1))
        self.out["image_ids"].append(np.full(len(cats), int(s["image_id"]), dtype=np.int64))
        if self.cfg.coco:
            _add_coco_records(self.rec, int(s["image_id"]), cats, gt, masks, scores, m["gt_area"])
        p.chunks_left -= 1
        if p.want_example:
            k = _example_stride(gt.shape[1:])
            p.pred_parts.append(masks[:, ::k, ::k])
            p.score_parts.append(np.asarray(scores).reshape(-1))
            p.iou_parts.append(m["iou"])  # at full resolution, as in the metrics
            if p.chunks_left == 0:
                self.rec.examples.append(_example(p, k, self.category_names))

    def records(self) -> EvalRecords:
        """The records, their per-instance arrays concatenated."""
        rec = self.rec
        for name in EvalRecords._ARRAYS:
            parts = self.out[name]
            dtype = getattr(rec, name).dtype
            setattr(rec, name, np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype))
        return rec


def _add_coco_records(
    rec: EvalRecords,
    image_id: int,
    cats: np.ndarray,
    gt: np.ndarray,
    masks: np.ndarray,
    scores: np.ndarray,
    areas: np.ndarray,
) -> None:
    """Add the COCO ground-truth annotations and detections (RLE) of one chunk of an image's instances."""
    for k in range(len(cats)):
        rec.gt_annotations.append(
            {
                "image_id": image_id,
                "category_id": int(cats[k]),
                "segmentation": encode_mask(gt[k]),
                "area": float(areas[k]),
                "iscrowd": 0,
            }
        )
        rec.detections.append(
            {
                "image_id": image_id,
                "category_id": int(cats[k]),
                "segmentation": encode_mask(masks[k]),
                "score": float(scores[k]),
            }
        )


def _example(p: _Pending, k: int, category_names: Mapping[int, str]) -> dict:
    """An examples-figure entry, every k-th pixel kept (coordinates scaled by 1/k); ``iou`` (N,) is
    each instance's IoU at full resolution, ``category_names`` names this image's categories."""
    s, pr = p.sample, p.prompts
    cats = np.asarray(s["category_ids"], dtype=np.int64).reshape(-1)
    return {
        "image": np.ascontiguousarray(np.asarray(s["image"])[::k, ::k]),
        "gt": np.ascontiguousarray(np.asarray(s["masks"][:, ::k, ::k], dtype=bool)),
        "pred": np.ascontiguousarray(np.concatenate(p.pred_parts)),
        "scores": np.concatenate(p.score_parts),
        "boxes": None if pr["boxes"] is None else np.asarray(pr["boxes"], dtype=np.float32) / k,
        "points": None if pr["points"] is None else np.asarray(pr["points"], dtype=np.float32) / k,
        "point_labels": pr["labels"],
        "category_ids": cats,
        "category_names": {int(c): str(category_names[int(c)]) for c in set(cats.tolist()) if int(c) in category_names},
        "iou": np.concatenate(p.iou_parts),
        "image_id": int(s["image_id"]),
        "file_name": str(s.get("file_name", "")),
        "scale": 1.0 / k,
    }


# ---------------------------------------------------------------------------- summary
def _flatten(records: EvalRecords | Iterable[Any]) -> list[EvalRecords]:
    if isinstance(records, EvalRecords):
        return [records]
    out: list[EvalRecords] = []
    for r in records:
        out.extend(_flatten(r))
    return out


def summarize_records(
    records: EvalRecords | Sequence[Any],
    categories: Mapping[int, str] | None = None,
    *,
    prompt: str | None = None,
    coco: bool = True,
) -> dict[str, Any]:
    """The dataset summary of the records of every process (e.g. from ``gather_object``).

    Returns:
        :func:`~samadapt.evaluation.metrics.summarize`'s keys (``mean_iou``, ``mean_precision``,
        ``mean_recall``, ``mean_f1``, ``num_instances``, ``per_category``, ``per_size``) plus
        ``coco`` (mask AP dict; absent with ``coco=False``), ``prompt``, ``num_images`` and
        ``num_images_without_instances``.
    """
    rec = EvalRecords.merge(_flatten(records))
    metrics = summarize(rec.iou, rec.precision, rec.recall, rec.f1, rec.category_ids, rec.areas, categories)
    if coco:
        if len(rec.gt_annotations) != rec.num_instances:
            raise ConfigError(
                "these records hold no COCO annotations (evaluated with coco=False); summarize them with coco=False"
            )
        metrics["coco"] = coco_mask_ap(build_coco_gt(_gt_records(rec), categories), rec.detections)
    metrics["prompt"] = prompt
    metrics["num_images"] = len(rec.images)
    metrics["num_images_without_instances"] = sum(1 for i in rec.images if i["num_instances"] == 0)
    return metrics


def _gt_records(rec: EvalRecords) -> list[dict]:
    """:func:`~samadapt.evaluation.metrics.build_coco_gt`'s per-image records of ``rec``: its
    annotations follow its images, ``num_instances`` of them per image, in order."""
    out, start = [], 0
    for info in rec.images:
        anns = rec.gt_annotations[start : start + info["num_instances"]]
        start += info["num_instances"]
        assert all(int(a["image_id"]) == int(info["id"]) for a in anns), "annotations out of image order"
        out.append(
            {
                "image_id": info["id"],
                "height": info["height"],
                "width": info["width"],
                "masks": [a["segmentation"] for a in anns],
                "category_ids": [a["category_id"] for a in anns],
            }
        )
    return out


def _per_image(rec: EvalRecords) -> list[dict]:
    rows = []
    for info in rec.images:
        sel = rec.image_ids == info["id"]
        n = int(sel.sum())
        rows.append(
            {
                "image_id": info["id"],
                "file_name": info["file_name"],
                "num_instances": n,
                "mean_iou": float(rec.iou[sel].mean()) if n else float("nan"),
                "mean_f1": float(rec.f1[sel].mean()) if n else float("nan"),
            }
        )
    return rows


def evaluate(
    model,
    dataset,
    config: EvalConfig | None = None,
    *,
    subset: Sequence[int] | None = None,
    progress: bool = True,
    return_examples: int = 0,
    desc: str = "evaluation",
    **options: Any,
) -> EvalResult:
    """Evaluate ``model`` on ``dataset`` in this process (:func:`evaluate_records` +
    :func:`summarize_records`).

    Args:
        config: the :class:`~samadapt.evaluation.config.EvalConfig` (default: its defaults, exact
            boxes); ``options``: fields of it to replace (``prompt="jitter", seed=1``).
        subset: dataset indices to evaluate (default all); ``config.max_images`` then keeps a
            seeded subset of them (:func:`~samadapt.data.subsets.seeded_indices` with
            ``config.seed``: the same seed, the same images).
        Other arguments as in :func:`evaluate_records`.

    Returns:
        :class:`EvalResult`; ``metrics["mean_iou"]`` etc. are fractions in [0, 1].
    """
    cfg = EvalConfig.of(config, **options)
    indices = list(range(len(dataset))) if subset is None else [int(i) for i in subset]
    if cfg.max_images is not None:
        from ..data.subsets import seeded_indices

        indices = seeded_indices(dataset, cfg.max_images, seed=cfg.seed, purpose="eval", indices=indices)
    rec = evaluate_records(model, dataset, indices, cfg, progress=progress, desc=desc, return_examples=return_examples)
    metrics = summarize_records(rec, getattr(dataset, "categories", None), prompt=cfg.prompt, coco=cfg.coco)
    metrics["seed"] = cfg.seed
    return EvalResult(metrics=metrics, per_image=_per_image(rec), examples=rec.examples, records=rec)

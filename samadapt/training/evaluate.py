"""Evaluate an :class:`~samadapt.adapted.AdaptedSam` on an instance-segmentation dataset, as in
"Don't waste SAM": one prompt per ground-truth instance (its box, by default), the predicted mask
scored against that instance's mask, the metrics averaged over instances.

Two layers, so the trainer can shard validation across processes:

- :func:`evaluate_records` runs the model on some of the dataset's images and returns the
  per-instance numbers and COCO records of those images (:class:`EvalRecords`, picklable, small);
- :func:`summarize_records` merges the records of every process and computes the summary.

:func:`evaluate` does both in one process, and :func:`write_report` writes ``metrics.json``,
``metrics.md`` and ``examples.png`` for several models (zero-shot vs fine-tuned).

Prompts are drawn from a generator seeded by (seed, image id), so the same seed gives every model,
and every way of sharding the images, the same prompts.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .metrics import METRIC_NAMES, coco_mask_ap, encode_mask, instance_metrics, summarize

__all__ = ["EVAL_PROMPTS", "EvalRecords", "EvalResult", "evaluate", "evaluate_records", "summarize_records",
           "write_report"]

#: prompt kinds: exact GT boxes, SAM's box noise, boxes grown by a margin, clicks inside the object,
#: one click at the object's most interior pixel, the four extreme clicks with the box they span
EVAL_PROMPTS = ("box", "jitter", "loose", "points", "center", "extreme")

#: longest side of the images and masks kept for the examples figure (they are downscaled to it)
EXAMPLE_MAX_SIDE = 1024


# ---------------------------------------------------------------------------- records
@dataclass
class EvalRecords:
    """Per-instance outcomes of evaluating some images of a dataset (one process' share).

    Per instance (K,): ``iou``, ``precision``, ``recall``, ``f1`` (float64, [0, 1]), ``category_ids``
    (int64), ``areas`` (ground-truth pixels, float64), ``scores`` (the IoU head's prediction),
    ``image_ids`` (int64). Per image: ``images`` (``{"id", "height", "width", "file_name",
    "num_instances"}``, images without instances included). COCO records: ``gt_annotations`` and
    ``detections`` with RLE segmentations (no annotation ids; :func:`summarize_records` numbers them).
    ``examples``: dicts for :func:`~samadapt.training.plots.plot_examples`.
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
def _check_prompt_options(prompt: str, loose_margin: float, num_points: int, num_negative_points: int) -> None:
    if prompt not in EVAL_PROMPTS:
        raise ConfigError(f"unknown prompt {prompt!r}; choose one of {list(EVAL_PROMPTS)}")
    if not (isinstance(loose_margin, (int, float)) and math.isfinite(loose_margin) and loose_margin >= 0):
        raise ConfigError(f"`loose_margin` must be a finite number >= 0, got {loose_margin!r}")
    for name, v in (("num_points", num_points), ("num_negative_points", num_negative_points)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"`{name}` must be an integer >= 0, got {v!r}")
    if prompt == "points" and num_points < 1:
        raise ConfigError(f"prompt='points' needs num_points >= 1, got {num_points}")


def _rng_for(seed: int, image_id: int, index: int) -> np.random.Generator:
    """The prompt generator of one image: depends only on (seed, image id), not on batching or sharding."""
    key = image_id if image_id >= 0 else index
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(key)]))


def _make_prompts(sample: Mapping[str, Any], prompt: str, rng: np.random.Generator, *, loose_margin: float,
                  num_points: int, num_negative_points: int) -> dict[str, np.ndarray | None]:
    """Boxes (N, 4) XYXY or points (N, P, 2) + labels (N, P), in pixels of the sample's image."""
    from ..data import prompts as P

    masks = np.asarray(sample["masks"], dtype=bool)
    hw = tuple(int(s) for s in masks.shape[1:])
    boxes = np.asarray(sample.get("boxes"), dtype=np.float32).reshape(-1, 4) if sample.get("boxes") is not None \
        else P.boxes_from_masks(masks)
    if prompt == "box":
        return {"boxes": boxes, "points": None, "labels": None}
    if prompt == "jitter":
        return {"boxes": P.jitter_boxes(boxes, rng, image_hw=hw), "points": None, "labels": None}
    if prompt == "loose":
        return {"boxes": P.loosen_boxes(boxes, loose_margin, hw), "points": None, "labels": None}
    if prompt == "center":
        coords, labels = P.center_points(masks)
        return {"boxes": None, "points": coords, "labels": labels}
    if prompt == "extreme":  # an annotator's four extreme clicks: the box they span plus the clicks
        coords, labels = P.extreme_points(masks)
        return {"boxes": P.boxes_from_masks(masks), "points": coords, "labels": labels}
    coords, labels = P.sample_points(masks, num_points, num_negative_points, rng)
    return {"boxes": None, "points": coords, "labels": labels}


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
    *,
    prompt: str = "box",
    loose_margin: float = 0.1,
    num_points: int = 1,
    num_negative_points: int = 0,
    seed: int = 0,
    batch_size: int = 4,
    progress: bool = True,
    desc: str = "evaluation",
    return_examples: int = 0,
    coco: bool = True,
    max_mask_pixels: int = 1 << 29,
    embeddings: Callable[[int], torch.Tensor] | None = None,
) -> EvalRecords:
    """Predict one mask per ground-truth instance of the images ``indices`` and score it.

    Args:
        model: an :class:`~samadapt.adapted.AdaptedSam` (its ``predict_batch`` is used, under
            ``torch.no_grad`` and in eval mode; the previous mode is restored).
        dataset: ``len(dataset)`` and ``dataset[i]`` -> dict with ``image`` (H, W, 3) uint8, ``masks``
            (N, H, W) bool, ``category_ids`` (N,), ``image_id``, optional ``boxes`` (N, 4) XYXY and
            ``file_name`` (like :class:`samadapt.data.coco.CocoInstances`).
        indices: the dataset indices to evaluate (default: all), e.g. this process' shard.
        prompt: ``"box"`` exact GT boxes (the paper's protocol); ``"jitter"`` SAM's training noise on
            them (std 10% of the side, at most 20 px); ``"loose"`` boxes grown by ``loose_margin``
            of their side on each side; ``"center"`` one click at the object's most interior pixel
            (:func:`~samadapt.data.prompts.center_points`); ``"points"`` ``num_points`` positive clicks (plus
            ``num_negative_points`` negative ones) per instance.
        seed: prompts are drawn from a generator seeded by (seed, image id).
        batch_size: images per ``predict_batch`` call.
        progress: show a tqdm bar titled ``desc``.
        return_examples: keep this many images (the first with instances) for the figure,
            downscaled to at most ``EXAMPLE_MAX_SIDE`` pixels.
        coco: keep RLE records for COCO mask AP (costs one RLE encoding per mask).
        max_mask_pixels: at most this many full-resolution mask pixels (instances x H x W) per
            ``predict_batch`` call; images with more instances are predicted in chunks of prompts.
        embeddings: dataset index -> that image's embedding from the model's (frozen) encoder, e.g.
            read from an embedding cache; the encoder is then skipped.

    Returns:
        :class:`EvalRecords` of these images.
    """
    from tqdm.auto import tqdm

    _check_prompt_options(prompt, loose_margin, num_points, num_negative_points)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"`batch_size` must be an integer >= 1, got {batch_size!r}")
    indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    out = {name: [] for name in EvalRecords._ARRAYS}
    rec = EvalRecords()
    queue: list[tuple[_Pending, slice]] = []
    queued_pixels = 0
    examples_claimed = 0
    category_names = dict(getattr(dataset, "categories", None) or {})  # for the examples figure's legend

    def flush() -> None:
        nonlocal queued_pixels
        if not queue:
            return
        images, boxes, points, labels = [], [], [], []
        for p, sl in queue:
            images.append(p.sample["image"])
            pr = p.prompts
            boxes.append(None if pr["boxes"] is None else pr["boxes"][sl])
            points.append(None if pr["points"] is None else pr["points"][sl])
            labels.append(None if pr["labels"] is None else pr["labels"][sl])
        use_points = any(x is not None for x in points)
        results = model.predict_batch(images, boxes, points if use_points else None, labels if use_points else None,
                                      batch_size=batch_size,
                                      image_embeddings=None if embeddings is None else [embeddings(p.index) for p, _ in queue])
        for (p, sl), (masks, scores) in zip(queue, results):
            _score(p, sl, masks, scores)
        queue.clear()
        queued_pixels = 0

    def _score(p: _Pending, sl: slice, masks: np.ndarray, scores: np.ndarray) -> None:
        s = p.sample
        gt = np.asarray(s["masks"], dtype=bool)[sl]
        cats = np.asarray(s["category_ids"], dtype=np.int64).reshape(-1)[sl]
        m = instance_metrics(masks, gt)
        for name in METRIC_NAMES:
            out[name].append(m[name])
        out["category_ids"].append(cats)
        out["areas"].append(m["gt_area"].astype(np.float64))
        out["scores"].append(np.asarray(scores, dtype=np.float64).reshape(-1))
        out["image_ids"].append(np.full(len(cats), int(s["image_id"]), dtype=np.int64))
        if coco:
            for k in range(len(cats)):
                rec.gt_annotations.append({"image_id": int(s["image_id"]), "category_id": int(cats[k]),
                                           "segmentation": encode_mask(gt[k]), "area": float(m["gt_area"][k]),
                                           "iscrowd": 0})
                rec.detections.append({"image_id": int(s["image_id"]), "category_id": int(cats[k]),
                                       "segmentation": encode_mask(masks[k]), "score": float(scores[k])})
        p.chunks_left -= 1
        if p.want_example:
            k = _example_stride(gt.shape[1:])
            p.pred_parts.append(masks[:, ::k, ::k])
            p.score_parts.append(np.asarray(scores).reshape(-1))
            p.iou_parts.append(m["iou"])  # at full resolution, as in the metrics
            if p.chunks_left == 0:
                rec.examples.append(_example(p, k, category_names))

    was_training = model.training
    model.eval()
    bar = tqdm(total=len(indices), desc=desc, disable=not progress, unit="img")
    try:
        with torch.no_grad():
            for index in indices:
                sample = dataset[index]
                masks = np.asarray(sample["masks"], dtype=bool)
                h, w = np.asarray(sample["image"]).shape[:2]
                if masks.ndim != 3 or masks.shape[1:] != (h, w):
                    raise ConfigError(f"dataset[{index}]: masks of shape {masks.shape} do not match the image "
                                      f"({h}, {w})")
                n = masks.shape[0]
                image_id = int(sample["image_id"])
                rec.images.append({"id": image_id, "height": int(h), "width": int(w),
                                   "file_name": str(sample.get("file_name", "")), "num_instances": int(n)})
                if n == 0:
                    bar.update(1)
                    continue
                prompts = _make_prompts(sample, prompt, _rng_for(seed, image_id, index), loose_margin=loose_margin,
                                        num_points=num_points, num_negative_points=num_negative_points)
                per_chunk = max(1, max_mask_pixels // (h * w))
                slices = [slice(s, min(n, s + per_chunk)) for s in range(0, n, per_chunk)]
                want = examples_claimed < return_examples
                examples_claimed += int(want)
                pending = _Pending(index, sample, prompts, len(slices), want)
                for sl in slices:
                    if queue and (len(queue) >= batch_size or queued_pixels + (sl.stop - sl.start) * h * w > max_mask_pixels):
                        flush()
                    queue.append((pending, sl))
                    queued_pixels += (sl.stop - sl.start) * h * w
                bar.update(1)
            flush()
    finally:
        bar.close()
        model.train(was_training)

    for name in EvalRecords._ARRAYS:
        parts = out[name]
        dtype = getattr(rec, name).dtype
        setattr(rec, name, np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype))
    return rec


def _example(p: _Pending, k: int, category_names: Mapping[int, str]) -> dict:
    """An examples-figure entry, every k-th pixel kept (coordinates scaled by 1/k); ``iou`` (N,) is
    each instance's IoU at full resolution, ``category_names`` names this image's categories."""
    s, pr = p.sample, p.prompts
    cats = np.asarray(s["category_ids"], dtype=np.int64).reshape(-1)
    return {
        "image": np.ascontiguousarray(np.asarray(s["image"])[::k, ::k]),
        "gt": np.ascontiguousarray(np.asarray(s["masks"], dtype=bool)[:, ::k, ::k]),
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


def summarize_records(records: EvalRecords | Sequence[Any], categories: Mapping[int, str] | None = None, *,
                      prompt: str | None = None, coco: bool = True) -> dict[str, Any]:
    """The dataset summary of the records of every process (e.g. from ``gather_object``).

    Returns:
        :func:`~samadapt.training.metrics.summarize`'s keys (``mean_iou``, ``mean_precision``,
        ``mean_recall``, ``mean_f1``, ``num_instances``, ``per_category``, ``per_size``) plus
        ``coco`` (mask AP dict; absent with ``coco=False``), ``prompt``, ``num_images`` and
        ``num_images_without_instances``.
    """
    rec = EvalRecords.merge(_flatten(records))
    metrics = summarize(rec.iou, rec.precision, rec.recall, rec.f1, rec.category_ids, rec.areas, categories)
    if coco:
        if len(rec.gt_annotations) != rec.num_instances:
            raise ConfigError("these records hold no COCO annotations (evaluated with coco=False); "
                              "summarize them with coco=False")
        from pycocotools import mask as mask_utils

        anns = []
        for k, a in enumerate(rec.gt_annotations):
            anns.append({**a, "id": k + 1, "bbox": [float(v) for v in mask_utils.toBbox(a["segmentation"])]})
        cats = dict(categories or {})
        used = sorted(set(cats) | {int(a["category_id"]) for a in anns})
        gt = {"images": [{"id": i["id"], "height": i["height"], "width": i["width"]} for i in rec.images],
              "annotations": anns, "categories": [{"id": c, "name": str(cats.get(c, c))} for c in used]}
        metrics["coco"] = coco_mask_ap(gt, rec.detections)
    metrics["prompt"] = prompt
    metrics["num_images"] = len(rec.images)
    metrics["num_images_without_instances"] = sum(1 for i in rec.images if i["num_instances"] == 0)
    return metrics


def _per_image(rec: EvalRecords) -> list[dict]:
    rows = []
    for info in rec.images:
        sel = rec.image_ids == info["id"]
        n = int(sel.sum())
        rows.append({"image_id": info["id"], "file_name": info["file_name"], "num_instances": n,
                     "mean_iou": float(rec.iou[sel].mean()) if n else float("nan"),
                     "mean_f1": float(rec.f1[sel].mean()) if n else float("nan")})
    return rows


def evaluate(
    model,
    dataset,
    *,
    prompt: str = "box",
    loose_margin: float = 0.1,
    num_points: int = 1,
    num_negative_points: int = 0,
    seed: int = 0,
    max_images: int | None = None,
    subset: Sequence[int] | None = None,
    batch_size: int = 4,
    progress: bool = True,
    return_examples: int = 0,
    coco: bool = True,
    desc: str = "evaluation",
) -> EvalResult:
    """Evaluate ``model`` on ``dataset`` in this process (:func:`evaluate_records` +
    :func:`summarize_records`).

    Args:
        subset: dataset indices to evaluate (default all); ``max_images`` then keeps the first ones.
        Other arguments as in :func:`evaluate_records`.

    Returns:
        :class:`EvalResult`; ``metrics["mean_iou"]`` etc. are fractions in [0, 1].
    """
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 0):
        raise ConfigError(f"`max_images` must be None or an integer >= 0, got {max_images!r}")
    indices = list(range(len(dataset))) if subset is None else [int(i) for i in subset]
    if max_images is not None:
        indices = indices[:max_images]
    rec = evaluate_records(model, dataset, indices, prompt=prompt, loose_margin=loose_margin, num_points=num_points,
                           num_negative_points=num_negative_points, seed=seed, batch_size=batch_size,
                           progress=progress, desc=desc, return_examples=return_examples, coco=coco)
    metrics = summarize_records(rec, getattr(dataset, "categories", None), prompt=prompt, coco=coco)
    metrics["seed"] = seed
    return EvalResult(metrics=metrics, per_image=_per_image(rec), examples=rec.examples, records=rec)


# ---------------------------------------------------------------------------- report
def _json_safe(x: Any) -> Any:
    """nan/inf -> None, numpy scalars -> Python, recursively (strict JSON)."""
    if isinstance(x, Mapping):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return _json_safe(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _pct(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{100 * float(v):.2f}"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _markdown(metrics_by_model: Mapping[str, Mapping[str, Any]], dataset_name: str) -> str:
    from .clicks import click_markdown

    models = list(metrics_by_model)
    prompts = sorted({str(m.get("prompt")) for m in metrics_by_model.values()})
    lines = [f"# Evaluation on {dataset_name}", "",
             f"Prompts: {', '.join(prompts)}. Metrics are computed per instance and averaged over instances "
             "(docs/metrics.md); values in %. AP is COCO mask AP (pycocotools).", "",
             "| model | mean IoU | mean precision | mean F1 | AP | AP50 | instances |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    if all("mean_iou" not in m for m in metrics_by_model.values()):
        del lines[-3:]  # click-protocol results only: their table follows
    for name, m in metrics_by_model.items():
        if "mean_iou" not in m:
            continue
        ap = m.get("coco") or {}
        lines.append(f"| {name} | {_pct(m.get('mean_iou'))} | {_pct(m.get('mean_precision'))} | "
                     f"{_pct(m.get('mean_f1'))} | {_pct(ap.get('AP'))} | {_pct(ap.get('AP50'))} | "
                     f"{m.get('num_instances', 0)} |")

    def split_table(key: str, title: str) -> list[str]:
        groups: list[str] = []
        for m in metrics_by_model.values():
            groups += [g for g in (m.get(key) or {}) if g not in groups]
        if not groups:
            return []
        head = "| " + title + " | instances | " + " | ".join(f"{n} IoU | {n} F1" for n in models) + " |"
        rule = "|---|---:|" + "---:|---:|" * len(models)
        rows = [f"## Per {title}", "", head, rule]
        for g in groups:
            cells, count = [], None
            for m in metrics_by_model.values():
                s = (m.get(key) or {}).get(g) or {}
                count = s.get("num_instances", count)
                cells += [_pct(s.get("mean_iou")), _pct(s.get("mean_f1"))]
            rows.append(f"| {g} | {count if count is not None else 0} | " + " | ".join(cells) + " |")
        return ["", *rows]

    lines += click_markdown(metrics_by_model)
    lines += split_table("per_category", "category")
    lines += split_table("per_size", "size")
    lines += ["", "Sizes by ground-truth area: small < 32² px <= medium < 96² px <= large (COCO)."]
    return "\n".join(lines) + "\n"


def write_report(
    result_by_model: Mapping[str, EvalResult | Mapping[str, Any]],
    out_dir: str | os.PathLike,
    *,
    dataset_name: str,
    examples: Mapping[str, Sequence[dict]] | None = None,
    max_examples: int = 6,
) -> dict[str, Path]:
    """Write ``metrics.json``, ``metrics.md`` and ``examples.png`` comparing several models.

    Args:
        result_by_model: model label (e.g. "zero-shot", "fine-tuned") -> :class:`EvalResult` or its
            ``metrics`` dict.
        out_dir: folder (created).
        dataset_name: shown in the files.
        examples: label -> example dicts, overriding the results' own ``examples``.
        max_examples: rows of the examples figure.

    Returns:
        {"json", "markdown", "examples", "clicks"} -> path written (``examples`` absent when no model has
        any; ``clicks``, the mIoU-vs-clicks figure, only when some model's metrics hold ``clicks``).
    """
    from .plots import plot_examples

    if not result_by_model:
        raise ConfigError("write_report needs at least one model's results")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {k: (v.metrics if isinstance(v, EvalResult) else dict(v)) for k, v in result_by_model.items()}
    ex = {k: list(v.examples) for k, v in result_by_model.items() if isinstance(v, EvalResult)}
    if examples is not None:
        ex.update({k: list(v) for k, v in examples.items()})
    ex = {k: v for k, v in ex.items() if v}
    paths = {"json": out / "metrics.json", "markdown": out / "metrics.md"}
    _atomic_write_text(paths["json"], json.dumps(_json_safe({"dataset": dataset_name, "models": metrics}), indent=2,
                                                 allow_nan=False))
    _atomic_write_text(paths["markdown"], _markdown(metrics, dataset_name))
    if ex:
        paths["examples"] = out / "examples.png"
        plot_examples(ex, paths["examples"], max_rows=max_examples)
    curves = {k: m["clicks"] for k, m in metrics.items() if m.get("clicks")}
    if curves:
        from .clicks import plot_click_curves

        paths["clicks"] = plot_click_curves(curves, out / "clicks.png", title=f"{dataset_name}: mean IoU after each click")
    return paths

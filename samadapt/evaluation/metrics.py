"""The paper's metrics (mean IoU, mean precision, mean F1, plus mean recall) and COCO mask AP.

Every metric is computed **per instance** (one predicted mask against its ground-truth mask) and then
averaged over all instances of the dataset; pixels are never pooled across instances, so a small
object weighs as much as a large one. See docs/metrics.md for the formulas and edge cases.

Undefined summaries (a group with no instance, COCO AP without ground truth) are ``nan`` in memory so
arithmetic and comparisons keep working; :func:`samadapt.evaluation.report.write_report` writes them
as ``null`` in JSON. The per-instance numbers of a dataset are kept in one store,
:class:`samadapt.evaluation.evaluate.EvalRecords` (mergeable across processes).
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from ..errors import ConfigError

__all__ = [
    "METRIC_NAMES",
    "SIZE_RANGES",
    "build_coco_gt",
    "coco_index",
    "coco_mask_ap",
    "encode_mask",
    "instance_metrics",
    "size_bucket",
    "summarize",
]

#: the per-instance metrics, in report order
METRIC_NAMES = ("iou", "precision", "recall", "f1")

#: COCO's object sizes by ground-truth area in pixels: small < 32^2 <= medium < 96^2 <= large
SIZE_RANGES: dict[str, tuple[float, float]] = {
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, math.inf),
}

#: masks compared per chunk: at most this many pixels (of all masks of a chunk together) at a time
_CHUNK_PIXELS = 1 << 26


# ---------------------------------------------------------------------------- per instance
def _as_bool_array(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype != np.bool_:
        x = x > 0.5 if np.issubdtype(x.dtype, np.floating) else x != 0
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ConfigError(f"{name} must be masks of shape (N, H, W), got shape {x.shape}")
    return x


def _ratio(num: np.ndarray, den: np.ndarray, if_zero: np.ndarray) -> np.ndarray:
    """num / den where den > 0, else ``if_zero`` (float64)."""
    out = np.asarray(if_zero, dtype=np.float64).copy()
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    return out


def instance_metrics(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
    """IoU, precision, recall and F1 of each predicted mask against its ground-truth mask.

    With P the predicted and G the ground-truth pixels of one instance:
    IoU = |P∩G| / |P∪G|, precision = |P∩G| / |P|, recall = |P∩G| / |G|,
    F1 = 2 precision recall / (precision + recall) = 2|P∩G| / (|P| + |G|) (the Dice coefficient).
    Edge cases: an empty prediction scores 0 on every metric unless G is empty too; both empty score
    1 on every metric; an empty G with a non-empty prediction scores 0.

    Masks are compared a chunk of instances at a time (at most ~64M pixels), so dozens of
    4000x3000 masks never need more than one chunk's temporary.

    Args:
        pred: (N, H, W) bool predicted masks (torch or numpy; a single (H, W) mask is allowed).
        gt: (N, H, W) bool ground-truth masks, same shape.

    Returns:
        ``iou``, ``precision``, ``recall``, ``f1``: float64 (N,) in [0, 1]; ``intersection``,
        ``pred_area``, ``gt_area``: int64 (N,) pixel counts.
    """
    pred = _as_bool_array(pred, "pred")
    gt = _as_bool_array(gt, "gt")
    if pred.shape != gt.shape:
        raise ConfigError(f"pred and gt must have the same shape, got {pred.shape} and {gt.shape}")
    n, h, w = pred.shape
    inter = np.zeros(n, dtype=np.int64)
    p_area = np.zeros(n, dtype=np.int64)
    g_area = np.zeros(n, dtype=np.int64)
    chunk = max(1, _CHUNK_PIXELS // max(1, h * w))
    for s in range(0, n, chunk):
        p, g = pred[s : s + chunk], gt[s : s + chunk]
        inter[s : s + chunk] = np.count_nonzero(p & g, axis=(1, 2))
        p_area[s : s + chunk] = np.count_nonzero(p, axis=(1, 2))
        g_area[s : s + chunk] = np.count_nonzero(g, axis=(1, 2))
    union = p_area + g_area - inter
    both_empty = (union == 0).astype(np.float64)  # the only case where a zero denominator earns 1
    return {
        "iou": _ratio(inter, union, both_empty),
        "precision": _ratio(inter, p_area, both_empty),
        "recall": _ratio(inter, g_area, both_empty),
        "f1": _ratio(2 * inter, p_area + g_area, both_empty),
        "intersection": inter,
        "pred_area": p_area,
        "gt_area": g_area,
    }


def size_bucket(areas: np.ndarray) -> np.ndarray:
    """COCO size name ("small", "medium", "large") of each ground-truth area (pixels) -> (N,) str."""
    areas = np.asarray(areas, dtype=np.float64)
    out = np.full(areas.shape, "large", dtype=object)
    out[areas < SIZE_RANGES["medium"][1]] = "medium"
    out[areas < SIZE_RANGES["small"][1]] = "small"
    return out


# ---------------------------------------------------------------------------- summaries
def _means(values: Mapping[str, np.ndarray], sel: np.ndarray | slice) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in METRIC_NAMES:
        v = values[name][sel]
        out[f"mean_{name}"] = float(v.mean()) if v.size else float("nan")
    out["num_instances"] = int(values["iou"][sel].size)
    return out


def _category_names(ids: Iterable[int], categories: Mapping[int, str] | None) -> dict[int, str]:
    """Unique display name per category id ("name", or "name (id)" where names repeat)."""
    categories = dict(categories or {})
    ids = sorted(set(int(i) for i in ids))
    names = {i: str(categories.get(i, i)) for i in ids}
    counts: dict[str, int] = {}
    for n in names.values():
        counts[n] = counts.get(n, 0) + 1
    return {i: (n if counts[n] == 1 else f"{n} ({i})") for i, n in names.items()}


def summarize(
    iou: np.ndarray,
    precision: np.ndarray,
    recall: np.ndarray,
    f1: np.ndarray,
    category_ids: np.ndarray,
    areas: np.ndarray,
    categories: Mapping[int, str] | None = None,
) -> dict:
    """The dataset summary from concatenated per-instance values (from every process, e.g. an
    :class:`~samadapt.evaluation.evaluate.EvalRecords`' arrays).

    Args:
        iou, precision, recall, f1: (K,) per-instance values in [0, 1].
        category_ids: (K,) int category of each instance.
        areas: (K,) ground-truth area of each instance in pixels (for the size split).
        categories: category id -> name (ids missing here are shown by number).

    Returns:
        ``mean_iou``, ``mean_precision``, ``mean_recall``, ``mean_f1`` (fractions in [0, 1]; nan when
        K = 0), ``num_instances``; ``per_category`` {name: same keys} for the categories present;
        ``per_size`` {"small", "medium", "large": same keys} (all three, possibly empty).
    """
    values = {
        k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in zip(METRIC_NAMES, (iou, precision, recall, f1))
    }
    cats = np.asarray(category_ids, dtype=np.int64).reshape(-1)
    areas = np.asarray(areas, dtype=np.float64).reshape(-1)
    k = values["iou"].size
    if any(v.size != k for v in values.values()) or cats.size != k or areas.size != k:
        raise ConfigError(
            f"per-instance arrays differ in length: {[v.size for v in values.values()] + [cats.size, areas.size]}"
        )
    out: dict[str, Any] = _means(values, slice(None))
    names = _category_names(cats.tolist(), categories)
    out["per_category"] = {names[c]: _means(values, cats == c) for c in sorted(names)}
    buckets = size_bucket(areas)
    out["per_size"] = {s: _means(values, buckets == s) for s in SIZE_RANGES}
    return out


# ---------------------------------------------------------------------------- COCO mask AP
def encode_mask(mask: np.ndarray | torch.Tensor) -> dict:
    """(H, W) bool -> COCO compressed RLE ``{"size": [H, W], "counts": str}`` (JSON-ready)."""
    from pycocotools import mask as mask_utils

    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ConfigError(f"encode_mask takes one (H, W) mask, got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _rle_of(seg: Any) -> dict:
    return seg if isinstance(seg, dict) else encode_mask(seg)


def build_coco_gt(records: Sequence[Mapping[str, Any]], categories: Mapping[int, str] | None = None) -> dict:
    """A COCO ground-truth dict from per-image records, for any dataset object.

    Args:
        records: per image ``{"image_id": int, "height": H, "width": W, "masks": (N, H, W) bool or a
            list of N RLEs, "category_ids": (N,)}``.
        categories: id -> name; ids used by the records but missing here are added by number.

    Returns:
        ``{"images", "annotations", "categories"}``; annotations hold RLE segmentations with ``area``
        (pixels), ``bbox`` (XYWH) and ``iscrowd`` 0, numbered from 1 in record order.
    """
    from pycocotools import mask as mask_utils

    images, anns = [], []
    used: set[int] = set()
    for r in records:
        images.append({"id": int(r["image_id"]), "height": int(r["height"]), "width": int(r["width"])})
        for seg, cat in zip(r["masks"], np.asarray(r["category_ids"]).reshape(-1)):
            rle = _rle_of(seg)
            used.add(int(cat))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": int(r["image_id"]),
                    "category_id": int(cat),
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
    cats = dict(categories or {})
    ids = sorted(set(cats) | used)
    return {
        "images": images,
        "annotations": anns,
        "categories": [{"id": int(i), "name": str(cats.get(i, i))} for i in ids],
    }


def coco_index(gt: Mapping[str, Any]):
    """A pycocotools ``COCO`` of the ground-truth dict ``gt`` (no file; its progress printing
    silenced): the one place a ``COCO`` index is built from a dict."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = gt if isinstance(gt, dict) else dict(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _detections(predictions: Any) -> list[dict]:
    """COCO result dicts from a list of them or from {image_id: [(mask, score, category_id), ...]}."""
    if isinstance(predictions, Mapping):
        out = []
        for image_id, preds in predictions.items():
            for mask, score, cat in preds:
                out.append(
                    {
                        "image_id": int(image_id),
                        "category_id": int(cat),
                        "segmentation": _rle_of(mask),
                        "score": float(score),
                    }
                )
        return out
    return [dict(d) for d in predictions]


_AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def coco_mask_ap(
    gt: Mapping[str, Any] | Sequence[Mapping[str, Any]], predictions: Any, categories: Mapping[int, str] | None = None
) -> dict[str, float]:
    """COCO mask AP with pycocotools' ``COCOeval(iouType="segm")`` (101-point interpolation, IoU
    thresholds 0.50:0.05:0.95, at most 100 detections per image), its printing silenced.

    With box prompts taken from the ground truth there is exactly one prediction per ground-truth
    instance: give it that instance's category and SAM's predicted IoU as score.

    Args:
        gt: a COCO ground-truth dict (``images``, ``annotations``, ``categories``) or per-image records
            for :func:`build_coco_gt`.
        predictions: COCO result dicts ``{"image_id", "category_id", "segmentation" (RLE), "score"}``,
            or ``{image_id: [(mask (H, W) bool or RLE, score, category_id), ...]}``.
        categories: id -> name when ``gt`` is records.

    Returns:
        ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl`` as fractions; ``nan`` where COCOeval has
        nothing to score (it reports -1: no ground truth in that size range).
    """
    from pycocotools.cocoeval import COCOeval

    gt_dict = dict(gt) if isinstance(gt, Mapping) else build_coco_gt(gt, categories)
    dets = _detections(predictions)
    nan = {k: float("nan") for k in _AP_KEYS}
    if not gt_dict.get("annotations"):
        return nan
    if not dets:  # COCO.loadRes fails on an empty list; no detection at all scores 0 where GT exists
        return {k: 0.0 for k in _AP_KEYS} | {k: v for k, v in _empty_ranges(gt_dict).items()}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = coco_index(gt_dict)
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: (float(v) if v >= 0 else float("nan")) for k, v in zip(_AP_KEYS, ev.stats[:6])}


def _empty_ranges(gt_dict: Mapping[str, Any]) -> dict[str, float]:
    """nan for the size keys that have no ground truth (COCOeval's -1)."""
    areas = np.asarray([a["area"] for a in gt_dict["annotations"]], dtype=np.float64)
    out = {}
    for key, (lo, hi) in zip(("APs", "APm", "APl"), SIZE_RANGES.values()):
        if not np.any((areas >= lo) & (areas <= hi)):  # COCOeval's ranges include both ends
            out[key] = float("nan")
    return out

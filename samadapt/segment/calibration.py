"""Per-model thresholds for automatic mask generation, from the model's predicted IoU vs real IoU.

SAM's automatic generator keeps a mask when its predicted IoU exceeds 0.88 and its stability score
is at least 0.95: values set for ViT-H, whose IoU head was trained on SA-1B. A small model, or one
fine-tuned on boxes, predicts IoU on its own scale: the built-in ``mini`` rarely predicts more than
0.8 for a point prompt on waste images, so at SAM's settings it keeps nothing (docs/segment.md).

:func:`calibrate` measures the scale on labelled images of the model's own domain. It runs the
point grid with no filter, and scores every candidate mask by its real IoU: the IoU with the
ground-truth object it overlaps most. From those pairs it

- fits the isotonic (monotone) map from predicted IoU to mean real IoU, kept as a few knots
  (:meth:`Calibration.quality`): the score automatic masks get, on the scale of real IoU;
- chooses the predicted-IoU and stability thresholds that maximise the F1 score of the final masks
  (after NMS and the ``max_masks`` cap) against the ground-truth objects at IoU >= ``match_iou``
  (0.5, COCO's loosest match): the grid is the deciles of the model's own predicted IoU times a
  few stability values, SAM's (0.88, 0.95) included.

A :class:`Calibration` is a small JSON object; an adapter file carries it in its metadata
(``samadapt.models.parts``), so it is computed once per adapter (``samadapt segment --auto
--calibrate-annotation-file ... --save-calibration``) or on demand for a base model.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..models.parts.calibration import Calibration
from .automatic import SAM_DEFAULTS, AutoConfig, content_region, encode_images, propose_masks, select_masks

__all__ = [
    "STABILITY_GRID",
    "calibrate",
    "describe",
    "isotonic_knots",
]

#: stability thresholds tried (SAM's 0.95 among them)
STABILITY_GRID = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95)
#: predicted-IoU thresholds tried: 0 (no filter), the deciles of the candidates' predicted IoU, SAM's 0.88
IOU_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def isotonic_knots(x: np.ndarray, y: np.ndarray, bins: int = 16) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The monotone non-decreasing fit of y on x (pool-adjacent-violators on ``bins`` quantile bins
    of x), as (x knots, y knots) for ``np.interp``."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.size == 0:
        return (0.0, 1.0), (0.0, 0.0)
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    parts = [p for p in np.array_split(np.arange(x.size), min(bins, x.size)) if p.size]
    xs = [float(x[p].mean()) for p in parts]
    ys = [float(y[p].mean()) for p in parts]
    ws = [float(p.size) for p in parts]
    # pool adjacent violators: merge neighbouring blocks while a block's mean exceeds the next one's
    blocks: list[list[float]] = []  # [x sum * w, y mean, weight]
    for xi, yi, wi in zip(xs, ys, ws):
        blocks.append([xi * wi, yi, wi])
        while len(blocks) > 1 and blocks[-2][1] > blocks[-1][1]:
            xb, yb, wb = blocks.pop()
            blocks[-1] = [
                blocks[-1][0] + xb,
                (blocks[-1][1] * blocks[-1][2] + yb * wb) / (blocks[-1][2] + wb),
                blocks[-1][2] + wb,
            ]
    kx = tuple(round(b[0] / b[2], 6) for b in blocks)
    ky = tuple(round(b[1], 6) for b in blocks)
    if len(kx) == 1:
        kx, ky = (kx[0], kx[0] + 1e-6), (ky[0], ky[0])
    return kx, ky


def _match_counts(order: np.ndarray, ious: np.ndarray, match_iou: float) -> int:
    """True positives of masks taken in ``order`` (best first), each matched greedily to the unmatched
    ground-truth object it overlaps most at IoU >= match_iou (COCO's rule). ious: (n_masks, n_gt)."""
    if ious.shape[1] == 0 or order.size == 0:
        return 0
    free = np.ones(ious.shape[1], dtype=bool)
    tp = 0
    for i in order:
        row = np.where(free, ious[i], -1.0)
        j = int(row.argmax())
        if row[j] >= match_iou:
            free[j] = False
            tp += 1
    return tp


def _evaluate(
    images: list[dict], pred_t: float, stab_t: float, config: AutoConfig, match_iou: float
) -> tuple[int, int, int]:
    """(true positives, masks kept, objects) over the calibration images at these thresholds, the
    masks selected as automatic generation selects them (:func:`select_masks`)."""
    import torch

    tp = kept = objects = 0
    for im in images:
        objects += im["ious"].shape[1]
        sel = np.ones(im["pred"].shape, dtype=bool)
        if pred_t > 0:
            sel &= im["pred"] > pred_t
        if stab_t > 0:
            sel &= im["stab"] >= stab_t  # nan (an empty mask) never passes
        idx = np.nonzero(sel)[0]
        if idx.size == 0:
            continue
        keep = select_masks(
            torch.from_numpy(im["boxes"][idx]),
            torch.from_numpy(im["pred"][idx]),
            torch.from_numpy(im["stab"][idx]),
            [im["rles"][i] for i in idx],
            config,
            mask_ious=im["mask_ious"][np.ix_(idx, idx)],
        )
        kept += keep.size
        tp += _match_counts(idx[keep], im["ious"], match_iou)
    return tp, kept, objects


def _f1(tp: int, kept: int, objects: int) -> tuple[float, float, float]:
    precision = tp / kept if kept else 0.0
    recall = tp / objects if objects else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return f1, precision, recall


def calibrate(
    model,
    instances,
    *,
    max_images: int | None = 8,
    points_per_side: int = 16,
    match_iou: float = 0.5,
    config: AutoConfig = SAM_DEFAULTS,
    batch_size: int = 4,
    progress: bool = True,
) -> Calibration:
    """Calibrate automatic mask generation for ``model`` on labelled images.

    Args:
        model: an :class:`~samadapt.adapted.AdaptedSam` in eval mode.
        instances: a :class:`~samadapt.data.coco.CocoInstances` of the model's domain, held out from
            its training (its validation split, or images evaluated later must not be among them).
        max_images: the first N images (None: all).
        points_per_side: the grid density the thresholds are chosen for (and later used with).
        match_iou: the IoU at which a mask counts as finding an object.
        config: NMS threshold and ``max_masks`` of the generation the thresholds are chosen for.
    """
    if not 0 < match_iou <= 1:
        raise ConfigError(f"`match_iou` should be in (0, 1], got {match_iou!r}")
    n = len(instances) if max_images is None else min(len(instances), int(max_images))
    if n == 0:
        raise ConfigError(f"calibration needs labelled images; {getattr(instances, 'name', 'the dataset')} has none")
    probe = config.replace(points_per_side=points_per_side, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    images = _candidates(model, instances, n, probe, batch_size, progress)
    pred_all = np.concatenate([im["pred"] for im in images])
    real_all = np.concatenate(
        [im["ious"].max(1) if im["ious"].shape[1] else np.zeros(len(im["pred"])) for im in images]
    )
    f1, p, r, kept, t, s = _best_thresholds(images, _threshold_grid(pred_all), probe, match_iou)
    tp, kept0, objects = _evaluate(
        images, SAM_DEFAULTS.pred_iou_thresh, SAM_DEFAULTS.stability_score_thresh, probe, match_iou
    )
    kx, ky = isotonic_knots(pred_all, real_all)
    return Calibration(
        pred_iou_thresh=float(t),
        stability_score_thresh=float(s),
        points_per_side=int(points_per_side),
        match_iou=float(match_iou),
        iou_knots=kx,
        real_iou_knots=ky,
        images=len(images),
        candidates=int(pred_all.size),
        objects=int(objects),
        f1=round(f1, 6),
        precision=round(p, 6),
        recall=round(r, 6),
        masks_per_image=round(kept / len(images), 3),
        sam_defaults_f1=round(_f1(tp, kept0, objects)[0], 6),
        sam_defaults_masks=round(kept0 / len(images), 3),
        data=getattr(instances, "name", ""),
    )


def _candidates(model, instances, n: int, probe: AutoConfig, batch_size: int, progress: bool) -> list[dict]:
    """Every candidate mask of the point grid (no filter) on the first ``n`` images, one dict per
    image: its predicted IoU, stability, box and RLE, and its real IoU with each ground-truth object."""
    from tqdm.auto import tqdm

    from ..evaluation.metrics import encode_mask

    images: list[dict] = []
    for start in tqdm(range(0, n, batch_size), desc="calibrating automatic masks", disable=not progress):
        idx = list(range(start, min(n, start + batch_size)))
        arrays = [instances.load_image(i) for i in idx]
        embeddings = encode_images(model, arrays, batch_size)
        for i, emb, array in zip(idx, embeddings, arrays):
            cand = propose_masks(model, emb, array.shape[:2], probe, region=content_region(array), keep_all=True)
            gt = instances.decode_masks(i, instances.instance_annotations(i))
            images.append(_image_candidates(cand, [encode_mask(m) for m in gt if m.any()]))
    return images


def _image_candidates(cand: dict, gt_rles: list) -> dict:
    """One image's entry of :func:`_candidates`, from :func:`propose_masks`'s ``cand``."""
    from pycocotools import mask as mask_utils

    try:
        rles, pred = cand["rles"], cand["iou_preds"].numpy()
    except KeyError:
        rles, pred = [], np.zeros(0, np.float32)
    if rles and gt_rles:
        ious = np.asarray(mask_utils.iou(rles, gt_rles, [0] * len(gt_rles)), dtype=np.float64)
        ious = ious.reshape(len(rles), len(gt_rles))
    else:
        ious = np.zeros((len(rles), len(gt_rles)))
    return {
        "pred": pred.astype(np.float32),
        "ious": ious,
        "rles": rles,
        "mask_ious": np.asarray(mask_utils.iou(rles, rles, [0] * len(rles)), np.float64).reshape(len(rles), len(rles)),
        "stab": cand["stability_score"].numpy() if rles else np.zeros(0, np.float32),
        "boxes": cand["boxes"].numpy().astype(np.float32) if rles else np.zeros((0, 4), np.float32),
    }


def _threshold_grid(pred_all: np.ndarray) -> list[float]:
    """The predicted-IoU thresholds tried: 0, SAM's 0.88 and the deciles of the candidates' predicted IoU."""
    return sorted(
        {0.0, SAM_DEFAULTS.pred_iou_thresh, *(round(float(q), 4) for q in np.quantile(pred_all, IOU_QUANTILES))}
        if pred_all.size
        else {0.0}
    )


def _best_thresholds(
    images: list[dict], grid_iou: list[float], probe: AutoConfig, match_iou: float
) -> tuple[float, float, float, int, float, float]:
    """``(f1, precision, recall, masks kept, predicted-IoU threshold, stability threshold)`` of the
    best pair of thresholds of ``grid_iou`` x :data:`STABILITY_GRID`."""
    best = None
    for t in grid_iou:
        for s in STABILITY_GRID:
            tp, kept, objects = _evaluate(images, t, s, probe, match_iou)
            f1, p, r = _f1(tp, kept, objects)
            # ties go to the stricter thresholds (fewer masks for the same F1)
            if best is None or f1 >= best[0]:
                best = (f1, p, r, kept, t, s)
    return best


def describe(cal: Calibration) -> str:
    """One line for the terminal."""
    mid = cal.quality([0.5, 0.88])
    return (
        f"calibration ({cal.images} images of {cal.data or 'labelled data'}, {cal.candidates} candidate masks): "
        f"predicted IoU > {cal.pred_iou_thresh:.3f}, stability >= {cal.stability_score_thresh:.2f}; F1 "
        f"{cal.f1:.3f} at IoU {cal.match_iou} ({cal.masks_per_image:.1f} masks/image) vs {cal.sam_defaults_f1:.3f} at "
        f"SAM's 0.88/0.95 ({cal.sam_defaults_masks:.1f} masks/image); predicted IoU 0.5 -> real {mid[0]:.2f}, "
        f"0.88 -> {mid[1]:.2f}"
    )

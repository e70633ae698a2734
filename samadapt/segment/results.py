"""COCO results out, and their mask AP / AR@100 with pycocotools' ``COCOeval``.

A results file (RES) is a JSON list of ``{"image_id", "category_id", "segmentation", "bbox",
"score"}`` with ``segmentation`` a compressed RLE (``counts`` a string) and ``bbox`` the box of the
mask (XYWH), which ``COCO.loadRes`` reads. Without an annotation file, entries also carry
``file_name`` (the ids are then ours).

Masks without a class (no detector class, no class head) are written with ``category_id``
:data:`AGNOSTIC_CATEGORY`, -1: an id no dataset uses (COCO's and TrashCan's start at 1, TACO's at 0,
where 0 is "Aluminium foil"), so such a mask never claims a real class. They are scored as
proposals are, with COCOeval's ``useCats = 0`` (categories ignored on both sides); class-aware
scoring leaves them out, since they name no category.

:func:`evaluate_results` runs ``COCOeval(iouType="segm")`` on the images that were segmented and
returns AP (0.50:0.95), AP50, AP75, AP by size, AR@1/10/100, per-category AP, and, on request, 95%
bootstrap intervals over images (each resample re-accumulates COCOeval's own per-image matches, so
an interval costs no new matching). ``class_agnostic=True`` merges every category into one, as
the SAM paper scores proposals (its AR@1000 on LVIS; here AR@100, COCO's cap).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import DataError

__all__ = ["AGNOSTIC_CATEGORY", "coco_results", "evaluate_results", "write_results"]

#: category_id of masks that carry no class: not a category of any dataset (TACO's ids start at 0)
AGNOSTIC_CATEGORY = -1
_STAT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")


def coco_results(image_id: int, segments: Sequence[Mapping[str, Any]], *, file_name: str | None = None) -> list[dict]:
    """COCO result entries of one image's segments (records of :func:`samadapt.segment.segment`)."""
    out = []
    for s in segments:
        entry = {
            "image_id": int(image_id),
            "category_id": int(s["category_id"]) if s.get("category_id") is not None else AGNOSTIC_CATEGORY,
            "segmentation": s["segmentation"],
            "bbox": [round(float(v), 2) for v in s["bbox"]],
            "score": round(float(s["score"]), 6),
        }
        if file_name is not None:
            entry["file_name"] = file_name
        out.append(entry)
    return out


def write_results(path: str | os.PathLike, results: Sequence[Mapping[str, Any]]) -> Path:
    """Write a results list as JSON, atomically."""
    from ..files import atomic_write

    path = Path(path)
    text = json.dumps(list(results), separators=(",", ":"))
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def _gt_dataset(gt) -> dict:
    """A COCO ground-truth dataset dict from a pycocotools ``COCO``, a dict, or a file path."""
    if hasattr(gt, "dataset"):
        return gt.dataset
    if isinstance(gt, Mapping):
        return dict(gt)
    try:
        return json.loads(Path(gt).read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"annotation file {str(gt)!r} is unreadable ({e})") from None


def _stats(ev) -> dict[str, float]:
    return {k: (float(v) if v >= 0 else float("nan")) for k, v in zip(_STAT_KEYS, ev.stats[:9])}


def _ap_ar(ev) -> tuple[float, float]:
    """AP (all sizes, 100 detections) and AR@100 from an accumulated COCOeval."""
    p = ev.eval["precision"][:, :, :, 0, -1]
    r = ev.eval["recall"][:, :, 0, -1]
    ap = float(p[p > -1].mean()) if np.any(p > -1) else float("nan")
    ar = float(r[r > -1].mean()) if np.any(r > -1) else float("nan")
    return ap, ar


def _bootstrap(ev, n_boot: int, seed: int, level: float = 0.95) -> dict[str, list[float]]:
    """Percentile intervals of AP and AR@100 over images resampled with replacement: COCOeval's
    per-image results (``evalImgs``, laid out category x area range x image) are re-indexed for each
    resample and accumulated again."""
    p0, pe0, evals0, stats0 = ev.params, ev._paramsEval, ev.evalImgs, ev.eval
    ids = list(pe0.imgIds)
    n_k, n_a, n_i = len(pe0.catIds) if pe0.useCats else 1, len(pe0.areaRng), len(ids)
    rng = np.random.default_rng(seed)
    aps, ars = [], []
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            for _ in range(n_boot):
                pick = rng.integers(0, n_i, n_i)
                ev.evalImgs = [
                    evals0[k * n_a * n_i + a * n_i + i] for k in range(n_k) for a in range(n_a) for i in pick
                ]
                ev.params = copy.copy(p0)
                ev._paramsEval = copy.copy(pe0)
                ev.params.imgIds = ev._paramsEval.imgIds = [ids[i] for i in pick]
                ev.accumulate()
                ap, ar = _ap_ar(ev)
                aps.append(ap)
                ars.append(ar)
    finally:
        ev.params, ev._paramsEval, ev.evalImgs, ev.eval = p0, pe0, evals0, stats0
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]

    def interval(v: list[float]) -> list[float]:
        v = [x for x in v if np.isfinite(x)]
        return [float(x) for x in np.percentile(v, q)] if v else [float("nan")] * 2

    return {"AP": interval(aps), "AR100": interval(ars), "level": level, "resamples": n_boot}


def evaluate_results(
    gt,
    results: Sequence[Mapping[str, Any]],
    *,
    image_ids: Sequence[int] | None = None,
    class_agnostic: bool = False,
    bootstrap: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Mask AP and AR of ``results`` against ``gt`` with ``COCOeval(iouType="segm")``.

    Args:
        gt: a pycocotools ``COCO``, a COCO ground-truth dict, or the annotation file's path.
        results: COCO result entries (compressed-RLE ``segmentation``).
        image_ids: the images scored (default: every image of ``gt``); images not segmented must be
            left out, or their objects count as missed.
        class_agnostic: ignore categories (COCOeval's ``useCats = 0``, how proposals are scored): every
            result may match any object; otherwise results of :data:`AGNOSTIC_CATEGORY` match none.
        bootstrap: resamples for 95% intervals of AP and AR@100 over images (0: none).

    Returns:
        ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``, ``AR1``, ``AR10``, ``AR100`` as fractions
        (nan where COCOeval has nothing to score), ``per_category`` {name: AP}, ``images``,
        ``instances``, ``results``, and ``interval`` when ``bootstrap`` > 0.
    """
    from pycocotools.cocoeval import COCOeval

    from ..evaluation.metrics import coco_index

    dataset = _gt_dataset(gt)
    if any(c["id"] == AGNOSTIC_CATEGORY for c in dataset.get("categories", [])):
        raise DataError(
            f"the ground truth has a category with id {AGNOSTIC_CATEGORY}, the id samadapt writes for masks "
            "without a class: renumber that category"
        )
    ids = [int(i) for i in (image_ids if image_ids is not None else [im["id"] for im in dataset["images"]])]
    wanted = set(ids)
    results = [dict(r) for r in results if int(r["image_id"]) in wanted]
    n_gt = sum(1 for a in dataset.get("annotations", []) if a["image_id"] in wanted and not a.get("iscrowd"))
    out: dict[str, Any] = {
        "images": len(ids),
        "instances": n_gt,
        "results": len(results),
        "class_agnostic": class_agnostic,
    }
    if n_gt == 0:
        return out | {k: float("nan") for k in _STAT_KEYS} | {"per_category": {}}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = coco_index(copy.copy(dataset))
        if not results:  # loadRes cannot read an empty list: nothing found scores 0 where there is ground truth
            per_cat = {} if class_agnostic else {c["name"]: 0.0 for c in dataset["categories"]}
            return out | {k: 0.0 for k in _STAT_KEYS} | {"per_category": per_cat}
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        ev.params.imgIds = ids
        if class_agnostic:
            # useCats=0 still gathers results by params.catIds: the agnostic id must be among them
            ev.params.useCats = 0
            ev.params.catIds = sorted({*ev.params.catIds, AGNOSTIC_CATEGORY, *(int(r["category_id"]) for r in results)})
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    out.update(_stats(ev))
    names = {c["id"]: c["name"] for c in dataset["categories"]}
    per_cat = {}
    for k, cat in enumerate(ev.params.catIds if not class_agnostic else []):
        p = ev.eval["precision"][:, :, k, 0, -1]
        if np.any(p > -1):  # categories without ground truth in these images have no AP
            per_cat[str(names.get(cat, cat))] = float(p[p > -1].mean())
    out["per_category"] = per_cat
    if bootstrap:
        out["interval"] = _bootstrap(ev, bootstrap, seed)
    return out

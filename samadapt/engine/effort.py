"""Annotation effort: the clicks an annotator spends per object, and its summaries with intervals.

The annotator is the click protocol of :mod:`samadapt.evaluation.clicks` (first click at the
object's most interior pixel, each next one at the centre of the largest error region, the previous
logits as the mask prompt), stopped at a *cap*. An object *reaches* a target IoU at the first click
whose mask has at least that IoU; its effort is that number of clicks. An object that never reaches
the target within the cap is finished by hand and counted as the cap (RITM's NoC convention); the
share of such objects is reported beside every mean, since a mean of capped counts hides them.

Intervals are :func:`~samadapt.evaluation.uncertainty.bootstrap_interval`'s: images (an image's
objects together) and seeds resampled; a gain over a reference is paired on the same images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError
from ..evaluation.clicks import ClickRecords, number_of_clicks
from ..evaluation.uncertainty import Interval, bootstrap_interval

__all__ = [
    "DEFAULT_TARGETS",
    "MAX_CLICKS",
    "ObjectValues",
    "clicks_to_target",
    "effort_gain",
    "effort_summary",
    "measure",
]

#: the IoU an annotator accepts: the first is the headline. The built-in ``mini`` reaches 0.5 on
#: about a fifth of TrashCan's objects within 10 clicks zero-shot (docs/data_engine.md); SAM's
#: NoC@85 / @90 targets are out of its reach on these frames.
DEFAULT_TARGETS = (0.5, 0.7)
#: clicks an annotator spends on one object before finishing it by hand
MAX_CLICKS = 10


@dataclass
class ObjectValues:
    """One number per object (``values``), with the ids :func:`bootstrap_interval` resamples by."""

    values: np.ndarray
    image_ids: np.ndarray
    category_ids: np.ndarray
    images: list[dict]


def _check_target(target: float) -> float:
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise ConfigError(f"a target IoU must be a number in (0, 1], got {target!r}")
    return float(target)


def clicks_to_target(records: ClickRecords, target: float) -> tuple[np.ndarray, np.ndarray]:
    """(clicks (N,) int64, reached (N,) bool): the clicks each object needs to reach ``target`` IoU,
    the cap (the records' clicks) where it never does."""
    target = _check_target(target)
    if records.iou.shape[0] == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    return number_of_clicks(records.iou, target), (records.iou >= target).any(axis=1)


def _values(records: ClickRecords, values: np.ndarray) -> ObjectValues:
    return ObjectValues(np.asarray(values, dtype=np.float64), records.image_ids, records.category_ids, records.images)


def _clicks(records: ClickRecords, target: float) -> ObjectValues:
    return _values(records, clicks_to_target(records, target)[0])


def _bounds(iv: Interval) -> dict:
    return {"mean": iv.mean, "low": iv.low, "high": iv.high}


def _interval(runs: Sequence[ObjectValues], reference: Sequence[ObjectValues] | None, n_boot: int) -> dict:
    reference = None if reference is None else list(reference)
    return _bounds(bootstrap_interval(list(runs), "values", reference=reference, n_boot=n_boot))


def _check_runs(runs: Sequence[ClickRecords]) -> list[ClickRecords]:
    runs = list(runs)
    if not runs:
        raise ConfigError("no click records given: pass one per seed")
    caps = {r.iou.shape[1] for r in runs}
    if len(caps) != 1:
        raise ConfigError(f"click records with different caps {sorted(caps)} cannot be summarised together")
    return runs


def measure(
    model,
    dataset,
    indices: Sequence[int] | None = None,
    *,
    max_clicks: int = MAX_CLICKS,
    embeddings: Callable | None = None,
) -> tuple[Any, ClickRecords]:
    """(box records, click records) of ``model`` on the images ``indices`` of ``dataset``: one mask per
    object from its exact ground-truth box, and the click protocol up to ``max_clicks`` clicks.
    ``embeddings``: index -> the image's embedding from the (frozen) encoder, as in the evaluation."""
    from ..evaluation.clicks import evaluate_clicks
    from ..evaluation.evaluate import evaluate_records

    box = evaluate_records(model, dataset, indices, prompt="box", coco=False, progress=False, embeddings=embeddings)
    clicks = evaluate_clicks(model, dataset, indices, max_clicks=max_clicks, embeddings=embeddings, progress=False)
    return box, clicks


def effort_summary(
    runs: Sequence[ClickRecords],
    targets: Sequence[float] = DEFAULT_TARGETS,
    *,
    box_runs: Sequence[Any] | None = None,
    n_boot: int = 2000,
) -> dict:
    """The effort of one model (one :class:`ClickRecords` per seed, all on the same images).

    Returns ``{"clicks_per_object": {mean, low, high, target, never_reached}`` (the first target),
    ``"clicks_per_object_at": {"<target>": {...}}`` (every target), ``"miou_after_1"``,
    ``"miou_after_3"``, with ``box_runs`` (the box records of :func:`measure`, per seed) ``"box_miou"``
    (fractions; intervals), ``"objects"``, ``"images"``, ``"max_clicks"}``.
    """
    runs = _check_runs(runs)
    cap = runs[0].iou.shape[1]
    at = {}
    for t in targets:
        entry = _interval([_clicks(r, t) for r in runs], None, n_boot)
        reached = np.concatenate([clicks_to_target(r, t)[1] for r in runs])
        entry.update(target=float(t), never_reached=float(1 - reached.mean()) if reached.size else float("nan"))
        at[f"{float(t):g}"] = entry
    out = {"clicks_per_object": at[f"{float(targets[0]):g}"], "clicks_per_object_at": at}
    for k in (1, 3):
        if k <= cap:
            out[f"miou_after_{k}"] = _bounds(bootstrap_interval([r.after(k) for r in runs], n_boot=n_boot))
    if box_runs is not None:
        out["box_miou"] = _bounds(bootstrap_interval(list(box_runs), n_boot=n_boot))
    out.update(objects=int(runs[0].iou.shape[0]), images=runs[0].num_images, max_clicks=int(cap))
    return out


def effort_gain(
    runs: Sequence[ClickRecords], reference: Sequence[ClickRecords], target: float, *, n_boot: int = 2000
) -> dict:
    """Clicks per object of ``runs`` minus ``reference``'s (negative: fewer clicks), paired on the
    same images and seeds: ``{mean, low, high, target}``."""
    runs, reference = _check_runs(runs), _check_runs(reference)
    out = _interval([_clicks(r, target) for r in runs], [_clicks(r, target) for r in reference], n_boot)
    return {**out, "target": float(target)}

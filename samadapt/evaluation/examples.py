"""Which images an examples figure shows.

The first N images of a video dataset are consecutive frames of one scene (TrashCan's first
validation frames are one video with one object), and the images a model gets right or wrong are
not spread evenly. So an evaluation keeps the examples of a *pool* of images
(:func:`example_pool`): :data:`POOL_PER_ROW` per figure row, picked by a seeded pass that prefers,
at each step, an image of a sequence and of classes the pool does not hold yet. The figure then
takes its rows from the pool (:func:`choose_rows`) at evenly spaced ranks of the images' mean IoU,
averaged over the models shown: the worst, the best and the ones between, never only failures or
only successes. Every model evaluated with the same dataset, rows and seed gets the same pool, so
their rows match.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..data.subsets import sequence_of

__all__ = ["POOL_PER_ROW", "choose_rows", "example_pool", "image_mean_iou"]

#: images kept per figure row: the rows are chosen among them by IoU
POOL_PER_ROW = 3


def image_mean_iou(example: Mapping[str, Any]) -> float | None:
    """Mean IoU over one example image's instances: its ``iou`` (N,) (measured at full resolution
    by the evaluation), else computed from its ``pred`` and ``gt`` masks; None without instances."""
    iou = example.get("iou")
    if iou is None and example.get("pred") is not None and example.get("gt") is not None:
        from .metrics import instance_metrics

        iou = instance_metrics(example["pred"], example["gt"])["iou"]
    if iou is None or len(iou) == 0:
        return None
    return float(np.mean(iou))


def _facts(dataset, index: int) -> tuple[str, frozenset[int]]:
    """(sequence, categories) of an image, read from the annotation file (no image decoded)."""
    cats = frozenset(int(a["category_id"]) for a in dataset.instance_annotations(index))
    return sequence_of(dataset.image_info(index).get("file_name", "")), cats


def example_pool(dataset, rows: int, *, seed: int = 0, indices: Sequence[int] | None = None) -> list[int]:
    """The dataset indices (in dataset order) whose examples an evaluation keeps for a figure of
    ``rows`` rows: up to ``POOL_PER_ROW * rows`` images with instances among ``indices`` (default
    all), spread over sequences (:func:`~samadapt.data.subsets.sequence_of`) and classes.

    Images are visited in a seeded random order; each step takes the first image that brings a new
    sequence and a new class, else one of them, else any; once every sequence (or class) is in
    the pool, they count as new again. Datasets that cannot name an image's file and classes without
    decoding it (no ``image_info`` / ``instance_annotations``) get a seeded random choice."""
    indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    size = max(0, POOL_PER_ROW * int(rows))
    rng = np.random.default_rng([int(seed), 7])
    if not (hasattr(dataset, "image_info") and hasattr(dataset, "instance_annotations")):
        if len(indices) <= size:
            return indices
        return sorted(int(i) for i in rng.choice(indices, size, replace=False))
    facts = {i: _facts(dataset, i) for i in indices}
    remaining = [indices[k] for k in rng.permutation(len(indices)) if facts[indices[k]][1]]
    picked: list[int] = []
    seen_seq: set[str] = set()
    seen_cat: set[int] = set()
    while remaining and len(picked) < size:
        if all(facts[i][0] in seen_seq for i in remaining):
            seen_seq.clear()
        if all(facts[i][1] <= seen_cat for i in remaining):
            seen_cat.clear()

        def novelty(i: int) -> tuple[int, int]:
            seq, cats = facts[i]
            new_cats = len(cats - seen_cat)
            return int(seq not in seen_seq) + int(new_cats > 0), new_cats

        best = max(remaining, key=novelty)  # the first of the best, in the seeded order
        remaining.remove(best)
        picked.append(best)
        seen_seq.add(facts[best][0])
        seen_cat |= facts[best][1]
    return sorted(picked)


def choose_rows(examples_by_model: Mapping[str, Sequence[Mapping[str, Any]]], rows: int) -> list:
    """The ``image_id`` of the examples a figure of ``rows`` rows shows, in the first model's order:
    all of them when there are no more than ``rows``, else ``rows`` at evenly spaced ranks of their
    mean IoU (:func:`image_mean_iou`, averaged over the models that evaluated the image), from the
    worst to the best."""
    models = list(examples_by_model)
    ids = [e.get("image_id") for e in examples_by_model[models[0]]] if models else []
    if len(ids) <= rows:
        return ids
    if rows <= 0:
        return []
    scores: dict[Any, list[float]] = {}
    for m in models:
        for e in examples_by_model[m]:
            iou = image_mean_iou(e)
            if iou is not None:
                scores.setdefault(e.get("image_id"), []).append(iou)
    ranked = sorted(ids, key=lambda i: float(np.mean(scores[i])) if i in scores else -1.0)
    n = len(ranked)
    ranks = {round(j * (n - 1) / (rows - 1)) for j in range(rows)} if rows > 1 else {n // 2}
    chosen = {ranked[r] for r in ranks}
    return [i for i in ids if i in chosen]

"""Comparing strategies on a real dataset: frame subsets, one evaluation per model and prompt kind,
and the statistics of the comparison page (``recipes/compare.py --dataset trashcan``).

The recipe trains every strategy for several seeds (and on shares of the training frames) with
``recipes/finetune.py``; this module holds what it needs besides running processes:

- :func:`choose_frames` / :func:`write_trashcan_subset`: which frames train, select the best epoch
  and test, and a TrashCan-layout folder holding just the training and selection frames;
- :func:`evaluate_prompts`: one model on the test frames under several prompt kinds, the same
  prompts for every model;
- :func:`compare_records`: means with 95% intervals (:mod:`samadapt.evaluation.uncertainty`), gains
  over zero-shot, per-class means.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from ..files import atomic_write_text
from .evaluate import EvalRecords, evaluate_records, summarize_records
from .uncertainty import Interval, bootstrap_interval, t_interval

__all__ = [
    "PROMPT_KINDS",
    "box_fill_baseline",
    "choose_frames",
    "compare_records",
    "evaluate_prompts",
    "image_embeddings",
    "intervals_to_json",
    "write_trashcan_subset",
]

#: prompt robustness: label -> evaluate_records options. Tight box (the paper's protocol), SAM's box
#: noise, a box 20% looser on each side (the Sama study's loose boxes), one click at the centre.
PROMPT_KINDS: dict[str, dict[str, Any]] = {
    "tight box": {"prompt": "box"},
    "jittered box": {"prompt": "jitter"},
    "loose box (20%)": {"prompt": "loose", "loose_margin": 0.2},
    "centre point": {"prompt": "center"},
}


def choose_frames(
    train_ids: Sequence[int], test_ids: Sequence[int], *, n_select: int, n_train: int, n_test: int, seed: int = 0
) -> dict[str, list[int]]:
    """Seeded, disjoint frame choices: ``select`` (best-epoch selection) and ``train`` from the
    official training frames, ``test`` from the official held-out frames. Each list is a prefix of
    one seeded permutation, so a smaller ``n_train`` gives a subset of a larger one (the shares of
    a data-efficiency curve are nested).

    Raises:
        ConfigError: more frames asked for than there are.
    """
    if n_select + n_train > len(train_ids) or n_test > len(test_ids) or min(n_select, n_train, n_test) < 1:
        raise ConfigError(
            f"asked for {n_select} selection + {n_train} training frames of {len(train_ids)} and "
            f"{n_test} test frames of {len(test_ids)}; each must be >= 1 and fit"
        )
    rng = np.random.default_rng(seed)
    train = [int(i) for i in rng.permutation(np.asarray(train_ids))]
    test = [int(i) for i in rng.permutation(np.asarray(test_ids))]
    return {
        "select": sorted(train[:n_select]),
        "train": train[n_select : n_select + n_train],
        "test": sorted(test[:n_test]),
    }


def _subset_coco(data: dict, ids: Sequence[int]) -> dict:
    keep = set(int(i) for i in ids)
    return {
        **data,
        "images": [im for im in data["images"] if im["id"] in keep],
        "annotations": [a for a in data["annotations"] if a["image_id"] in keep],
    }


def write_trashcan_subset(
    root: str | os.PathLike, version: str, train_ids: Sequence[int], select_ids: Sequence[int], dst: str | os.PathLike
) -> Path:
    """A folder in TrashCan's layout (``dst/<version>_version/...``) whose ``train`` split holds the
    frames ``train_ids`` and whose ``val`` split the frames ``select_ids``, both from the official
    training file under ``root``; images are symbolic links. Rewritten when the frames differ."""
    src = Path(root) / f"{version}_version"
    data = json.loads((src / "instances_train_trashcan.json").read_text(encoding="utf-8"))
    out = Path(dst) / f"{version}_version"
    for split, ids in (("train", train_ids), ("val", select_ids)):
        sub = _subset_coco(data, ids)
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        wanted = {im["file_name"] for im in sub["images"]}
        for old in folder.iterdir():
            if old.name not in wanted:
                old.unlink()
        for name in wanted:
            link = folder / name
            if not link.is_symlink():
                link.symlink_to((src / "train" / name).resolve())
        text = json.dumps(sub)
        path = out / f"instances_{split}_trashcan.json"
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            atomic_write_text(path, text)
    return Path(dst)


def image_embeddings(model, dataset, batch_size: int = 8) -> list:
    """The embedding (C, S/16, S/16) of every image of ``dataset`` by ``model``'s encoder as it is
    now (eval mode, no gradients), computed once and shared by the prompt kinds: the encoder is
    most of an evaluation's cost and does not depend on the prompts."""
    import torch

    was_training = model.training
    model.eval()
    dtype = model.dtype
    out: list = []
    try:
        with torch.no_grad():
            for start in range(0, len(dataset), batch_size):
                idx = range(start, min(len(dataset), start + batch_size))
                x = torch.stack([model.transform.preprocess_image(dataset.load_image(i)) for i in idx])
                out += list(model.encode(x.to(model.device, dtype)))
    finally:
        model.train(was_training)
    return out


def box_fill_baseline(dataset) -> float:
    """Mean IoU of the trivial answer "the object is its whole tight box" (the mask filling each
    ground-truth box), over the instances of ``dataset``: what a box prompt alone already gives."""
    from ..data.prompts import boxes_from_masks

    ious = []
    for i in range(len(dataset)):
        masks = np.asarray(dataset[i]["masks"], dtype=bool)
        for m, box in zip(masks, boxes_from_masks(masks).astype(np.int64)):  # inclusive pixel indices
            fill = np.zeros_like(m)
            fill[box[1] : box[3] + 1, box[0] : box[2] + 1] = True
            ious.append((fill & m).sum() / max(1, (fill | m).sum()))
    return float(np.mean(ious)) if ious else float("nan")


def evaluate_prompts(
    model,
    dataset,
    kinds: Mapping[str, Mapping[str, Any]],
    *,
    seed: int = 0,
    examples: int = 0,
    coco_for: Sequence[str] = ("tight box",),
    progress: bool = False,
) -> dict[str, tuple[EvalRecords, dict]]:
    """Evaluate ``model`` on every image of ``dataset`` under each prompt kind.

    Prompts are drawn from (seed, image id) (:func:`~samadapt.evaluation.evaluate.evaluate_records`),
    so every model meets the same prompts. The images are encoded once (:func:`image_embeddings`).

    Args:
        kinds: label -> ``evaluate_records`` options (``prompt``, ``loose_margin``, ...).
        examples: images kept for the examples figure (under the first kind).
        coco_for: kinds whose mask AP is computed (it costs an RLE encoding per mask).

    Returns:
        label -> (records, summary metrics of :func:`~samadapt.evaluation.evaluate.summarize_records`).
    """
    embeddings = image_embeddings(model, dataset)
    out = {}
    for k, (label, opts) in enumerate(kinds.items()):
        coco = label in coco_for
        rec = evaluate_records(
            model,
            dataset,
            seed=seed,
            progress=progress,
            desc=label,
            coco=coco,
            return_examples=examples if k == 0 else 0,
            embeddings=embeddings.__getitem__,
            **opts,
        )
        out[label] = (rec, summarize_records(rec, dataset.categories, prompt=opts.get("prompt"), coco=coco))
    return out


def compare_records(
    records: Mapping[str, Sequence[EvalRecords]],
    zero_shot: str,
    *,
    ap: Mapping[str, Sequence[float]] | None = None,
    baseline: str | None = None,
    categories: Mapping[int, str] | None = None,
    top_classes: int = 0,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """The statistics of one comparison table.

    Args:
        records: model label -> one :class:`EvalRecords` per seed (zero-shot: one), all on the
            same images with the same prompts.
        zero_shot: the label of the zero-shot model (the reference of the gains).
        ap: label -> per-seed mask AP values (Student-t interval over seeds).
        baseline: a second reference (e.g. ``decoder``): each model's gain over it, paired.
        categories: id -> name, for the per-class means.
        top_classes: per-class means for this many most frequent classes of the test images.

    Returns:
        label -> {"mean_iou", "mean_precision", "mean_f1", "gain" (over zero-shot),
        "gain_over_<baseline>", "mask_ap", "per_class": name -> Interval}, each an :class:`Interval`.
    """
    if zero_shot not in records:
        raise ConfigError(f"zero-shot label {zero_shot!r} is not among the models {list(records)}")
    first = records[zero_shot][0]
    counts: dict[int, int] = {}
    for c in first.category_ids.tolist():
        counts[int(c)] = counts.get(int(c), 0) + 1
    frequent = sorted(counts, key=lambda c: (-counts[c], c))[:top_classes]
    out: dict[str, dict[str, Any]] = {}
    for label, runs in records.items():
        row: dict[str, Any] = {
            name: bootstrap_interval(runs, metric, n_boot=n_boot, seed=seed)
            for name, metric in (("mean_iou", "iou"), ("mean_precision", "precision"), ("mean_f1", "f1"))
        }
        if label != zero_shot:
            row["gain"] = bootstrap_interval(runs, "iou", reference=records[zero_shot], n_boot=n_boot, seed=seed)
            if baseline is not None and baseline in records and label != baseline:
                row[f"gain_over_{baseline}"] = bootstrap_interval(
                    runs, "iou", reference=records[baseline], n_boot=n_boot, seed=seed
                )
        if ap is not None and label in ap:
            row["mask_ap"] = t_interval(ap[label])
        row["per_class"] = {
            (categories or {}).get(c, str(c)): bootstrap_interval(runs, "iou", category=c, n_boot=n_boot, seed=seed)
            for c in frequent
        }
        row["num_instances"] = int(runs[0].num_instances)
        out[label] = row
    out[zero_shot]["class_counts"] = {(categories or {}).get(c, str(c)): counts[c] for c in frequent}
    return out


def intervals_to_json(stats: Any) -> Any:
    """``compare_records``' result with every :class:`Interval` as a dict (for JSON)."""
    if isinstance(stats, Interval):
        return stats.to_dict()
    if isinstance(stats, Mapping):
        return {str(k): intervals_to_json(v) for k, v in stats.items()}
    if isinstance(stats, (list, tuple)):
        return [intervals_to_json(v) for v in stats]
    return stats

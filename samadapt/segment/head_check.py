"""Is a class head worth using: its held-out accuracy against always answering the most frequent class.

Training measures it once (:func:`validate_class_head`) and the adapter file keeps it as the head's
``validation``; ``samadapt segment --classify`` warns with :func:`head_warning` when the head did not
beat the majority class. The head itself is :mod:`samadapt.models.parts.class_head`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ..models.parts.class_head import classify_boxes, require_class_head

__all__ = ["describe_validation", "head_accuracy", "head_warning", "validate_class_head"]


def head_accuracy(
    predicted: Sequence[Sequence[int]], truth: Sequence[Sequence[int]], *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Accuracy of predicted categories against the true ones (per image, lists of ids), the accuracy
    of always answering the most frequent true category, the gain over it with a 95% bootstrap interval
    over images (an image's instances stay together), and balanced accuracy (mean per-category recall).
    ``beats_majority``: the interval lies above 0."""
    flat = [int(t) for ts in truth for t in ts]
    if not flat:
        return {"instances": 0, "images": len(truth), "beats_majority": False}
    values, counts = np.unique(flat, return_counts=True)
    majority = int(values[counts.argmax()])
    hits = np.array([sum(int(p) == int(t) for p, t in zip(ps, ts)) for ps, ts in zip(predicted, truth)], float)
    major = np.array([sum(int(t) == majority for t in ts) for ts in truth], float)
    n = np.array([len(ts) for ts in truth], float)
    rng = np.random.default_rng(seed)
    gains = []
    for _ in range(n_boot):
        k = rng.integers(0, len(n), len(n))
        if n[k].sum():
            gains.append((hits[k].sum() - major[k].sum()) / n[k].sum())
    pairs = [(int(p), int(t)) for ps, ts in zip(predicted, truth) for p, t in zip(ps, ts)]
    recall = {int(c): float(np.mean([p == t for p, t in pairs if t == c])) for c in values}
    interval = [float(v) for v in np.percentile(gains, [2.5, 97.5])] if gains else [float("nan")] * 2
    return {
        "instances": int(n.sum()),
        "images": len(n),
        "accuracy": float(hits.sum() / n.sum()),
        "majority_category": majority,
        "majority_accuracy": float(major.sum() / n.sum()),
        "gain": float((hits.sum() - major.sum()) / n.sum()),
        "gain_interval": interval,
        "balanced_accuracy": float(np.mean(list(recall.values()))),
        "balanced_majority": 1 / len(values),
        "per_category_recall": recall,
        "beats_majority": bool(interval[0] > 0),
    }


@torch.no_grad()
def validate_class_head(
    model,
    instances,
    indices: Sequence[int],
    *,
    embeddings: Callable[[int], torch.Tensor] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The class head's labels for the ground-truth boxes of ``instances`` (held-out images, by
    ``indices``) against their categories: :func:`head_accuracy`, plus ``majority_name``. Stored as the
    head's ``validation`` (the adapter file keeps it); ``embeddings``: index -> cached (C, h, w)."""
    from .automatic import encode_images

    head = require_class_head(model)
    predicted, truth = [], []
    for i in indices:
        sample = instances.item(i, lazy_masks=True)
        size = sample["image"].shape[:2]
        emb = embeddings(i).to(model.device, torch.float32) if embeddings is not None else None
        if emb is None:
            emb = encode_images(model, [sample["image"]])[0]
        boxes = model.transform.apply_boxes(np.asarray(sample["boxes"], np.float32), size).to(model.device)
        probs = classify_boxes(model, emb[None], [boxes])[0]
        predicted.append([head.category_ids[j] for j in probs.argmax(-1).tolist()])
        truth.append([int(c) for c in sample["category_ids"]])
    out = head_accuracy(predicted, truth, n_boot=n_boot, seed=seed)
    if "majority_category" in out:
        out["majority_name"] = head.categories.get(out["majority_category"], str(out["majority_category"]))
    return out


def describe_validation(v: Mapping[str, Any]) -> str:
    """One line: accuracy vs the most frequent class, with the gain's interval."""
    if not v.get("instances"):
        return "class head: no validation instances to check it on"
    lo, hi = v["gain_interval"]
    verdict = "beats" if v["beats_majority"] else "does NOT clearly beat"
    return (
        f"class head: accuracy {100 * v['accuracy']:.1f}% on {v['instances']} validation instances "
        f"{verdict} always answering {v.get('majority_name', v['majority_category'])!r} "
        f"({100 * v['majority_accuracy']:.1f}%): gain {100 * v['gain']:+.1f} points, 95% interval "
        f"[{100 * lo:+.1f}, {100 * hi:+.1f}]"
    )


def head_warning(model) -> str | None:
    """What to tell a user about to label masks with ``model``'s class head: None when its held-out
    check beat the most frequent class; else why its labels are not to be trusted, and what helps."""
    head = require_class_head(model)
    v = head.validation
    if v is None:
        return (
            "this class head carries no held-out check against the most frequent class (its adapter was "
            "trained before samadapt measured one): its labels may be no better than always answering that "
            "class; retrain with --classify to have it checked"
        )
    if v.get("beats_majority"):
        return None
    return (
        f"{describe_validation(v)}. Its labels are no better than always answering that class. A class head "
        "needs a strategy that adapts the image encoder and enough data and epochs: see docs/segment.md "
        "(the class head) for the strategies and budgets that beat the majority class"
    )

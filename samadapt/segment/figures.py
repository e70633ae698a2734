"""Example figures of prompt-free segmentation: each image beside its masks, labelled with their
category and score (the drawing helpers of :mod:`samadapt.evaluation.plots`: Agg canvas, atomic save)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

__all__ = ["plot_segments"]


def plot_segments(rows: Sequence[Mapping], path: str | os.PathLike, *, max_masks: int = 30, title: str = "") -> Path:
    """Draw one row per image: the image, then each panel's masks over it.

    Args:
        rows: per image ``{"image": (H, W, 3) uint8, "panels": {label: records}}``, records as
            :func:`samadapt.segment.segment` returns them (or ground truth given the same way); a
            panel shows its ``max_masks`` best masks, each with ``category_name`` (or id) and score.
    """
    from pycocotools import mask as mask_utils

    from ..evaluation.plots import _colors, _figure, _overlay, _save

    n_cols = 1 + max(len(r["panels"]) for r in rows)
    fig = _figure(3.2 * n_cols, 2.3 * len(rows) + (0.3 if title else 0))
    for i, row in enumerate(rows):
        image = np.asarray(row["image"])
        ax = fig.add_subplot(len(rows), n_cols, i * n_cols + 1)
        ax.imshow(image)
        ax.set_axis_off()
        if i == 0:
            ax.set_title("image", fontsize=8)
        for j, (label, records) in enumerate(row["panels"].items()):
            recs = sorted(records, key=lambda r: -float(r.get("score", 0)))[:max_masks]
            # larger masks first, so small ones stay visible on top
            recs.sort(key=lambda r: -float(r.get("area", 0)))
            masks = np.stack([mask_utils.decode(r["segmentation"]).astype(bool) for r in recs]) if recs else None
            ax = fig.add_subplot(len(rows), n_cols, i * n_cols + 2 + j)
            ax.imshow(_overlay(image, masks, _colors(len(recs))))
            for r in recs:
                if r.get("category_id") is None and r.get("category_name") is None:
                    continue
                x, y = r["bbox"][0], r["bbox"][1]
                name = r.get("category_name") or str(r.get("category_id"))
                ax.text(
                    x,
                    y,
                    f"{name} {float(r.get('score', 0)):.2f}",
                    fontsize=4.5,
                    color="white",
                    bbox={"facecolor": "black", "alpha": 0.5, "pad": 0.5, "linewidth": 0},
                )
            ax.set_axis_off()
            if i == 0:
                ax.set_title(f"{label}", fontsize=8)
            ax.text(
                0.01,
                0.01,
                f"{len(records)} masks",
                transform=ax.transAxes,
                fontsize=6,
                color="white",
                bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "linewidth": 0},
            )
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)

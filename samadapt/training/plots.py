"""Figures for reports: example predictions, training curves, grouped bars.

Figures are drawn on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``), never
through ``pyplot``: no display is needed, no global figure state is touched, and it is safe in
worker processes. Each file is written to a temporary name in the same folder and renamed, so a
reader never sees half a PNG.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["plot_bars", "plot_examples", "plot_training_curves"]

#: history keys read by plot_training_curves, first match wins
TRAIN_LOSS_KEYS = ("train_loss", "loss")
VAL_IOU_KEYS = ("val_mean_iou", "val/mean_iou", "mean_iou")


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    """Save to a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix.lstrip(".").lower() or "png"
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.{fmt}")
    try:
        fig.savefig(tmp, format=fmt, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _colors(n: int) -> np.ndarray:
    """n distinct RGB colours in [0, 1] (tab20, cycled)."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return np.array([cmap(i % 20)[:3] for i in range(n)], dtype=np.float32)


def _overlay(image: np.ndarray, masks: np.ndarray | None, alpha: float = 0.5) -> np.ndarray:
    """RGB float image in [0, 1] with each mask (N, H, W) blended in its own colour."""
    out = np.asarray(image, dtype=np.float32) / 255.0
    if masks is None or len(masks) == 0:
        return out
    out = out.copy()
    for mask, color in zip(np.asarray(masks, dtype=bool), _colors(len(masks))):
        out[mask] = (1 - alpha) * out[mask] + alpha * color
    return out


def _draw_prompts(ax, example: Mapping[str, Any]) -> None:
    from matplotlib.patches import Rectangle

    boxes = example.get("boxes")
    if boxes is not None:
        for (x1, y1, x2, y2), color in zip(np.asarray(boxes).reshape(-1, 4), _colors(len(boxes))):
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=1.2))
    points = example.get("points")
    if points is not None:
        pts = np.asarray(points).reshape(-1, 2)
        labels = np.asarray(example.get("point_labels", np.ones(len(pts)))).reshape(-1)
        for lab, marker_color in ((1, "lime"), (0, "red")):
            sel = labels == lab
            if sel.any():
                ax.scatter(pts[sel, 0], pts[sel, 1], s=18, c=marker_color, marker="*", edgecolors="black",
                           linewidths=0.4)


def plot_examples(examples_by_model: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike, *,
                  max_rows: int = 6, alpha: float = 0.5) -> Path:
    """A grid with one row per example image: the image, the ground truth, then each model's masks.

    Instance i has the same colour in every column; the prompts (boxes, clicks) are drawn on the
    ground truth and on every model's column.

    Args:
        examples_by_model: model label -> example dicts as returned by ``evaluate(...,
            return_examples=k)``: ``image`` (H, W, 3) uint8, ``gt`` and ``pred`` (N, H, W) bool,
            optional ``boxes`` (N, 4) XYXY, ``points`` (N, P, 2) with ``point_labels`` (N, P),
            ``image_id``, ``file_name``. Rows follow the first model's examples; the other models'
            examples are matched by ``image_id``.
        path: output file (PNG unless the suffix says otherwise).
        max_rows: at most this many rows.

    Returns:
        ``path``.
    """
    models = list(examples_by_model)
    if not models:
        raise ValueError("plot_examples needs at least one model's examples")
    rows = list(examples_by_model[models[0]])[:max_rows]
    by_id = {m: {e.get("image_id"): e for e in examples_by_model[m]} for m in models}
    ncols = 2 + len(models)
    nrows = max(1, len(rows))
    fig = _figure(3.2 * ncols, 3.0 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for r, ex in enumerate(rows):
        title = str(ex.get("file_name") or ex.get("image_id", ""))
        axes[r, 0].imshow(np.asarray(ex["image"]))
        axes[r, 0].set_title(f"{Path(title).name}", fontsize=8)
        axes[r, 1].imshow(_overlay(ex["image"], ex.get("gt"), alpha))
        _draw_prompts(axes[r, 1], ex)
        axes[r, 1].set_title(f"ground truth ({len(ex.get('gt', []))})", fontsize=8)
        for c, m in enumerate(models):
            ax = axes[r, 2 + c]
            other = by_id[m].get(ex.get("image_id"))
            if other is None:
                ax.set_title(f"{m}: not evaluated", fontsize=8)
                continue
            ax.imshow(_overlay(other["image"], other.get("pred"), alpha))
            _draw_prompts(ax, other)
            ax.set_title(m, fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _series(history: Sequence[Mapping[str, Any]], keys: Sequence[str], x_keys: Sequence[str]):
    xs, ys = [], []
    for i, row in enumerate(history):
        key = next((k for k in keys if k in row and row[k] is not None), None)
        if key is None:
            continue
        y = float(row[key])
        if not math.isfinite(y):
            continue
        x_key = next((k for k in x_keys if k in row and row[k] is not None), None)
        xs.append(float(row[x_key]) if x_key else float(i))
        ys.append(y)
    return xs, ys


def plot_training_curves(history: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Two panels: training loss (by ``step``, else ``epoch``) and validation mean IoU (by ``epoch``).

    Args:
        history: rows such as the trainer's ``{"epoch", "step", "train_loss", "val_mean_iou", ...}``;
            the loss is read from ``train_loss`` (or ``loss``), the IoU from ``val_mean_iou`` (or
            ``val/mean_iou``, ``mean_iou``), as a fraction (plotted in %). Rows lacking a key are
            skipped in that panel; non-finite values are dropped.
        path: output file.
    """
    loss_x, loss_y = _series(history, TRAIN_LOSS_KEYS, ("step", "epoch"))
    iou_x, iou_y = _series(history, VAL_IOU_KEYS, ("epoch", "step"))
    uses_steps = any("step" in r for r in history if any(k in r for k in TRAIN_LOSS_KEYS))
    fig = _figure(10, 3.6)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(loss_x, loss_y, marker="o" if len(loss_x) < 30 else None, markersize=3)
    ax1.set_xlabel("step" if uses_steps else "epoch")
    ax1.set_ylabel("loss")
    ax1.set_title("training loss")
    ax1.grid(alpha=0.3)
    ax2.plot(iou_x, [100 * y for y in iou_y], marker="o", markersize=3, color="tab:green")
    if iou_y:
        best = int(np.argmax(iou_y))
        ax2.scatter([iou_x[best]], [100 * iou_y[best]], s=60, facecolors="none", edgecolors="black",
                    label=f"best {100 * iou_y[best]:.2f}")
        ax2.legend(fontsize=8)
    from matplotlib.ticker import MaxNLocator

    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("mean IoU (%)")
    ax2.set_title("validation mean IoU")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_bars(table: Mapping[str, Mapping[str, float]], metrics: Sequence[str], path: str | os.PathLike, *,
              ylabel: str = "", title: str = "", scale: float = 1.0) -> Path:
    """Grouped bar chart: one group per metric, one bar per row of ``table`` (e.g. per strategy).

    Args:
        table: row label -> {metric: value}; missing or non-finite values leave a gap.
        metrics: the metrics to show, in order.
        path: output file.
        ylabel, title: axis label and title.
        scale: multiply values by this (100 shows fractions as %); bars are labelled with the value.
    """
    rows = list(table)
    if not rows or not metrics:
        raise ValueError("plot_bars needs at least one row and one metric")
    n = len(rows)
    width = 0.8 / n
    x = np.arange(len(metrics))
    fig = _figure(max(5.0, 1.2 * len(metrics) * max(1, n) * 0.6 + 2), 4.0)
    ax = fig.subplots()
    for i, (row, color) in enumerate(zip(rows, _colors(n))):
        vals = [table[row].get(m) for m in metrics]
        ys = np.array([scale * float(v) if v is not None and math.isfinite(float(v)) else np.nan for v in vals])
        bars = ax.bar(x - 0.4 + width * (i + 0.5), ys, width, label=row, color=color)
        ax.bar_label(bars, labels=["" if np.isnan(y) else f"{y:.1f}" for y in ys], fontsize=7, padding=1)
    ax.set_xticks(x, list(metrics))
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)

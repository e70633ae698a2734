"""Figures for reports: example predictions, training curves, grouped bars, curves with bands
(mIoU per click).

Figures are drawn on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``), never
through ``pyplot``: no display is needed, no global figure state is touched, and it is safe in
worker processes. Each file is written atomically (:func:`samadapt.files.atomic_write`), so a
reader never sees half a PNG.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..files import atomic_write
from .examples import choose_rows, image_mean_iou

__all__ = [
    "examples_figure",
    "image_mean_iou",
    "plot_bars",
    "plot_click_curves",
    "plot_curves",
    "plot_examples",
    "plot_training_curves",
    "training_curves_data",
    "training_curves_figure",
]

#: history keys read by plot_training_curves, first match wins
TRAIN_LOSS_KEYS = ("train_loss", "loss")
VAL_IOU_KEYS = ("val_mean_iou", "val/mean_iou", "mean_iou")
VAL_F1_KEYS = ("val_mean_f1", "val/mean_f1", "mean_f1")


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    """Save ``fig`` to ``path`` atomically, in the format its suffix names (default PNG)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, bbox_inches="tight"))
    return path


def _colors(n: int) -> np.ndarray:
    """n distinct RGB colours in [0, 1], 60 before they repeat (as many as TACO has categories).

    The tab20* maps list shades of one hue side by side (blue, light blue, ...); taking every
    second (tab20) or fourth (tab20b, tab20c) first keeps the first colours far apart."""
    from matplotlib import colormaps

    def spread(name: str, k: int) -> list:
        colors = colormaps[name].colors
        return [c[:3] for j in range(k) for c in colors[j::k]]

    table = spread("tab20", 2) + spread("tab20b", 4) + spread("tab20c", 4)
    return np.array([table[i % len(table)] for i in range(n)], dtype=np.float32)


def _edges(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels of ``mask`` with a 4-neighbour outside it (so touching instances of
    one category, which share a colour, stay apart)."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _overlay(image: np.ndarray, masks: np.ndarray | None, colors: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB float image in [0, 1] with mask i of ``masks`` (N, H, W) blended in ``colors[i]`` (N, 3)
    and outlined in a darker shade of it."""
    out = np.asarray(image, dtype=np.float32) / 255.0
    if masks is None or len(masks) == 0:
        return out
    out = out.copy()
    for mask, color in zip(np.asarray(masks, dtype=bool), colors):
        out[mask] = (1 - alpha) * out[mask] + alpha * color
        out[_edges(mask)] = 0.6 * color
    return out


def _instance_colors(example: Mapping[str, Any], palette: Mapping[int, np.ndarray]) -> np.ndarray:
    """(N, 3): each instance in its category's colour, or in its own when the example has no categories."""
    n = len(example.get("gt", example.get("pred", [])))
    cats = example.get("category_ids")
    if cats is None or not palette:
        return _colors(n)
    return np.array([palette[int(c)] for c in np.asarray(cats).reshape(-1)], dtype=np.float32).reshape(-1, 3)


def _draw_prompts(ax, example: Mapping[str, Any], colors: np.ndarray) -> None:
    from matplotlib.patches import Rectangle

    boxes = example.get("boxes")
    if boxes is not None:
        for (x1, y1, x2, y2), color in zip(np.asarray(boxes).reshape(-1, 4), colors):
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=1.2))
    points = example.get("points")
    if points is not None:
        pts = np.asarray(points).reshape(-1, 2)
        labels = np.asarray(example.get("point_labels", np.ones(len(pts)))).reshape(-1)
        for lab, marker_color in ((1, "lime"), (0, "red")):
            sel = labels == lab
            if sel.any():
                ax.scatter(
                    pts[sel, 0], pts[sel, 1], s=18, c=marker_color, marker="*", edgecolors="black", linewidths=0.4
                )


def examples_figure(
    examples_by_model: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    max_rows: int = 6,
    alpha: float = 0.5,
    categories: Mapping[int, str] | None = None,
):
    """The figure :func:`plot_examples` saves (a matplotlib ``Figure``), for tests and notebooks."""
    from matplotlib.patches import Patch

    models = list(examples_by_model)
    if not models:
        raise ValueError("plot_examples needs at least one model's examples")
    shown = set(choose_rows(examples_by_model, max_rows))
    rows = [e for e in examples_by_model[models[0]] if e.get("image_id") in shown]
    by_id = {m: {e.get("image_id"): e for e in examples_by_model[m]} for m in models}
    # one colour per category over the whole figure, so the legend holds for every panel
    names: dict[int, str] = {}
    for ex in rows:
        names.update({int(k): str(v) for k, v in (ex.get("category_names") or {}).items()})
    names.update({int(k): str(v) for k, v in (categories or {}).items()})
    cat_ids = sorted(
        {
            int(c)
            for ex in rows
            if ex.get("category_ids") is not None
            for c in np.asarray(ex["category_ids"]).reshape(-1)
        }
    )
    palette = dict(zip(cat_ids, _colors(len(cat_ids))))
    ncols, nrows = 2 + len(models), max(1, len(rows))
    aspect = float(np.median([np.shape(ex["image"])[0] / np.shape(ex["image"])[1] for ex in rows])) if rows else 1.0
    fig = _figure(3.2 * ncols, (3.2 * aspect + 0.4) * nrows)  # rows as tall as their images, plus the titles
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for r, ex in enumerate(rows):
        title = str(ex.get("file_name") or ex.get("image_id", ""))
        colors = _instance_colors(ex, palette)
        axes[r, 0].imshow(np.asarray(ex["image"]))
        axes[r, 0].set_title(f"{Path(title).name}", fontsize=8)
        axes[r, 1].imshow(_overlay(ex["image"], ex.get("gt"), colors, alpha))
        _draw_prompts(axes[r, 1], ex, colors)
        n = len(ex.get("gt", []))
        axes[r, 1].set_title(f"ground truth ({n} instance{'' if n == 1 else 's'})", fontsize=8)
        for c, m in enumerate(models):
            ax = axes[r, 2 + c]
            other = by_id[m].get(ex.get("image_id"))
            if other is None:
                ax.set_title(f"{m}: not evaluated", fontsize=8)
                continue
            ax.imshow(_overlay(other["image"], other.get("pred"), colors, alpha))
            _draw_prompts(ax, other, colors)
            iou = image_mean_iou(other)
            ax.set_title(m if iou is None else f"{m}: mean IoU {100 * iou:.1f}%", fontsize=8)
    fig.tight_layout()
    if cat_ids:
        handles = [
            Patch(facecolor=palette[c], edgecolor=0.6 * palette[c], label=names.get(c, f"category {c}"))
            for c in cat_ids
        ]
        # above the grid, outside the axes; savefig's tight bounding box takes it in
        fig.legend(
            handles=handles,
            loc="lower center",
            bbox_to_anchor=(0.5, 1.0),
            ncol=min(len(handles), 6),
            fontsize=8,
            frameon=False,
        )
    return fig


def plot_examples(
    examples_by_model: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | os.PathLike,
    *,
    max_rows: int = 6,
    alpha: float = 0.5,
    categories: Mapping[int, str] | None = None,
) -> Path:
    """A grid with one row per example image: the image, the ground truth, then each model's masks.

    With more examples than ``max_rows`` (an evaluation keeps a pool of them, spread over sequences
    and classes), the rows are taken at evenly spaced ranks of the images' mean IoU
    (:func:`~samadapt.evaluation.examples.choose_rows`): from the worst to the best, never only one end.

    Masks are coloured by category (a legend above the grid names them; instances of one category
    are told apart by their outlines), or by instance when the examples carry no ``category_ids``.
    The prompts (boxes, clicks) are drawn on the ground truth and on every model's column; each
    model's panel is titled with the mean IoU of that image's instances (:func:`image_mean_iou`).

    Args:
        examples_by_model: model label -> example dicts as returned by ``evaluate(...,
            return_examples=k)``: ``image`` (H, W, 3) uint8, ``gt`` and ``pred`` (N, H, W) bool,
            optional ``category_ids`` (N,), ``category_names`` {id: name}, ``iou`` (N,) in [0, 1],
            ``boxes`` (N, 4) XYXY, ``points`` (N, P, 2) with ``point_labels`` (N, P), ``image_id``,
            ``file_name``. Rows follow the first model's examples; the other models' examples are
            matched by ``image_id``.
        path: output file (PNG unless the suffix says otherwise).
        max_rows: at most this many rows, chosen by IoU as said above.
        categories: category id -> name, over the examples' own ``category_names``; ids named
            nowhere are shown as "category <id>".

    Returns:
        ``path``.
    """
    return _save(examples_figure(examples_by_model, max_rows=max_rows, alpha=alpha, categories=categories), path)


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


def _integer_ticks(ax, xs: Sequence[float]) -> None:
    """Whole-number x ticks (epochs, steps). MaxNLocator falls back to fractions when fewer than
    ``min_n_ticks`` integers are in view, as around the single point of a 1-epoch run; so ask for
    one, and widen a short range to hold every point's integer."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if xs and max(xs) - min(xs) < 2:
        ax.set_xlim(min(xs) - 0.5, max(xs) + 0.5)


def training_curves_data(
    history: Sequence[Mapping[str, Any]],
    zero_shot: Mapping[str, Any] | None = None,
    step_losses: Sequence[Sequence[float]] | None = None,
) -> dict[str, Any]:
    """What :func:`plot_training_curves` draws, as numbers (for tests and notebooks).

    Returns:
        ``loss``: ``{"x", "y", "xlabel"}``, the loss of every step where ``step_losses`` is given,
        else one point per history row (by ``step``, else ``epoch``); ``loss_epochs``: ``{"x",
        "y"}``, each epoch's mean loss at its last step (markers over the steps; empty without
        ``step_losses``); ``panels``: per validation metric, ``metric``, ``title`` (with the
        rows' ``val_images``), ``ylabel``, ``color``, ``x`` (epochs), ``y`` (%), ``best`` ((x, y)
        or None), ``zero_shot`` (%, or None), ``note`` (a run of one epoch says it is one point).
    """
    steps = [(float(x), float(y)) for x, y in (step_losses or ()) if math.isfinite(float(y))]
    if steps:
        loss = {"x": [x for x, _ in steps], "y": [y for _, y in steps], "xlabel": "step"}
        ex, ey = _series(history, TRAIN_LOSS_KEYS, ("step",))
        loss_epochs = {"x": ex, "y": ey}
    else:
        x, y = _series(history, TRAIN_LOSS_KEYS, ("step", "epoch"))
        uses_steps = any("step" in r for r in history if any(k in r for k in TRAIN_LOSS_KEYS))
        loss = {"x": x, "y": y, "xlabel": "step" if uses_steps else "epoch"}
        loss_epochs = {"x": [], "y": []}
    panels = []
    for metric, keys, title, ylabel, color in (
        ("mean_iou", VAL_IOU_KEYS, "validation mean IoU", "mean IoU (%)", "tab:green"),
        ("mean_f1", VAL_F1_KEYS, "validation mean F1", "mean F1 (%)", "tab:purple"),
    ):
        ref = (zero_shot or {}).get(metric)
        ref = 100 * float(ref) if ref is not None and math.isfinite(float(ref)) else None
        # a panel where the history has the metric (a loss-only history, as pretraining's, gets the
        # loss alone); IoU also when only the zero-shot value is known
        if not any(k in r for r in history for k in keys) and not (metric == "mean_iou" and ref is not None):
            continue
        xs, ys = _series(history, keys, ("epoch", "step"))
        ys = [100 * v for v in ys]
        n_images = next((r["val_images"] for r in reversed(history) if r.get("val_images")), None)
        title = f"{title} ({n_images} images)" if n_images else title
        best = (xs[int(np.argmax(ys))], max(ys)) if ys else None
        one = "one epoch: one validation point" + ("; dashed: zero-shot" if ref is not None else "")
        panel = dict(metric=metric, title=title, ylabel=ylabel, color=color, x=xs, y=ys, best=best, zero_shot=ref)
        panels.append({**panel, "note": one if len(xs) == 1 else None})
    return {"loss": loss, "loss_epochs": loss_epochs, "panels": panels}


def training_curves_figure(
    history: Sequence[Mapping[str, Any]],
    zero_shot: Mapping[str, Any] | None = None,
    step_losses: Sequence[Sequence[float]] | None = None,
):
    """The figure :func:`plot_training_curves` saves (a matplotlib ``Figure``), for tests and notebooks."""
    data = training_curves_data(history, zero_shot, step_losses)
    loss, epochs, panels = data["loss"], data["loss_epochs"], data["panels"]
    fig = _figure(4.8 * (1 + len(panels)), 3.6)
    ax1, *val_axes = fig.subplots(1, 1 + len(panels), squeeze=False)[0]
    if epochs["x"]:  # every step, thin, and each epoch's mean as a marker over it
        ax1.plot(loss["x"], loss["y"], linewidth=0.8, alpha=0.6, label="step")
        ax1.plot(epochs["x"], epochs["y"], marker="o", markersize=5, color="black", label="epoch mean")
        ax1.legend(fontsize=8)
    else:
        ax1.plot(loss["x"], loss["y"], marker="o" if len(loss["x"]) < 30 else None, markersize=3)
    _integer_ticks(ax1, loss["x"])
    ax1.set_xlabel(loss["xlabel"])
    ax1.set_ylabel("loss")
    ax1.set_title("training loss")
    ax1.grid(alpha=0.3)
    for ax, p in zip(val_axes, panels):
        ax.plot(
            p["x"], p["y"], marker="o", markersize=3 if len(p["x"]) > 1 else 7, color=p["color"], label="fine-tuning"
        )
        if p["best"] is not None:
            bx, by = p["best"]
            ax.scatter([bx], [by], s=60, facecolors="none", edgecolors="black", label=f"best {by:.2f}")
        if p["zero_shot"] is not None:
            # the gain the run is judged by is the distance to this line
            ax.axhline(
                p["zero_shot"], linestyle="--", color="gray", linewidth=1.2, label=f"zero-shot {p['zero_shot']:.2f}"
            )
        if p["y"] or p["zero_shot"] is not None:
            ax.legend(fontsize=8)
        if p["note"]:
            ax.text(0.5, 0.02, p["note"], transform=ax.transAxes, ha="center", va="bottom", fontsize=7, color="dimgray")
        ax.margins(y=0.15)  # keep the reference line off the frame when it is the lowest value
        _integer_ticks(ax, p["x"])
        ax.set_xlabel("epoch")
        ax.set_ylabel(p["ylabel"])
        ax.set_title(p["title"])
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_training_curves(
    history: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    zero_shot: Mapping[str, Any] | None = None,
    step_losses: Sequence[Sequence[float]] | None = None,
) -> Path:
    """Training loss (by ``step``, else ``epoch``; every step's loss with the epoch means marked
    over it when ``step_losses`` is given) and validation mean IoU and F1 (by ``epoch``), with the
    zero-shot model's value as a dashed reference line; x ticks are whole numbers. A validation
    panel is drawn when some row has its metric; a single epoch's point is drawn large and the panel
    says it is one point (:func:`training_curves_data` gives the numbers drawn).

    Args:
        history: rows such as the trainer's ``{"epoch", "step", "train_loss", "val_mean_iou",
            "val_mean_f1", ...}``; the loss is read from ``train_loss`` (or ``loss``), the IoU from
            ``val_mean_iou`` (or ``val/mean_iou``, ``mean_iou``), the F1 likewise (its panel only
            when some row has it), as fractions (plotted in %). Rows lacking a key are skipped in
            that panel; non-finite values are dropped.
        path: output file.
        zero_shot: the zero-shot metrics (``mean_iou``, ``mean_f1`` as fractions), or None for no
            reference line.
        step_losses: (step, loss) of every training step (the trainer's), or None.
    """
    return _save(training_curves_figure(history, zero_shot, step_losses), path)


def plot_bars(
    table: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str],
    path: str | os.PathLike,
    *,
    ylabel: str = "",
    title: str = "",
    scale: float = 1.0,
    intervals: Mapping[str, Mapping[str, tuple[float, float]]] | None = None,
) -> Path:
    """Grouped bar chart: one group per metric, one bar per row of ``table`` (e.g. per strategy).

    Args:
        table: row label -> {metric: value}; missing or non-finite values leave a gap.
        metrics: the metrics to show, in order.
        path: output file.
        ylabel, title: axis label and title.
        scale: multiply values by this (100 shows fractions as %); bars are labelled with the value.
        intervals: row label -> {metric: (low, high)}, drawn as error bars (same units as ``table``).
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
        ci = (intervals or {}).get(row) or {}
        if ci:
            lo_hi = np.array([[scale * float(v) for v in ci.get(m, (np.nan, np.nan))] for m in metrics])
            ax.errorbar(
                x - 0.4 + width * (i + 0.5),
                ys,
                yerr=np.abs(np.stack([ys - lo_hi[:, 0], lo_hi[:, 1] - ys])),
                fmt="none",
                ecolor="black",
                elinewidth=0.8,
                capsize=2,
            )
        ax.bar_label(bars, labels=["" if np.isnan(y) else f"{y:.1f}" for y in ys], fontsize=7, padding=1)
    ax.set_xticks(x, list(metrics))
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_curves(
    curves: Mapping[str, Mapping[float, tuple[float, float, float]]],
    path: str | os.PathLike,
    *,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
    scale: float = 1.0,
    reference: tuple[str, float] | None = None,
) -> Path:
    """Lines with confidence bands: one per row of ``curves`` (e.g. mean IoU against the share of
    training data, per strategy).

    Args:
        curves: label -> {x: (mean, low, high)}.
        xlabel, ylabel, title: labels.
        scale: multiply y values by this (100 shows fractions as %).
        reference: (label, y) drawn as a dashed horizontal line (e.g. zero-shot).
    """
    if not curves:
        raise ValueError("plot_curves needs at least one curve")
    fig = _figure(6.0, 4.0)
    ax = fig.subplots()
    for (label, points), color in zip(curves.items(), _colors(len(curves))):
        xs = sorted(points)
        mean, lo, hi = (np.array([scale * points[x][k] for x in xs]) for k in range(3))
        ax.plot(xs, mean, marker="o", color=color, label=label)
        ax.fill_between(xs, lo, hi, color=color, alpha=0.2, linewidth=0)
    if reference is not None:
        ax.axhline(scale * reference[1], color="gray", linestyle="--", linewidth=1, label=reference[0])
    all_x = [float(x) for points in curves.values() for x in points]
    if all(x.is_integer() for x in all_x):  # counts (clicks, seeds): whole-number ticks
        _integer_ticks(ax, all_x)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_click_curves(
    clicks_by_model: Mapping[str, Mapping[str, Any]],
    path,
    *,
    title: str = "",
    bands: Mapping[str, Sequence[tuple[float, float]]] | None = None,
):
    """The figure of mIoU (%) against the number of clicks, one line per model, NoC in the legend.

    Args:
        clicks_by_model: label -> a ``clicks`` dict (:func:`~samadapt.evaluation.clicks.click_summary`).
        path: the image file.
        bands: label -> one (low, high) interval per click (e.g. bootstrap intervals), drawn as a
            band; without it the lines have none.
    """
    curves = {}
    for label, c in clicks_by_model.items():
        band = (bands or {}).get(label) or [(v, v) for v in c["miou_at"]]
        name = f"{label} (NoC@85 {c['noc85']:.2f}, NoC@90 {c['noc90']:.2f})"
        curves[name] = {k + 1: (v, band[k][0], band[k][1]) for k, v in enumerate(c["miou_at"])}
    return plot_curves(
        curves, path, xlabel="clicks", ylabel="mean IoU (%)", scale=100, title=title or "mean IoU after each click"
    )

"""Reports of evaluation results: ``metrics.json``, ``metrics.md``, the figures beside them, and
plain-text tables for the terminal.

:func:`text_table` is the one plain-text table layout of the package (``samadapt info``, ``samadapt
list``, ``samadapt eval`` and the benchmarks print through it); :func:`format_table` and
:func:`format_click_table` are the results tables of the box and click protocols;
:func:`write_report` writes the files of several models side by side (zero-shot vs fine-tuned).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from ..files import atomic_write_text
from .evaluate import EvalResult

__all__ = [
    "REPORT_FILES",
    "click_markdown",
    "format_click_table",
    "format_table",
    "report_folder",
    "text_table",
    "write_report",
]

#: the click counts whose mIoU the click tables show (those up to the run's maximum)
CLICK_COLUMNS = (1, 2, 3, 5, 10, 20)


# ---------------------------------------------------------------------------- text tables
def text_table(header: Sequence[Any], rows: Sequence[Sequence[Any]], *, numeric: bool = False) -> str:
    """A plain-text table: the header, a rule of dashes, the rows; columns two spaces apart.

    Args:
        header: the column names.
        rows: the cells (shown with ``str``), one sequence per row.
        numeric: right-align every column but the first (tables of numbers); default all left.

    Returns:
        The lines joined by newlines, trailing spaces stripped.
    """
    cells = [[str(c) for c in header], *([str(c) for c in r] for r in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if numeric and i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join(line(r).rstrip() for r in [cells[0], ["-" * w for w in widths], *cells[1:]])


def format_table(results: Mapping[str, EvalResult | Mapping[str, Any]]) -> str:
    """The results table of the box-style prompts: one row per model, metrics in %."""
    rows = []
    for label, r in results.items():
        m = r.metrics if isinstance(r, EvalResult) else r
        ap = (m.get("coco") or {}).get("AP", float("nan"))
        rows.append(
            (
                label,
                f"{100 * m['mean_iou']:.2f}",
                f"{100 * m['mean_precision']:.2f}",
                f"{100 * m['mean_f1']:.2f}",
                f"{100 * ap:.2f}",
                str(m["num_instances"]),
            )
        )
    return text_table(("model", "mean IoU", "precision", "mean F1", "mask AP", "instances"), rows, numeric=True)


def format_click_table(metrics_by_model: Mapping[str, Mapping[str, Any]], at: Sequence[int] = CLICK_COLUMNS) -> str:
    """The results table of the click protocol, one row per model: mIoU (%) after some click
    counts, NoC@85, NoC@90."""
    any_clicks = next(iter(m["clicks"] for m in metrics_by_model.values()))
    cols = [k for k in at if k <= any_clicks["max_clicks"]]
    rows = []
    for label, m in metrics_by_model.items():
        c = m["clicks"]
        rows.append(
            [
                label,
                *(f"{100 * c['miou_at'][k - 1]:.2f}" for k in cols),
                f"{c['noc85']:.2f}",
                f"{c['noc90']:.2f}",
                str(m["num_instances"]),
            ]
        )
    return text_table(["model", *(f"mIoU@{k}" for k in cols), "NoC@85", "NoC@90", "instances"], rows, numeric=True)


# ---------------------------------------------------------------------------- metrics.md
def _json_safe(x: Any) -> Any:
    """nan/inf -> None, numpy scalars -> Python, recursively (strict JSON)."""
    if isinstance(x, Mapping):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return _json_safe(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _pct(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{100 * float(v):.2f}"


def click_markdown(metrics_by_model: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The click section of ``metrics.md`` (lines; none when no model has ``clicks``)."""
    clicked = {k: m for k, m in metrics_by_model.items() if m.get("clicks")}
    if not clicked:
        return []
    k = max(m["clicks"]["max_clicks"] for m in clicked.values())
    cols = [c for c in CLICK_COLUMNS if c <= k]
    lines = [
        "",
        "## Clicks",
        "",
        "The interactive protocol (RITM, SAM): first click at the object's most interior point, each next "
        "one at the centre of the largest error region, the previous logits as the mask prompt. mIoU (%) "
        f"after k clicks; NoC@85 / NoC@90: clicks to reach that IoU, counted as {k} where never reached.",
        "",
        "| model | " + " | ".join(f"mIoU@{c}" for c in cols) + " | NoC@85 | NoC@90 | instances |",
        "|---|" + "---:|" * (len(cols) + 3),
    ]
    for name, m in clicked.items():
        c = m["clicks"]
        at = [f"{100 * c['miou_at'][i - 1]:.2f}" if i <= len(c["miou_at"]) else "–" for i in cols]
        lines.append(
            f"| {name} | " + " | ".join(at) + f" | {c['noc85']:.2f} | {c['noc90']:.2f} | {m.get('num_instances', 0)} |"
        )
    return lines


def _split_table(metrics_by_model: Mapping[str, Mapping[str, Any]], key: str, title: str) -> list[str]:
    """The ``metrics.md`` section of one split (``per_category``, ``per_size``): a row per group."""
    models = list(metrics_by_model)
    groups: list[str] = []
    for m in metrics_by_model.values():
        groups += [g for g in (m.get(key) or {}) if g not in groups]
    if not groups:
        return []
    head = "| " + title + " | instances | " + " | ".join(f"{n} IoU | {n} F1" for n in models) + " |"
    rule = "|---|---:|" + "---:|---:|" * len(models)
    rows = [f"## Per {title}", "", head, rule]
    for g in groups:
        cells, count = [], None
        for m in metrics_by_model.values():
            s = (m.get(key) or {}).get(g) or {}
            count = s.get("num_instances", count)
            cells += [_pct(s.get("mean_iou")), _pct(s.get("mean_f1"))]
        rows.append(f"| {g} | {count if count is not None else 0} | " + " | ".join(cells) + " |")
    return ["", *rows]


def _data_line(data: Mapping[str, Any] | None) -> list[str]:
    """What a training run's numbers were measured on (``data``: its data card), as a paragraph."""
    if not data:
        return []
    said = []
    for key, what in (("train", "Trained on"), ("val", "Measured on")):
        sub = data.get(f"{key}_subset")
        n = data.get(f"{key}_images")
        split = data.get(f"{key}_split")
        if sub:
            said.append(
                f"{what} a seeded subset of {sub['images']} of the {sub['of']} images of {split} "
                f"({sub['option']}, seed {sub['seed']})."
            )
        elif n is not None:
            said.append(f"{what} all {n} images of {split}.")
    ep, n_val = data.get("epoch_val_images"), data.get("val_images")
    if ep is not None and n_val is not None and ep < n_val:
        said.append(
            f"The best epoch was chosen on a fixed seeded subset of {ep} of those {n_val} validation images "
            "(--epoch-val-images); the table is on all of them."
        )
    if data.get("note"):
        said.append(str(data["note"]).capitalize() + ".")
    return [" ".join(said), ""] if said else []


def _markdown(
    metrics_by_model: Mapping[str, Mapping[str, Any]], dataset_name: str, data: Mapping[str, Any] | None = None
) -> str:
    prompts = sorted({str(m.get("prompt")) for m in metrics_by_model.values()})
    lines = [
        f"# Evaluation on {dataset_name}",
        "",
        *_data_line(data),
        f"Prompts: {', '.join(prompts)}. Metrics are computed per instance and averaged over instances "
        "(docs/metrics.md); values in %. AP is COCO mask AP (pycocotools).",
        "",
        "| model | mean IoU | mean precision | mean F1 | AP | AP50 | instances |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    if all("mean_iou" not in m for m in metrics_by_model.values()):
        del lines[-3:]  # click-protocol results only: their table follows
    for name, m in metrics_by_model.items():
        if "mean_iou" not in m:
            continue
        ap = m.get("coco") or {}
        lines.append(
            f"| {name} | {_pct(m.get('mean_iou'))} | {_pct(m.get('mean_precision'))} | "
            f"{_pct(m.get('mean_f1'))} | {_pct(ap.get('AP'))} | {_pct(ap.get('AP50'))} | "
            f"{m.get('num_instances', 0)} |"
        )
    lines += click_markdown(metrics_by_model)
    lines += _split_table(metrics_by_model, "per_category", "category")
    lines += _split_table(metrics_by_model, "per_size", "size")
    lines += ["", "Sizes by ground-truth area: small < 32² px <= medium < 96² px <= large (COCO)."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- the files
#: every file :func:`write_report` may write (which of them depends on the results)
REPORT_FILES = ("metrics.json", "metrics.md", "examples.png", "clicks.png")


def write_report(
    result_by_model: Mapping[str, EvalResult | Mapping[str, Any]],
    out_dir: str | os.PathLike,
    *,
    dataset_name: str,
    examples: Mapping[str, Sequence[dict]] | None = None,
    max_examples: int = 6,
    data: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``metrics.json``, ``metrics.md`` and ``examples.png`` comparing several models.

    Args:
        result_by_model: model label (e.g. "zero-shot", "fine-tuned") -> :class:`EvalResult` or its
            ``metrics`` dict.
        out_dir: folder (created).
        dataset_name: shown in the files.
        examples: label -> example dicts, overriding the results' own ``examples``.
        max_examples: rows of the examples figure (chosen among the examples by IoU:
            :func:`~samadapt.evaluation.plots.plot_examples`).
        data: what the numbers were measured on (a training run's images and subsets), stored in
            ``metrics.json`` under ``data`` and said in ``metrics.md``.

    Returns:
        {"json", "markdown", "examples", "clicks"} -> path written (``examples`` absent when no model has
        any; ``clicks``, the mIoU-vs-clicks figure, only when some model's metrics hold ``clicks``).
    """
    from .plots import plot_click_curves, plot_examples

    if not result_by_model:
        raise ConfigError("write_report needs at least one model's results")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {k: (v.metrics if isinstance(v, EvalResult) else dict(v)) for k, v in result_by_model.items()}
    ex = {k: list(v.examples) for k, v in result_by_model.items() if isinstance(v, EvalResult)}
    if examples is not None:
        ex.update({k: list(v) for k, v in examples.items()})
    ex = {k: v for k, v in ex.items() if v}
    paths = {"json": out / "metrics.json", "markdown": out / "metrics.md"}
    atomic_write_text(
        paths["json"],
        json.dumps(
            _json_safe({"dataset": dataset_name, **({"data": dict(data)} if data else {}), "models": metrics}),
            indent=2,
            allow_nan=False,
        ),
    )
    atomic_write_text(paths["markdown"], _markdown(metrics, dataset_name, data))
    if ex:
        paths["examples"] = out / "examples.png"
        plot_examples(ex, paths["examples"], max_rows=max_examples)
    curves = {k: m["clicks"] for k, m in metrics.items() if m.get("clicks")}
    if curves:
        paths["clicks"] = plot_click_curves(
            curves, out / "clicks.png", title=f"{dataset_name}: mean IoU after each click"
        )
    return paths


def report_folder(out: str | os.PathLike | None, dataset: str, *, overwrite: bool = False) -> Path:
    """Where the report of ``samadapt eval`` goes, decided before any work: ``out`` (refused when it
    holds something, unless ``overwrite``), else ``outputs/eval-<dataset>``, or beside it the next free
    ``outputs/eval-<dataset>-2``, ... when it holds earlier results (said in one line; they stay),
    as training chooses its run folder."""
    from ..files import holds_something, next_free_folder

    if out is None:
        default = Path("outputs") / f"eval-{dataset}"
        folder = default if overwrite else next_free_folder(default)
        if folder != default:
            print(
                f"{default} holds earlier results (kept as they are): this report goes to {folder}; choose with --out"
            )
        return folder
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {str(folder)!r} is a file; the report is a folder (metrics.json, metrics.md, ...)")
    if holds_something(folder) and not overwrite:
        raise ConfigError(
            f"--out {str(folder)!r} is not empty (earlier results?); replace its report with --overwrite, or choose "
            "another --out"
        )
    return folder

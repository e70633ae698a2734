"""What ``samadapt segment`` runs (its options: :mod:`samadapt.cli.segment`): masks for every image,
from a detector's boxes or automatically, as COCO results.

    samadapt segment --adapter A --images DIR --detections DETS.json --out RES.json [--annotation-file ANN.json]
    samadapt segment --images DIR --auto --out RES.json [--calibrate-annotation-file CAL.json --calibrate-images CDIR]

Without ``--adapter`` the base model (``--model``, ``--checkpoint``) runs zero-shot. With
``--annotation-file`` the mask AP (COCOeval) is printed and written beside RES. Automatic masks use
the model's calibration (the built-in ``mini``'s shipped one, an adapter's from the end of its
training), SAM's own thresholds for an official checkpoint, or a new calibration; where none applies,
and where no mask passes, the command stops with an error that says what to pass.

The pieces take a :class:`SegmentOptions` (the command's options as plain fields): :func:`check_options`,
:func:`segment_model`, :func:`calibration_for` and :func:`auto_settings`, :func:`score_results`,
:func:`run_summary` and :func:`write_summary`, :func:`write_figure`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = [
    "SegmentOptions",
    "auto_settings",
    "calibration_for",
    "check_options",
    "is_labelled",
    "no_masks_message",
    "run_summary",
    "score_results",
    "segment_model",
    "write_figure",
    "write_summary",
]


@dataclass(frozen=True)
class SegmentOptions:
    """The options of one ``samadapt segment`` run, named as its flags (``--batch-size``: ``batch_size``;
    ``progress`` is the opposite of ``--no-progress``)."""

    images: str
    out: str
    detections: str | None = None
    auto: bool = False
    adapter: str | None = None
    model: str | None = None
    checkpoint: str | None = None
    device: str | None = None
    annotation_file: str | None = None
    force: bool = False
    metrics: str | None = None
    figure: str | None = None
    classify: bool = False
    batch_size: int = 4
    bootstrap: int = 0
    progress: bool = True
    points_per_side: int | None = None
    points_per_batch: int = 64
    pred_iou_thresh: float | None = None
    stability_thresh: float | None = None
    box_nms_thresh: float = 0.7
    mask_nms_thresh: float = 0.7
    max_masks: int = 100
    calibrate_annotation_file: str | None = None
    calibrate_images: str | None = None
    calibrate_max_images: int = 8
    save_calibration: bool = False

    @property
    def metrics_path(self) -> Path:
        """Where the scores go: ``metrics``, else RES with ``.metrics.json``."""
        out = Path(self.out)
        return Path(self.metrics) if self.metrics else out.with_name(out.name.removesuffix(".json") + ".metrics.json")

    def outputs(self) -> list[Path]:
        """The files the command will write: RES, its metrics (with scores or --metrics), the figure."""
        outputs = [Path(self.out)]
        if self.annotation_file or self.metrics:
            outputs.append(self.metrics_path)
        return outputs + ([Path(self.figure)] if self.figure else [])


def check_options(o: SegmentOptions) -> None:
    """Every check that needs no model, before any work; the errors name the command's flags."""
    for name, low in (
        ("batch_size", 1),
        ("points_per_batch", 1),
        ("max_masks", 1),
        ("calibrate_max_images", 1),
        ("bootstrap", 0),
    ):
        if getattr(o, name) < low:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(o, name)}")
    if o.points_per_side is not None and o.points_per_side < 1:
        raise ConfigError(f"--points-per-side must be >= 1, got {o.points_per_side}")
    if bool(o.calibrate_annotation_file) != bool(o.calibrate_images):
        raise ConfigError("--calibrate-annotation-file and --calibrate-images go together")
    if o.calibrate_annotation_file and not o.auto:
        raise ConfigError("--calibrate-* calibrates automatic masks: it needs --auto")
    if o.save_calibration and not (o.adapter and o.calibrate_annotation_file):
        raise ConfigError(
            "--save-calibration stores a new calibration in the adapter file: it needs --adapter and "
            "--calibrate-annotation-file (a base model is calibrated anew on each run)"
        )
    if not o.force:
        for path in o.outputs():
            if path.exists() or path.is_symlink():
                raise ConfigError(
                    f"{str(path)!r} exists (earlier results?); replace it with --force, or choose another --out"
                )
    for flag, value in (
        ("--annotation-file", o.annotation_file),
        ("--detections", o.detections),
        ("--calibrate-annotation-file", o.calibrate_annotation_file),
    ):
        if value and not Path(value).is_file():
            raise ConfigError(f"{flag} {value!r} does not exist")


def segment_model(o: SegmentOptions):
    """The adapter (``adapter``), else the base model (``model``, default mini) zero-shot."""
    import torch

    from ..adapter_store import load
    from ..evaluation.run import zero_shot_model

    device = o.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if o.adapter:
        return load(o.adapter, checkpoint=o.checkpoint, device=device)
    return zero_shot_model(o.model or "mini", o.checkpoint, device=device)


def calibration_for(o: SegmentOptions, model):
    """The calibration of the automatic masks: a new one (``calibrate_*``; put on the model, and stored
    in the adapter file with ``save_calibration``), else the model's (an adapter's own, or the one
    shipped with the built-in weights), else None. Returns (calibration or None, the adapter file it
    was stored in or None)."""
    from .api import model_calibration
    from .calibration import calibrate

    if not o.calibrate_annotation_file:
        return model_calibration(model), None
    from ..data.coco import CocoInstances

    data = CocoInstances(o.calibrate_images, o.calibrate_annotation_file)
    cal = calibrate(
        model,
        data,
        max_images=o.calibrate_max_images,
        points_per_side=o.points_per_side or 16,
        progress=o.progress,
    )
    model.auto_calibration = cal
    if not o.save_calibration:
        return cal, None
    from ..adapter_io import store_calibration
    from ..adapter_store import resolve_adapter

    return cal, store_calibration(resolve_adapter(o.adapter), cal)


def auto_settings(o: SegmentOptions, model, cal):
    """The automatic settings: the calibration's (``cal``), else both thresholds given, else SAM's for an
    official checkpoint, else the error that says what to pass; then the overrides."""
    from .api import resolve_auto_config
    from .automatic import SAM_DEFAULTS

    if cal is not None:
        base = cal.auto_config(SAM_DEFAULTS)
    elif o.pred_iou_thresh is not None and o.stability_thresh is not None:
        base = SAM_DEFAULTS.replace(source="given thresholds")
    else:
        base = resolve_auto_config(model)  # SAM's own for official weights, or the error saying what to pass
    overrides = (("--pred-iou-thresh", o.pred_iou_thresh), ("--stability-thresh", o.stability_thresh))
    given = [flag for flag, value in overrides if value is not None]
    cfg = base.replace(
        points_per_side=o.points_per_side,
        points_per_batch=o.points_per_batch,
        pred_iou_thresh=o.pred_iou_thresh,
        stability_score_thresh=o.stability_thresh,
        box_nms_thresh=o.box_nms_thresh,
        mask_nms_thresh=o.mask_nms_thresh,
        max_masks=o.max_masks,
    )
    if given and cal is not None:
        cfg = cfg.replace(source=f"{cfg.source}, {' and '.join(given)} as given")
    return cfg


def no_masks_message(cfg, n_images: int) -> str:
    """The error when no automatic mask passed the thresholds ``cfg`` on any of ``n_images`` images."""
    return (
        f"automatic masks: no mask passed predicted IoU > {cfg.pred_iou_thresh:g} and stability >= "
        f"{cfg.stability_score_thresh:g} ({cfg.source}) on any of the {n_images} image(s); nothing was written. "
        "These thresholds do not suit this model on these images: calibrate on a few labelled images of the "
        "same domain (--calibrate-annotation-file ANN.json --calibrate-images DIR), or give lower "
        "--pred-iou-thresh and --stability-thresh"
    )


def is_labelled(o: SegmentOptions, detections) -> bool:
    """Whether the masks carry classes (scored class-aware too): classified, or detections with categories."""
    return o.classify or bool(detections and any(c is not None for cs in detections.category_ids.values() for c in cs))


def score_results(images, results: list[dict], *, labelled: bool, bootstrap: int) -> dict[str, Any]:
    """Mask AP of ``results`` on the labelled ``images``: class-agnostic, and class-aware when ``labelled``."""
    from .results import evaluate_results

    ids = [im.image_id for im in images.images]
    scores = {
        "class_agnostic": evaluate_results(
            images.instances.coco, results, image_ids=ids, class_agnostic=True, bootstrap=bootstrap
        )
    }
    if labelled:
        scores["class_aware"] = evaluate_results(images.instances.coco, results, image_ids=ids, bootstrap=bootstrap)
    return scores


def run_summary(o: SegmentOptions, out: Path, report: dict, model, cal) -> dict[str, Any]:
    """The metrics file's record of the run (without the scores): the results file, the report of
    :func:`~samadapt.segment.api.segment_images`, the model, its calibration and class head check."""
    from ..models.parts.class_head import class_head_of

    summary: dict[str, Any] = {
        "results": str(out),
        "report": report,
        "model": {
            "adapter": o.adapter,
            "model_type": model.model_type,
            "strategy": model.strategy if o.adapter else "zero-shot",
        },
    }
    if cal is not None:
        summary["calibration"] = cal.to_dict()
    if o.classify:
        summary["class_head_validation"] = class_head_of(model).validation
    return summary


def write_summary(path: Path, summary: dict[str, Any]) -> Path:
    """Write the run's summary (:func:`run_summary`, with its scores) as JSON, atomically."""
    from ..files import atomic_write

    text = json.dumps(summary, indent=2, default=str)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def write_figure(path: str, images, results: list[dict], n: int = 3) -> Path | None:
    """Draw the first ``n`` images that have masks (else the first ``n``) with their masks; None when
    there is no image."""
    from ..data.images import read_image
    from .figures import plot_segments

    by_image: dict[int, list[dict]] = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    refs = [im for im in images.images if im.image_id in by_image][:n] or images.images[:n]
    rows = [{"image": read_image(im.path), "panels": {"masks": by_image.get(im.image_id, [])}} for im in refs]
    return plot_segments(rows, path) if rows else None

"""``samadapt segment``: masks for every image, from a detector's boxes or automatically, as COCO results.

    samadapt segment --adapter A --images DIR --detections DETS.json --out RES.json [--annotation-file ANN.json]
    samadapt segment --images DIR --auto --out RES.json [--calibrate-annotation-file CAL.json --calibrate-images CDIR]

Without ``--adapter`` the base model (``--model``, ``--checkpoint``) runs zero-shot. With
``--annotation-file`` the mask AP (COCOeval) is printed and written beside RES. Automatic masks use
the model's calibration (the built-in ``mini``'s shipped one, an adapter's from the end of its
training), SAM's own thresholds for an official checkpoint, or a new calibration; where none applies,
and where no mask passes, the command stops with an error that says what to pass.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["add_segment_arguments", "run_segment"]

DESCRIPTION = """Masks for every image, from a detector's boxes or automatically, written as COCO results.

  samadapt segment --adapter A --images DIR --detections DETS.json --out RES.json [--annotation-file ANN.json]
  samadapt segment --images DIR --auto --out RES.json [--calibrate-annotation-file CAL.json --calibrate-images CDIR]

Without --adapter the base model (--model, --checkpoint) runs zero-shot. With --annotation-file the
mask AP (pycocotools COCOeval) is printed and written beside RES (RES.metrics.json). Automatic masks
use the thresholds calibrated for the model (shipped with the built-in mini, stored in an adapter at
the end of its training; SAM's own for official checkpoints), or new ones with --calibrate-*.
Masks without a class are written with category_id -1. Details: docs/segment.md.
"""


def add_segment_arguments(parser: argparse.ArgumentParser) -> None:
    from ..models import MODEL_TYPES

    parser.description = DESCRIPTION
    m = parser.add_argument_group("model")
    m.add_argument("--adapter", metavar="NAME_OR_PATH", help="adapter name or file (default: the base model zero-shot)")
    m.add_argument(
        "--model", default=None, choices=sorted(MODEL_TYPES), help="base model type without --adapter (default: mini)"
    )
    m.add_argument("--checkpoint", default=None, help="base SAM checkpoint (official vit_* need one)")
    m.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    d = parser.add_argument_group("input and output")
    d.add_argument("--images", required=True, metavar="DIR", help="folder of the images (file_name is relative to it)")
    how = d.add_mutually_exclusive_group(required=True)
    how.add_argument(
        "--detections",
        metavar="DETS.json",
        help="COCO detection results: [{image_id or file_name, bbox [x, y, w, h], score, category_id}]",
    )
    how.add_argument("--auto", action="store_true", help="no detector: SAM's automatic masks from a point grid")
    d.add_argument(
        "--annotation-file",
        metavar="ANN.json",
        help="COCO ground truth: maps image_id to files, and the masks are scored (mask AP)",
    )
    d.add_argument("--out", required=True, metavar="RES.json", help="COCO results file to write")
    d.add_argument(
        "--force", action="store_true", help="replace RES (and the metrics file, the figure) where they exist"
    )
    d.add_argument("--metrics", metavar="FILE", help="where the scores go (default: RES with .metrics.json)")
    d.add_argument("--figure", metavar="PNG", help="draw the first images with their masks")
    d.add_argument(
        "--classify",
        action="store_true",
        help="label the masks that have no category with the adapter's class head (train with --classify)",
    )
    d.add_argument("--batch-size", type=int, default=4, help="images per encoder pass")
    d.add_argument("--bootstrap", type=int, default=0, metavar="N", help="95%% intervals of AP from N image resamples")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    a = parser.add_argument_group("automatic masks (--auto)")
    a.add_argument(
        "--points-per-side",
        type=int,
        default=None,
        help="grid of N x N points (default: the calibration's, else SAM's 32)",
    )
    a.add_argument("--points-per-batch", type=int, default=64, help="points decoded at once")
    a.add_argument(
        "--pred-iou-thresh", type=float, default=None, help="override the calibrated predicted-IoU threshold"
    )
    a.add_argument("--stability-thresh", type=float, default=None, help="override the calibrated stability threshold")
    a.add_argument("--box-nms-thresh", type=float, default=0.7, help="box IoU of non-maximum suppression")
    a.add_argument(
        "--mask-nms-thresh",
        type=float,
        default=0.7,
        help="mask IoU at which the lower-scored of two masks (a near-duplicate, or one nested in the other) is dropped",
    )
    a.add_argument("--max-masks", type=int, default=100, help="masks kept per image, best first")
    a.add_argument(
        "--calibrate-annotation-file",
        metavar="ANN.json",
        help="calibrate the thresholds anew on these labelled images (held out from training and evaluation)",
    )
    a.add_argument("--calibrate-images", metavar="DIR", help="their images folder")
    a.add_argument("--calibrate-max-images", type=int, default=8, help="images used for the calibration")
    a.add_argument("--save-calibration", action="store_true", help="store the calibration in the adapter file")


def _check(args: argparse.Namespace) -> None:
    for name, low in (
        ("batch_size", 1),
        ("points_per_batch", 1),
        ("max_masks", 1),
        ("calibrate_max_images", 1),
        ("bootstrap", 0),
    ):
        if getattr(args, name) < low:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
    if args.points_per_side is not None and args.points_per_side < 1:
        raise ConfigError(f"--points-per-side must be >= 1, got {args.points_per_side}")
    if bool(args.calibrate_annotation_file) != bool(args.calibrate_images):
        raise ConfigError("--calibrate-annotation-file and --calibrate-images go together")
    if args.calibrate_annotation_file and not args.auto:
        raise ConfigError("--calibrate-* calibrates automatic masks: it needs --auto")
    if args.save_calibration and not (args.adapter and args.calibrate_annotation_file):
        raise ConfigError(
            "--save-calibration stores a new calibration in the adapter file: it needs --adapter and "
            "--calibrate-annotation-file (a base model is calibrated anew on each run)"
        )
    if not args.force:
        for path in _outputs(args):
            if path.exists() or path.is_symlink():
                raise ConfigError(
                    f"{str(path)!r} exists (earlier results?); replace it with --force, or choose another --out"
                )
    for flag, value in (
        ("--annotation-file", args.annotation_file),
        ("--detections", args.detections),
        ("--calibrate-annotation-file", args.calibrate_annotation_file),
    ):
        if value and not Path(value).is_file():
            raise ConfigError(f"{flag} {value!r} does not exist")


def _metrics_path(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    return Path(args.metrics) if args.metrics else out.with_name(out.name.removesuffix(".json") + ".metrics.json")


def _outputs(args: argparse.Namespace) -> list[Path]:
    """The files the command will write: RES, its metrics (with scores or --metrics), the figure."""
    outputs = [Path(args.out)]
    if args.annotation_file or args.metrics:
        outputs.append(_metrics_path(args))
    return outputs + ([Path(args.figure)] if args.figure else [])


def _model(args: argparse.Namespace):
    import torch

    from ..evaluation.run import zero_shot_model
    from ..hub import load

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.adapter:
        return load(args.adapter, checkpoint=args.checkpoint, device=device)
    return zero_shot_model(args.model or "mini", args.checkpoint, device=device)


def _auto_config(args: argparse.Namespace, model, progress: bool):
    """The automatic settings: a new calibration, else the model's (an adapter's own, or the one shipped
    with the built-in weights), else both thresholds given, else SAM's for an official checkpoint, else
    the error that says what to pass; then the overrides. Returns (settings, calibration or None)."""
    from .api import model_calibration, resolve_auto_config
    from .automatic import SAM_DEFAULTS
    from .calibration import calibrate, describe

    if args.calibrate_annotation_file:
        from ..data.coco import CocoInstances

        data = CocoInstances(args.calibrate_images, args.calibrate_annotation_file)
        cal = calibrate(
            model,
            data,
            max_images=args.calibrate_max_images,
            points_per_side=args.points_per_side or 16,
            progress=progress,
        )
        model.auto_calibration = cal
        if args.save_calibration:
            from ..adapter_io import store_calibration
            from ..hub import resolve_adapter

            print(f"stored the calibration in {store_calibration(resolve_adapter(args.adapter), cal)}")
    else:
        cal = model_calibration(model)
    if cal is not None:
        print(describe(cal))
        base = cal.auto_config()
    elif args.pred_iou_thresh is not None and args.stability_thresh is not None:
        base = SAM_DEFAULTS.replace(source="given thresholds")
    else:
        base = resolve_auto_config(model)  # SAM's own for official weights, or the error saying what to pass
    overrides = (("--pred-iou-thresh", args.pred_iou_thresh), ("--stability-thresh", args.stability_thresh))
    given = [flag for flag, value in overrides if value is not None]
    cfg = base.replace(
        points_per_side=args.points_per_side,
        points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_thresh,
        box_nms_thresh=args.box_nms_thresh,
        mask_nms_thresh=args.mask_nms_thresh,
        max_masks=args.max_masks,
    )
    if given and cal is not None:
        cfg = cfg.replace(source=f"{cfg.source}, {' and '.join(given)} as given")
    print(
        f"automatic masks: predicted IoU > {cfg.pred_iou_thresh:g}, stability >= {cfg.stability_score_thresh:g} "
        f"({cfg.source}), {cfg.points_per_side} x {cfg.points_per_side} points"
    )
    return cfg, cal


def _no_masks_message(cfg, n_images: int) -> str:
    return (
        f"automatic masks: no mask passed predicted IoU > {cfg.pred_iou_thresh:g} and stability >= "
        f"{cfg.stability_score_thresh:g} ({cfg.source}) on any of the {n_images} image(s); nothing was written. "
        "These thresholds do not suit this model on these images: calibrate on a few labelled images of the "
        "same domain (--calibrate-annotation-file ANN.json --calibrate-images DIR), or give lower "
        "--pred-iou-thresh and --stability-thresh"
    )


def _pct(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def _score(images, results: list[dict], *, labelled: bool, bootstrap: int) -> dict[str, Any]:
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


def run_segment(args: argparse.Namespace) -> int:
    from .api import segment_images
    from .class_head import class_head_of, head_warning
    from .detections import list_images, read_detections
    from .results import write_results

    _check(args)
    progress = not args.no_progress
    images = list_images(args.images, args.annotation_file)
    detections = read_detections(args.detections, images) if args.detections else None  # checked before the model
    model = _model(args)
    warning = head_warning(model) if args.classify else None  # the head's check against the majority class
    if warning:
        print(f"samadapt: warning: {warning}", file=sys.stderr)
    auto, cal = _auto_config(args, model, progress) if args.auto else (None, None)
    results, report = segment_images(
        model,
        images,
        detections=detections,
        auto=auto,
        calibration=cal,
        classify=args.classify,
        batch_size=args.batch_size,
        progress=progress,
    )
    if args.auto and not results and report["images_segmented"]:
        raise ConfigError(_no_masks_message(auto, report["images_segmented"]))
    out = write_results(args.out, results)
    what = "automatic masks" if args.auto else "masks from detections"
    print(f"{what}: {len(results)} masks on {report['images_segmented']} of {report['images']} images -> {out}")
    if args.auto and report["images_without_masks"]:
        print(f"  {report['images_without_masks']} image(s) got no mask at these thresholds")
    if images.missing:
        print(
            f"  {len(images.missing)} image file(s) of the annotation file not under {args.images}, left out: "
            f"{images.missing[:10]}"
        )
    if detections is not None:
        if detections.missing_entries:
            print(
                f"  {detections.missing_entries} detection(s) for {len(detections.missing_images)} image(s) that are "
                f"not there, left out: {detections.missing_images[:10]}"
            )
        if report["boxes_clipped"] or report["boxes_outside_image"]:
            print(
                f"  {report['boxes_clipped']} box(es) clipped to their image, {report['boxes_outside_image']} "
                f"outside it (no mask)"
            )
    summary: dict[str, Any] = {
        "results": str(out),
        "report": report,
        "model": {
            "adapter": args.adapter,
            "model_type": model.model_type,
            "strategy": model.strategy if args.adapter else "zero-shot",
        },
    }
    if cal is not None:
        summary["calibration"] = cal.to_dict()
    if args.classify:
        summary["class_head_validation"] = class_head_of(model).validation
    if args.annotation_file:
        labelled = args.classify or bool(
            detections and any(c is not None for cs in detections.category_ids.values() for c in cs)
        )
        summary["metrics"] = _score(images, results, labelled=labelled, bootstrap=args.bootstrap)
        for kind, m in summary["metrics"].items():
            iv = m.get("interval", {}).get("AP")
            print(
                f"  mask AP ({kind.replace('_', '-')}) {_pct(m['AP'])}"
                f"{f' [{_pct(iv[0])}, {_pct(iv[1])}]' if iv else ''}  AP50 {_pct(m['AP50'])}  AP75 {_pct(m['AP75'])}  "
                f"AR@100 {_pct(m['AR100'])}  ({m['images']} images, {m['instances']} instances)"
            )
    if args.annotation_file or args.metrics:
        from ..files import atomic_write

        path = _metrics_path(args)
        text = json.dumps(summary, indent=2, default=str)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
        print(f"  wrote {path}")
    if args.figure:
        _figure(args, images, results)
    return 0


def _figure(args: argparse.Namespace, images, results: list[dict], n: int = 3) -> None:
    from ..data.images import read_image
    from .figures import plot_segments

    by_image: dict[int, list[dict]] = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    refs = [im for im in images.images if im.image_id in by_image][:n] or images.images[:n]
    rows = [{"image": read_image(im.path), "panels": {"masks": by_image.get(im.image_id, [])}} for im in refs]
    if rows:
        print(f"  wrote {plot_segments(rows, args.figure)}")

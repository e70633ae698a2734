"""``samadapt segment``: its options, and the run that calls :mod:`samadapt.segment.run` and prints."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from typing import Any

from ..errors import ConfigError

__all__ = ["DESCRIPTION", "add_segment_arguments", "run_segment"]

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
    parser.description = DESCRIPTION
    _add_model_options(parser.add_argument_group("model"))
    _add_input_output_options(parser.add_argument_group("input and output"))
    _add_automatic_options(parser.add_argument_group("automatic masks (--auto)"))


def _add_model_options(m) -> None:
    from ..models.family import model_types

    m.add_argument("--adapter", metavar="NAME_OR_PATH", help="adapter name or file (default: the base model zero-shot)")
    m.add_argument(
        "--model", default=None, choices=sorted(model_types()), help="base model type without --adapter (default: mini)"
    )
    m.add_argument("--checkpoint", default=None, help="base SAM checkpoint (official vit_* need one)")
    m.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")


def _add_input_output_options(d) -> None:
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


def _add_automatic_options(a) -> None:
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


def _options(args: argparse.Namespace):
    """The parsed options as :class:`~samadapt.segment.run.SegmentOptions`."""
    from ..segment.run import SegmentOptions

    names = [f.name for f in dataclasses.fields(SegmentOptions) if f.name != "progress"]
    return SegmentOptions(**{name: getattr(args, name) for name in names}, progress=not args.no_progress)


def run_segment(args: argparse.Namespace) -> int:
    from ..segment.api import segment_images
    from ..segment.detections import list_images, read_detections
    from ..segment.head_check import head_warning
    from ..segment.results import write_results
    from ..segment.run import check_options, no_masks_message, segment_model

    o = _options(args)
    check_options(o)
    images = list_images(o.images, o.annotation_file)
    detections = read_detections(o.detections, images) if o.detections else None  # checked before the model
    model = segment_model(o)
    warning = head_warning(model) if o.classify else None  # the head's check against the majority class
    if warning:
        print(f"samadapt: warning: {warning}", file=sys.stderr)
    auto, cal = _auto_config(o, model) if o.auto else (None, None)
    results, report = segment_images(
        model,
        images,
        detections=detections,
        auto=auto,
        calibration=cal,
        classify=o.classify,
        batch_size=o.batch_size,
        progress=o.progress,
    )
    if o.auto and not results and report["images_segmented"]:
        raise ConfigError(no_masks_message(auto, report["images_segmented"]))
    out = write_results(o.out, results)
    _print_counts(o, out, len(results), report, images, detections)
    _finish(o, out, report, model, cal, images, detections, results)
    return 0


def _auto_config(o, model):
    """The automatic settings and the calibration (:mod:`samadapt.segment.run`), said as they are chosen."""
    from ..segment.calibration import describe
    from ..segment.run import auto_settings, calibration_for

    cal, stored = calibration_for(o, model)
    if stored is not None:
        print(f"stored the calibration in {stored}")
    if cal is not None:
        print(describe(cal))
    cfg = auto_settings(o, model, cal)
    print(
        f"automatic masks: predicted IoU > {cfg.pred_iou_thresh:g}, stability >= {cfg.stability_score_thresh:g} "
        f"({cfg.source}), {cfg.points_per_side} x {cfg.points_per_side} points"
    )
    return cfg, cal


def _print_counts(o, out, n_masks: int, report: dict, images, detections) -> None:
    """What was segmented, and what was left out."""
    what = "automatic masks" if o.auto else "masks from detections"
    print(f"{what}: {n_masks} masks on {report['images_segmented']} of {report['images']} images -> {out}")
    if o.auto and report["images_without_masks"]:
        print(f"  {report['images_without_masks']} image(s) got no mask at these thresholds")
    if images.missing:
        print(
            f"  {len(images.missing)} image file(s) of the annotation file not under {o.images}, left out: "
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


def _pct(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def _finish(o, out, report: dict, model, cal, images, detections, results: list[dict]) -> None:
    """The scores (with --annotation-file), the metrics file, the figure."""
    from ..segment.run import is_labelled, run_summary, score_results, write_figure, write_summary

    summary = run_summary(o, out, report, model, cal)
    if o.annotation_file:
        summary["metrics"] = score_results(images, results, labelled=is_labelled(o, detections), bootstrap=o.bootstrap)
        for kind, m in summary["metrics"].items():
            iv = m.get("interval", {}).get("AP")
            print(
                f"  mask AP ({kind.replace('_', '-')}) {_pct(m['AP'])}"
                f"{f' [{_pct(iv[0])}, {_pct(iv[1])}]' if iv else ''}  AP50 {_pct(m['AP50'])}  AP75 {_pct(m['AP75'])}  "
                f"AR@100 {_pct(m['AR100'])}  ({m['images']} images, {m['instances']} instances)"
            )
    if o.annotation_file or o.metrics:
        print(f"  wrote {write_summary(o.metrics_path, summary)}")
    if o.figure:
        figure = write_figure(o.figure, images, results)
        if figure is not None:
            print(f"  wrote {figure}")

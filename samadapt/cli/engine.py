"""``samadapt engine``: one turn of the data engine from an annotation file the page wrote (the turn
itself is :func:`samadapt.engine.retrain.adapt_on_annotations`)."""

from __future__ import annotations

import argparse
import json

from ..engine.effort import DEFAULT_TARGETS, MAX_CLICKS
from ..engine.retrain import DEFAULT_STEPS, MAX_EPOCHS

DESCRIPTION = """\
Fine-tune the decoder on the annotations made so far (a COCO file written by `samadapt annotate`),
score the new adapter beside the previous model on a held-out quarter of the labelled images (mean
IoU from boxes; clicks per object to reach the target IoU), and install it in the adapter store as
<project>_r<k>-<model tag> (`samadapt list`). The annotation file is only read.

  samadapt engine annotations.json --images IMAGES --previous trashcan-mini
"""


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.add_argument("annotations", metavar="FILE.json", help="the COCO file `samadapt annotate --out` wrote")
    parser.add_argument("--images", required=True, metavar="IMAGES", help="the folder the page labelled")
    parser.add_argument(
        "--previous",
        metavar="NAME_OR_PATH",
        help="the adapter the annotations were made with (default: the base model)",
    )
    parser.add_argument("--model", default="mini", help="base model type without --previous (default: mini)")
    parser.add_argument("--checkpoint", default=None, help="base SAM checkpoint (official vit_* need one)")
    parser.add_argument("--project", default=None, help="adapter-name prefix (default: the file's name)")
    parser.add_argument("--work-dir", default=None, help="where the turns go (default: <file stem>-engine/ beside it)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out split and of training")
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"epochs (default: about {DEFAULT_STEPS} optimiser steps, at most {MAX_EPOCHS} epochs)",
    )
    parser.add_argument(
        "--targets",
        type=float,
        nargs="+",
        default=list(DEFAULT_TARGETS),
        help=f"IoU an annotator accepts, the first is the headline (default {' '.join(map(str, DEFAULT_TARGETS))})",
    )
    parser.add_argument("--max-clicks", type=int, default=MAX_CLICKS, help=f"clicks per object (default {MAX_CLICKS})")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--json", action="store_true", help="print progress and the result as JSON lines")


def run_engine(args: argparse.Namespace) -> int:
    from ..engine.retrain import adapt_on_annotations

    def say(event: dict) -> None:
        print(json.dumps(event) if args.json else f"engine: {event['message']}", flush=True)

    turn = adapt_on_annotations(
        args.annotations,
        args.images,
        previous=args.previous,
        model=args.model,
        checkpoint=args.checkpoint,
        project=args.project,
        work_dir=args.work_dir,
        seed=args.seed,
        epochs=args.epochs,
        targets=args.targets,
        max_clicks=args.max_clicks,
        device=args.device,
        say=say,
    )
    if args.json:
        print(json.dumps({"phase": "result", "turn": turn.to_dict()}), flush=True)
    else:
        print("\n".join(turn.summary_lines()), flush=True)
    return 0

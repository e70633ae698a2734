"""Calibrate automatic masks for the built-in ``mini`` weights and ship the calibration beside them.

    python recipes/calibrate_builtin.py              # writes samadapt/weights/mini.calibration.json
    python recipes/calibrate_builtin.py --images 4 --out /tmp/cal   # a short run elsewhere

``samadapt segment --model mini --auto`` (and ``samadapt.segment.segment(model, image)`` on the zero-shot ``mini``) reads
this file, so that automatic masks come out of the box: the built-in weights predict IoU on their own
scale, below the 0.88 that SAM's automatic generator asks of ViT-H (docs/segment.md). The thresholds
are :func:`samadapt.segment.calibrate`'s on generated waste-domain images (the demo generator, a seed of
its own, so neither the demo data nor any benchmark's images are among them), at the 16 x 16 grid
they are then used with. The file records the command, the data, the weights' sha256 and the machine.

The calibration describes the weights' point-prompt outputs: rerun this when they change (retraining
only the mask-prompt path, ``prompt_encoder.mask_downscaling``, leaves them as they are).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
import time
from pathlib import Path

import torch

import samadapt
from samadapt.data import make_demo_dataset, presets
from samadapt.experiments import machine_info
from samadapt.models.checkpoints import file_sha256
from samadapt.models.parts.calibration import BUILTIN_SUFFIX
from samadapt.models.registry import builtin_weights_path, get_model_card
from samadapt.segment.calibration import calibrate, describe

REPO = Path(__file__).resolve().parents[1]

#: the generator seed of the calibration images (the demo data uses 0, the benchmarks their own)
DATA_SEED = 4242


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mini", help="a model type with built-in weights")
    ap.add_argument("--images", type=int, default=16, help="generated waste images to calibrate on")
    ap.add_argument("--points-per-side", type=int, default=16)
    ap.add_argument("--data-dir", type=Path, default=None, help="default: $SAMADAPT_HOME/data")
    ap.add_argument("--out", type=Path, default=REPO / "samadapt" / "weights")
    args = ap.parse_args(argv)

    card = get_model_card(args.model)
    weights = builtin_weights_path(card)
    if weights is None:
        raise SystemExit(f"{args.model!r} has no built-in weights to calibrate")
    t0 = time.perf_counter()
    root = make_demo_dataset(
        (args.data_dir or samadapt.samadapt_home() / "data") / f"calibration-waste-s{DATA_SEED}",
        domain="waste",
        n_train=0,
        n_val=args.images,
        seed=DATA_SEED,
    )
    model = samadapt.adapt(samadapt.build_sam(args.model), "decoder").eval()
    data = presets.demo(root, "val")
    with torch.no_grad():
        cal = calibrate(model, data, max_images=args.images, points_per_side=args.points_per_side)
    cal = dataclasses.replace(cal, data="generated waste images, shipped with the built-in weights")
    print(describe(cal))
    record = {
        "calibration": cal.to_dict(),
        "model_type": args.model,
        "weights": weights.name,
        "weights_sha256": file_sha256(weights, use_cache=False),
        "command": " ".join(["python recipes/calibrate_builtin.py", *(argv if argv is not None else sys.argv[1:])]),
        "data": {
            "generator": "samadapt.data.make_demo_dataset",
            "domain": "waste",
            "split": "val",
            "images": args.images,
            "seed": DATA_SEED,
        },  # fmt: skip
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": machine_info("cpu"),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / (weights.stem + BUILTIN_SUFFIX)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written to {path} ({record['seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

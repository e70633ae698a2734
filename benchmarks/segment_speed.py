"""Images per second of automatic masks (``samadapt segment --auto``) on TrashCan-size frames (480x270).

Times what ``segment_images`` does per batch of images (read from memory here): the encoder over a
batch, then per image the point grid decoded ``points_per_batch`` at a time, the filters, NMS, the
kept masks' RLEs. Frames: real TrashCan frames from ``--images`` if given, else generated 480x270
frames of smooth blobs (``_common.random_images``). Thresholds: ``--pred-iou-thresh`` /
``--stability-thresh`` (give the calibrated ones; 0 / 0 is the worst case, every mask upsampled).

    python benchmarks/segment_speed.py --pred-iou-thresh 0.6 --stability-thresh 0.8
    python benchmarks/segment_speed.py --images TRASHCAN/instance_version/val --grids 16 32 --points-per-batch 64 256

Writes benchmarks/results/segment_auto-<device>.json and prints a table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
from _common import machine_info, random_images, repeat, table, write_json  # noqa: E402

import samadapt  # noqa: E402
from samadapt.segment.api import segment_embedded  # noqa: E402
from samadapt.segment.automatic import AutoConfig, encode_images  # noqa: E402

RESULTS = HERE / "results"
COLUMNS = ["points_per_side", "points_per_batch", "batch_size", "images_per_s", "s_per_image", "masks_per_image"]
FRAME = (270, 480)  # TrashCan 1.0's frames are 480x270 (some 480x360)


def frames(n: int, images: str | None):
    if images is None:
        return random_images(n, sizes=(FRAME,))[0], "generated 480x270 frames (smooth blobs)"
    from samadapt.data import read_image

    files = sorted(p for p in Path(images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]
    if len(files) < n:
        raise SystemExit(f"{images} has {len(files)} images, need {n}")
    return [read_image(p) for p in files], f"{n} frames of {Path(images).name}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", help="folder of real frames (default: generated 480x270 frames)")
    p.add_argument("--grids", type=int, nargs="+", default=[16], help="points per side to time")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4], help="images per encoder pass")
    p.add_argument("--points-per-batch", type=int, nargs="+", default=[64], help="points decoded at once")
    p.add_argument("--num-images", type=int, default=4, help="images per timed call")
    p.add_argument("--pred-iou-thresh", type=float, default=0.0)
    p.add_argument("--stability-thresh", type=float, default=0.0)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = samadapt.adapt(samadapt.build_sam("mini"), "decoder").to(args.device).eval()
    imgs, what = frames(args.num_images, args.images)
    rows = []
    for grid, ppb in ((g, b) for g in args.grids for b in args.points_per_batch):
        cfg = AutoConfig(
            points_per_side=grid,
            points_per_batch=ppb,
            pred_iou_thresh=args.pred_iou_thresh,
            stability_score_thresh=args.stability_thresh,
            source="benchmark",
        )
        for bs in args.batch_sizes:
            masks: list[int] = []

            def run(bs=bs, cfg=cfg, masks=masks):
                masks.clear()
                for start in range(0, len(imgs), bs):
                    chunk = imgs[start : start + bs]
                    for im, emb in zip(chunk, encode_images(model, chunk, bs)):
                        masks.append(len(segment_embedded(model, emb, im.shape[:2], auto=cfg)))

            t = repeat(run, args.device, warmup=0, reps=args.reps)
            rows.append(
                {
                    "points_per_side": grid,
                    "points_per_batch": ppb,
                    "batch_size": bs,
                    "images": len(imgs),
                    "images_per_s": len(imgs) / t["wall_s_min"],
                    "s_per_image": t["wall_s_min"] / len(imgs),
                    "masks_per_image": sum(masks) / len(masks),
                    **t,
                }
            )
            print(table(rows[-1:], COLUMNS))
    out = {
        "benchmark": "segment_auto",
        "model": "mini (built-in weights, zero-shot)",
        "frames": what,
        "pred_iou_thresh": args.pred_iou_thresh,
        "stability_score_thresh": args.stability_thresh,
        "machine": machine_info(args.device),
        "rows": rows,
        "timing": "wall-clock minimum over reps of one pass over the images; no warm-up pass",
    }
    path = write_json(RESULTS / f"segment_auto-{args.device}.json", out)
    print(table(rows, COLUMNS))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

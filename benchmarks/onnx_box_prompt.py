"""What the ONNX decoder's box-prompt conventions cost against ``predict``, on real TrashCan frames.

``decoder.onnx`` is upstream's ``SamOnnxModel(return_single_mask=True)`` interface. A box is its two
corners with labels 2 and 3; labelling tools (and segment-anything's ONNX notebook) append the
padding point (label -1, upstream's "not a point" token). ``AdaptedSam.predict(image, boxes=box)``, like
``SamPredictor.predict(box=...)``, decodes the two corner tokens alone and returns the single-mask
output (mask token 0). In the graph:

- corners + padding point: 3 tokens, so the single-mask output, but of a decoder that also attended
  to the extra token: not predict's mask;
- corners alone: predict's two tokens, but upstream's graph picks by the number of points, and with
  2 it returns the best of the three multimask outputs by predicted IoU: exactly
  ``predict(image, boxes=box, multimask=True)``'s best-scoring mask (checked here on every object).

So no call of this interface gives ``predict(box)``'s mask; this measures how far each is from it
(IoU between the masks) and from the ground truth (mean IoU, and the paired difference to predict),
with bootstrap 95% intervals over frames. Model: the built-in ``mini`` (zero-shot), exported with
``samadapt.export(to="onnx")``, run on onnxruntime's CPU provider (its encoder too). Frames: a seeded
random draw from TrashCan's instance-version val split (consecutive frames of one video are near
copies, a draw spreads over the videos); prompts: each object's tight ground-truth box.

    python benchmarks/onnx_box_prompt.py --data-root TRASHCAN_IMPORT      # 200 frames, a few minutes
    python benchmarks/onnx_box_prompt.py --smoke                          # 4 frames (tests)

``--data-root``: a folder written by ``samadapt data import-trashcan``; without it the frames in
``../shared/realdata/trashcan`` are imported into a temporary folder first. Writes
``benchmarks/results/onnx_box_prompt-cpu.json`` (``--out`` to change the folder).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
import _common as C  # noqa: E402
from export_latency import decoder_feed, session  # noqa: E402

import samadapt  # noqa: E402
from samadapt.data.prompts import boxes_from_masks  # noqa: E402

REALDATA = HERE.parent.parent / "shared" / "realdata" / "trashcan"
#: (key, what is compared): the masks each call gives
CALLS = {
    "predict": "AdaptedSam.predict(image, boxes=box): corner tokens, single-mask output",
    "predict_best_of_3": "predict(image, boxes=box, multimask=True): the best of the three by predicted IoU",
    "onnx_box_pad": "decoder.onnx: corners (labels 2, 3) + padding point (-1)",
    "onnx_box": "decoder.onnx: corners (labels 2, 3) alone",
}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def dataset(data_root: str | None, work: Path):
    from samadapt.data.presets import trashcan

    if data_root is None:
        from samadapt.data.importers import import_trashcan

        if not (REALDATA / "original_data").is_dir():
            raise SystemExit(f"no --data-root and no TrashCan frames at {REALDATA}")
        data_root = import_trashcan(REALDATA, work / "trashcan", versions=["instance"], progress=False).out
    return trashcan(data_root, "val", version="instance")


def measure(frames: int, seed: int, threads: int, data_root: str | None, work: Path) -> dict[str, Any]:
    model = samadapt.adapt(samadapt.build_sam("mini"), "decoder").eval()
    folder = samadapt.export(model, to="onnx", out=work / "onnx")
    encoder, decoder = session(folder / "encoder.onnx", threads), session(folder / "decoder.onnx", threads)
    data = dataset(data_root, work)
    picked = sorted(np.random.default_rng(seed).permutation(len(data))[:frames].tolist())
    masks: dict[str, list[np.ndarray]] = {k: [] for k in CALLS}
    gt_masks: list[np.ndarray] = []
    image_of: list[int] = []
    for index in picked:
        sample = data[index]
        image, gt = sample["image"], np.asarray(sample["masks"], dtype=bool)
        if len(gt) == 0:
            continue
        size = image.shape[:2]
        boxes = boxes_from_masks(gt)
        x = model.transform.preprocess_image(image)[None]
        with torch.no_grad():
            torch_emb = model.encode(x)[0]
        ((single, _),) = model.predict_batch([image], [boxes], image_embeddings=[torch_emb])
        ((multi, scores),) = model.predict_batch([image], [boxes], multimask=True, image_embeddings=[torch_emb])
        onnx_emb = encoder.run(None, {"image": x.numpy()})[0]
        for k, box in enumerate(boxes):
            masks["predict"].append(single[k])
            masks["predict_best_of_3"].append(multi[k, int(np.argmax(scores[k]))])
            for key, pad in (("onnx_box_pad", True), ("onnx_box", False)):
                feed = {**decoder_feed(model, box, size, pad=pad), "image_embeddings": onnx_emb}
                masks[key].append(decoder.run(None, feed)[0][0, 0] > 0)
            gt_masks.append(gt[k])
            image_of.append(int(sample["image_id"]))
    return {"masks": masks, "gt": gt_masks, "image_of": np.array(image_of), "frames": picked, "data": data.name}


def summarise(m: dict[str, Any]) -> tuple[list[dict], list[dict], list[dict]]:
    masks, gt, image_of = m["masks"], m["gt"], m["image_of"]
    vs_gt = {k: np.array([_iou(p, g) for p, g in zip(masks[k], gt)]) for k in CALLS}
    agreement_rows, gt_rows, checks = [], [], []
    for key in ("onnx_box_pad", "onnx_box"):
        for ref in ("predict", "predict_best_of_3"):
            iou = np.array([_iou(a, b) for a, b in zip(masks[key], masks[ref])])
            agreement_rows.append(
                {
                    "onnx_call": CALLS[key],
                    "compared_with": CALLS[ref],
                    "mean_iou": round(float(iou.mean()), 4),
                    "ci95": C.bootstrap_mean_over_images(iou, image_of),
                    "identical_masks": f"{int(sum(np.array_equal(a, b) for a, b in zip(masks[key], masks[ref])))} of {len(iou)}",
                    "min_iou": round(float(iou.min()), 4),
                }
            )
    for key in CALLS:
        diff = vs_gt[key] - vs_gt["predict"]
        gt_rows.append(
            {
                "call": CALLS[key],
                "mean_iou_vs_ground_truth": round(float(vs_gt[key].mean()), 4),
                "ci95": C.bootstrap_mean_over_images(vs_gt[key], image_of),
                "minus_predict": round(float(diff.mean()), 4),
                "minus_predict_ci95": C.bootstrap_mean_over_images(diff, image_of),
            }
        )
    near = [
        _iou(a, b) >= 0.999
        for a, b in zip(masks["onnx_box"], masks["predict_best_of_3"])  # float noise may flip a border pixel
    ]
    checks.append(
        {
            "name": "decoder.onnx with the corners alone gives predict(multimask=True)'s best mask (IoU >= 0.999) on every object",
            "passed": all(near),
            "objects": len(near),
        }
    )
    return agreement_rows, gt_rows, checks


def main(argv: list[str] | None = None) -> int:
    import onnxruntime

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", help="an imported TrashCan folder (samadapt data import-trashcan)")
    ap.add_argument("--frames", type=int, default=200, help="val frames, a seeded draw (default 200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="4 frames: the test suite's run")
    ap.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads (default 1)")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    frames = 4 if args.smoke else args.frames
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    bench: dict[str, Any] = {
        "benchmark": "onnx_box_prompt",
        "mode": "smoke" if args.smoke else "full",
        "device": "cpu",
        "command": "python benchmarks/onnx_box_prompt.py"
        + (" --smoke" if args.smoke else f" --frames {frames}")
        + (f" --seed {args.seed}" if args.seed else ""),
        "machine": {**C.machine_info("cpu"), "onnxruntime": onnxruntime.__version__},
        "setup": {
            "model": "built-in mini (zero-shot), samadapt.export(to='onnx'), onnxruntime CPU provider",
            "prompts": "each object's tight ground-truth box (XYXY), one prompt per object",
            "interval": "bootstrap 95% over frames (an image's objects resampled together), 2000 rounds",
        },
        "tables": [],
        "checks": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        m = measure(frames, args.seed, args.threads, args.data_root, Path(tmp))
    agreement, vs_gt, bench["checks"] = summarise(m)
    bench["setup"].update(data=m["data"], frames=len(m["frames"]), objects=len(m["gt"]), frame_indices=m["frames"])
    bench["tables"] += [
        {
            "title": "IoU between the ONNX call's mask and predict's, per object (mean, bootstrap 95% interval)",
            "columns": ["onnx_call", "compared_with", "mean_iou", "ci95", "identical_masks", "min_iou"],
            "rows": agreement,
        },
        {
            "title": "mean IoU against the ground truth, and the paired difference to predict (box, single mask)",
            "columns": ["call", "mean_iou_vs_ground_truth", "ci95", "minus_predict", "minus_predict_ci95"],
            "rows": vs_gt,
        },
    ]
    C.finish(bench, t0)
    name = "onnx_box_prompt-cpu.json" if not args.smoke else "onnx_box_prompt-cpu-smoke.json"
    path = C.write_json(Path(args.out) / name, bench)
    print(f"-> {path} ({bench['elapsed_s']} s, {len(m['frames'])} frames, {len(m['gt'])} objects)")
    return 0 if all(c["passed"] for c in bench["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())

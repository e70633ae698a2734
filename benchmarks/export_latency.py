"""ONNX exports on the CPU: onnxruntime vs torch latency, and what int8 quantisation costs.

For ``mini`` (built-in weights) and ViT-B (random weights, official 1024 px architecture), in one run:

- encoder: ``AdaptedSam.encode`` (torch, samadapt's defaults: SDPA attention) vs ``encoder.onnx`` and
  ``encoder_int8.onnx`` on onnxruntime's CPU provider, one preprocessed image;
- decoder: the exported module itself run by torch (``SamOnnxModel`` with samadapt's dynamic crop:
  prompt encoder, mask decoder, masks upsampled to the image) vs ``decoder.onnx`` / ``decoder_int8.onnx``,
  one box prompt;
- accuracy: mean IoU against the ground truth of the generated waste validation images (``mini``,
  box prompts as labelling tools send them: the two corners plus the padding point), fp32 vs int8,
  with a bootstrap 95% interval (resampling images), and the IoU between the int8 and the fp32 masks. ViT-B has random
  weights, so its IoU to the ground truth means nothing and is not measured.

Both runtimes get the same number of threads (``--threads``, default 1: with 2 threads on a 2-core
CPU that other jobs share, torch's OpenMP workers wait for a free core at every operator, so its time
measures the neighbours' load more than the runtime; ``benchmarks/run.py --quick`` pins one thread
for the same reason) and take turns call by call, so a change of load hits them alike. The latency
is the minimum over the timed repetitions after the warm-up calls (least disturbed on a shared
machine); the medians are kept too.

    python benchmarks/export_latency.py              # mini + ViT-B: about 10 minutes on a busy 2-core CPU
    python benchmarks/export_latency.py --smoke      # mini only, 4 images: under a minute (the test suite)

Writes ``benchmarks/results/export_latency-cpu.json`` (``--out`` to change the folder).
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

import samadapt  # noqa: E402
from samadapt.data.synthetic import render_demo_image  # noqa: E402
from samadapt.exporters.onnx import dynamic_crop_decoder  # noqa: E402
from samadapt.exporters.sam import plain_sam  # noqa: E402

PLANS = {
    "full": {
        "models": ["mini", "vit_b"],
        "warmup": 1,
        "reps": {"mini": 20, "vit_b": 2},
        "decoder_reps": 20,
        "val_images": 30,
    },
    "smoke": {"models": ["mini"], "warmup": 1, "reps": {"mini": 2}, "decoder_reps": 2, "val_images": 4},
}


def _model(model_type: str) -> samadapt.AdaptedSam:
    """``mini``: the built-in weights; ViT-B: random official architecture (seed 0). Decoder strategy,
    unchanged: what is measured is the runtime, not an adaptation."""
    if model_type == "mini":
        return samadapt.adapt(samadapt.build_sam("mini"), "decoder").eval()
    return samadapt.adapt(C.build_variant(model_type, seed=0), "decoder").eval()


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def decoder_feed(model, box: np.ndarray, size: tuple[int, int], *, pad: bool) -> dict[str, np.ndarray]:
    """decoder.onnx inputs for one XYXY box in image pixels (corners labelled 2 and 3, optionally the
    -1 padding point labelling tools append)."""
    coords = model.transform.apply_boxes(box, size).numpy().reshape(2, 2)
    labels = np.array([2.0, 3.0])
    if pad:
        coords, labels = np.concatenate([coords, [[0.0, 0.0]]]), np.append(labels, -1.0)
    low = model.card.low_res_size
    return {
        "image_embeddings": None,
        "point_coords": coords[None].astype(np.float32),
        "point_labels": labels[None].astype(np.float32),
        "mask_input": np.zeros((1, 1, low, low), np.float32),
        "has_mask_input": np.zeros(1, np.float32),
        "orig_im_size": np.array(size, np.float32),
    }


def interleaved(calls: dict[str, Any], *, warmup: int, reps: int) -> dict[str, dict[str, Any]]:
    """Time each call ``reps`` times, the calls taking turns (torch, onnxruntime fp32, int8, torch,
    ...), so that a change of load on a shared machine hits every runtime alike."""
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    walls: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(reps):
        for key, fn in calls.items():
            walls[key].append(C.time_call(fn, "cpu")[0])
    return {k: C.summarise(w) for k, w in walls.items()}


def latency(model_type: str, plan: dict[str, Any], threads: int, work: Path, bench: dict[str, Any]) -> list[dict]:
    model = _model(model_type)
    folder = work / model_type
    start = time.perf_counter()
    samadapt.export(model, to="onnx", out=folder, quantize=True)
    export_s = time.perf_counter() - start
    sample = render_demo_image("waste", seed=0, split="val", index=0)
    size = sample.image.shape[:2]
    x = model.transform.preprocess_image(sample.image)[None]
    sessions = {
        q: (session(folder / f"encoder{q}.onnx", threads), session(folder / f"decoder{q}.onnx", threads))
        for q in ("", "_int8")
    }
    feed_image = {"image": x.numpy()}

    with torch.no_grad():
        encoder = interleaved(
            {
                "torch": lambda: model.encode(x),
                "fp32": lambda: sessions[""][0].run(None, feed_image),
                "int8": lambda: sessions["_int8"][0].run(None, feed_image),
            },
            warmup=plan["warmup"],
            reps=plan["reps"][model_type],
        )
        embeddings = model.encode(x).numpy()
    theirs = sessions[""][0].run(None, feed_image)[0]
    rel = float(np.abs(theirs - embeddings).max() / np.abs(embeddings).max())
    bench["checks"].append(
        {
            "name": f"{model_type}: encoder.onnx embeddings within 1e-4 relative of torch",
            "passed": rel <= 1e-4,
            "max_rel_diff": rel,
        }
    )

    ys, xs = sample.masks[0].nonzero()  # the first object's tight box
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
    feed = {**decoder_feed(model, box, size, pad=False), "image_embeddings": theirs}
    torch_decoder = dynamic_crop_decoder(plain_sam(model))
    torch_feed = {k: torch.from_numpy(v) for k, v in feed.items()}
    with torch.no_grad():
        decoder = interleaved(
            {
                "torch": lambda: torch_decoder(**torch_feed),
                "fp32": lambda: sessions[""][1].run(None, feed),
                "int8": lambda: sessions["_int8"][1].run(None, feed),
            },
            warmup=plan["warmup"],
            reps=plan["decoder_reps"],
        )
        torch_masks = torch_decoder(**torch_feed)[0].numpy()
    same = bool(np.array_equal(sessions[""][1].run(None, feed)[0] > 0, torch_masks > 0))
    bench["checks"].append({"name": f"{model_type}: decoder.onnx masks equal the torch module's", "passed": same})

    weights = " (built-in weights)" if model_type == "mini" else " (random weights)"
    what = C.describe_variant(model_type)["what"] + weights
    rows = []
    for part, t in (("encoder", encoder), ("decoder", decoder)):
        rows.append(
            {
                "model": what,
                "part": part,
                "torch_s": round(t["torch"]["wall_s_min"], 4),
                "onnxruntime_s": round(t["fp32"]["wall_s_min"], 4),
                "int8_s": round(t["int8"]["wall_s_min"], 4),
                "torch/onnxruntime": round(t["torch"]["wall_s_min"] / t["fp32"]["wall_s_min"], 2),
                "torch/int8": round(t["torch"]["wall_s_min"] / t["int8"]["wall_s_min"], 2),
                "torch_s_median": round(t["torch"]["wall_s_median"], 4),
                "onnxruntime_s_median": round(t["fp32"]["wall_s_median"], 4),
                "int8_s_median": round(t["int8"]["wall_s_median"], 4),
                "reps": t["torch"]["n"],
            }
        )
    sizes = {f.name: f.stat().st_size for f in sorted(folder.glob("*.onnx"))}
    bench["exports"][model_type] = {"export_s": round(export_s, 1), "file_bytes": sizes}
    return rows


def accuracy(plan: dict[str, Any], threads: int, work: Path) -> tuple[list[dict], dict[str, Any]]:
    """mini on the generated waste validation images: mean IoU to the ground truth, fp32 vs int8."""
    model = _model("mini")
    folder = work / "mini"
    sessions = {
        q: (session(folder / f"encoder{q}.onnx", threads), session(folder / f"decoder{q}.onnx", threads))
        for q in ("", "_int8")
    }
    ious: dict[str, list[float]] = {"torch": [], "fp32": [], "int8": [], "int8_vs_fp32": []}
    image_of: list[int] = []
    for index in range(plan["val_images"]):
        sample = render_demo_image("waste", seed=0, split="val", index=index)
        size = sample.image.shape[:2]
        x = model.transform.preprocess_image(sample.image)[None].numpy()
        emb = {q: enc.run(None, {"image": x})[0] for q, (enc, _) in sessions.items()}
        boxes = []
        for gt in sample.masks:
            ys, xs = gt.nonzero()
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        boxes = np.array(boxes, np.float32)
        torch_masks, _ = model.predict(sample.image, boxes=boxes)
        for gt, box, ours in zip(sample.masks, boxes, torch_masks):
            masks = {}
            for q, (_, dec) in sessions.items():
                feed = {**decoder_feed(model, box, size, pad=True), "image_embeddings": emb[q]}
                masks[q] = dec.run(None, feed)[0][0, 0] > 0
            image_of.append(index)
            for key, pred, ref in (
                ("torch", ours, gt),
                ("fp32", masks[""], gt),
                ("int8", masks["_int8"], gt),
                ("int8_vs_fp32", masks["_int8"], masks[""]),
            ):
                ious[key].append(float((pred & ref).sum() / max(1, (pred | ref).sum())))
    arrays = {k: np.array(v) for k, v in ious.items()}
    image_of = np.array(image_of)
    rows = [
        {
            "runtime": name,
            "compared_with": "ground truth" if key != "int8_vs_fp32" else "fp32 ONNX masks",
            "mean_iou": round(float(arrays[key].mean()), 4),
            "ci95": C.bootstrap_mean_over_images(arrays[key], image_of),
            "objects": int(arrays[key].size),
        }
        for key, name in (
            ("torch", "torch AdaptedSam.predict (box, single mask)"),
            ("fp32", "onnxruntime fp32 (box + padding point)"),
            ("int8", "onnxruntime int8 (box + padding point)"),
            ("int8_vs_fp32", "onnxruntime int8 vs fp32"),
        )
    ]
    diff = arrays["int8"] - arrays["fp32"]
    summary = {
        "int8_minus_fp32_mean_iou": round(float(diff.mean()), 4),
        "int8_minus_fp32_ci95": C.bootstrap_mean_over_images(diff, image_of),
        "images": plan["val_images"],
        "objects": int(diff.size),
    }
    return rows, summary


def main(argv: list[str] | None = None) -> int:
    import onnxruntime

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="mini only, few repetitions and images")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads of both runtimes (default 1)")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    mode = "smoke" if args.smoke else "full"
    plan = PLANS[mode]
    threads = args.threads
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    bench: dict[str, Any] = {
        "benchmark": "export_latency",
        "mode": mode,
        "device": "cpu",
        "dtype": "fp32",
        "command": "python benchmarks/export_latency.py"
        + (" --smoke" if args.smoke else "")
        + (f" --threads {threads}" if threads != 1 else ""),
        "machine": {
            **C.machine_info("cpu"),
            "onnxruntime": onnxruntime.__version__,
            "onnxruntime_threads": threads,
        },  # machine_info's torch_threads is the same number
        "setup": {
            "plan": plan,
            "timing": "min (and median) wall-clock over the repetitions after the warm-up calls; torch, "
            "onnxruntime fp32 and int8 take turns call by call",
            "demo_data": "render_demo_image('waste', seed=0, split='val', index=i): the images and exact "
            "masks make_demo_dataset(seed=0) writes (before JPEG)",
        },
        "tables": [],
        "checks": [],
        "exports": {},
        "summary": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for model_type in plan["models"]:
            rows += latency(model_type, plan, threads, Path(tmp), bench)
        bench["tables"].append(
            {
                "title": "latency per call, seconds (torch / onnxruntime: above 1 means onnxruntime is faster)",
                "columns": ["model", "part", "torch_s", "onnxruntime_s", "int8_s", "torch/onnxruntime", "torch/int8"],
                "rows": rows,
            }
        )
        acc_rows, bench["summary"] = accuracy(plan, threads, Path(tmp))
        bench["tables"].append(
            {
                "title": "mini on generated waste validation images: mean IoU (bootstrap 95% interval)",
                "columns": ["runtime", "compared_with", "mean_iou", "ci95", "objects"],
                "rows": acc_rows,
            }
        )
    C.finish(bench, t0)
    print(bench["summary"])
    path = C.write_json(
        Path(args.out) / "export_latency-cpu.json"
        if mode == "full"
        else Path(args.out) / "export_latency-cpu-smoke.json",
        bench,
    )
    print(f"-> {path} ({bench['elapsed_s']} s)")
    return 0 if all(c["passed"] for c in bench["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())

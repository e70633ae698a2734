"""The GPU run of ``benchmarks/gpu.sh``: the GPU targets, sized to finish in at most 8 minutes on one
H100, every result written into one folder as soon as it exists.

    python benchmarks/gpu.py --out DIR               # one CUDA GPU (gpu.sh runs this after its installs)
    python benchmarks/gpu.py --out DIR --dry-run     # the same code paths on the CPU at tiny sizes (< 3 min)
    python benchmarks/gpu.py --estimate              # the FLOP-based time estimate of the GPU run, then exit

Parts (each a benchmark module of ``benchmarks/run.py`` with the plan below; ``PARTS``):

- ``train_step`` (bf16): ViT-H lora and adapter at 1024 px, batch 2, with and without activation
  checkpointing: target peak <= 16 GiB with checkpointing.
- ``cached_embeddings`` (bf16): ViT-H, the cached path vs the encoder every step, and decoder-only
  training at batch 32 x 8 prompts: target >= 2,000 prompts/s.
- ``inference`` (bf16): ViT-H ``predict_batch``: target >= 25 images/s.
- ``batched_prediction`` (bf16): ``predict_batch`` vs a ``SamPredictor`` loop, ViT-H: target >= 1.5x.
- ``limits`` (bf16): the decoder step, the ViT-H encoder forward and ``predict_batch`` as a share of a
  bf16 matmul's FLOP/s.
- fp32 equality pass (``DIR/fp32``): ``sdpa_attention`` and ``batched_prediction`` (ViT-B), whose
  equality checks are exact only in fp32, and ``activation_checkpointing`` at ViT-H.

Time: ``--estimate`` (and every ``--dry-run``, which fails when the GPU plan does not fit 8 minutes)
counts each part's FLOPs with ``torch.utils.flop_counter`` on the meta device (no memory, no compute),
divides them by conservative sustained rates for an H100 (``RATES``: a quarter of the dense bf16
tensor-core peak; fp32 without TF32 at well under its peak) and adds fixed costs (process starts,
model builds, host-side image work): about 3.5 minutes, most of it fixed costs. On the GPU no part
starts after ``--deadline`` seconds (default 390), each part's JSON is written when it ends, so a
run stopped from outside keeps what finished. ``DIR/summary.md`` and ``DIR/summary.json``: per-part
status and time, the targets, failed checks, and (dry run) the GPU estimate.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _common as C  # noqa: E402
import torch  # noqa: E402

#: sustained FLOP/s assumed for the estimate (H100 SXM dense peaks: ~989 TFLOP/s bf16, ~67 fp32)
RATES = {"bf16": 250e12, "fp32": 25e12}
#: fixed costs in seconds: a Python process with torch + samadapt + CUDA context, one model build
#: on the GPU, host-side preprocessing of one image (resize + normalise) and mask post-processing
OVERHEAD = {"process": 20.0, "build": 4.0, "image": 0.015}
BUDGET_S = 8 * 60


def plans(dry: bool) -> list[dict[str, Any]]:
    """The parts in run order: ``{"name", "dtype", "out", "plan", "units"}``; ``units`` lists what the
    estimate counts: (kind, model, count, size), kind one of encoder / encoder_train / decoder_step /
    predict (see :func:`unit_flops`)."""
    # dry: mini at 64 px (bf16 matmuls are emulated on CPUs without bf16 units, ~10x slower than fp32)
    big = {"model_type": "mini", "image_size": 64} if dry else {"model_type": "vit_h"}
    mid = big if dry else {"model_type": "vit_b"}
    mt = big["model_type"]
    n = 2 if dry else 1  # dry: a few of everything; GPU: the sizes below
    train = {
        "variants": [big],
        "strategies": ["lora", "adapter"],
        "batch": 2,
        "prompts": 2 if dry else 8,
        "warmup": 1,
        "reps": 1 if dry else 3,
        "reps_large": 1 if dry else 3,
        "checkpointing": [False, True],
        "memory_target": {"variant": big, "gib": 16},
    }
    cached = {
        "variants": [big],
        "batch": 1,
        "prompts": 2 if dry else 8,
        "steps_encoder": 1 if dry else 3,
        "steps_cached": 2 if dry else 10,
        "throughput_batch": 4 if dry else 32,
    }
    infer = {
        "variants": [big],
        "images": 4 if dry else 32,
        "boxes": 2 if dry else 6,
        "batch_sizes": [2, 4] if dry else [8, 16],
        "reps": 1 if dry else 2,
        "images_per_s_target": {"variant": big, "value": 25},
    }
    batched = {
        "variants": [big],
        "images": 2 if dry else 16,
        "boxes": 2 if dry else 6,
        "batch_size": 2 if dry else 8,
        "reps": 1 if dry else 3,
    }
    limits = {
        "decoder": big,
        "encoder": big,
        "predict": big,
        "batch": 1,
        "prompts": 2 if dry else 8,
        "predict_images": 2 if dry else 16,
        "boxes": 2 if dry else 6,
        "reps": 1 if dry else 5,
        "long_reps": 1 if dry else 5,
        "matmul_sizes": [128, 256] if dry else [4096, 8192],
    }
    attention = (
        {"tokens": 16, "dim": 128, "heads": 4, "window": 8, "reps": 1}
        if dry
        else {"tokens": 64, "dim": 768, "heads": 12, "window": 14, "reps": 10}
    )
    batched32 = {**batched, "variants": [mid]}
    ckpt = {"variants": [big], "strategies": ["lora", "adapter"], "batch": 1, "prompts": 2 if dry else 8}
    ti, tb, tp = infer["images"], batched["images"], limits["predict_images"]
    k = train["warmup"] + train["reps_large"]
    return [
        part(
            "train_step",
            "bf16",
            train,
            [("train_lora", mt, 2 * k, 2), ("train_adapter", mt, 2 * k, 2)],
            builds=4,
            processes=1,
        ),
        part(
            "cached_embeddings",
            "bf16",
            cached,
            [
                ("encoder", mt, 1 + cached["steps_encoder"], 1),
                ("decoder_step", mt, 3 + 2 * cached["steps_cached"], cached["prompts"]),
                ("decoder_step", mt, 2 + cached["steps_cached"], cached["throughput_batch"] * cached["prompts"]),
            ],
            builds=1,
        ),
        part(
            "inference",
            "bf16",
            infer,
            [("predict", mt, len(infer["batch_sizes"]) * (infer["reps"] + 2) * ti, infer["boxes"])],
            builds=1,
            images=len(infer["batch_sizes"]) * (infer["reps"] + 2) * ti,
        ),
        part(
            "batched_prediction",
            "bf16",
            batched,
            [("predict", mt, 2 * (batched["reps"] + 1) * tb, batched["boxes"])],
            builds=1,
            images=2 * (batched["reps"] + 1) * tb,
        ),
        part(
            "limits",
            "bf16",
            limits,
            [
                ("decoder_step", mt, limits["reps"] + 2, limits["prompts"]),
                ("encoder", mt, limits["reps"] + 2, 1),
                ("predict", mt, (limits["reps"] + 2) * tp, limits["boxes"]),
            ],
            builds=3,
            images=(limits["reps"] + 2) * tp,
        ),
        part(
            "sdpa_attention",
            "fp32",
            attention,
            [("attention_blocks", "vit_b", 2 * 3 * (attention["reps"] + 1), 1)],
            processes=1,
            out="fp32",
        ),
        part(
            "batched_prediction",
            "fp32",
            batched32,
            [("predict", mid["model_type"], 2 * (batched["reps"] + 1) * tb, batched["boxes"])],
            builds=1,
            images=2 * (batched["reps"] + 1) * tb,
            out="fp32",
        ),
        part(
            "activation_checkpointing",
            "fp32",
            ckpt,
            [("train_lora", mt, 2 * n, 1), ("train_adapter", mt, 2 * n, 1)],
            builds=4,
            processes=2,
            out="fp32",
        ),
    ]


def part(name, dtype, plan, units, *, builds=0, processes=0, images=0, out="") -> dict[str, Any]:
    return {
        "name": name,
        "dtype": dtype,
        "plan": plan,
        "units": units,
        "builds": builds,
        "processes": processes,
        "images": images,
        "out": out,
    }


# ------------------------------------------------------------------------------------------ estimate
def unit_flops(kind: str, model_type: str, size: int) -> float:
    """FLOPs of one unit, counted on the meta device: ``encoder`` (one image forward), ``decoder_step``
    (``size`` prompts of one image: forward + backward), ``predict`` (one image: encoder + ``size``
    prompts forward), ``train_lora`` / ``train_adapter`` (a step of ``size`` images with
    checkpointing: forward, recomputed forward, backward), ``attention_blocks`` (a windowed and a
    global ViT-B block at 1024 px, forward + backward)."""
    if kind == "predict":
        return unit_flops("encoder", model_type, 1) + unit_flops("decoder_forward", model_type, size)
    if kind.startswith("train_"):  # linear in the batch; checkpointing adds one encoder forward
        return size * (_count(kind, model_type, 1) + unit_flops("encoder", model_type, 1))
    return _count(kind, model_type, size)


@functools.lru_cache(maxsize=None)
def _count(kind: str, model_type: str, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    import samadapt
    from samadapt.models.registry import build_sam_architecture, get_model_card

    card = get_model_card(model_type)
    s, e = card.image_size, card.embedding_size
    with torch.device("meta"):
        sam = build_sam_architecture(card)
        model = samadapt.adapt(sam, {"train_lora": "lora", "train_adapter": "adapter"}.get(kind, "decoder"))
        boxes = [torch.tensor([[0.0, 0.0, s / 2, s / 2]]).expand(max(size, 1), 4)]
        emb = torch.empty(1, card.prompt_embed_dim, e, e)
        with FlopCounterMode(display=False) as fc:
            if kind == "encoder":
                with torch.no_grad():
                    model.encode(torch.empty(1, 3, s, s))
            elif kind == "decoder_forward":
                with torch.no_grad():
                    model(image_embeddings=emb, boxes=boxes, multimask=False)
            elif kind == "decoder_step":
                model(image_embeddings=emb, boxes=boxes, multimask=True).low_res_logits.sum().backward()
            elif kind.startswith("train_"):
                model(torch.empty(1, 3, s, s), boxes=boxes, multimask=True).low_res_logits.sum().backward()
            elif kind == "attention_blocks":
                from segment_anything.modeling.image_encoder import Block

                for window in (14, 0):
                    blk = Block(
                        768, 12, use_rel_pos=True, window_size=window, input_size=(64, 64) if window == 0 else (14, 14)
                    )
                    blk(torch.empty(1, 64, 64, 768, requires_grad=True)).sum().backward()
            else:
                raise ValueError(f"unknown unit {kind!r}")
    return float(fc.get_total_flops())


def estimate(parts: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], float]:
    """Seconds per part on one H100 (see the module docstring), with the FLOPs behind them; and the
    whole run's (parts + one process start)."""
    rows = []
    for p in parts:
        flops = sum(count * unit_flops(kind, mt, size) for kind, mt, count, size in p["units"])
        compute = flops / RATES[p["dtype"]]
        fixed = OVERHEAD["process"] * p["processes"] + OVERHEAD["build"] * p["builds"] + OVERHEAD["image"] * p["images"]
        rows.append(
            {
                "part": f"{p['name']} ({p['dtype']})",
                "tflop": round(flops / 1e12, 1),
                "compute_s": round(compute, 1),
                "fixed_s": round(fixed, 1),
                "estimate_s": round(compute + fixed, 1),
            }
        )
    return rows, sum(r["estimate_s"] for r in rows) + OVERHEAD["process"]


# ------------------------------------------------------------------------------------------ run
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", help="folder for every result (JSON per part, summary.md, summary.json)")
    ap.add_argument("--dry-run", action="store_true", help="the same code paths on the CPU at tiny sizes")
    ap.add_argument("--estimate", action="store_true", help="print the GPU run's time estimate and exit")
    ap.add_argument("--deadline", type=float, default=390, help="GPU run: seconds after which no further part starts")
    args = ap.parse_args(argv)
    if args.estimate:
        rows, total = estimate(plans(dry=False))
        print(C.table(rows, ["part", "tflop", "compute_s", "fixed_s", "estimate_s"]))
        print(f"estimated GPU run: {total:.0f} s (budget {BUDGET_S} s) on one H100")
        return 0 if total <= BUDGET_S else 1
    if not args.out:
        ap.error("--out DIR is required")
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA device (torch.cuda.is_available() is False); --dry-run runs the same code on the CPU")
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (the equality checks' tolerances)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    done: list[dict[str, Any]] = []
    for p in plans(dry=args.dry_run):
        started = time.perf_counter() - t0
        entry = {"part": f"{p['name']} ({p['dtype']})", "started_s": round(started, 1)}
        if not args.dry_run and started > args.deadline:
            entry["status"] = f"not run: started after the {args.deadline:.0f} s deadline"
        else:
            entry.update(run_part(p, device, out))
            entry["seconds"] = round(time.perf_counter() - t0 - started, 1)
            print(f"== {entry['part']}: {entry['status']} in {entry['seconds']} s", flush=True)
        done.append(entry)
        write_summary(out, done, None, args.dry_run, device)
    est = None
    if args.dry_run:  # the GPU plan's budget, checked where it is cheap: FLOPs counted on the meta device
        rows, total = estimate(plans(dry=False))
        est = {"parts": rows, "total_s": round(total, 1), "budget_s": BUDGET_S, "fits": total <= BUDGET_S}
    write_summary(out, done, est, args.dry_run, device)
    ok = all(d["status"] == "passed" for d in done) and (est is None or est["fits"])
    print(f"-> {out / 'summary.md'}" + ("" if ok else " (FAILED: see it)"))
    return 0 if ok else 1


def run_part(p: dict[str, Any], device: str, root: Path) -> dict[str, Any]:
    import run as R

    out = root / p["out"]
    module = R.BENCHMARKS[p["name"]]
    args = SimpleNamespace(
        device=device,
        dtype=p["dtype"],
        threads=None,
        threads_note="torch's default thread count",
        out=str(out),
        mode="full" if device == "cuda" else "dry-run",
        profile=False,
    )
    try:
        bench = module.run(args, p["plan"])
        path = bench.write()
    except Exception:
        traceback.print_exc()
        return {"status": "error", "error": traceback.format_exc(limit=3)[-1500:]}
    return {"status": "passed" if bench.passed else "check failed", "file": str(path.relative_to(root))}


def write_summary(out: Path, done, est, dry: bool, device: str) -> None:
    """summary.json and summary.md: parts with their time, targets, failed checks (and, in a dry run,
    the GPU run's estimate)."""
    import report

    targets, failed = [], []
    for f in sorted(out.rglob("*.json")):
        if f.name == "summary.json":
            continue
        d = json.loads(f.read_text())
        for t in d.get("targets", []):
            targets.append({"file": str(f.relative_to(out)), **t})
        failed += [f"{f.relative_to(out)}: {c['name']}" for c in d.get("checks", []) if not c["passed"]]
    machine = C.machine_info(device)
    summary = {
        "dry_run": dry,
        "machine": machine,
        "parts": done,
        "targets": targets,
        "failed_checks": failed,
        "gpu_estimate": est,
    }
    C.write_json(out / "summary.json", summary)
    lines = [
        f"# benchmarks/gpu.sh {'--dry-run (CPU, tiny sizes: the values are not the GPU targets)' if dry else 'run'}",
        "",
        f"{machine.get('device_name')}; torch {machine['torch']}; {machine['date']}.",
        "",
        "## Parts",
        "",
        report.md_table(["part", "status", "seconds", "file"], done),
        "",
        "## Targets",
        "",
        report.md_table(["name", "target", "value", "met", "file"], targets) if targets else "(none measured)",
        "",
        "## Failed checks",
        "",
        "\n".join(f"- {x}" for x in failed) or "none",
        "",
    ]
    if est:
        lines += [
            "## Estimated time of the GPU run (one H100, from FLOPs: benchmarks/gpu.py)",
            "",
            report.md_table(["part", "tflop", "compute_s", "fixed_s", "estimate_s"], est["parts"]),
            "",
            f"Total {est['total_s']:.0f} s of a {est['budget_s']} s budget: {'fits' if est['fits'] else 'DOES NOT FIT'}.",
            "",
        ]
    (out / "summary.md").write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())

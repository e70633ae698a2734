"""``activation_checkpointing`` (d): peak memory and time of a lora/adapter step with and without
checkpointing; gradients equal. The steps run in ``train_step``'s worker."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import _common as C
import torch


def plan(mode: str, models: list[str]) -> dict[str, Any]:
    if mode == "smoke":
        return {"variants": [{"model_type": "mini"}], "strategies": ["lora"], "batch": 1, "prompts": 2}
    if mode == "quick":
        # 1024 px at 2 of 12 blocks, and all 12 blocks at 256 px (the depth is what checkpointing scales with)
        return {
            "variants": [
                {"model_type": "vit_b", "depth": 2, "global_attn_indexes": (1,)},
                {"model_type": "vit_b", "image_size": 256},
            ],
            "warmup_per_variant": [0, 1],  # a warm-up step where it is cheap
            "strategies": ["lora", "adapter"],
            "batch": 1,
            "prompts": 4,
        }
    return {
        "variants": [{"model_type": m} for m in models],
        "strategies": ["lora", "adapter"],
        "batch": 1,
        "prompts": 8,
    }


def run(args, cfg) -> C.Bench:
    """(d) Peak memory and time of lora/adapter training steps with and without checkpointing."""
    b = C.Bench("activation_checkpointing", args, args.mode)
    descs = b.describe_setup(
        cfg,
        step="one training step (model forward, SamLoss, backward, Adam step) per configuration, "
        "after warmup_per_variant warm-up steps (without one, the measured step also "
        "allocates Adam's state); the configurations run one after the other in one "
        "subprocess, each with a fresh model and the memory high-water mark reset before "
        "its measured step",
        memory_ratio="tensor peak of the step with checkpointing / without (target <= 0.5); "
        "rss_ratio: the same with the resident-set peaks",
        timing="steps measured once (no repetition) are timed under the profiler's memory "
        "tracking (timed_with_memory_profiler), equally for both settings",
    )
    if not all(d["official_architecture"] for d in descs):
        b.data["notes"].append(
            "Reduced sizes to fit the CPU time budget. Without checkpointing every block keeps its activations "
            "for backward; with it, each block keeps only its input and one block's activations exist again "
            "during its recomputation. So the saving grows with depth: with 2 blocks the ratio is bounded by "
            "(largest block's activations + backward temporaries) / (all blocks'), and on CPU a global block "
            "at 1024 px is dominated by its 12 x 4096 x 4096 attention maps (SDPA's math path, see "
            "sdpa_attention), which exist in both cases; the 12-block rows at 256 px show the depth effect. "
            "The official ViT-B at 1024 px: `python benchmarks/run.py --only activation_checkpointing --models "
            "vit_b` (activation_checkpointing-cpu-full.json on a CPU); ViT-H: benchmarks/gpu.sh."
        )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        warmups = cfg.get("warmup_per_variant", [cfg.get("warmup", 0)] * len(cfg["variants"]))
        configs = [
            {
                "variant": v,
                "variant_index": i,
                "strategy": st,
                "checkpointing": ck,
                "warmup": warmups[i],
                "save_grads": str(Path(tmp) / f"{i}-{st}-{ck}.pt"),
            }
            for i, v in enumerate(cfg["variants"])
            for st in cfg["strategies"]
            for ck in (False, True)
        ]
        results = C.run_worker(
            C.worker_spec(
                args,
                kind="train_steps",
                configs=configs,
                batch=cfg["batch"],
                prompts=cfg["prompts"],
                warmup=cfg.get("warmup", 0),
                reps=cfg.get("reps", 1),
            )
        )["results"]
        if any("oom" in r for r in results):
            b.data["notes"].append(f"out of memory: {[r['oom'] for r in results if 'oom' in r]}")
        by = {
            (c["variant_index"], c["strategy"], c["checkpointing"]): {
                **r,
                "grads": torch.load(c["save_grads"]) if "oom" not in r else None,
            }
            for c, r in zip(configs, results)
        }
        for i, (v, desc) in enumerate(zip(cfg["variants"], descs)):
            for strategy in cfg["strategies"]:
                off, on = by[(i, strategy, False)], by[(i, strategy, True)]
                if off["grads"] is None or on["grads"] is None:
                    continue
                g0, g1 = off["grads"], on["grads"]
                diff = max(
                    [C.max_rel_diff(g1["loss"], g0["loss"])]
                    + [C.max_rel_diff(g1["grads"][n], g0["grads"][n]) for n in g0["grads"]]
                )
                b.check(
                    f"{v['model_type']}/{strategy} ({desc['what']}): gradients with checkpointing == without",
                    diff <= 1e-4,
                    max_rel_diff=diff,
                    tolerance=1e-4,
                )
                ratio = on["tensor_peak_bytes"] / max(1, off["tensor_peak_bytes"])
                rows.append(
                    {
                        "model": desc["what"],
                        "strategy": strategy,
                        "batch": cfg["batch"],
                        "prompts/image": cfg["prompts"],
                        "step_s_off": round(off["wall_s_min"], 3),
                        "step_s_on": round(on["wall_s_min"], 3),
                        "time_cost": round(on["wall_s_min"] / off["wall_s_min"], 3),
                        "tensor_peak_MiB_off": C.mib(off["tensor_peak_bytes"]),
                        "tensor_peak_MiB_on": C.mib(on["tensor_peak_bytes"]),
                        "memory_ratio": round(ratio, 3),
                        "rss_peak_MiB_off": C.mib(off["peak_step_bytes"]),
                        "rss_peak_MiB_on": C.mib(on["peak_step_bytes"]),
                        "rss_ratio": round(on["peak_step_bytes"] / max(1, off["peak_step_bytes"]), 3),
                        "peak_total_MiB_on": C.mib(on["peak_total_bytes"]),
                        "timed_with_memory_profiler": on.get("timed_with_memory_profiler"),
                    }
                )
                b.target(
                    f"{strategy}: peak step memory with / without checkpointing ({desc['what']})",
                    "<= 0.5",
                    round(ratio, 3),
                    ratio <= 0.5,
                    note="" if desc["official_architecture"] else "reduced size: see notes",
                )
    b.table(
        "activation checkpointing",
        [
            "model",
            "strategy",
            "batch",
            "prompts/image",
            "step_s_off",
            "step_s_on",
            "time_cost",
            "tensor_peak_MiB_off",
            "tensor_peak_MiB_on",
            "memory_ratio",
            "rss_peak_MiB_off",
            "rss_peak_MiB_on",
            "rss_ratio",
        ],
        rows,
    )
    return b

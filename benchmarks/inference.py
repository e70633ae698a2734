"""``inference``: images/s and prompts/s of ``AdaptedSam.predict_batch``."""

from __future__ import annotations

from typing import Any

import _common as C


def plan(mode: str, models: list[str]) -> dict[str, Any]:
    if mode == "smoke":
        return {"variants": [{"model_type": "mini"}], "images": 2, "boxes": 2, "batch_sizes": [2], "reps": 1}
    if mode == "quick":
        return {"variants": [{"model_type": "mini"}], "images": 16, "boxes": 6, "batch_sizes": [1, 8], "reps": 2}
    return {
        "variants": [{"model_type": m} for m in models],
        "images": 64,
        "boxes": 6,
        "batch_sizes": [8, 16],
        "reps": 3,
        **({"images_per_s_target": {"variant": {"model_type": "vit_h"}, "value": 25}} if "vit_h" in models else {}),
    }


def run(args, cfg) -> C.Bench:
    import numpy as np

    import samadapt

    b = C.Bench("inference", args, args.mode)
    b.describe_setup(
        cfg,
        call="AdaptedSam.predict_batch(images, boxes, batch_size=...) on RGB uint8 images of "
        "480x640, 640x480 and 512x512 (masks at the original size, scores); "
        "decoder strategy, all fast paths on (library defaults)",
    )
    rows = []
    for v in cfg["variants"]:
        sam = C.build_variant(v["model_type"], device=args.device, **C.variant_kwargs(v))
        model = samadapt.adapt(sam, "decoder")
        images, boxes = C.predict_inputs(cfg)
        outs = {}
        for bs in cfg["batch_sizes"]:

            def call(bs=bs):
                with C.autocast(args.device, args.dtype):
                    return model.predict_batch(images, boxes, batch_size=bs)

            t = C.repeat(call, args.device, warmup=1, reps=cfg["reps"])
            outs[bs] = call()
            s = t["wall_s_min"]
            rows.append(
                {
                    "model": C.describe_variant(**v)["what"],
                    "batch_size": bs,
                    "images": len(images),
                    "prompts": len(images) * cfg["boxes"],
                    "seconds": round(s, 4),
                    "seconds_median": round(t["wall_s_median"], 4),
                    "images/s": round(len(images) / s, 2),
                    "prompts/s": round(len(images) * cfg["boxes"] / s, 1),
                }
            )
        first = outs[cfg["batch_sizes"][0]]
        for bs, o in outs.items():
            same = all(np.array_equal(m1, m2) for (m1, _), (m2, _) in zip(first, o))
            b.check(f"{v['model_type']}: masks with batch_size={bs} equal batch_size={cfg['batch_sizes'][0]}", same)
        goal = cfg.get("images_per_s_target")  # {"variant", "value"}: ViT-H on a GPU (gpu.sh)
        if goal and v == goal["variant"] and args.dtype == "bf16":
            what = C.describe_variant(**v)["what"]
            best = max(r["images/s"] for r in rows if r["model"] == what)
            b.target(f"{v['model_type']} prediction, bf16", f">= {goal['value']} images/s", best, best >= goal["value"])
        del model, sam
    b.table(
        "predict_batch throughput",
        ["model", "batch_size", "images", "prompts", "seconds", "images/s", "prompts/s"],
        rows,
    )
    return b

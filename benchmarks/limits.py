"""``limits``: how far three calls run from what this machine does on a plain matrix product.

For the decoder training step on cached embeddings (decoder forward, SamLoss, backward, Adam), the
encoder forward and ``predict_batch``: the achieved FLOP/s (FLOPs counted by PyTorch's
``torch.utils.flop_counter.FlopCounterMode`` in an untimed warm-up call: matrix products,
convolutions and attention; elementwise work, normalisations and resizes count zero) divided by the
FLOP/s of a plain ``torch.mm`` of square matrices in the same dtype, measured in the same run
(best of several sizes). Then ``torch.profiler`` splits each call's time into matrix-product ops
(mm, addmm, bmm, convolutions, attention kernels) and the rest: the share of the limit is
(time in matrix products / total time) x (their own FLOP/s / the plain matmul's), and the ops
outside the matrix products are what keeps the call below the limit.
"""

from __future__ import annotations

from typing import Any

import _common as C
import torch

#: ops that do the counted FLOPs (by name prefix, as torch.profiler reports them)
MATMUL_OPS = (
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::baddbmm",
    "aten::_scaled_dot_product",
    "aten::_flash_attention",
    "aten::_efficient_attention",
    "aten::mkldnn_convolution",
    "aten::convolution_backward",
    "aten::cudnn_convolution",
    "aten::_convolution",
    "aten::_slow_conv2d",
    "aten::slow_conv_transpose2d",
)


def plan(mode: str, models: list[str]) -> dict[str, Any]:
    if mode == "smoke":
        return {
            "decoder": {"model_type": "mini"},
            "encoder": {"model_type": "mini"},
            "predict": {"model_type": "mini"},
            "batch": 1,
            "prompts": 2,
            "predict_images": 2,
            "boxes": 2,
            "reps": 1,
            "matmul_sizes": [128, 256],
        }
    if mode == "quick":
        return {
            "decoder": {"model_type": "vit_b"},
            "encoder": {"model_type": "vit_b"},
            "predict": {"model_type": "mini"},
            "batch": 1,
            "prompts": 8,
            "predict_images": 16,
            "boxes": 6,
            "reps": 3,
            "long_reps": 2,
            "matmul_sizes": [512, 1024, 2048],
            "not_run": {
                "predict_batch at vit_b": "one ViT-B image is an encoder forward plus a decoder pass (both rows "
                "above); left out of --quick to save two encoder forwards"
            },
        }
    big = models[-1] if models else "vit_h"
    return {
        "decoder": {"model_type": big},
        "encoder": {"model_type": big},
        "predict": {"model_type": big},
        "batch": 1,
        "prompts": 8,
        "predict_images": 16,
        "boxes": 6,
        "reps": 5,
        "matmul_sizes": [2048, 4096, 8192],
    }


def _count_cpu_flash_attention() -> None:
    """FlopCounterMode counts SDPA's CUDA kernels but not the CPU flash kernel: same formula."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    fc.flop_registry.setdefault(
        aten._scaled_dot_product_flash_attention_for_cpu, fc.flop_registry[aten._scaled_dot_product_flash_attention]
    )


def matmul_peak(device: str, dtype: str, sizes: list[int], reps: int = 5) -> dict[str, Any]:
    """FLOP/s of ``torch.mm`` on n x n matrices (best over sizes and repetitions)."""
    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    rows = []
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dt)
        bm = torch.randn(n, n, device=device, dtype=dt)
        t = C.repeat(lambda: torch.mm(a, bm), device, warmup=1, reps=reps)
        rows.append({"n": n, "seconds": t["wall_s_min"], "gflops_per_s": 2 * n**3 / t["wall_s_min"] / 1e9})
    best = max(rows, key=lambda r: r["gflops_per_s"])
    return {"dtype": str(dt).replace("torch.", ""), "best_gflops_per_s": round(best["gflops_per_s"], 1), "sizes": rows}


def measure(fn, device: str, reps: int, long_reps: int) -> dict[str, Any]:
    """FLOPs (warm-up call under FlopCounterMode), wall-clock minimum over ``reps`` calls (``long_reps``
    if the warm-up took over 2 s), and torch.profiler's split of one call into matrix products and
    the rest (an extra call, or for long calls one of the timed ones: the profiler's per-op cost is
    then negligible)."""
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        warm, _, _ = C.time_call(fn, device)
    flops = counter.get_total_flops()
    long_call = warm > 2.0
    walls = [C.time_call(fn, device)[0] for _ in range((long_reps if long_call else reps) - long_call)]
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=acts) as prof:
        w, _, _ = C.time_call(fn, device)
    if long_call:
        walls.append(w)
    key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    # on CUDA the kernels' time is attributed to the aten op that launched them; the kernel events
    # themselves (device type CUDA) would count it twice
    ops = [e for e in prof.key_averages() if device != "cuda" or e.device_type == torch.autograd.DeviceType.CPU]
    events = [(e.key, getattr(e, key)) for e in ops]
    total = sum(t for _, t in events) or 1
    mm = sum(t for k, t in events if k.startswith(MATMUL_OPS))
    rest = sorted(((k, t) for k, t in events if not k.startswith(MATMUL_OPS)), key=lambda x: -x[1])[:5]
    return {
        "flops": flops,
        "seconds": min(walls),
        "reps": len(walls),
        "matmul_time_share": mm / total,
        "other_top_ops": [f"{k.removeprefix('aten::')} {t / total:.0%}" for k, t in rest],
    }


def run(args, cfg) -> C.Bench:
    import samadapt
    from samadapt.training.losses import SamLoss

    dev = args.device
    _count_cpu_flash_attention()
    b = C.Bench("limits", args, args.mode)
    b.describe_setup(
        {**cfg, "variants": [cfg["decoder"], cfg["encoder"], cfg["predict"]]},
        what="achieved FLOP/s = FLOPs counted by torch.utils.flop_counter (matrix products, convolutions, "
        "attention; elementwise work counts zero) / wall-clock minimum; share = achieved / a plain torch.mm "
        "of square matrices in the same dtype, this run; matmul_time_share and matmul_efficiency: "
        "torch.profiler's time in matrix-product ops over the call's, and those ops' own FLOP/s over the "
        "plain matmul's (share = their product)",
        call="decoder step: model(image_embeddings, boxes, multimask=True) -> SamLoss -> backward -> Adam "
        "(cached embeddings); encoder: AdaptedSam.encode (SDPA, no grad); predict_batch: masks at the "
        "original size (480x640, 640x480, 512x512 images)",
    )
    peak = matmul_peak(dev, args.dtype, cfg["matmul_sizes"])
    b.data["summary"]["matmul_peak_gflops_per_s"] = peak["best_gflops_per_s"]
    b.data["matmul"] = peak
    rows = []
    for name, v, make in (
        ("decoder step (cached embeddings)", cfg["decoder"], _decoder_step),
        ("encoder forward", cfg["encoder"], _encoder_forward),
        ("predict_batch", cfg["predict"], _predict_batch),
    ):
        sam = C.build_variant(v["model_type"], device=dev, **C.variant_kwargs(v))
        model = samadapt.adapt(sam, "decoder")
        fn, what = make(model, cfg, dev, args.dtype, SamLoss())
        m = measure(fn, dev, cfg["reps"], cfg.get("long_reps", cfg["reps"]))
        achieved = m["flops"] / m["seconds"] / 1e9
        share = achieved / peak["best_gflops_per_s"]
        rows.append(
            {
                "call": name,
                "model": C.describe_variant(**v)["what"],
                "size": what,
                "gflop": round(m["flops"] / 1e9, 2),
                "seconds": round(m["seconds"], 4),
                "gflops_per_s": round(achieved, 1),
                "share_of_matmul": round(share, 3),
                "matmul_time_share": round(m["matmul_time_share"], 3),
                "matmul_efficiency": round(share / m["matmul_time_share"], 3) if m["matmul_time_share"] else None,
                "other_top_ops": ", ".join(m["other_top_ops"]),
            }
        )
        del model, sam, fn
    b.table(
        f"achieved FLOP/s beside a plain {peak['dtype']} matmul ({peak['best_gflops_per_s']} GFLOP/s)",
        [
            "call",
            "model",
            "size",
            "gflop",
            "seconds",
            "gflops_per_s",
            "share_of_matmul",
            "matmul_time_share",
            "matmul_efficiency",
            "other_top_ops",
        ],
        rows,
    )
    return b


def _decoder_step(model, cfg, dev, dtype, loss_fn):
    model.train()
    size = model.sam.image_encoder.img_size
    _, boxes, gt = C.random_training_batch(cfg["batch"], cfg["prompts"], size, seed=3, device=dev)
    pe = model.sam.prompt_encoder  # its sizes, not the registered card's (a variant may change them)
    emb = torch.randn(cfg["batch"], pe.embed_dim, *pe.image_embedding_size, device=dev)
    opt = torch.optim.Adam([p for _, p in model.trainable_named_parameters()], lr=1e-6)

    def step():
        with C.autocast(dev, dtype):
            out = model(image_embeddings=emb, boxes=boxes, multimask=True)
        loss_fn(out.low_res_logits, out.iou_predictions, gt).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, f"{cfg['batch']} image(s) x {cfg['prompts']} boxes"


def _encoder_forward(model, cfg, dev, dtype, loss_fn):
    model.eval()
    size = model.sam.image_encoder.img_size
    x = torch.randn(cfg["batch"], 3, size, size, device=dev)

    def forward():
        with torch.no_grad(), C.autocast(dev, dtype):
            return model.encode(x)

    return forward, f"{cfg['batch']} image(s) at {size} px"


def _predict_batch(model, cfg, dev, dtype, loss_fn):
    model.eval()
    images, boxes = C.random_images(cfg["predict_images"], seed=5, boxes_per_image=cfg["boxes"])

    def predict():
        with C.autocast(dev, dtype):
            return model.predict_batch(images, boxes, batch_size=8)

    return predict, f"{cfg['predict_images']} images x {cfg['boxes']} boxes, batch 8"

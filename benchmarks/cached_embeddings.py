"""``cached_embeddings`` (a): decoder training on cached embeddings vs re-running the frozen encoder
every step, beside the ideal ratio (encoder + decoder step) / decoder step from the same run."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import _common as C
import torch


def plan(mode: str, models: list[str]) -> dict[str, Any]:
    if mode == "smoke":
        return {"variants": [{"model_type": "mini"}], "batch": 1, "prompts": 2, "steps_encoder": 1, "steps_cached": 1}
    if mode == "quick":
        return {
            "variants": [{"model_type": "vit_b"}],
            "batch": 1,
            "prompts": 8,
            "steps_encoder": 1,
            "steps_cached": 2,
            "not_run": {
                "vit_h": "one ViT-H encoder forward at 1024 px takes minutes on this "
                "CPU (2981 vs 486 GMACs for ViT-B); run without --quick on a GPU"
            },
        }
    return {
        "variants": [{"model_type": m} for m in models],
        "batch": 1,
        "prompts": 8,
        "steps_encoder": 10,
        "steps_cached": 20,
        "throughput_batch": 32,
    }


def run(args, cfg) -> C.Bench:
    """(a) Decoder fine-tuning on cached embeddings vs re-running the frozen encoder every step."""
    import samadapt
    from samadapt.training.cache import EmbeddingCache
    from samadapt.training.losses import SamLoss

    dev = args.device
    b = C.Bench("cached_embeddings", args, args.mode)
    b.describe_setup(
        cfg,
        encoder_path="every step: encode(images) with the frozen encoder (no graph), decode, "
        "SamLoss, backward, Adam (what public fine-tuning code does)",
        cached_path="every step: EmbeddingCache.get (memory-mapped .npy, bf16) -> stack -> "
        "float32 on the device, decode, SamLoss, backward, Adam",
        ideal_ratio="(encoder forward + decoder step) / decoder step, both measured in this run "
        "(decoder step = the cached path's step without loading)",
        efficiency="achieved ratio / ideal ratio (target >= 0.9)",
    )
    rows = []
    for v in cfg["variants"]:
        mt = v["model_type"]
        sam = C.build_variant(mt, device=dev, **C.variant_kwargs(v))
        model = samadapt.adapt(sam, "decoder")
        model.train()
        params = [p for _, p in model.trainable_named_parameters()]
        opt = torch.optim.Adam(params, lr=1e-6)
        loss_fn = SamLoss()
        size = sam.image_encoder.img_size
        n_img = cfg["batch"]
        images, boxes, gt = C.random_training_batch(n_img, cfg["prompts"], size, seed=3, device=dev)
        keys = [f"bench-{mt}-{i}" for i in range(n_img)]
        with tempfile.TemporaryDirectory() as tmp:
            cache = EmbeddingCache(Path(tmp), model_type=mt, base_id=model.base.base_id, image_size=size)
            # fill the cache (one encoder forward per image; also the first encoder timing)
            with torch.no_grad(), C.autocast(dev, args.dtype):
                t_fill, _, emb = C.time_call(lambda: model.encode(images), dev)
            for k, e in zip(keys, emb):
                cache.put(k, e)

            def load():
                return torch.stack([cache.get(k) for k in keys]).to(dev, torch.float32)

            def dec_step(e, do_step=True):
                with C.autocast(dev, args.dtype):
                    out = model(image_embeddings=e, boxes=boxes, multimask=True)
                loss = loss_fn(out.low_res_logits, out.iou_predictions, gt).loss
                loss.backward()
                if do_step:
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                return loss

            def grads_of(e):
                opt.zero_grad(set_to_none=True)
                loss = dec_step(e, do_step=False)
                g = {n: p.grad.detach().clone() for n, p in model.trainable_named_parameters()}
                opt.zero_grad(set_to_none=True)
                return loss.detach(), g

            # equality: the cached path trains exactly like the encoder path with bf16-rounded embeddings
            loss_a, g_a = grads_of(emb.to(cache.dtype).float())
            loss_b, g_b = grads_of(load())
            diff = max([C.max_rel_diff(loss_b, loss_a)] + [C.max_rel_diff(g_b[n], g_a[n]) for n in g_a])
            b.check(
                f"{mt}: loss and gradients, cached path == encoder path (bf16 embeddings)",
                diff <= 1e-5,
                max_rel_diff=diff,
                tolerance=1e-5,
            )
            loss_fp32, _ = grads_of(emb.float())
            b.data["summary"][f"{mt}_bf16_cache_loss_rel_change_vs_fp32_embeddings"] = abs(
                float(loss_b) - float(loss_fp32)
            ) / max(1e-12, abs(float(loss_fp32)))

            # encoder path: encode every step
            enc_walls, step_walls = [t_fill], []
            for _ in range(cfg["steps_encoder"]):

                def enc_step():
                    with torch.no_grad(), C.autocast(dev, args.dtype):
                        w_enc, _, e = C.time_call(lambda: model.encode(images), dev)
                    enc_walls.append(w_enc)
                    dec_step(e)

                step_walls.append(C.time_call(enc_step, dev)[0])
            # cached path: load + decoder step, and the decoder step alone
            cached_walls, dec_walls, load_walls = [], [], []
            dec_step(load())  # warm-up
            for _ in range(cfg["steps_cached"]):
                w_load, _, e = C.time_call(load, dev)
                w_dec, _, _ = C.time_call(lambda: dec_step(e), dev)
                load_walls.append(w_load)
                dec_walls.append(w_dec)
                cached_walls.append(w_load + w_dec)
            t_enc, t_dec, t_load = min(enc_walls), min(dec_walls), min(load_walls)
            t_a, t_b = min(step_walls), min(cached_walls)
            ideal = (t_enc + t_dec) / t_dec
            achieved = t_a / t_b
            rows.append(
                {
                    "model": C.describe_variant(**v)["what"],
                    "batch": n_img,
                    "prompts/image": cfg["prompts"],
                    "encoder_forward_s": round(t_enc, 4),
                    "decoder_step_s": round(t_dec, 4),
                    "cache_load_s": round(t_load, 5),
                    "encoder_path_step_s": round(t_a, 4),
                    "cached_path_step_s": round(t_b, 4),
                    "speedup": round(achieved, 2),
                    "ideal_speedup": round(ideal, 2),
                    "efficiency": round(achieved / ideal, 3),
                    "cache_bytes_per_image": cache.size_bytes() // n_img,
                }
            )
            b.target(
                f"{mt}: cached vs encoder-every-step speed-up",
                ">= 90% of ideal",
                round(achieved / ideal, 3),
                achieved / ideal >= 0.9,
            )
            if cfg.get("throughput_batch"):
                tb = cfg["throughput_batch"]
                emb_many = emb[:1].expand(tb, -1, -1, -1).contiguous()
                imgs_b, boxes_b, gt_b = C.random_training_batch(tb, cfg["prompts"], size, seed=4, device=dev)

                def big_step():
                    with C.autocast(dev, args.dtype):
                        out = model(image_embeddings=emb_many, boxes=boxes_b, multimask=True)
                    loss_fn(out.low_res_logits, out.iou_predictions, gt_b).loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)

                t = C.repeat(big_step, dev, warmup=2, reps=cfg["steps_cached"])
                pps = tb * cfg["prompts"] / t["wall_s_min"]
                b.data["summary"][f"{mt}_cached_prompts_per_s_batch{tb}"] = round(pps, 1)
                b.target(
                    f"{mt}: decoder-only training on cached embeddings (batch {tb} x {cfg['prompts']} prompts)",
                    ">= 2000 prompts/s",
                    round(pps, 1),
                    pps >= 2000,
                )
        del model, sam, opt
    b.table(
        "decoder training: encoder every step vs cached embeddings",
        [
            "model",
            "batch",
            "prompts/image",
            "encoder_forward_s",
            "decoder_step_s",
            "cache_load_s",
            "encoder_path_step_s",
            "cached_path_step_s",
            "speedup",
            "ideal_speedup",
            "efficiency",
        ],
        rows,
    )
    return b

"""``train_step``: one optimiser step per strategy x model (time, samples/s, peak memory, trainable
parameters, adapter file size).

The steps run in a subprocess (``run.py --worker``, kind ``train_steps``: :func:`worker_train_steps`,
which ``activation_checkpointing`` uses too), one configuration after the other, each with a fresh
model, the memory high-water mark reset before each measured step.
"""

from __future__ import annotations

from typing import Any

import _common as C
import _memory as M  # noqa: E402
import torch

#: options other than the strategy's defaults (none: every strategy is measured as registered)
STRATEGY_OPTIONS: dict[str, dict[str, Any]] = {}


def registered_strategies() -> list[str]:
    """Every strategy of the registry (``samadapt.STRATEGIES``), so a new one is measured too."""
    import samadapt

    return sorted(samadapt.STRATEGIES)


def plan(mode: str, models: list[str], strategies: list[str] | None = None) -> dict[str, Any]:
    """The sizes of ``mode``; ``strategies`` (default: every registered one) chooses which to step."""
    strategies = list(strategies or registered_strategies())
    if mode == "smoke":
        return {
            "variants": [{"model_type": "mini"}],
            "strategies": strategies,
            "batch": 1,
            "prompts": 2,
            "warmup": 0,
            "reps": 1,
        }
    if mode == "quick":
        # mini as it is; ViT-B's 12 blocks, widths and heads at 256 px (16x16 tokens)
        return {
            "variants": [{"model_type": "mini"}, {"model_type": "vit_b", "image_size": 256}],
            "strategies": strategies,
            "batch": 2,
            "prompts": 8,
            "warmup": 1,
            "reps": 3,
            "reps_large": 2,
        }
    return {
        "variants": [{"model_type": m} for m in models],
        "strategies": strategies,
        "batch": 2,
        "prompts": 8,
        "warmup": 3,
        "reps": 10,
        "reps_large": 10,
        "checkpointing": [False, True],
        **({"memory_target": {"variant": {"model_type": "vit_h"}, "gib": 16}} if "vit_h" in models else {}),
    }


def worker_train_steps(spec: dict[str, Any]) -> dict[str, Any]:
    """Training-step configurations (``spec["configs"]``, each overriding ``spec``'s fields), one after
    the other in this process, each with a fresh model; the memory high-water mark is reset before
    each measured step."""
    import gc

    C.setup_worker(spec)
    results = []
    for override in spec["configs"]:
        try:
            results.append(_train_step_config({**spec, **override}))
        except torch.cuda.OutOfMemoryError as e:  # report it and go on with the other configurations
            results.append({"oom": str(e).splitlines()[0]})
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {"results": results}


def _train_step_config(spec: dict[str, Any]) -> dict[str, Any]:
    import samadapt
    from samadapt.training.losses import SamLoss

    torch.manual_seed(spec.get("seed", 0))
    dev, dtype = spec["device"], spec["dtype"]
    v = spec["variant"]
    sam = C.build_variant(
        v["model_type"],
        image_size=v.get("image_size"),
        depth=v.get("depth"),
        global_attn_indexes=tuple(v["global_attn_indexes"]) if v.get("global_attn_indexes") else None,
        device=dev,
    )
    model = samadapt.adapt(
        sam, spec["strategy"], sdpa_attention=spec.get("sdpa", True), **STRATEGY_OPTIONS.get(spec["strategy"], {})
    )
    C.randomise_zero_inits(model.sam)
    model.set_fast_paths(activation_checkpointing=spec.get("checkpointing", False))
    model.train()
    params = [p for _, p in model.trainable_named_parameters()]
    opt = torch.optim.Adam(params, lr=1e-6)
    loss_fn = SamLoss()
    size = model.sam.image_encoder.img_size
    images, boxes, gt = C.random_training_batch(spec["batch"], spec["prompts"], size, seed=1, device=dev)

    def forward_backward():
        with C.autocast(dev, dtype):
            out = model(images, boxes, multimask=True)
        loss = loss_fn(out.low_res_logits, out.iou_predictions, gt).loss
        loss.backward()
        return loss

    def step():
        loss = forward_backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    result: dict[str, Any] = {"trainable_params": sum(p.numel() for p in params)}
    if spec.get("save_grads"):
        loss = forward_backward()
        torch.save(
            {
                "loss": loss.detach().cpu(),
                "grads": {n: p.grad.detach().cpu() for n, p in model.trainable_named_parameters()},
            },
            spec["save_grads"],
        )
        opt.zero_grad(set_to_none=True)
    for _ in range(spec["warmup"]):
        step()
    walls, cpus = [], []
    mem = M.PeakMemory(dev)
    for i in range(spec["reps"]):
        if i == 0:  # the memory-measured step (under the profiler's memory tracking on CPU)
            mem.start()
            with M.TensorPeak(dev) as tensors:
                w, c, loss = C.time_call(step, dev)
            result.update(mem.stop())
            result["tensor_peak_bytes"] = tensors.peak if dev == "cpu" else result["peak_step_bytes"]
        else:
            w, c, loss = C.time_call(step, dev)
        walls.append(w)
        cpus.append(c)
    # with more than one repetition, time only those without the profiler
    result.update(C.summarise(walls[1:] or walls, cpus[1:] or cpus))
    result["timed_with_memory_profiler"] = len(walls) == 1 and dev == "cpu"
    result["loss_finite"] = bool(torch.isfinite(loss).item())
    del model, sam, opt, images, boxes, gt
    return result


def _encoder_trains(strategy: str) -> bool:
    """Whether a backward pass of ``strategy`` (with this benchmark's options) goes through the encoder."""
    from samadapt.strategies import get_strategy

    strat = get_strategy(strategy)
    return strat.uses_image_encoder_gradients(strat.make_config(**STRATEGY_OPTIONS.get(strategy, {})))


def run(args, cfg) -> C.Bench:
    from samadapt.sizes import strategy_size

    b = C.Bench("train_step", args, args.mode)
    b.describe_setup(
        cfg,
        step="model(images, boxes, multimask=True) -> SamLoss (focal 20 + dice 1 + IoU MSE) -> "
        "backward -> Adam step; random weights and inputs; SDPA on (library default)",
        adapter_bytes="size of the file save_adapter writes for the registered (full-size) model "
        "type (samadapt.sizes); trainable parameters do not depend on input size",
    )
    configs = []
    for v in cfg["variants"]:
        large = v["model_type"] != "mini"
        for strategy in cfg["strategies"]:
            for ckpt in cfg.get("checkpointing", [False]):
                if ckpt and not _encoder_trains(strategy):
                    continue  # no gradient through the encoder: nothing to checkpoint
                configs.append(
                    {
                        "variant": v,
                        "strategy": strategy,
                        "checkpointing": ckpt,
                        "reps": cfg["reps_large"] if large else cfg["reps"],
                    }
                )
    results = C.run_worker(
        C.worker_spec(
            args, kind="train_steps", configs=configs, batch=cfg["batch"], prompts=cfg["prompts"], warmup=cfg["warmup"]
        )
    )["results"]
    rows = []
    for c, r in zip(configs, results):
        v, strategy, ckpt = c["variant"], c["strategy"], c["checkpointing"]
        size = strategy_size(v["model_type"], strategy, **STRATEGY_OPTIONS.get(strategy, {}))
        if "oom" in r:
            rows.append(
                {
                    "model": C.describe_variant(**v)["what"],
                    "strategy": strategy,
                    "checkpointing": ckpt,
                    "batch": cfg["batch"],
                    "step_s": "out of memory",
                    "trainable_params": None,
                    "adapter_bytes": size.adapter_bytes,
                }
            )
            b.data["notes"].append(f"{v['model_type']}/{strategy}/checkpointing={ckpt}: {r['oom']}")
            continue
        step_s = r["wall_s_min"]
        rows.append(
            {
                "model": C.describe_variant(**v)["what"],
                "strategy": strategy,
                "checkpointing": ckpt,
                "batch": cfg["batch"],
                "prompts/image": cfg["prompts"],
                "step_s": round(step_s, 4),
                "step_s_median": round(r["wall_s_median"], 4),
                "samples/s": round(cfg["batch"] / step_s, 3),
                "prompts/s": round(cfg["batch"] * cfg["prompts"] / step_s, 2),
                "tensor_peak_MiB": C.mib(r["tensor_peak_bytes"]),
                "rss_peak_MiB": C.mib(r["peak_step_bytes"]),
                "peak_total_MiB": C.mib(r["peak_total_bytes"]),
                "trainable_params": r["trainable_params"],
                "adapter_bytes": size.adapter_bytes,
                "loss_finite": r["loss_finite"],
            }
        )
        b.check(f"finite loss {v['model_type']}/{strategy}/ckpt={ckpt}", r["loss_finite"])
    b.table(
        "one training step",
        [
            "model",
            "strategy",
            "checkpointing",
            "batch",
            "prompts/image",
            "step_s",
            "samples/s",
            "prompts/s",
            "tensor_peak_MiB",
            "rss_peak_MiB",
            "peak_total_MiB",
            "trainable_params",
            "adapter_bytes",
        ],
        rows,
    )
    goal = cfg.get("memory_target")  # {"variant", "gib"}: ViT-H on a GPU, a tiny model in gpu.sh --dry-run
    if goal and args.dtype == "bf16":
        desc = C.describe_variant(**goal["variant"])
        for r in rows:
            if (
                "peak_total_MiB" in r
                and r["model"] == desc["what"]
                and r["strategy"] in ("lora", "adapter")
                and r["checkpointing"]
            ):
                gib = r["peak_total_MiB"] / 1024
                b.target(
                    f"{desc['model_type']} {r['strategy']} training, {desc['image_size']} px, batch {r['batch']}, "
                    "checkpointing + bf16",
                    f"peak <= {goal['gib']} GiB",
                    round(gib, 2),
                    gib <= goal["gib"],
                )
    return b

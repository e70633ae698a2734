"""Speed and memory of samadapt beside the baselines it replaces, each with its output checked.

    python benchmarks/run.py --quick                  # 2-core CPU, about 5 minutes
    python benchmarks/run.py --device cuda --dtype bf16 --models vit_b,vit_h   # full sizes (GPU)
    python benchmarks/run.py --quick --only sdpa_attention,decoder_step --out /tmp/bench

Benchmarks (``--only`` takes a comma-separated subset):

- ``train_step``: one optimiser step per strategy x model (time, samples/s, peak memory, trainable
  parameters, adapter file size).
- ``inference``: images/s and prompts/s of ``AdaptedSam.predict_batch``.
- ``cached_embeddings`` (a): decoder training on cached embeddings vs re-running the frozen encoder
  every step, beside the ideal ratio (encoder + decoder step) / decoder step from the same run.
- ``batched_prediction`` (b): ``predict_batch`` vs a loop of upstream ``SamPredictor``; masks must
  be identical.
- ``sdpa_attention`` (c): SDPA vs upstream attention in ViT-B blocks at 1024 px (one windowed, one
  global), outputs and gradients equal to 1e-4.
- ``activation_checkpointing`` (d): peak memory and time of a lora/adapter step with and without
  checkpointing; gradients equal.
- ``decoder_step``: the batched decoder with and without the shared first-block image work, with
  a ``torch.profiler`` table of where the step's time goes.

Each writes ``<out>/<name>-<device>.json`` (machine, torch version, threads, date, load average,
what exactly was measured, results, checks, targets) and prints its tables. Exit status 1 when an
equality check failed. ``benchmarks/report.py`` renders the JSON as the tables of
``docs/performance.md``. How time and memory are measured: ``benchmarks/_common.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _common as C  # noqa: E402
import torch  # noqa: E402

BENCHMARKS = ["train_step", "inference", "cached_embeddings", "batched_prediction", "sdpa_attention",
              "activation_checkpointing", "decoder_step"]
STRATEGY_OPTIONS = {"decoder": {}, "lora": {"rank": 4}, "adapter": {}}


# =============================================================================== sizes per mode
def plan(mode: str, device: str, models: list[str]) -> dict[str, Any]:
    """What each benchmark measures in each mode. ``--quick`` fits a busy 2-core CPU in minutes;
    the full sizes are meant for a GPU."""
    if mode == "smoke":
        tiny = {"model_type": "mini"}
        return {
            "train_step": {"variants": [tiny], "strategies": ["decoder", "lora"], "batch": 1, "prompts": 2,
                           "warmup": 0, "reps": 1},
            "inference": {"variants": [tiny], "images": 2, "boxes": 2, "batch_sizes": [2], "reps": 1},
            "cached_embeddings": {"variants": [tiny], "batch": 1, "prompts": 2, "steps_encoder": 1, "steps_cached": 1},
            "batched_prediction": {"variants": [tiny], "images": 2, "boxes": 2, "batch_size": 2, "reps": 1},
            "sdpa_attention": {"tokens": 16, "dim": 128, "heads": 4, "window": 8, "reps": 1},
            "activation_checkpointing": {"variants": [tiny], "strategies": ["lora"], "batch": 1, "prompts": 2},
            "decoder_step": {"decoders": ["mini"], "images": 1, "prompts": 2, "reps": 1, "profile": False},
        }
    if mode == "quick":
        return {
            # mini as it is; ViT-B's 12 blocks, widths and heads at 256 px (16x16 tokens)
            "train_step": {"variants": [{"model_type": "mini"}, {"model_type": "vit_b", "image_size": 256}],
                           "strategies": ["decoder", "lora", "adapter"], "batch": 2, "prompts": 8,
                           "warmup": 1, "reps": 3, "reps_large": 2},
            "inference": {"variants": [{"model_type": "mini"}], "images": 16, "boxes": 6, "batch_sizes": [1, 8],
                          "reps": 2},
            "cached_embeddings": {"variants": [{"model_type": "vit_b"}], "batch": 1, "prompts": 8,
                                  "steps_encoder": 1, "steps_cached": 2,
                                  "not_run": {"vit_h": "one ViT-H encoder forward at 1024 px takes minutes on this "
                                                       "CPU (2981 vs 486 GMACs for ViT-B); run without --quick on a GPU"}},
            "batched_prediction": {"variants": [{"model_type": "mini"}], "images": 16, "boxes": 6, "batch_size": 8,
                                   "reps": 3,
                                   "not_run": {"vit_b/vit_h": "16 ViT encoder forwards at 1024 px per path take "
                                                              "10+ minutes on this CPU; run on a GPU"}},
            "sdpa_attention": {"tokens": 64, "dim": 768, "heads": 12, "window": 14, "reps": 1},
            # 1024 px at 2 of 12 blocks, and all 12 blocks at 256 px (the depth is what checkpointing scales with)
            "activation_checkpointing": {"variants": [{"model_type": "vit_b", "depth": 2, "global_attn_indexes": (1,)},
                                                      {"model_type": "vit_b", "image_size": 256}],
                                         "warmup_per_variant": [0, 1],  # a warm-up step where it is cheap
                                         "strategies": ["lora", "adapter"], "batch": 1, "prompts": 4},
            "decoder_step": {"decoders": ["mini", "vit_b"], "images": 1, "prompts": 8, "reps": 1, "profile": True},
        }
    full = [{"model_type": m} for m in models]
    return {
        "train_step": {"variants": full, "strategies": ["decoder", "lora", "adapter"], "batch": 2, "prompts": 8,
                       "warmup": 3, "reps": 10, "reps_large": 10, "checkpointing": [False, True]},
        "inference": {"variants": full, "images": 64, "boxes": 6, "batch_sizes": [8, 16], "reps": 3},
        "cached_embeddings": {"variants": full, "batch": 1, "prompts": 8, "steps_encoder": 10, "steps_cached": 20,
                              "throughput_batch": 32},
        "batched_prediction": {"variants": full, "images": 16, "boxes": 6, "batch_size": 8, "reps": 3},
        "sdpa_attention": {"tokens": 64, "dim": 768, "heads": 12, "window": 14, "reps": 10},
        "activation_checkpointing": {"variants": full, "strategies": ["lora", "adapter"], "batch": 1, "prompts": 8},
        "decoder_step": {"decoders": ["mini", "vit_b"], "images": 4, "prompts": 8, "reps": 10, "profile": True},
    }


# =============================================================================== workers (subprocesses)
def _setup_worker(spec: dict[str, Any]) -> None:
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(spec.get("seed", 0))


def worker_train_steps(spec: dict[str, Any]) -> dict[str, Any]:
    """Training-step configurations (``spec["configs"]``, each overriding ``spec``'s fields), one after
    the other in this process, each with a fresh model; the memory high-water mark is reset before
    each measured step."""
    import gc

    _setup_worker(spec)
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
    sam = C.build_variant(v["model_type"], image_size=v.get("image_size"), depth=v.get("depth"),
                          global_attn_indexes=tuple(v["global_attn_indexes"]) if v.get("global_attn_indexes") else None,
                          device=dev)
    model = samadapt.adapt(sam, spec["strategy"], sdpa_attention=spec.get("sdpa", True),
                           **STRATEGY_OPTIONS[spec["strategy"]])
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
        torch.save({"loss": loss.detach().cpu(), "grads": {n: p.grad.detach().cpu() for n, p in
                                                           model.trainable_named_parameters()}}, spec["save_grads"])
        opt.zero_grad(set_to_none=True)
    for _ in range(spec["warmup"]):
        step()
    walls, cpus = [], []
    mem = C.PeakMemory(dev)
    for i in range(spec["reps"]):
        if i == 0:  # the memory-measured step (under the profiler's memory tracking on CPU)
            mem.start()
            with C.TensorPeak(dev) as tensors:
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


def worker_attention(spec: dict[str, Any]) -> dict[str, Any]:
    """Upstream vs SDPA attention inside one ViT block (windowed or global), forward and
    forward+backward; saves outputs and gradients for the parent's equality check."""
    _setup_worker(spec)
    out: dict[str, Any] = {}
    saved: dict[str, Any] = {}
    for mode in spec["modes"]:
        out[mode], saved[mode] = _attention_mode(spec, mode)
    torch.save(saved, spec["save"])
    return out


def _attention_mode(spec: dict[str, Any], mode: str) -> tuple[dict[str, Any], dict[str, Any]]:
    from segment_anything.modeling.image_encoder import Block

    from samadapt.models.fast import enable_sdpa_attention

    dev, dtype = spec["device"], spec["dtype"]
    n, dim, heads = spec["tokens"], spec["dim"], spec["heads"]
    out: dict[str, Any] = {}
    saved = {}
    for kind, window in (("windowed", spec["window"]), ("global", 0)):
        torch.manual_seed(0)
        block = Block(dim, heads, use_rel_pos=True, window_size=window,
                      input_size=(n, n) if window == 0 else (window, window)).to(dev)
        C.randomise_zero_inits(block, std=0.1)
        if mode.startswith("sdpa"):
            enable_sdpa_attention(block, rel_pos="fold" if mode == "sdpa_fold" else "bias")
        x = torch.randn(1, n, n, dim, generator=torch.Generator().manual_seed(1)).to(dev)

        def fwd():
            with torch.no_grad(), C.autocast(dev, dtype):
                return block(x)

        def fwd_bwd():
            xx = x.clone().requires_grad_()
            with C.autocast(dev, dtype):
                y = block(xx)
            (y.float() * w).sum().backward()
            return y, xx.grad

        w = torch.randn(1, n, n, dim, generator=torch.Generator().manual_seed(2)).to(dev)
        fw = C.repeat(fwd, dev, warmup=0, reps=spec["reps"])
        mem = C.PeakMemory(dev)
        block.zero_grad(set_to_none=True)
        mem.start()
        with C.TensorPeak(dev) as tensors:
            wall, cpu, (y, gx) = C.time_call(fwd_bwd, dev)
        memory = mem.stop()
        memory["tensor_peak_bytes"] = tensors.peak if dev == "cpu" else memory["peak_step_bytes"]
        walls = [wall]
        for _ in range(spec.get("reps_grad", 1) - 1):
            block.zero_grad(set_to_none=True)
            walls.append(C.time_call(fwd_bwd, dev)[0])
        out[kind] = {"forward": fw, "forward_backward": C.summarise(walls), **memory}
        saved[kind] = {"y": y.detach().float().cpu(), "x_grad": gx.float().cpu(),
                       "param_grads": {k: p.grad.float().cpu() for k, p in block.named_parameters()}}
        del block, x, w, y, gx
    return out, saved


WORKERS = {"train_steps": worker_train_steps, "attention": worker_attention}


# =============================================================================== helpers
class Bench:
    """Collects one benchmark's JSON."""

    def __init__(self, name: str, args, mode: str) -> None:
        self.name, self.args, self.mode = name, args, mode
        self.t0 = time.perf_counter()
        self.data: dict[str, Any] = {
            "benchmark": name, "mode": mode, "device": args.device, "dtype": args.dtype,
            "machine": C.machine_info(args.device),
            "measurement": {"timing": _TIMING, "memory": _MEMORY[args.device], "threads_note": args.threads_note},
            "setup": {}, "tables": [], "summary": {}, "checks": [], "targets": [], "notes": [], "not_run": {},
        }

    def describe_setup(self, cfg: dict[str, Any], **explained: str) -> list[dict[str, Any]]:
        """``setup``: the plan's sizes with each of its ``variants`` described, then ``explained``; the
        plan's ``not_run`` goes to ``not_run``. Returns the variant descriptions."""
        descs = [C.describe_variant(**v) for v in cfg["variants"]]
        self.data["setup"] = {**{k: v for k, v in cfg.items() if k not in ("variants", "not_run")}, "variants": descs,
                              **explained}
        self.data["not_run"].update(cfg.get("not_run", {}))
        return descs

    def table(self, title: str, columns: list[str], rows: list[dict[str, Any]]) -> None:
        self.data["tables"].append({"title": title, "columns": columns, "rows": rows})
        print(f"\n## {self.name}: {title}\n" + C.table(rows, columns))

    def check(self, name: str, passed: bool, **info) -> None:
        self.data["checks"].append({"name": name, "passed": bool(passed), **info})
        print(f"check {name}: {'passed' if passed else 'FAILED'} {info}")

    def target(self, name: str, target: str, value, met: bool | None, note: str = "") -> None:
        self.data["targets"].append({"name": name, "target": target, "value": value, "met": met, "note": note})

    def write(self) -> Path:
        self.data["machine"]["loadavg_at_end"] = list(os.getloadavg())
        self.data["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        path = Path(self.args.out) / C.result_file_name(self.name, self.args.device, self.mode)
        C.write_json(path, self.data)
        print(f"-> {path} ({self.data['elapsed_s']} s)")
        return path

    @property
    def passed(self) -> bool:
        return all(c["passed"] for c in self.data["checks"])


_TIMING = ("wall-clock per call with torch.cuda.synchronize() around it on CUDA; min and median over the "
           "timed repetitions (after warm-up where stated); ratios use the minimum (least disturbed on a "
           "shared machine); cpu_s is process CPU time")
_MEMORY = {
    "cpu": ("tensor_peak: peak of live tensor bytes allocated during the measured step, from torch.profiler "
            "memory events (activations kept for backward, gradients, temporaries; ratios use it). rss_peak: "
            "peak resident set during the step (VmHWM of /proc/self/status, reset through /proc/self/clear_refs "
            "after malloc_trim) minus the resident set just before it; it also counts pages glibc keeps after "
            "tensors are freed. peak_total: the resident-set peak itself (weights, libraries, everything). "
            "Configurations run in a subprocess, one after the other, each with a fresh model"),
    "cuda": ("torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), minus memory_allocated() "
             "before the step (peak_step); peak_total is max_memory_allocated() itself (weights included)"),
}


def _max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max(1, max |b|): absolute for values of order 1, relative for large ones."""
    return float((a.float() - b.float()).abs().max()) / max(1.0, float(b.float().abs().max())) if a.numel() else 0.0


def _mib(x) -> float | None:
    return None if x is None else round(x / 2**20, 1)


def _worker_spec(args, **kw) -> dict[str, Any]:
    return {"device": args.device, "dtype": args.dtype, "threads": args.threads, **kw}


def _variant_kwargs(v: dict[str, Any]) -> dict[str, Any]:
    return {"image_size": v.get("image_size"), "depth": v.get("depth"),
            "global_attn_indexes": tuple(v["global_attn_indexes"]) if v.get("global_attn_indexes") else None}


# =============================================================================== benchmarks
def bench_train_step(args, cfg) -> Bench:
    from samadapt.sizes import strategy_size

    b = Bench("train_step", args, args.mode)
    b.describe_setup(cfg,
                     step="model(images, boxes, multimask=True) -> SamLoss (focal 20 + dice 1 + IoU MSE) -> "
                          "backward -> Adam step; random weights and inputs; SDPA on (library default)",
                     adapter_bytes="size of the file save_adapter writes for the registered (full-size) model "
                                   "type (samadapt.sizes); trainable parameters do not depend on input size")
    configs = []
    for v in cfg["variants"]:
        large = v["model_type"] != "mini"
        for strategy in cfg["strategies"]:
            for ckpt in cfg.get("checkpointing", [False]):
                if ckpt and strategy == "decoder":
                    continue  # no gradient through the encoder: nothing to checkpoint
                configs.append({"variant": v, "strategy": strategy, "checkpointing": ckpt,
                                "reps": cfg["reps_large"] if large else cfg["reps"]})
    results = C.run_worker(_worker_spec(args, kind="train_steps", configs=configs, batch=cfg["batch"],
                                        prompts=cfg["prompts"], warmup=cfg["warmup"]))["results"]
    rows = []
    for c, r in zip(configs, results):
        v, strategy, ckpt = c["variant"], c["strategy"], c["checkpointing"]
        size = strategy_size(v["model_type"], strategy, **STRATEGY_OPTIONS[strategy])
        if "oom" in r:
            rows.append({"model": C.describe_variant(**v)["what"], "strategy": strategy, "checkpointing": ckpt,
                         "batch": cfg["batch"], "step_s": "out of memory", "trainable_params": None,
                         "adapter_bytes": size.adapter_bytes})
            b.data["notes"].append(f"{v['model_type']}/{strategy}/checkpointing={ckpt}: {r['oom']}")
            continue
        step_s = r["wall_s_min"]
        rows.append({
            "model": C.describe_variant(**v)["what"], "strategy": strategy, "checkpointing": ckpt,
            "batch": cfg["batch"], "prompts/image": cfg["prompts"], "step_s": round(step_s, 4),
            "step_s_median": round(r["wall_s_median"], 4), "samples/s": round(cfg["batch"] / step_s, 3),
            "prompts/s": round(cfg["batch"] * cfg["prompts"] / step_s, 2),
            "tensor_peak_MiB": _mib(r["tensor_peak_bytes"]), "rss_peak_MiB": _mib(r["peak_step_bytes"]),
            "peak_total_MiB": _mib(r["peak_total_bytes"]),
            "trainable_params": r["trainable_params"], "adapter_bytes": size.adapter_bytes,
            "loss_finite": r["loss_finite"],
        })
        b.check(f"finite loss {v['model_type']}/{strategy}/ckpt={ckpt}", r["loss_finite"])
    b.table("one training step", ["model", "strategy", "checkpointing", "batch", "prompts/image", "step_s",
                                  "samples/s", "prompts/s", "tensor_peak_MiB", "rss_peak_MiB", "peak_total_MiB",
                                  "trainable_params", "adapter_bytes"], rows)
    if args.device == "cuda":
        for r in rows:
            if "peak_total_MiB" in r and "vit_h as registered" in r["model"] and r["strategy"] in ("lora", "adapter") and r["checkpointing"] \
                    and args.dtype == "bf16" and r["batch"] == 2:
                gib = r["peak_total_MiB"] / 1024
                b.target(f"ViT-H {r['strategy']} training, 1024 px, batch 2, checkpointing + bf16",
                         "peak <= 16 GiB", round(gib, 2), gib <= 16)
    return b


def _predict_inputs(cfg, seed=0):
    return C.random_images(cfg["images"], seed=seed, boxes_per_image=cfg["boxes"])


def bench_inference(args, cfg) -> Bench:
    import numpy as np

    import samadapt

    b = Bench("inference", args, args.mode)
    b.describe_setup(cfg,
                     call="AdaptedSam.predict_batch(images, boxes, batch_size=...) on RGB uint8 images of "
                          "480x640, 640x480 and 512x512 (masks at the original size, scores); "
                          "decoder strategy, all fast paths on (library defaults)")
    rows = []
    for v in cfg["variants"]:
        sam = C.build_variant(v["model_type"], device=args.device, **_variant_kwargs(v))
        model = samadapt.adapt(sam, "decoder")
        images, boxes = _predict_inputs(cfg)
        outs = {}
        for bs in cfg["batch_sizes"]:
            def call(bs=bs):
                with C.autocast(args.device, args.dtype):
                    return model.predict_batch(images, boxes, batch_size=bs)
            t = C.repeat(call, args.device, warmup=1, reps=cfg["reps"])
            outs[bs] = call()
            s = t["wall_s_min"]
            rows.append({"model": C.describe_variant(**v)["what"], "batch_size": bs, "images": len(images),
                         "prompts": len(images) * cfg["boxes"], "seconds": round(s, 4),
                         "seconds_median": round(t["wall_s_median"], 4), "images/s": round(len(images) / s, 2),
                         "prompts/s": round(len(images) * cfg["boxes"] / s, 1)})
        first = outs[cfg["batch_sizes"][0]]
        for bs, o in outs.items():
            same = all(np.array_equal(m1, m2) for (m1, _), (m2, _) in zip(first, o))
            b.check(f"{v['model_type']}: masks with batch_size={bs} equal batch_size={cfg['batch_sizes'][0]}", same)
        if args.device == "cuda" and v["model_type"] == "vit_h" and args.dtype == "bf16":
            best = max(r["images/s"] for r in rows if r["model"].startswith("vit_h"))
            b.target("ViT-H prediction, bf16", ">= 25 images/s", best, best >= 25)
        del model, sam
    b.table("predict_batch throughput", ["model", "batch_size", "images", "prompts", "seconds", "images/s",
                                         "prompts/s"], rows)
    return b


def bench_cached_embeddings(args, cfg) -> Bench:
    """(a) Decoder fine-tuning on cached embeddings vs re-running the frozen encoder every step."""
    import samadapt
    from samadapt.training.cache import EmbeddingCache
    from samadapt.training.losses import SamLoss

    dev = args.device
    b = Bench("cached_embeddings", args, args.mode)
    b.describe_setup(cfg,
                     encoder_path="every step: encode(images) with the frozen encoder (no graph), decode, "
                                  "SamLoss, backward, Adam (what public fine-tuning code does)",
                     cached_path="every step: EmbeddingCache.get (memory-mapped .npy, bf16) -> stack -> "
                                 "float32 on the device, decode, SamLoss, backward, Adam",
                     ideal_ratio="(encoder forward + decoder step) / decoder step, both measured in this run "
                                 "(decoder step = the cached path's step without loading)",
                     efficiency="achieved ratio / ideal ratio (target >= 0.9)")
    rows = []
    for v in cfg["variants"]:
        mt = v["model_type"]
        sam = C.build_variant(mt, device=dev, **_variant_kwargs(v))
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
            diff = max([_max_rel_diff(loss_b, loss_a)] + [_max_rel_diff(g_b[n], g_a[n]) for n in g_a])
            b.check(f"{mt}: loss and gradients, cached path == encoder path (bf16 embeddings)", diff <= 1e-5,
                    max_rel_diff=diff, tolerance=1e-5)
            loss_fp32, _ = grads_of(emb.float())
            b.data["summary"][f"{mt}_bf16_cache_loss_rel_change_vs_fp32_embeddings"] = \
                abs(float(loss_b) - float(loss_fp32)) / max(1e-12, abs(float(loss_fp32)))

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
            rows.append({"model": C.describe_variant(**v)["what"], "batch": n_img, "prompts/image": cfg["prompts"],
                         "encoder_forward_s": round(t_enc, 4), "decoder_step_s": round(t_dec, 4),
                         "cache_load_s": round(t_load, 5), "encoder_path_step_s": round(t_a, 4),
                         "cached_path_step_s": round(t_b, 4), "speedup": round(achieved, 2),
                         "ideal_speedup": round(ideal, 2), "efficiency": round(achieved / ideal, 3),
                         "cache_bytes_per_image": cache.size_bytes() // n_img})
            b.target(f"{mt}: cached vs encoder-every-step speed-up", ">= 90% of ideal",
                     round(achieved / ideal, 3), achieved / ideal >= 0.9)
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
                b.target(f"{mt}: decoder-only training on cached embeddings (batch {tb} x {cfg['prompts']} prompts)",
                         ">= 2000 prompts/s", round(pps, 1), pps >= 2000)
        del model, sam, opt
    b.table("decoder training: encoder every step vs cached embeddings",
            ["model", "batch", "prompts/image", "encoder_forward_s", "decoder_step_s", "cache_load_s",
             "encoder_path_step_s", "cached_path_step_s", "speedup", "ideal_speedup", "efficiency"], rows)
    return b


def bench_batched_prediction(args, cfg) -> Bench:
    """(b) predict_batch vs a loop of upstream SamPredictor.set_image + predict_torch."""
    import numpy as np
    from segment_anything import SamPredictor

    import samadapt

    dev = args.device
    b = Bench("batched_prediction", args, args.mode)
    b.describe_setup(cfg,
                     ours="AdaptedSam.predict_batch(images, boxes, batch_size=...) with the fast paths on",
                     upstream="for each image: SamPredictor.set_image(image); predict_torch(boxes=transformed "
                              "boxes, multimask_output=False) with the upstream attention; masks to numpy",
                     repetitions="the two paths alternate; minimum of each")
    rows = []
    for v in cfg["variants"]:
        sam = C.build_variant(v["model_type"], device=dev, **_variant_kwargs(v))
        C.randomise_zero_inits(sam)
        model = samadapt.adapt(sam, "decoder")
        predictor = SamPredictor(sam)
        images, boxes = _predict_inputs(cfg, seed=5)

        def ours():
            model.set_fast_paths(sdpa_attention=True)
            with C.autocast(dev, args.dtype):
                return model.predict_batch(images, boxes, batch_size=cfg["batch_size"], return_logits=True)

        def upstream():
            model.set_fast_paths(sdpa_attention=False)
            res = []
            with C.autocast(dev, args.dtype):
                for im, bx in zip(images, boxes):
                    predictor.set_image(im)
                    tb = predictor.transform.apply_boxes_torch(torch.as_tensor(bx, device=dev), im.shape[:2])
                    # return_logits: the same masks (logits > mask_threshold), plus the logits for the check
                    logits, s, lo = predictor.predict_torch(None, None, boxes=tb, multimask_output=False,
                                                            return_logits=True)
                    logits = logits[:, 0].float().cpu().numpy()
                    res.append((logits > sam.mask_threshold, s[:, 0].float().cpu().numpy(), lo.float().cpu().numpy(),
                                logits))
            return res

        t_ours, t_up = [], []
        a = u = None
        for _ in range(cfg["reps"] + 1):  # the first round warms up both
            w, _, u = C.time_call(upstream, dev)
            t_up.append(w)
            w, _, a = C.time_call(ours, dev)
            t_ours.append(w)
        t_ours, t_up = t_ours[1:] or t_ours, t_up[1:] or t_up
        # Masks are thresholded logits: a pixel whose logit is within float rounding of the threshold
        # may land on either side in two exact implementations (batched GEMMs round differently).
        # Every other pixel must agree.
        near = 1e-4 if args.dtype == "fp32" else 5e-2
        differing = sum(int((x[0] != y[0]).sum()) for x, y in zip(a, u))
        differing_far = sum(int(((x[0] != y[0]) & (np.abs(y[3] - sam.mask_threshold) > near)).sum())
                            for x, y in zip(a, u))
        pixels = sum(x[0].size for x in a)
        logit_diff = max(float(np.abs(x[2] - y[2]).max()) for x, y in zip(a, u))
        score_diff = max(float(np.abs(x[1] - y[1]).max()) for x, y in zip(a, u))
        b.check(f"{v['model_type']}: masks identical to SamPredictor (except pixels within {near} of the threshold)",
                differing_far == 0 and logit_diff <= (1e-4 if args.dtype == "fp32" else 0.5),
                differing_pixels=differing, differing_pixels_beyond_rounding=differing_far, pixels=pixels,
                max_low_res_logit_diff=logit_diff, max_score_diff=score_diff)
        ratio = min(t_up) / min(t_ours)
        n = len(images)
        rows.append({"model": C.describe_variant(**v)["what"], "images": n, "boxes/image": cfg["boxes"],
                     "batch_size": cfg["batch_size"], "ours_s": round(min(t_ours), 4),
                     "upstream_s": round(min(t_up), 4), "ours_images/s": round(n / min(t_ours), 2),
                     "upstream_images/s": round(n / min(t_up), 2), "speedup": round(ratio, 3),
                     "ours_s_median": round(sorted(t_ours)[len(t_ours) // 2], 4),
                     "upstream_s_median": round(sorted(t_up)[len(t_up) // 2], 4)})
        goal = 1.5 if dev == "cuda" else 1.0
        b.target(f"{v['model_type']}: predict_batch vs SamPredictor loop", f">= {goal}x", round(ratio, 3),
                 ratio >= goal)
        if dev == "cpu" and args.profile:
            b.data.setdefault("profiles", []).append(_profile_table(
                f"{v['model_type']}: predict_batch on CPU, top ops by self CPU time", ours, dev))
        del model, sam, predictor
    b.table("batched prediction vs SamPredictor loop",
            ["model", "images", "boxes/image", "batch_size", "ours_s", "upstream_s", "ours_images/s",
             "upstream_images/s", "speedup"], rows)
    return b


def bench_sdpa_attention(args, cfg) -> Bench:
    """(c) SDPA vs upstream attention in ViT-B blocks at 1024 px."""
    b = Bench("sdpa_attention", args, args.mode)
    b.data["setup"] = {**cfg, "what": f"one upstream encoder Block (dim {cfg['dim']}, {cfg['heads']} heads, "
                                      f"relative positions) on a {cfg['tokens']}x{cfg['tokens']} token grid "
                                      f"(= {cfg['tokens'] * 16} px input), windowed ({cfg['window']}) and global; "
                                      "forward under no_grad, and forward+backward (input and all block "
                                      "parameters get gradients); both modes in one subprocess, upstream first, the memory "
                                      "high-water mark reset before each measured step"}
    with tempfile.TemporaryDirectory() as tmp:
        save = str(Path(tmp) / "attention.pt")
        res = C.run_worker(_worker_spec(args, kind="attention", modes=list(ATTENTION_MODES), tokens=cfg["tokens"],
                                        dim=cfg["dim"], heads=cfg["heads"], window=cfg["window"], reps=cfg["reps"],
                                        reps_grad=cfg.get("reps_grad", 1), save=save))
        saved = torch.load(save)
    tol = 1e-4 if args.dtype == "fp32" else 5e-2
    rows = []
    for kind in ("windowed", "global"):
        up = saved["upstream"][kind]
        u = res["upstream"][kind]
        for mode, label in ATTENTION_MODES.items():
            r = res[mode][kind]
            if mode != "upstream":
                fa = saved[mode][kind]
                diffs = {"output": _max_rel_diff(fa["y"], up["y"]),
                         "input_grad": _max_rel_diff(fa["x_grad"], up["x_grad"]),
                         "param_grads": max(_max_rel_diff(fa["param_grads"][k], g) for k, g in up["param_grads"].items())}
                b.check(f"{kind} block: {label} output and gradients == upstream", max(diffs.values()) <= tol,
                        tolerance=tol, **{f"max_rel_diff_{k}": v for k, v in diffs.items()})
            rows.append({"block": kind, "tokens": f"{cfg['tokens']}x{cfg['tokens']}", "attention": label,
                         "fwd_s": round(r["forward"]["wall_s_min"], 4),
                         "fwd_speedup": round(u["forward"]["wall_s_min"] / r["forward"]["wall_s_min"], 3),
                         "fwd_bwd_s": round(r["forward_backward"]["wall_s_min"], 4),
                         "fwd_bwd_speedup": round(u["forward_backward"]["wall_s_min"] /
                                                  r["forward_backward"]["wall_s_min"], 3),
                         "fwd_bwd_tensor_peak_MiB": _mib(r["tensor_peak_bytes"]),
                         "memory_ratio": round(r["tensor_peak_bytes"] / max(1, u["tensor_peak_bytes"]), 3),
                         "fwd_bwd_rss_peak_MiB": _mib(r["peak_step_bytes"])})
    b.table("ViT block: upstream vs SDPA attention", ["block", "tokens", "attention", "fwd_s", "fwd_speedup",
                                                     "fwd_bwd_s", "fwd_bwd_speedup", "fwd_bwd_tensor_peak_MiB",
                                                     "memory_ratio", "fwd_bwd_rss_peak_MiB"], rows)
    if args.device == "cpu":
        b.data["notes"].append(
            "On CPU, when the relative-position bias needs a gradient (training through the encoder), PyTorch "
            "has no fused CPU kernel for a differentiable attn_mask and SDPA falls back to its math path "
            "(materialised attention, like upstream): expect parity there; the gain is in no-grad inference "
            "(fused CPU flash kernel) and on CUDA (memory-efficient kernel with a bias). rel_pos='fold' has no "
            "mask, so the fused kernel also runs in training, in O(L) memory, at the price of a wider q.k "
            "(head size 64 -> 64 + h + w, padded to 8).")
    return b


def bench_activation_checkpointing(args, cfg) -> Bench:
    """(d) Peak memory and time of lora/adapter training steps with and without checkpointing."""
    b = Bench("activation_checkpointing", args, args.mode)
    descs = b.describe_setup(cfg,
                             step="one training step (model forward, SamLoss, backward, Adam step) per configuration, "
                                  "after warmup_per_variant warm-up steps (without one, the measured step also "
                                  "allocates Adam's state); the configurations run one after the other in one "
                                  "subprocess, each with a fresh model and the memory high-water mark reset before "
                                  "its measured step",
                             memory_ratio="tensor peak of the step with checkpointing / without (target <= 0.5); "
                                          "rss_ratio: the same with the resident-set peaks",
                             timing="steps measured once (no repetition) are timed under the profiler's memory "
                                    "tracking (timed_with_memory_profiler), equally for both settings")
    if not all(d["official_architecture"] for d in descs):
        b.data["notes"].append(
            "Reduced sizes to fit the CPU time budget. Without checkpointing every block keeps its activations "
            "for backward; with it, each block keeps only its input and one block's activations exist again "
            "during its recomputation. So the saving grows with depth: with 2 blocks the ratio is bounded by "
            "(largest block's activations + backward temporaries) / (all blocks'), and on CPU a global block "
            "at 1024 px is dominated by its 12 x 4096 x 4096 attention maps (SDPA's math path, see "
            "sdpa_attention), which exist in both cases; the 12-block rows at 256 px show the depth effect. "
            "The official ViT-B at 1024 px: `python benchmarks/run.py --only activation_checkpointing --models "
            "vit_b` (activation_checkpointing-cpu-full.json on a CPU); ViT-H: benchmarks/gpu.sh.")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        warmups = cfg.get("warmup_per_variant", [cfg.get("warmup", 0)] * len(cfg["variants"]))
        configs = [{"variant": v, "variant_index": i, "strategy": st, "checkpointing": ck, "warmup": warmups[i],
                    "save_grads": str(Path(tmp) / f"{i}-{st}-{ck}.pt")}
                   for i, v in enumerate(cfg["variants"]) for st in cfg["strategies"] for ck in (False, True)]
        results = C.run_worker(_worker_spec(args, kind="train_steps", configs=configs, batch=cfg["batch"],
                                            prompts=cfg["prompts"], warmup=cfg.get("warmup", 0),
                                            reps=cfg.get("reps", 1)))["results"]
        if any("oom" in r for r in results):
            b.data["notes"].append(f"out of memory: {[r['oom'] for r in results if 'oom' in r]}")
        by = {(c["variant_index"], c["strategy"], c["checkpointing"]):
              {**r, "grads": torch.load(c["save_grads"]) if "oom" not in r else None}
              for c, r in zip(configs, results)}
        for i, (v, desc) in enumerate(zip(cfg["variants"], descs)):
            for strategy in cfg["strategies"]:
                off, on = by[(i, strategy, False)], by[(i, strategy, True)]
                if off["grads"] is None or on["grads"] is None:
                    continue
                g0, g1 = off["grads"], on["grads"]
                diff = max([_max_rel_diff(g1["loss"], g0["loss"])] +
                           [_max_rel_diff(g1["grads"][n], g0["grads"][n]) for n in g0["grads"]])
                b.check(f"{v['model_type']}/{strategy} ({desc['what']}): gradients with checkpointing == without",
                        diff <= 1e-4, max_rel_diff=diff, tolerance=1e-4)
                ratio = on["tensor_peak_bytes"] / max(1, off["tensor_peak_bytes"])
                rows.append({"model": desc["what"], "strategy": strategy, "batch": cfg["batch"],
                             "prompts/image": cfg["prompts"], "step_s_off": round(off["wall_s_min"], 3),
                             "step_s_on": round(on["wall_s_min"], 3),
                             "time_cost": round(on["wall_s_min"] / off["wall_s_min"], 3),
                             "tensor_peak_MiB_off": _mib(off["tensor_peak_bytes"]),
                             "tensor_peak_MiB_on": _mib(on["tensor_peak_bytes"]),
                             "memory_ratio": round(ratio, 3),
                             "rss_peak_MiB_off": _mib(off["peak_step_bytes"]),
                             "rss_peak_MiB_on": _mib(on["peak_step_bytes"]),
                             "rss_ratio": round(on["peak_step_bytes"] / max(1, off["peak_step_bytes"]), 3),
                             "peak_total_MiB_on": _mib(on["peak_total_bytes"]),
                             "timed_with_memory_profiler": on.get("timed_with_memory_profiler")})
                b.target(f"{strategy}: peak step memory with / without checkpointing ({desc['what']})", "<= 0.5",
                         round(ratio, 3), ratio <= 0.5,
                         note="" if desc["official_architecture"] else "reduced size: see notes")
    b.table("activation checkpointing", ["model", "strategy", "batch", "prompts/image", "step_s_off", "step_s_on",
                                         "time_cost", "tensor_peak_MiB_off", "tensor_peak_MiB_on", "memory_ratio",
                                         "rss_peak_MiB_off", "rss_peak_MiB_on", "rss_ratio"], rows)
    return b


def _decoder_parts(model_type: str, device: str):
    """Prompt encoder and mask decoder of a registered model type (random weights), without its encoder."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    card = C.variant_card(model_type)
    e = card.embedding_size
    torch.manual_seed(0)
    pe = PromptEncoder(embed_dim=card.prompt_embed_dim, image_embedding_size=(e, e),
                       input_image_size=(card.image_size, card.image_size), mask_in_chans=card.mask_in_chans)
    md = MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
        depth=2, embedding_dim=card.prompt_embed_dim, mlp_dim=card.decoder_mlp_dim, num_heads=card.decoder_num_heads),
        transformer_dim=card.prompt_embed_dim, iou_head_depth=3, iou_head_hidden_dim=card.iou_head_hidden_dim)
    return card, pe.to(device).eval(), md.to(device).train()


def _profile_table(title: str, fn, device: str, rows: int = 15) -> dict[str, Any]:
    """torch.profiler's top ops of one call of ``fn`` (already warmed up by the caller)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
    key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    return {"title": title, "table": prof.key_averages().table(sort_by=key, row_limit=rows)}


def bench_decoder_step(args, cfg) -> Bench:
    """The batched decoder step (forward + backward as in decoder-only training, and no-grad as in
    prediction) with and without the shared first-block image work."""
    from samadapt.models.decoding import decode_masks

    dev = args.device
    b = Bench("decoder_step", args, args.mode)
    b.data["setup"] = {**cfg, "what": "decode_masks over B images x P box prompts from embeddings (no encoder): "
                                      "training step = forward + SamLoss-like loss + backward of the decoder "
                                      "parameters; prediction = forward under no_grad",
                       "shared": "first two-way block's image projections once per image (decoding.py)",
                       "unshared": "upstream order: every projection once per prompt"}
    rows = []
    for mt in cfg["decoders"]:
        card, pe, md = _decoder_parts(mt, dev)
        e, n_img, p = card.embedding_size, cfg["images"], cfg["prompts"]
        emb = torch.randn(n_img, card.prompt_embed_dim, e, e, device=dev)
        _, boxes, gt = C.random_training_batch(n_img, p, card.image_size, seed=6, device=dev)
        index = torch.arange(n_img, device=dev).repeat_interleave(p)
        with torch.no_grad():
            sparse, dense = pe(points=None, boxes=torch.cat(boxes), masks=None)
            image_pe = pe.get_dense_pe()
            ref = torch.cat([md(emb[i:i + 1], image_pe, sparse[index == i], dense[index == i], True)[0]
                             for i in range(n_img)])

        def train_step(share):
            with C.autocast(dev, args.dtype):
                lo, iou = decode_masks(md, emb, image_pe, sparse, dense, index, multimask=True, share_image_work=share)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                lo.float(), gt[:, None].expand_as(lo)) + iou.float().square().mean()
            loss.backward()
            md.zero_grad(set_to_none=True)
            return lo

        def predict(share):
            with torch.no_grad(), C.autocast(dev, args.dtype):
                return decode_masks(md, emb, image_pe, sparse, dense, index, multimask=True, share_image_work=share)[0]

        for share in (True, False):
            d = _max_rel_diff(predict(share), ref)
            b.check(f"{mt}: decode_masks(share_image_work={share}) == upstream MaskDecoder per image",
                    d <= (1e-5 if args.dtype == "fp32" else 5e-2), max_rel_diff=d)
        times = {}
        for kind, fn in (("train", train_step), ("predict", predict)):
            walls = {True: [], False: []}
            for r in range(cfg["reps"] + 1):  # alternate; the first round warms up
                for share in (True, False):
                    w, _, _ = C.time_call(lambda: fn(share), dev)
                    if r:
                        walls[share].append(w)
            times[kind] = {s: min(ws) for s, ws in walls.items()}
        row = {"decoder": f"{mt} ({card.prompt_embed_dim}-d, {e}x{e} embedding)", "images": n_img,
               "prompts/image": p}
        for kind in ("train", "predict"):
            sh, un = times[kind][True], times[kind][False]
            row.update({f"{kind}_shared_s": round(sh, 4), f"{kind}_unshared_s": round(un, 4),
                        f"{kind}_saving": round(1 - sh / un, 3),
                        f"{kind}_prompts/s": round(n_img * p / sh, 1)})
        rows.append(row)
        if cfg.get("profile") and args.profile:
            b.data.setdefault("profiles", []).append(_profile_table(
                f"{mt}-size decoder training step ({n_img} image(s) x {p} prompts, shared), top ops by self "
                f"{'CUDA' if dev == 'cuda' else 'CPU'} time", lambda: train_step(True), dev))
    b.table("decoder step, shared vs per-prompt image work",
            ["decoder", "images", "prompts/image", "train_shared_s", "train_unshared_s", "train_saving",
             "train_prompts/s", "predict_shared_s", "predict_unshared_s", "predict_saving", "predict_prompts/s"], rows)
    return b


ATTENTION_MODES = {"upstream": "upstream Attention.forward", "sdpa": "SDPA, rel-pos as attn_mask (default)",
                   "sdpa_fold": "SDPA, rel-pos folded into q.k"}

RUNNERS = {"train_step": bench_train_step, "inference": bench_inference, "cached_embeddings": bench_cached_embeddings,
           "batched_prediction": bench_batched_prediction, "sdpa_attention": bench_sdpa_attention,
           "activation_checkpointing": bench_activation_checkpointing, "decoder_step": bench_decoder_step}


# =============================================================================== main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="sizes for a 2-core CPU (about 5 minutes)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (for the test suite)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16 = torch.autocast(bfloat16)")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {BENCHMARKS}")
    ap.add_argument("--models", default="vit_b,vit_h", help="model types for the full (non-quick) run")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: 1 with --quick/--smoke on CPU, else torch's default)")
    ap.add_argument("--no-profile", dest="profile", action="store_false", help="skip the torch.profiler tables")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        spec = json.loads(args.worker)
        C.emit(WORKERS[spec["kind"]](spec))
        return 0

    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False")
    args.mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    if args.threads is None and args.device == "cpu" and args.mode != "full":
        args.threads = 1
        args.threads_note = ("1 torch thread: on a CPU shared with other jobs, two OpenMP threads stall at every "
                             "barrier while the other core is busy, which made timings vary tenfold; one thread "
                             "gives stable ratios (absolute times are those of one core)")
    else:
        args.threads_note = "torch's default thread count" if args.threads is None else f"--threads {args.threads}"
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or BENCHMARKS
    bad = [n for n in names if n not in BENCHMARKS]
    if bad:
        ap.error(f"unknown benchmark(s) {bad}; choose from {BENCHMARKS}")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    sizes = plan(args.mode, args.device, models)

    t0 = time.perf_counter()
    failed: list[str] = []
    for name in names:
        print(f"\n==================== {name} ({args.mode}, {args.device}, {args.dtype}) ====================",
              flush=True)
        try:
            bench = RUNNERS[name](args, sizes[name])
        except Exception:  # one broken benchmark should not hide the others' results
            traceback.print_exc()
            failed.append(f"{name} (error)")
            continue
        bench.write()
        if not bench.passed:
            failed.append(name)
    print(f"\nall done in {time.perf_counter() - t0:.0f} s" + (f"; FAILED: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

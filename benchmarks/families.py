"""SAM 1 and SAM 2.1 side by side on the CPU: parameters, trainable parameters and adapter file
bytes per strategy, embedding-cache bytes per image, and the time of a training step and of
``predict``, every model of the run measured in turn inside each repetition.

A new script rather than an extension of ``train_step.py`` / ``sam2_family.py``: ``train_step``
runs every strategy of one family with Adam and multimask output (its memory worker), and
``sam2_family`` compares SAM 2.1 with Meta's predictor; this one compares the two families through
the one API that serves both (``samadapt.adapt`` -> ``AdaptedSam``), with the trainer's defaults, and
reuses ``_common.py`` (``Bench``, timers, the random training batch, the machine description).

What is measured, per model type (``--models``; the first SAM 1 type is the reference of the
ratios; random weights, so times and sizes only, nothing about accuracy):

- parameters, on weightless builds (``family.architecture``, split by ``family.parts``): total,
  image encoder, prompt encoder, mask decoder, SAM 2.1's video-only modules (memory attention,
  memory encoder, object pointers: unused on images) and the rest of the image path
  (``no_mem_embed``);
- per registered strategy (default options): trainable parameters and the exact size of the file
  ``save_adapter`` writes (``samadapt.sizes.strategy_size``; no ``info``);
- embedding-cache bytes per image: the tensors ``AdaptedSam.encode`` returns for one image, as
  measured in this run (SAM 1: one (256, 64, 64) tensor; SAM 2.1: ``Sam2Features``, three);
- CPU wall time and process CPU time, each the minimum over ``--reps`` after one warm-up call,
  models taking turns inside each repetition so that they share the machine's state; one torch
  thread by default (``THREADS_NOTE``: why):

  * ``encoder forward``: ``AdaptedSam.encode`` of one preprocessed image under ``no_grad`` (what
    filling the embedding cache costs per image);
  * ``decoder step (cached features)``: strategy ``decoder``, batch 1 image with 8 box prompts,
    ``model(image_embeddings=<cached>, boxes=..., multimask=False)`` -> ``SamLoss`` -> backward ->
    ``AdamW`` step (the trainer's defaults: lr 3e-4, weight decay 1e-4, single-mask output);
  * ``lora step (through the encoder)``: strategy ``lora`` (rank 4 on ``qkv`` + mask decoder),
    batch 1 image with 8 boxes, ``model(images, boxes)`` -> loss -> backward -> ``AdamW`` step;
  * ``predict``: ``AdaptedSam.predict`` of one RGB 480 x 640 image with 4 boxes (encoder, decoder,
    masks at image size).

Inputs: random preprocessed images and boxes (``_common.random_training_batch``); the predict image
is uniform noise (as in ``sam2_family.py``). SAM 1 runs with samadapt's default fast paths (SDPA
attention in the image encoder, shared first-block decoding; no activation checkpointing); SAM 2.1
has no fast paths in samadapt, and upstream's Hiera and two-way transformer already call
``scaled_dot_product_attention``.

    python benchmarks/families.py                   # vit_b, sam2.1_hiera_tiny at 1024 px, 3 reps
    python benchmarks/families.py --models vit_b,sam2.1_hiera_tiny,sam2.1_hiera_small --reps 3
    python benchmarks/families.py --smoke           # mini and sam2.1_hiera_test, one rep, no warm-up
    python benchmarks/families.py --render benchmarks/results/families-cpu-full.json   # docs tables

Writes ``benchmarks/results/families-cpu-full.json`` (``--smoke``: ``families-cpu.json``; ``--out``
to change the folder). ``--render`` prints the JSON's tables as the Markdown of docs/sam2.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
import _common as C  # noqa: E402

import samadapt  # noqa: E402
from samadapt.models.family import family_for_type  # noqa: E402
from samadapt.sizes import strategy_size  # noqa: E402

FULL_MODELS = "vit_b,sam2.1_hiera_tiny"
SMOKE_MODELS = ("mini", "sam2.1_hiera_test")
#: the trainer's optimiser defaults (samadapt.config.TrainConfig: adamw, lr 3e-4, weight decay 1e-4)
ADAMW = {"lr": 3e-4, "weight_decay": 1e-4}
TRAIN_PROMPTS = 8
PREDICT_BOXES = np.array(
    [[40, 60, 300, 400], [350, 100, 620, 460], [10, 10, 630, 470], [200, 200, 260, 280]], np.float32
)
THREADS_NOTE = (
    "1 torch thread (this script's default): on a CPU shared with other jobs, two OpenMP threads wait at "
    "every barrier while the other core is busy (a trial run with torch's 2 threads was no faster in wall "
    "time than one thread on ViT-B's encoder); one thread gives stable ratios, and its process CPU time "
    "(cpu_s) is close to the compute the call needs whatever the neighbours do. Absolute times are those "
    "of one core"
)
MEASUREMENTS = ("encoder forward", "decoder step (cached features)", "lora step (through the encoder)", "predict")


# ------------------------------------------------------------------------------------------ sizes
def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_row(model_type: str) -> dict[str, Any]:
    """Parameters of the weightless base, split into the family's module groups."""
    family = family_for_type(model_type)
    model = family.architecture(model_type)
    parts = family.parts(model)
    named = dict(model.named_parameters())
    total = sum(p.numel() for p in named.values())
    enc, pe, dec = _count(parts.image_encoder), _count(parts.prompt_encoder), _count(parts.mask_decoder)
    video = sum(named[n].numel() for n in parts.unused)
    return {
        "model_type": model_type,
        "family": family.label,
        "total": total,
        "image_encoder": enc,
        "prompt_encoder": pe,
        "mask_decoder": dec,
        "video_only": video,
        "other_image_path": total - enc - pe - dec - video,
    }


def strategy_rows(model_type: str) -> list[dict[str, Any]]:
    rows = []
    for strategy in sorted(samadapt.STRATEGIES):
        s = strategy_size(model_type, strategy)
        rows.append(
            {
                "model_type": model_type,
                "strategy": strategy,
                "trainable_parameters": s.trainable,
                "trainable_percent": round(s.trainable_percent, 3),
                "adapter_bytes": s.adapter_bytes,
            }
        )
    return rows


# ------------------------------------------------------------------------------------------ models
def build_random(model_type: str, seed: int = 0) -> torch.nn.Module:
    """A base of ``model_type`` with random weights (SAM 1's ``mini`` too: its built-in weights are
    not needed for times)."""
    torch.manual_seed(seed)
    family = family_for_type(model_type)
    if family.name == "sam2":
        return family.build(model_type)  # no checkpoint: random weights
    from samadapt.models.registry import build_sam

    return build_sam(model_type, pretrained=False)


class Subject:
    """One model type's models and inputs for the timed calls."""

    def __init__(self, model_type: str) -> None:
        from samadapt.training.losses import SamLoss

        self.model_type = model_type
        self.loss_fn = SamLoss()
        self.decoder = samadapt.adapt(build_random(model_type), "decoder")
        self.size = self.decoder.card.image_size
        self.images, self.boxes, self.gt = C.random_training_batch(1, TRAIN_PROMPTS, self.size, seed=1)
        with torch.no_grad():
            self.features = self.decoder.encode(self.images)
        self.decoder_opt = torch.optim.AdamW([p for _, p in self.decoder.trainable_named_parameters()], **ADAMW)
        self.lora = None
        rng = np.random.default_rng(0)
        self.predict_image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)

    def cache_row(self) -> dict[str, Any]:
        tensors = (
            {"image_embedding": self.features}
            if isinstance(self.features, torch.Tensor)
            else dict(zip(("image_embed", "high_res_feats_0", "high_res_feats_1"), self.features.tensors))
        )
        values = sum(t[0].numel() for t in tensors.values())  # one image
        nbytes = sum(t[0].numel() * t.element_size() for t in tensors.values())
        return {
            "model_type": self.model_type,
            "image_size": self.size,
            "shapes": {k: list(t.shape[1:]) for k, t in tensors.items()},
            "dtype": str(next(iter(tensors.values())).dtype),
            "values": values,
            "bytes": nbytes,
            "mib": round(nbytes / 2**20, 3),
            "mib_bf16": round(values * 2 / 2**20, 3),
        }

    def _step(self, model, opt, **inputs) -> torch.Tensor:
        out = model(boxes=self.boxes, multimask=False, **inputs)
        loss = self.loss_fn(out.low_res_logits, out.iou_predictions, self.gt).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    def encoder_forward(self):
        with torch.no_grad():
            return self.decoder.encode(self.images)

    def decoder_step(self):
        self.decoder.train()  # as the trainer runs it; eval (the base's mode) for encode and predict
        try:
            return self._step(self.decoder, self.decoder_opt, image_embeddings=self.features)
        finally:
            self.decoder.eval()

    def start_lora(self) -> None:
        self.lora = samadapt.adapt(build_random(self.model_type), "lora").train()
        self.lora_opt = torch.optim.AdamW([p for _, p in self.lora.trainable_named_parameters()], **ADAMW)

    def lora_step(self):
        return self._step(self.lora, self.lora_opt, images=self.images)

    def stop_lora(self) -> None:
        self.lora = self.lora_opt = None
        gc.collect()

    def predict(self):
        return self.decoder.predict(self.predict_image, boxes=PREDICT_BOXES)


def time_in_turns(subjects: list[Subject], method: str, reps: int, warmup: int) -> dict[str, dict[str, Any]]:
    """``warmup`` untimed calls per subject, then ``reps`` rounds in which every subject is timed once."""
    calls = {s.model_type: getattr(s, method) for s in subjects}
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    walls: dict[str, list[float]] = {m: [] for m in calls}
    cpus: dict[str, list[float]] = {m: [] for m in calls}
    last = {}
    for _ in range(reps):
        for m, fn in calls.items():
            w, c, out = C.time_call(fn, "cpu")
            walls[m].append(w)
            cpus[m].append(c)
            last[m] = out
    out = {}
    for m in calls:
        out[m] = {
            **C.summarise(walls[m], cpus[m]),
            "cpu_s_min": min(cpus[m]),
            "cpu_s_all": [round(c, 4) for c in cpus[m]],
        }
        value = last[m]
        if method.endswith("_step"):
            out[m]["loss_finite"] = bool(torch.isfinite(value).item())
        elif isinstance(value, tuple):  # predict: (masks, scores)
            out[m]["masks_shape"] = list(value[0].shape)
    return out


# ------------------------------------------------------------------------------------------ run
def run(args) -> C.Bench:
    models = list(SMOKE_MODELS) if args.smoke else [m.strip() for m in args.models.split(",") if m.strip()]
    families = [family_for_type(m).name for m in models]
    if "sam" not in families or "sam2" not in families:
        raise SystemExit(f"--models needs at least one SAM 1 and one SAM 2.1 type; got {models}")
    reference = models[families.index("sam")]
    reps, warmup = (1, 0) if args.smoke else (args.reps, 1)
    bench = C.Bench("families", args, "smoke" if args.smoke else "full")
    import sam2

    subjects = [Subject(m) for m in models]
    bench.data["setup"] = {
        "models": models,
        "ratio_reference": reference,
        "reps": reps,
        "warmup": warmup,
        "weights": "random (times and sizes only, nothing about accuracy)",
        "sam2": getattr(sam2, "__version__", "1.1.0"),
        "samadapt": samadapt.__version__,
        "train_batch": {"images": 1, "box_prompts": TRAIN_PROMPTS, "multimask": False},
        "optimizer": {"name": "AdamW", **ADAMW},
        "loss": "SamLoss (focal 20 + dice 1 + IoU MSE 1)",
        "predict": {"image": [480, 640], "boxes": len(PREDICT_BOXES)},
        "sam1_fast_paths": "samadapt's defaults: SDPA attention in the image encoder and shared first-block "
        "decoding; no activation checkpointing",
        "fast_paths": {
            s.model_type: {
                "sdpa_attention": s.decoder.sdpa_attention,
                "shared_decoding": s.decoder.shared_decoding,
                "activation_checkpointing": s.decoder.activation_checkpointing,
            }
            for s in subjects
        },
        "sam2_attention": "upstream's own (Hiera and the two-way transformer call scaled_dot_product_attention)",
        "order": "each repetition times every model once, in --models order, after the warm-up calls",
    }

    params = [parameter_row(m) for m in models]
    bench.table(
        "parameters",
        [
            "model_type",
            "family",
            "total",
            "image_encoder",
            "prompt_encoder",
            "mask_decoder",
            "video_only",
            "other_image_path",
        ],
        params,
    )
    strategies = [r for m in models for r in strategy_rows(m)]
    bench.table(
        "trainable parameters and adapter file bytes per strategy (default options)",
        ["model_type", "strategy", "trainable_parameters", "trainable_percent", "adapter_bytes"],
        strategies,
    )

    bench.table(
        "embedding cache per image (as encoded in this run)",
        ["model_type", "image_size", "shapes", "dtype", "values", "bytes", "mib", "mib_bf16"],
        [s.cache_row() for s in subjects],
    )

    timings: dict[str, dict[str, Any]] = {}
    for name, method in zip(MEASUREMENTS, ("encoder_forward", "decoder_step", "lora_step", "predict")):
        if method == "lora_step":
            for s in subjects:
                s.start_lora()
        print(f"timing {name} ...", flush=True)
        timings[name] = time_in_turns(subjects, method, reps, warmup)
        if method == "lora_step":
            for s in subjects:
                s.stop_lora()

    rows = []
    for name in MEASUREMENTS:
        ref = timings[name][reference]["wall_s_min"]
        ref_cpu = timings[name][reference]["cpu_s_min"]
        for m in models:
            t = timings[name][m]
            rows.append(
                {
                    "measurement": name,
                    "model_type": m,
                    "wall_s_min": round(t["wall_s_min"], 4),
                    "wall_s_median": round(t["wall_s_median"], 4),
                    "cpu_s_min": round(t["cpu_s_min"], 4),
                    "n": t["n"],
                    "wall_s_all": t["wall_s_all"],
                    "cpu_s_all": t["cpu_s_all"],
                    f"ratio_to_{reference}": round(t["wall_s_min"] / ref, 3),
                    f"cpu_ratio_to_{reference}": round(t["cpu_s_min"] / ref_cpu, 3),
                }
            )
            if "loss_finite" in t:
                bench.check(f"finite loss {m} {name}", t["loss_finite"])
            if "masks_shape" in t:
                bench.check(f"predict masks {m}", t["masks_shape"] == [len(PREDICT_BOXES), 480, 640])
    bench.table(
        "CPU wall time (seconds, minimum over the repetitions)",
        [
            "measurement",
            "model_type",
            "wall_s_min",
            "wall_s_median",
            "cpu_s_min",
            "n",
            f"ratio_to_{reference}",
            f"cpu_ratio_to_{reference}",
        ],
        rows,
    )
    bench.data["notes"].append(
        "ratios divide minima measured in the same run, models taking turns within each repetition; the "
        "machine's load average is recorded at the start and end (machine.loadavg_at_start / _at_end)"
    )
    bench.data["not_run"]["cuda"] = "no GPU in this session: GPU columns are not measured"
    return bench


# ------------------------------------------------------------------------------------------ render
def _table(title: str, data: dict[str, Any]) -> dict[str, Any]:
    return next(t for t in data["tables"] if t["title"].startswith(title))


def _mb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def render(data: dict[str, Any]) -> str:
    """The JSON's tables as the Markdown of docs/sam2.md ("SAM 1 and SAM 2.1 side by side")."""
    models = data["setup"]["models"]
    ref = data["setup"]["ratio_reference"]
    out = []
    out.append(
        "| model type | family | total | image encoder | prompt encoder | mask decoder | video only | other |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|"
    )
    for r in _table("parameters", data)["rows"]:
        out.append(
            f"| `{r['model_type']}` | {r['family']} | {r['total']:,} | {r['image_encoder']:,} | "
            f"{r['prompt_encoder']:,} | {r['mask_decoder']:,} | {r['video_only']:,} | {r['other_image_path']:,} |"
        )
    strat = _table("trainable parameters", data)["rows"]
    names = sorted({r["strategy"] for r in strat})
    by = {(r["model_type"], r["strategy"]): r for r in strat}
    out.append("\n| strategy | " + " | ".join(f"`{m}`" for m in models) + " |")
    out.append("|---|" + "---:|" * len(models))
    for s in names:
        cells = [
            f"{by[m, s]['trainable_parameters']:,} ({by[m, s]['trainable_percent']:.2f} %), "
            f"{_mb(by[m, s]['adapter_bytes'])}"
            for m in models
        ]
        out.append(f"| {s} | " + " | ".join(cells) + " |")
    out.append("\n| model type | tensors per image | values | float32 | bfloat16 |\n|---|---|---:|---:|---:|")
    for r in _table("embedding cache", data)["rows"]:
        shapes = ", ".join(f"{k} {tuple(v)}" for k, v in r["shapes"].items())
        out.append(f"| `{r['model_type']}` | {shapes} | {r['values']:,} | {r['mib']:g} MiB | {r['mib_bf16']:g} MiB |")
    times = _table("CPU wall time", data)["rows"]
    tb = {(r["measurement"], r["model_type"]): r for r in times}
    others = [m for m in models if m != ref]
    cols = [f"`{m}` wall (CPU time)" for m in models]
    cols += [f"`{m}` / `{ref}` wall (CPU time)" for m in others]
    out.append("\n| measurement | " + " | ".join(cols) + " | GPU |")
    out.append("|---|" + "---:|" * len(cols) + "---|")
    for name in MEASUREMENTS:
        cells = [f"{tb[name, m]['wall_s_min']:#.3g} s ({tb[name, m]['cpu_s_min']:#.3g} s)" for m in models]
        cells += [f"{tb[name, m][f'ratio_to_{ref}']:.2f} ({tb[name, m][f'cpu_ratio_to_{ref}']:.2f})" for m in others]
        out.append(f"| {name} | " + " | ".join(cells) + " | not measured |")
    spread = max(max(r["wall_s_all"]) / min(r["wall_s_all"]) for r in times)
    medians = "; ".join(
        f"{name}: " + ", ".join(f"{tb[name, m]['wall_s_median'] / tb[name, ref]['wall_s_median']:.2f}" for m in others)
        for name in MEASUREMENTS
    )
    out.append(
        f"\nrepetitions: the slowest of a call's repetitions took up to {spread:.2f} x its fastest; "
        f"wall-time ratios of the medians ({', '.join(others)} / {ref}): {medians}"
    )
    mach = data["machine"]
    out.append(
        f"\nmachine: {mach['cpu']}, {mach['cpu_count_logical']} logical cores, {mach['memory_total_gib']} GiB, "
        f"torch {mach['torch']}, {mach['torch_threads']} torch thread(s), {mach['date']}; load average (1, 5, 15 min) "
        f"{[round(x, 2) for x in mach['loadavg_at_start']]} at the start, "
        f"{[round(x, 2) for x in mach['loadavg_at_end']]} at the end; {data['setup']['reps']} repetitions; "
        f"{data['elapsed_s']} s in all"
    )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=FULL_MODELS, help="model types, at least one of each family (full mode)")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per measurement after one warm-up")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1, see THREADS_NOTE; 0: torch's default)"
    )
    ap.add_argument("--smoke", action="store_true", help="mini and sam2.1_hiera_test, one repetition, no warm-up")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--render", metavar="JSON", help="print the docs' Markdown tables of a result file and exit")
    args = ap.parse_args(argv)
    if args.render:
        print(render(json.loads(Path(args.render).read_text())))
        return 0
    args.device, args.dtype = "cpu", "fp32"
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads_note = THREADS_NOTE if args.threads == 1 else f"--threads {args.threads or 'torch default'}"
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit.script in upstream's transforms
    bench = run(args)
    bench.write()
    return 0 if bench.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())

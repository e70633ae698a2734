"""Shared pieces of the benchmarks: machine description, timers, peak memory, model variants, JSON.

Timing. Every measured call is bracketed by ``torch.cuda.synchronize()`` on CUDA. We report the
wall-clock minimum and median over the timed repetitions (after warm-up) and, on CPU, the process
CPU time: on a shared CPU the minimum is the least disturbed estimate and ratios are taken from it.

Peak memory: ``benchmarks/_memory.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from samadapt.experiments import cpu_model, machine_info  # noqa: F401  (the benchmarks' machine description)

ROOT = Path(__file__).resolve().parents[1]
RESULT_TAG = "@@RESULT@@ "


# ------------------------------------------------------------------------------------------ machine
# ------------------------------------------------------------------------------------------ statistics
def bootstrap_mean_over_images(values, image_of, seed: int = 0, n: int = 2000) -> list[float]:
    """95% interval of the mean over objects, resampling whole images (objects of one image are not
    independent)."""
    import numpy as np

    values, image_of = np.asarray(values, dtype=np.float64), np.asarray(image_of)
    rng = np.random.default_rng(seed)
    images = np.unique(image_of)
    per_image = [values[image_of == i] for i in images]
    means = []
    for _ in range(n):
        pick = rng.integers(0, len(images), len(images))
        means.append(np.concatenate([per_image[i] for i in pick]).mean())
    return [round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)]


# ------------------------------------------------------------------------------------------ timing
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], Any], device: str) -> tuple[float, float, Any]:
    """(wall seconds, process CPU seconds, result) of one call."""
    sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    return time.perf_counter() - w0, time.process_time() - c0, out


def summarise(walls: list[float], cpus: list[float] | None = None) -> dict[str, Any]:
    d = {
        "wall_s_min": min(walls),
        "wall_s_median": statistics.median(walls),
        "n": len(walls),
        "wall_s_all": [round(w, 4) for w in walls],
    }
    if cpus:
        d["cpu_s_median"] = statistics.median(cpus)
    return d


def repeat(fn: Callable[[], Any], device: str, *, warmup: int, reps: int) -> dict[str, Any]:
    for _ in range(warmup):
        time_call(fn, device)
    walls, cpus = [], []
    for _ in range(reps):
        w, c, _ = time_call(fn, device)
        walls.append(w)
        cpus.append(c)
    return summarise(walls, cpus)


def profile_table(title: str, fn: Callable[[], Any], device: str, rows: int = 15) -> dict[str, Any]:
    """torch.profiler's top ops of one call of ``fn`` (already warmed up by the caller)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
    key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    return {"title": title, "table": prof.key_averages().table(sort_by=key, row_limit=rows)}


# ------------------------------------------------------------------------------------------ models
def variant_card(
    model_type: str,
    *,
    image_size: int | None = None,
    depth: int | None = None,
    global_attn_indexes: tuple[int, ...] | None = None,
):
    """The registered card of ``model_type`` with its input size or depth changed (for CPU runs)."""
    from samadapt.models.registry import get_model_card

    card = get_model_card(model_type)
    changes: dict[str, Any] = {}
    if image_size is not None:
        changes["image_size"] = image_size
    if depth is not None:
        changes["encoder_depth"] = depth
        changes["encoder_global_attn_indexes"] = tuple(
            global_attn_indexes
            if global_attn_indexes is not None
            else [i for i in card.encoder_global_attn_indexes if i < depth]
        )
    return dataclasses.replace(card, **changes) if changes else card


def describe_variant(
    model_type: str,
    image_size: int | None = None,
    depth: int | None = None,
    global_attn_indexes: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    card = variant_card(model_type, image_size=image_size, depth=depth, global_attn_indexes=global_attn_indexes)
    from samadapt.models.registry import get_model_card

    full = get_model_card(model_type)
    reduced = card.image_size != full.image_size or card.encoder_depth != full.encoder_depth
    return {
        "model_type": model_type,
        "image_size": card.image_size,
        "encoder_depth": card.encoder_depth,
        "encoder_global_attn_indexes": list(card.encoder_global_attn_indexes),
        "official_architecture": not reduced,
        "what": (
            f"{model_type} as registered"
            if not reduced
            else f"{model_type} widths/heads, {card.encoder_depth} of {full.encoder_depth} blocks "
            f"(global attention at {list(card.encoder_global_attn_indexes)}), {card.image_size} px input"
        ),
    }


def variant_kwargs(v: dict[str, Any]) -> dict[str, Any]:
    """The size changes of a plan's variant ``{"model_type": ..., "image_size": ..., ...}`` as keyword
    arguments of :func:`build_variant` / :func:`variant_card`."""
    return {
        "image_size": v.get("image_size"),
        "depth": v.get("depth"),
        "global_attn_indexes": tuple(v["global_attn_indexes"]) if v.get("global_attn_indexes") else None,
    }


def build_variant(
    model_type: str,
    *,
    image_size: int | None = None,
    depth: int | None = None,
    global_attn_indexes: tuple[int, ...] | None = None,
    seed: int = 0,
    device: str = "cpu",
):
    """A randomly initialised upstream ``Sam`` of a (possibly reduced) registered architecture."""
    from samadapt.models.registry import BaseInfo, build_sam_architecture

    torch.manual_seed(seed)
    card = variant_card(model_type, image_size=image_size, depth=depth, global_attn_indexes=global_attn_indexes)
    with torch.device(device):  # initialised where it runs: ViT-H's random init takes seconds on a CPU
        sam = build_sam_architecture(card)
    sam = sam.to(device).eval()
    sam.samadapt_base = BaseInfo(
        model_type, f"random:{model_type}@{card.image_size}px/{card.encoder_depth}blocks", None
    )
    return sam


def randomise_zero_inits(sam: torch.nn.Module, seed: int = 1, std: float = 0.02) -> None:
    """Random values for parameters that start at zero (relative positions, LoRA B, adapter
    up-projections), so equality checks compare non-trivial numbers."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sam.named_parameters():
            if any(k in name for k in ("rel_pos", "lora_B", ".up.", "shared_mlp", "pos_embed")):
                p.copy_((torch.randn(p.shape, generator=g) * std).to(p.device, p.dtype))


def autocast(device: str, dtype: str):
    if dtype == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ------------------------------------------------------------------------------------------ data
def random_training_batch(batch: int, prompts: int, image_size: int, *, seed: int = 0, device: str = "cpu"):
    """Preprocessed images (B, 3, S, S), per image (P, 4) boxes in the input frame, and (B*P, S/4, S/4)
    ground-truth masks (the box interiors)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, image_size, image_size, generator=g)
    boxes, masks = [], []
    low = image_size // 4
    for _ in range(batch):
        xy = torch.rand(prompts, 2, generator=g) * image_size * 0.6
        wh = torch.rand(prompts, 2, generator=g) * image_size * 0.35 + image_size * 0.05
        b = torch.cat([xy, xy + wh], 1)
        boxes.append(b.to(device))
        for x0, y0, x1, y1 in (b / 4).round().long().tolist():
            m = torch.zeros(low, low)
            m[y0:y1, x0:x1] = 1
            masks.append(m)
    return images.to(device), boxes, torch.stack(masks).to(device)


def random_images(n: int, *, seed: int = 0, sizes=((480, 640), (640, 480), (512, 512)), boxes_per_image: int = 6):
    """RGB uint8 images of mixed shapes (smooth blobs, not noise) with XYXY boxes in their pixels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images, boxes = [], []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.zeros((h, w, 3), np.float32)
        for _ in range(8):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(20, 150)
            img += rng.uniform(0, 255, 3) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
        images.append(np.clip(img, 0, 255).astype(np.uint8))
        xy = rng.uniform(0, 0.6, (boxes_per_image, 2)) * [w, h]
        wh = rng.uniform(0.1, 0.4, (boxes_per_image, 2)) * [w, h]
        boxes.append(np.concatenate([xy, xy + wh], 1).astype(np.float32))
    return images, boxes


def predict_inputs(cfg: dict[str, Any], seed: int = 0):
    """``cfg["images"]`` images with ``cfg["boxes"]`` boxes each (:func:`random_images`)."""
    return random_images(cfg["images"], seed=seed, boxes_per_image=cfg["boxes"])


# ------------------------------------------------------------------------------------------ subprocesses
def run_worker(spec: dict[str, Any], *, timeout: float = 900) -> dict[str, Any]:
    """Run ``run.py --worker SPEC`` in a fresh Python and return the JSON it prints last."""
    cmd = [sys.executable, str(Path(__file__).with_name("run.py")), "--worker", json.dumps(spec)]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT))
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    raise RuntimeError(f"worker {spec.get('kind')} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def worker_spec(args, **kw) -> dict[str, Any]:
    """A worker's spec: the run's device, dtype and threads, then ``kw`` (``kind`` picks the worker)."""
    return {"device": args.device, "dtype": args.dtype, "threads": args.threads, **kw}


def setup_worker(spec: dict[str, Any]) -> None:
    """First thing a worker does: the parent's thread count and the spec's seed."""
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(spec.get("seed", 0))


def emit(result: dict[str, Any]) -> None:
    print(RESULT_TAG + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------------ output
def finish(bench: dict[str, Any], t0: float) -> None:
    """Close a standalone benchmark's record (load at the end, elapsed seconds) and print its tables
    and checks."""
    bench["machine"]["loadavg_at_end"] = list(os.getloadavg())
    bench["elapsed_s"] = round(time.perf_counter() - t0, 1)
    for t in bench["tables"]:
        print(f"\n## {t['title']}\n" + table(t["rows"], t["columns"]))
    for c in bench["checks"]:
        print(f"check {c['name']}: {'passed' if c['passed'] else 'FAILED'}")


def result_file_name(benchmark: str, device: str, mode: str) -> str:
    """``<benchmark>-<device>.json``; a full-size run on the CPU gets ``-full`` so that it sits beside
    the ``--quick`` results instead of replacing them (on CUDA every run is full-size)."""
    return f"{benchmark}-{device}{'-full' if device == 'cpu' and mode == 'full' else ''}.json"


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")
    os.replace(tmp, path)
    return path


def _json_default(x):
    if isinstance(x, (torch.dtype, torch.device)):
        return str(x)
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x)}")


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain-text table of ``rows`` for the terminal."""
    from samadapt.evaluation.report import text_table

    return text_table(columns, [[_fmt(r.get(c)) for c in columns] for r in rows])


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def mib(x) -> float | None:
    """Bytes to MiB, one decimal (``None`` stays ``None``)."""
    return None if x is None else round(x / 2**20, 1)


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max(1, max |b|): absolute for values of order 1, relative for large ones."""
    return float((a.float() - b.float()).abs().max()) / max(1.0, float(b.float().abs().max())) if a.numel() else 0.0


# ------------------------------------------------------------------------------------------ results
class Bench:
    """Collects one benchmark's JSON; :meth:`write` puts it at ``<out>/<name>-<device>.json``."""

    def __init__(self, name: str, args, mode: str) -> None:
        self.name, self.args, self.mode = name, args, mode
        self.t0 = time.perf_counter()
        self.data: dict[str, Any] = {
            "benchmark": name,
            "mode": mode,
            "device": args.device,
            "dtype": args.dtype,
            "machine": machine_info(args.device),
            "measurement": {"timing": _TIMING, "memory": _MEMORY[args.device], "threads_note": args.threads_note},
            "setup": {},
            "tables": [],
            "summary": {},
            "checks": [],
            "targets": [],
            "notes": [],
            "not_run": {},
        }

    def describe_setup(self, cfg: dict[str, Any], **explained: str) -> list[dict[str, Any]]:
        """``setup``: the plan's sizes with each of its ``variants`` described, then ``explained``; the
        plan's ``not_run`` goes to ``not_run``. Returns the variant descriptions."""
        descs = [describe_variant(**v) for v in cfg["variants"]]
        self.data["setup"] = {
            **{k: v for k, v in cfg.items() if k not in ("variants", "not_run")},
            "variants": descs,
            **explained,
        }
        self.data["not_run"].update(cfg.get("not_run", {}))
        return descs

    def table(self, title: str, columns: list[str], rows: list[dict[str, Any]]) -> None:
        self.data["tables"].append({"title": title, "columns": columns, "rows": rows})
        print(f"\n## {self.name}: {title}\n" + table(rows, columns))

    def check(self, name: str, passed: bool, **info) -> None:
        self.data["checks"].append({"name": name, "passed": bool(passed), **info})
        print(f"check {name}: {'passed' if passed else 'FAILED'} {info}")

    def target(self, name: str, target: str, value, met: bool | None, note: str = "") -> None:
        self.data["targets"].append({"name": name, "target": target, "value": value, "met": met, "note": note})

    def write(self) -> Path:
        self.data["machine"]["loadavg_at_end"] = list(os.getloadavg())
        self.data["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        path = Path(self.args.out) / result_file_name(self.name, self.args.device, self.mode)
        write_json(path, self.data)
        print(f"-> {path} ({self.data['elapsed_s']} s)")
        return path

    @property
    def passed(self) -> bool:
        return all(c["passed"] for c in self.data["checks"])


_TIMING = (
    "wall-clock per call with torch.cuda.synchronize() around it on CUDA; min and median over the "
    "timed repetitions (after warm-up where stated); ratios use the minimum (least disturbed on a "
    "shared machine); cpu_s is process CPU time"
)
_MEMORY = {
    "cpu": (
        "tensor_peak: peak of live tensor bytes allocated during the measured step, from torch.profiler "
        "memory events (activations kept for backward, gradients, temporaries; ratios use it). rss_peak: "
        "peak resident set during the step (VmHWM of /proc/self/status, reset through /proc/self/clear_refs "
        "after malloc_trim) minus the resident set just before it; it also counts pages glibc keeps after "
        "tensors are freed. peak_total: the resident-set peak itself (weights, libraries, everything). "
        "Configurations run in a subprocess, one after the other, each with a fresh model"
    ),
    "cuda": (
        "torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), minus memory_allocated() "
        "before the step (peak_step); peak_total is max_memory_allocated() itself (weights included)"
    ),
}

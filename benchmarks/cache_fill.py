"""Filling the embedding cache (``samadapt.training.cache.fill_embedding_cache``), beside the image
encoder alone on the same frames, and where the fill's time goes.

    python benchmarks/cache_fill.py --data-root TRASHCAN_COCO     # `samadapt data import-trashcan` output
    python benchmarks/cache_fill.py --num-images 4 --rounds 1 --threads 1 --out /tmp/b   # generated images (a smoke run)

Measured side by side in one run, the variants taking turns round by round, at 1 and 2 torch
threads (the trainer runs with torch's default, one per core):

- ``encoder alone``: ``model.encode`` over the frames already decoded and preprocessed, in batches
  of ``--batch-size`` (what the fill could reach if reading the images cost nothing);
- ``fill before``: the fill as it was at commit 4391ad5, copied below (``_fill_before``): read,
  preprocess with torch ops, encode, write, one batch after the other;
- ``fill after``: the library's fill, the same loop with ``SamTransform.preprocess_image`` now in
  numpy (the same values, bit for bit).

Each fill starts from an empty cache. Per-image costs of the stages (hashing the file, decoding it,
preprocessing it both ways, one cache write, and the training target of a sample, which the
training steps compute and the fill does not) are timed alone. Checks: both fills write the same
embeddings, bit for bit, and the two preprocessings give equal tensors.

Writes ``benchmarks/results/cache_fill-<device>.json`` and prints the tables.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
from _common import machine_info, table, write_json  # noqa: E402

import samadapt  # noqa: E402
from samadapt.data.sam_dataset import SamPromptDataset, file_sha1  # noqa: E402
from samadapt.data.subsets import seeded_indices  # noqa: E402
from samadapt.training.cache import EmbeddingCache, fill_embedding_cache  # noqa: E402
from samadapt.transforms import PIXEL_MEAN, PIXEL_STD  # noqa: E402

RESULTS = HERE / "results"


# ---------------------------------------------------------------------------- before (commit 4391ad5)
def _preprocess_before(tf, image: np.ndarray) -> torch.Tensor:
    """``SamTransform.preprocess_image`` at 4391ad5: the same values, with torch ops."""
    resized = tf._resizer.apply_image(image)
    x = torch.as_tensor(resized).permute(2, 0, 1).contiguous().float()
    x = (x - torch.tensor(PIXEL_MEAN).view(-1, 1, 1)) / torch.tensor(PIXEL_STD).view(-1, 1, 1)
    h, w = x.shape[-2:]
    return F.pad(x, (0, tf.image_size - w, 0, tf.image_size - h))


def _fill_before(accelerator, model, dataset, cache, *, batch_size: int) -> int:
    """``fill_embedding_cache`` at 4391ad5 (one process: its broadcast and split are no-ops)."""
    todo = [i for i in range(len(dataset)) if dataset.image_key(i) not in cache]
    encoded = 0
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        keys = [dataset.image_key(i) for i in chunk]
        x = torch.stack([_preprocess_before(dataset.transform, dataset.instances.load_image(i)) for i in chunk])
        x = x.to(accelerator.device)
        with torch.no_grad(), accelerator.autocast():
            emb = model.encode(x)
        for k, e in zip(keys, emb):
            cache.put(k, e)
        encoded += len(chunk)
    return encoded


# ---------------------------------------------------------------------------- the run
def _dataset(args, model):
    from samadapt.data import presets
    from samadapt.data.prompts import PromptConfig

    if args.data_root:
        split = presets.trashcan(args.data_root, "train")
        what = f"TrashCan 1.0 (instance version) training frames, {args.num_images} of {len(split)} (seeded)"
    else:
        from samadapt.data import make_demo_dataset

        root = Path(args.tmp) / "demo-waste"
        make_demo_dataset(root, domain="waste", n_train=args.num_images, n_val=1, seed=0, progress=False)
        split = presets.demo(root, "train")
        what = f"{args.num_images} generated demo waste images"
    keep = seeded_indices(split, args.num_images, seed=0, purpose="train")
    subset = split.subset([split.image_ids[k] for k in keep])
    return SamPromptDataset(subset, model.transform, PromptConfig(), max_instances=16, load_image=True), what


def _stage_costs(ds, model, batch_size: int, reps: int) -> dict[str, float]:
    """Milliseconds per image of each stage alone (minimum over ``reps`` passes over the frames)."""
    n = len(ds)
    tf, inst = ds.transform, ds.instances
    images = [inst.load_image(i) for i in range(n)]
    x = torch.stack([tf.preprocess_image(im) for im in images])
    tmp = tempfile.TemporaryDirectory()
    cache = EmbeddingCache(Path(tmp.name), model_type=model.model_type, base_id="bench", image_size=tf.image_size)
    emb = torch.zeros(model.sam.prompt_encoder.embed_dim, *model.sam.prompt_encoder.image_embedding_size)
    targets = SamPromptDataset(inst, tf, ds.prompts, max_instances=16, load_image=False, image_keys=False)

    def encode():
        with torch.no_grad():
            for s in range(0, n, batch_size):
                model.encode(x[s : s + batch_size])

    stages = {
        "hash (sha1 of the file)": lambda: [file_sha1(inst.image_path(i)) for i in range(n)],
        "decode (read the image)": lambda: [inst.load_image(i) for i in range(n)],
        "preprocess, torch ops (before)": lambda: [_preprocess_before(tf, im) for im in images],
        "preprocess, numpy (after)": lambda: [tf.preprocess_image(im) for im in images],
        f"encoder (batch {batch_size})": encode,
        "cache write (bf16 .npy)": lambda: [cache.put(f"k{i}", emb) for i in range(n)],
        "training target (not in the fill)": lambda: [targets[i] for i in range(n)],
    }
    out = {}
    for name, fn in stages.items():
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        out[name] = 1000 * best / n
    tmp.cleanup()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", help="an imported TrashCan folder (default: the generated demo data)")
    p.add_argument("--num-images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4, help="the trainer's default --batch-size")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the variants, taking turns")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    tmp = tempfile.TemporaryDirectory()
    args.tmp = tmp.name
    from accelerate import Accelerator

    start = time.perf_counter()
    info = machine_info("cpu")
    model = samadapt.adapt(samadapt.build_sam("mini"), "decoder").eval()
    ds, what = _dataset(args, model)
    n = len(ds)
    accelerator = Accelerator(cpu=True)
    decoded = [ds.instances.load_image(i) for i in range(n)]
    x = torch.stack([ds.transform.preprocess_image(im) for im in decoded])
    same_preprocessing = all(torch.equal(_preprocess_before(ds.transform, im), xi) for im, xi in zip(decoded, x))

    def encoder_alone():
        with torch.no_grad():
            for s in range(0, n, args.batch_size):
                model.encode(x[s : s + args.batch_size])

    def fill(kind: str) -> dict[str, np.ndarray]:
        with tempfile.TemporaryDirectory() as d:
            kw = dict(model_type=model.model_type, base_id=model.base.base_id, image_size=model.transform.image_size)
            cache = EmbeddingCache(Path(d), **kw)
            if kind == "before":
                _fill_before(accelerator, model, ds, cache, batch_size=args.batch_size)
            else:
                fill_embedding_cache(accelerator, model, ds, cache, batch_size=args.batch_size, progress=False)
            return {f.stem: np.load(f) for f in cache.path.glob("*.npy")}

    variants = {
        "encoder alone": encoder_alone,
        "fill before": lambda: fill("before"),
        "fill after": lambda: fill("after"),
    }
    walls = {(t, v): [] for t in args.threads for v in variants}
    written: dict[tuple[int, str], dict] = {}
    for r in range(args.rounds):
        for t in args.threads:
            torch.set_num_threads(t)
            for v, fn in variants.items():
                t0 = time.perf_counter()
                result = fn()
                walls[(t, v)].append(time.perf_counter() - t0)
                if v.startswith("fill"):
                    written[(t, v)] = result
            print(f"round {r + 1}/{args.rounds}, {t} thread(s) done", flush=True)
    rows = []
    for t in args.threads:
        alone = min(walls[(t, "encoder alone")])
        for v in variants:
            w = walls[(t, v)]
            rows.append(
                {
                    "threads": t,
                    "variant": v,
                    "images": n,
                    "images_per_s": n / min(w),
                    "images_per_s_median": n / statistics.median(w),
                    "s_min": min(w),
                    "s_median": statistics.median(w),
                    "vs_encoder_alone": min(w) / alone,
                }
            )
    stages = []
    for t in args.threads:
        torch.set_num_threads(t)
        costs = _stage_costs(ds, model, args.batch_size, reps=args.rounds)
        stages += [{"threads": t, "stage": k, "ms_per_image": v} for k, v in costs.items()]
    checks = [{"name": "the two preprocessings give equal tensors", "passed": same_preprocessing}]
    for t in args.threads:
        a, b = written[(t, "fill before")], written[(t, "fill after")]
        equal = a.keys() == b.keys() and len(a) == n and all(np.array_equal(a[k], b[k]) for k in a)
        checks.append(
            {"name": f"{t} thread(s): both fills write the same {n} embeddings, bit for bit", "passed": equal}
        )
    torch.set_num_threads(max(args.threads))
    speedup = {
        t: next(r["s_min"] for r in rows if r["threads"] == t and r["variant"] == "fill before")
        / next(r["s_min"] for r in rows if r["threads"] == t and r["variant"] == "fill after")
        for t in args.threads
    }
    info["loadavg_at_end"] = list(__import__("os").getloadavg())
    out = {
        "benchmark": "cache_fill",
        "model": "mini (built-in weights), decoder strategy, bf16 cache, fp32 encoder (no autocast on CPU)",
        "frames": what,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "timing": "wall-clock of one pass over the frames, the variants taking turns round by round; "
        "min and median over the rounds; stages: minimum over the rounds, per image",
        "machine": info,
        "rows": rows,
        "stages": stages,
        "fill_speedup_before_over_after": speedup,
        "checks": checks,
        "elapsed_s": round(time.perf_counter() - start, 1),
    }
    path = write_json(Path(args.out) / "cache_fill-cpu.json", out)
    print(table(rows, ["threads", "variant", "images", "images_per_s", "images_per_s_median", "vs_encoder_alone"]))
    print(table(stages, ["threads", "stage", "ms_per_image"]))
    for c in checks:
        print(f"check: {c['name']}: {'passed' if c['passed'] else 'FAILED'}")
    print(f"wrote {path}")
    tmp.cleanup()
    return 0 if all(c["passed"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())

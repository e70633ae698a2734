"""Class-head accuracy on the demo data: ``--classify`` per strategy vs the majority class.

    python benchmarks/class_head.py                       # decoder and full, 8 epochs, 160 / 40 images
    python benchmarks/class_head.py --strategies full --epochs 2 --jobs 1   # a smaller run

Each strategy is trained with ``--classify`` (``recipes/finetune.py``, one process each, ``--jobs`` at a
time, one torch thread each) on the demo training images; then the masks of the validation images'
ground-truth boxes are labelled by the class head (``samadapt.segment.segment_embedded(...,
classify=True)``). Reported per strategy: accuracy, balanced accuracy (mean per-category recall) and
the gain over always answering the most frequent validation category, with a 95% bootstrap interval
over images (an image's instances stay together). Writes ``benchmarks/results/class_head-demo.json``
and prints a markdown table (docs/segment.md quotes it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "recipes"))

from _common import machine_info, write_json  # noqa: E402


def labels(adapter: Path, val) -> tuple[list[list[int]], list[list[int]]]:
    """Per validation image, the class head's label and the true category of each instance."""
    import samadapt
    from samadapt.segment.api import segment_embedded
    from samadapt.segment.automatic import encode_images

    model = samadapt.load(adapter)
    predicted, truth = [], []
    for i in range(len(val)):
        s = val[i]
        emb = encode_images(model, [s["image"]])[0]
        recs = segment_embedded(model, emb, s["image"].shape[:2], boxes=s["boxes"], classify=True)
        predicted.append([int(r["category_id"]) for r in recs])
        truth.append([int(c) for c in s["category_ids"]])
    return predicted, truth


def accuracy(predicted, truth, *, n_boot: int, seed: int = 0) -> dict:
    """Accuracy, balanced accuracy and the gain over the majority class with a bootstrap interval."""
    flat = [t for ts in truth for t in ts]
    values, counts = np.unique(flat, return_counts=True)
    majority = int(values[counts.argmax()])
    hits = np.array([sum(p == t for p, t in zip(ps, ts)) for ps, ts in zip(predicted, truth)], float)
    major = np.array([sum(t == majority for t in ts) for ts in truth], float)
    n = np.array([len(ts) for ts in truth], float)
    rng = np.random.default_rng(seed)
    gains = []
    for _ in range(n_boot):
        k = rng.integers(0, len(n), len(n))
        gains.append((hits[k].sum() - major[k].sum()) / n[k].sum())
    pairs = [(p, t) for ps, ts in zip(predicted, truth) for p, t in zip(ps, ts)]
    recall = {int(c): float(np.mean([p == t for p, t in pairs if t == c])) for c in values}
    return {
        "instances": int(n.sum()),
        "images": len(n),
        "accuracy": hits.sum() / n.sum(),
        "majority_category": majority,
        "majority_accuracy": major.sum() / n.sum(),
        "gain": (hits.sum() - major.sum()) / n.sum(),
        "gain_interval": np.percentile(gains, [2.5, 97.5]).tolist(),
        "balanced_accuracy": float(np.mean(list(recall.values()))),
        "balanced_majority": 1 / len(values),
        "per_category_recall": recall,
    }


def markdown(report: dict) -> str:
    names = report["categories"]
    rows = [
        "| strategy (`--classify`) | accuracy | majority class | gain (pp, 95% CI) | balanced accuracy | "
        "balanced, majority |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s, r in report["strategies"].items():
        lo, hi = r["gain_interval"]
        rows.append(
            f"| {s} | {100 * r['accuracy']:.1f}% | {100 * r['majority_accuracy']:.1f}% "
            f"({names[str(r['majority_category'])]}) | {100 * r['gain']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | "
            f"{100 * r['balanced_accuracy']:.1f}% | {100 * r['balanced_majority']:.1f}% |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    from samadapt.strategies import STRATEGIES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strategies", nargs="+", default=["decoder", "full"], choices=sorted(STRATEGIES))
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--demo-train-images", type=int, default=160)
    ap.add_argument("--demo-val-images", type=int, default=40)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--jobs", type=int, default=2, help="training processes at a time")
    ap.add_argument("--runs", type=Path, default=REPO / "outputs" / "class-head", help="where the runs go")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "class_head-demo.json")
    args = ap.parse_args(argv)

    import compare  # recipes/compare.py: Run / run_all (finetune.py processes, reused when finished)

    from samadapt.data import presets

    t0 = time.perf_counter()
    data_root = args.runs / "demo-data"  # its own copy: other sizes never touch the shared demo set
    # compare.py's finetune.py options for a demo run, plus the class head
    train = argparse.Namespace(dataset="demo", model="mini", checkpoint=None, extra=[], **vars(args))
    extra = ["--classify", "--no-zero-shot", "--num-examples", "0"]
    runs = [
        compare.Run(s, args.runs / s, compare._train_argv(train, s, args.seed, args.runs / s, data_root) + extra)
        for s in args.strategies
    ]
    compare.run_all(runs, args.jobs, args.runs / "logs")
    val = presets.demo(data_root, "val")
    report = {
        "benchmark": "class_head",
        "command": "python benchmarks/class_head.py " + " ".join(argv or sys.argv[1:]),
        "machine": machine_info("cpu"),
        "epochs": args.epochs,
        "seed": args.seed,
        "train_images": args.demo_train_images,
        "val_images": args.demo_val_images,
        "categories": {str(k): v for k, v in val.categories.items()},
        "strategies": {},
    }
    for r in runs:
        predicted, truth = labels(r.run_dir / "adapter.safetensors", val)
        report["strategies"][r.key] = {
            **accuracy(predicted, truth, n_boot=args.bootstrap, seed=args.seed),
            "train_seconds": r.summary()["seconds_per_epoch"] * r.summary()["epochs_run"],
        }
    report["seconds"] = time.perf_counter() - t0
    write_json(args.out, report)
    print(markdown(report))
    print(f"written to {args.out} ({report['seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

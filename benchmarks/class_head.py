"""Class-head accuracy on the demo data: ``--classify`` per strategy vs the majority class.

    python benchmarks/class_head.py                       # decoder and full, 8 epochs, 160 / 40 images
    python benchmarks/class_head.py --strategies full --epochs 2 --jobs 1   # a smaller run
    python benchmarks/class_head.py --train-args "--train-prompts box --click-rounds 0"   # box-only training

Each strategy is trained with ``--classify`` and the trainer's default prompts (box and click, with
corrective clicks; ``recipes/finetune.py``, one process each, ``--jobs`` at a time, one torch thread
each) on the demo training images; then the masks of the validation images'
ground-truth boxes are labelled by the class head and compared with their categories
(``samadapt.segment.head_check.validate_class_head``, the check training itself stores in the adapter).
Reported per strategy: accuracy, balanced accuracy (mean per-category recall) and the gain over
always answering the most frequent validation category, with a 95% bootstrap interval over images
(an image's instances stay together). Writes ``benchmarks/results/class_head-demo.json`` (``--out``)
and prints a markdown table (docs/segment.md quotes it).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from _common import machine_info, write_json  # noqa: E402


def head_check(adapter: Path, val, *, n_boot: int, seed: int) -> dict:
    """The class head's labels for the validation images' ground-truth boxes against their categories
    (``samadapt.segment.head_check.validate_class_head``, what training stores in the adapter)."""
    import samadapt
    from samadapt.segment.head_check import validate_class_head

    return validate_class_head(samadapt.load(adapter), val, range(len(val)), n_boot=n_boot, seed=seed)


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


def default_prompts() -> list[str]:
    """The trainer's own training prompts (compare.py pins the box-only protocol of "Don't waste SAM";
    the class head is measured as a user who passes only --classify gets it)."""
    from samadapt.config import TrainConfig

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    kinds = fields["train_prompts"].default_factory()
    return ["--train-prompts", *kinds, "--click-rounds", str(fields["click_rounds"].default)]


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
    ap.add_argument("--train-args", default="", help="more recipes/finetune.py options, as one string")
    args = ap.parse_args(argv)

    from samadapt.data import presets
    from samadapt.experiments import Run, protocol_argv, run_all

    t0 = time.perf_counter()
    data_root = args.runs / "demo-data"  # its own copy: other sizes never touch the shared demo set
    # the comparison protocol's options for a demo run (as recipes/compare.py), plus the class head
    train = argparse.Namespace(dataset="demo", model="mini", checkpoint=None, extra=[], **vars(args))
    extra = ["--classify", "--no-zero-shot", "--num-examples", "0", "--auto-calibration-images", "0"]
    extra += default_prompts() + shlex.split(args.train_args)
    runs = [
        Run(s, args.runs / s, protocol_argv(train, s, args.seed, args.runs / s, data_root) + extra)
        for s in args.strategies
    ]
    run_all(runs, args.jobs, args.runs / "logs")
    val = presets.demo(data_root, "val")
    report = {
        "benchmark": "class_head",
        "command": "python benchmarks/class_head.py " + " ".join(argv or sys.argv[1:]),
        "machine": machine_info("cpu"),
        "epochs": args.epochs,
        "seed": args.seed,
        "train_args": args.train_args,
        "train_images": args.demo_train_images,
        "val_images": args.demo_val_images,
        "categories": {str(k): v for k, v in val.categories.items()},
        "strategies": {},
    }
    for r in runs:
        report["strategies"][r.key] = {
            **head_check(r.run_dir / "adapter.safetensors", val, n_boot=args.bootstrap, seed=args.seed),
            "train_seconds": r.summary()["seconds_per_epoch"] * r.summary()["epochs_run"],
        }
    report["seconds"] = time.perf_counter() - t0
    write_json(args.out, report)
    print(markdown(report))
    print(f"written to {args.out} ({report['seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

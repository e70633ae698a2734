"""Compare zero-shot SAM and every adaptation strategy on the same data, seeds, budget and prompts.

    python recipes/compare.py --dataset demo                 # the demo section of docs/strategies.md
    python recipes/compare.py --dataset trashcan --data-root OUT   # the real-data section (OUT from
                                                             # `samadapt data import-trashcan`)
    python recipes/compare.py --dataset demo --epochs 1 --demo-train-images 8 --out /tmp/cmp   # a smoke run

Each strategy is trained by ``recipes/finetune.py`` in its own process (so its peak memory is its
own), with identical data, epochs and evaluation prompts. ``--dataset trashcan`` trains every
registered strategy for each of ``--seeds`` on a seeded subset of the official training frames
(the best epoch chosen on held-out training frames), evaluates zero-shot and every run on a seeded
subset of the official val frames under four prompt kinds, retrains the decoder and the best
encoder strategy on 10% and 25% of the training frames, and reports means with 95% bootstrap
intervals (samadapt.evaluation.uncertainty). Finished runs with the same options are reused. Each
section of the page names its command, machine and date; every number in it comes from that run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare_page  # noqa: E402  (recipes/compare_page.py: the page's sections)

from samadapt.experiments import Run, machine_line, protocol_argv, run_all  # noqa: E402


# ---------------------------------------------------------------------------- demo
def run_demo(args, command: str, started: str) -> int:
    import samadapt
    from samadapt.data import presets
    from samadapt.evaluation.evaluate import evaluate
    from samadapt.evaluation.plots import plot_bars, plot_examples

    runs_dir = args.runs or (REPO / "outputs" / "compare")
    data_root = samadapt.samadapt_home() / "data" / "demo-waste"
    from samadapt.strategies import STRATEGIES

    strategies = args.strategies or [s for s in STRATEGIES if s != "full"]
    runs = [Run(s, runs_dir / s, protocol_argv(args, s, args.seed, runs_dir / s, data_root)) for s in strategies]
    run_all(runs, args.jobs, runs_dir / "logs")
    summaries = {r.key: r.summary() for r in runs}

    fig_dir = args.out / "figures"
    zs = next(iter(summaries.values()))["zero_shot"]
    keys = ("mean_iou", "mean_precision", "mean_f1")
    table = {"zero-shot": {k: zs[k] for k in keys}}
    table.update({s: {k: r["fine_tuned"][k] for k in keys} for s, r in summaries.items()})
    bars = plot_bars(
        table,
        list(keys),
        fig_dir / "strategies_bars.png",
        scale=100,
        ylabel="%",
        title=f"{args.dataset} / {args.model}: zero-shot vs strategies",
    )
    val = presets.demo(data_root, "val")
    n = args.examples
    # every model on the whole validation split: the figure's rows are chosen among a pool spread over
    # its images, from the worst to the best (samadapt.evaluation.examples)
    examples = {
        "zero-shot": evaluate(
            samadapt.adapt(samadapt.build_sam(args.model, args.checkpoint), "decoder"),
            val,
            return_examples=n,
            progress=False,
            coco=False,
            seed=args.seed,
        ).examples
    }
    for r in runs:
        model = samadapt.load(r.run_dir / "adapter.safetensors", checkpoint=args.checkpoint)
        examples[r.key] = evaluate(model, val, return_examples=n, progress=False, coco=False, seed=args.seed).examples
    ex = plot_examples(examples, fig_dir / "strategies_examples.png", max_rows=n)
    figures = {"bars": os.path.relpath(bars, args.out), "examples": os.path.relpath(ex, args.out)}
    clicks = demo_clicks(runs, val, args, fig_dir) if args.max_clicks else {}
    (args.out / "strategies.json").write_text(
        json.dumps(
            {
                "command": command,
                "date": started,
                "machine": machine_line(args.jobs),
                "runs": summaries,
                "clicks": clicks,
            },
            indent=2,
            default=str,
        )
    )
    page = compare_page.demo_section(summaries, args, command, figures, started, machine_line(args.jobs))
    if clicks:  # the click protocol (--max-clicks): its table and figure close the section
        from samadapt.evaluation.report import click_markdown

        page = (
            page.rstrip("\n")
            + "\n"
            + "\n".join(click_markdown(clicks))
            + f"\n\n![mean IoU after each click]({os.path.relpath(fig_dir / 'strategies_clicks.png', args.out)})\n"
        )
    compare_page.update_page(args.out / "strategies.md", "demo", page)
    print(f"wrote {args.out / 'strategies.md'}")
    for s, r in summaries.items():
        print(
            f"{s:10} mean IoU {100 * r['fine_tuned']['mean_iou']:.2f} (zero-shot {100 * r['zero_shot']['mean_iou']:.2f})"
        )
    return 0


def demo_clicks(runs: list[Run], val, args, fig_dir: Path) -> dict:
    """``--max-clicks K``: the click-by-click protocol (samadapt.evaluation.clicks) for zero-shot and
    every run; label -> ``metrics.json``-style metrics, and ``strategies_clicks.png``."""
    import samadapt
    from samadapt.evaluation.clicks import evaluate_clicks
    from samadapt.evaluation.plots import plot_click_curves

    models = {"zero-shot": samadapt.adapt(samadapt.build_sam(args.model, args.checkpoint), "decoder")}
    models.update({r.key: samadapt.load(r.run_dir / "adapter.safetensors", checkpoint=args.checkpoint) for r in runs})
    out = {k: evaluate_clicks(m, val, max_clicks=args.max_clicks, progress=False).metrics() for k, m in models.items()}
    plot_click_curves(
        {k: m["clicks"] for k, m in out.items()},
        fig_dir / "strategies_clicks.png",
        title=f"demo / {args.model}: mean IoU after each click",
    )
    return out


# ---------------------------------------------------------------------------- TrashCan
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--dataset",
        default="demo",
        choices=["demo", "trashcan"],
        help="demo: generated waste scenes; trashcan: real frames (--data-root)",
    )
    ap.add_argument("--data-root", help="trashcan: the folder `samadapt data import-trashcan` wrote")
    ap.add_argument("--version", default="instance", choices=["instance", "material"], help="trashcan version")
    ap.add_argument("--model", default="mini", help="model type (default: mini)")
    ap.add_argument("--checkpoint", default=None, help="base checkpoint (default: the model's built-in weights)")
    from samadapt.strategies import STRATEGIES

    ap.add_argument(
        "--strategies",
        nargs="+",
        default=None,
        choices=sorted(STRATEGIES),
        metavar="STRATEGY",
        help=f"of {', '.join(sorted(STRATEGIES))} (the registry); default: demo every registered "
        "strategy but full (the whole model, compared on trashcan), trashcan every one",
    )
    ap.add_argument("--epochs", type=int, default=None, help="epochs per run (default: demo 8, trashcan 3)")
    ap.add_argument("--seed", type=int, default=0, help="demo: the training seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="trashcan: training seeds per strategy")
    ap.add_argument("--train-frames", type=int, default=600, help="trashcan: training frames (100%% of the curve)")
    ap.add_argument(
        "--select-frames",
        type=int,
        default=60,
        help="trashcan: held-out official training frames that choose each run's best epoch",
    )
    ap.add_argument("--test-frames", type=int, default=300, help="trashcan: official val frames evaluated")
    ap.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        default=[0.1, 0.25, 1.0],
        help="trashcan: shares of --train-frames for the data-efficiency curve",
    )
    ap.add_argument("--top-classes", type=int, default=6, help="trashcan: per-class means for this many classes")
    ap.add_argument("--bootstrap", type=int, default=2000, help="trashcan: bootstrap rounds of the intervals")
    ap.add_argument("--demo-train-images", type=int, default=160)
    ap.add_argument("--demo-val-images", type=int, default=40)
    ap.add_argument("--examples", type=int, default=4, help="images in the examples figure")
    ap.add_argument(
        "--max-clicks",
        type=int,
        default=0,
        help="demo: also run the click-by-click protocol with this many clicks (0: off)",
    )
    ap.add_argument("--jobs", type=int, default=1, help="training processes at a time")
    ap.add_argument("--out", type=Path, default=REPO / "docs", help="folder for strategies.md and its figures")
    ap.add_argument(
        "--runs", type=Path, default=None, help="where the runs go (default: outputs/compare, outputs/compare-trashcan)"
    )
    ap.add_argument(
        "--render-only",
        action="store_true",
        help="trashcan: rewrite the page section from <out>/strategies_trashcan.json of an earlier run",
    )
    ap.add_argument(
        "--note",
        default=None,
        help="with --render-only: a note shown (as added after the run) in the section, kept in the JSON",
    )
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more finetune.py options for every run")
    args = ap.parse_args(argv)
    args.extra = [a for a in args.extra if a != "--"]
    if args.epochs is None:
        args.epochs = 8 if args.dataset == "demo" else 3
    if args.jobs < 1 or not args.seeds or any(not 0 < f <= 1 for f in args.fractions):
        ap.error("--jobs must be >= 1, --seeds non-empty, --fractions in (0, 1]")
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    command = "python recipes/compare.py " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    if args.dataset == "demo" and not args.render_only:
        return run_demo(args, command, started)
    import compare_trashcan  # recipes/compare_trashcan.py: the real-data comparison

    if args.render_only:
        return compare_trashcan.render_trashcan(args)
    return compare_trashcan.run_trashcan(args, command, started)


if __name__ == "__main__":
    sys.exit(main())

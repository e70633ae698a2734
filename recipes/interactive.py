"""Box-only versus mixed-prompt training (points and corrective clicks), measured click by click.

    python recipes/interactive.py                 # the "interactive" section of docs/strategies.md
    python recipes/interactive.py --epochs 1 --demo-train-images 8 --demo-val-images 4 --out /tmp/i  # smoke run

Trains the same strategy twice with the same data, seed, epochs and optimiser (``recipes/finetune.py``,
each in its own process, reused when finished with the same options): once with box prompts only,
once with ``--train-prompts box point --click-rounds K``. Then evaluates zero-shot and both adapters
on the same validation images with exact boxes, the four extreme clicks (with their box), one random
interior click, and the click-by-click protocol (samadapt.evaluation.clicks: mIoU after each click,
NoC@85 / NoC@90), with 95% bootstrap intervals over images (samadapt.evaluation.uncertainty), and
checks the issue's acceptance: mixed training keeps box mean IoU within 1.5 points of box-only
training and raises one-click mean IoU by at least 3 points. The page section names the command,
machine and date; every number in it comes from that run.
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

import compare  # noqa: E402  (its Run / run_all: finetune.py processes, reused when done; _machine)
import compare_page  # noqa: E402  (the page's named sections)

SECTION = "interactive"
#: the issue's acceptance: mixed training may lose at most this much box mean IoU (points) ...
MAX_BOX_LOSS = 1.5
#: ... and must gain at least this much one-click mean IoU (points) over box-only training
MIN_CLICK_GAIN = 3.0


def _argv(args, data_root: Path, run_dir: Path, prompts: list[str], rounds: int, extra: tuple = ()) -> list[str]:
    argv = [
        "--strategy",
        args.strategy,
        "--dataset",
        "demo",
        "--model",
        args.model,
        "--epochs",
        str(args.epochs),
        "--seed",
        str(args.seed),
        "--output-dir",
        str(run_dir),
        "--data-root",
        str(data_root),
        "--patience",
        str(args.epochs),
        "--no-progress",
        "--no-publish",
        "--no-zero-shot",
        "--num-examples",
        "0",
        "--demo-train-images",
        str(args.demo_train_images),
        "--demo-val-images",
        str(args.demo_val_images),
        "--train-prompts",
        *prompts,
        "--click-rounds",
        str(rounds),
        *extra,
    ]
    if args.checkpoint:
        argv += ["--checkpoint", args.checkpoint]
    return argv + args.extra


def evaluate_model(model, val, args) -> dict:
    """Every prompt kind on the validation images: EvalRecords per kind, ClickRecords for the clicks."""
    from samadapt.evaluation.clicks import evaluate_clicks
    from samadapt.evaluation.evaluate import evaluate

    out = {
        kind: evaluate(model, val, prompt=kind, num_points=1, seed=args.seed, progress=False, coco=False).records
        for kind in ("box", "extreme", "points")
    }
    out["clicks"] = evaluate_clicks(model, val, max_clicks=args.max_clicks, progress=False)
    return out


def summarize(results: dict[str, dict], args) -> dict:
    """Means with bootstrap intervals per model, the paired differences and the acceptance checks."""
    from samadapt.evaluation.uncertainty import bootstrap_interval

    def iv(records, reference=None):
        return bootstrap_interval(records, "iou", reference=reference, n_boot=args.bootstrap, seed=0)

    stats = {}
    for label, r in results.items():
        clicks = r["clicks"]
        stats[label] = {
            "box": iv(r["box"]),
            "extreme": iv(r["extreme"]),
            "random_click": iv(r["points"]),
            "clicks": clicks.metrics()["clicks"],
            "click_bands": [iv(clicks.after(k + 1)) for k in range(args.max_clicks)],
        }
    box, mixed = results["box-trained"], results["mixed-trained"]
    paired = {
        "box": iv(mixed["box"], box["box"]),
        "one_click": iv(mixed["clicks"].after(1), box["clicks"].after(1)),
        "random_click": iv(mixed["points"], box["points"]),
    }
    checks = {
        "box_within": {
            "limit": -MAX_BOX_LOSS,
            "value": 100 * paired["box"].mean,
            "passed": 100 * paired["box"].mean >= -MAX_BOX_LOSS,
        },
        "one_click_gain": {
            "limit": MIN_CLICK_GAIN,
            "value": 100 * paired["one_click"].mean,
            "passed": 100 * paired["one_click"].mean >= MIN_CLICK_GAIN,
        },
    }
    return {"models": stats, "paired": paired, "checks": checks}


def _jsonable(x):
    if hasattr(x, "to_dict"):
        return x.to_dict()
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def section(stats: dict, args, command: str, started: str, machine: str, figure: str, seconds: dict) -> str:
    pm, bounds = compare_page.pm, compare_page.bounds
    cols = [k for k in (1, 2, 3, 5, 10, 20) if k <= args.max_clicks]
    mixed_name = (
        f"`--train-prompts {' '.join(args.train_prompts)} --point-share {args.point_share} "
        f"--click-sampling {args.click_sampling} --click-rounds {args.click_rounds}"
        + (f" --first-round-weight {args.first_round_weight:g}" if args.first_round_weight is not None else "")
        + "`"
    )
    where = (
        "uniform"
        if args.click_sampling == "uniform"
        else "interior (probability proportional to the distance to the background)"
    )
    lines = [
        "## Interactive prompts: box-only vs mixed-prompt training, click by click (demo data)",
        "",
        f"Generated by `{command}` on {started} (UTC), machine: {machine}.",
        "Every number in this section comes from that run: regenerate it with the same command.",
        "",
        f"Both adapters: strategy `{args.strategy}` on `{args.model}`, the generated waste-domain demo set "
        f"({args.demo_train_images} training / {args.demo_val_images} validation images), {args.epochs} epochs, seed "
        f"{args.seed}, the recipe's default optimiser; **box-trained** with box prompts only, **mixed-trained** with "
        f"{mixed_name}: each instance starts from its noisy box or (with probability {args.point_share}) one {where} "
        "click inside it (three multimask outputs, the lowest loss back-propagated, the IoU head trained on all "
        f"three), then {args.click_rounds} corrective click(s) from the error "
        "region, each round fed the previous low-res logits as the mask prompt (docs/training.md)"
        + (
            f"; the first prediction (box or click alone) carries {args.first_round_weight:g} of the loss, the "
            "corrective rounds share the rest"
            if args.first_round_weight is not None
            else ""
        )
        + ". Training time: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
        + " (training only).",
        "",
        "Evaluation on the validation images (mean IoU in %, ± the half-width of a 95% bootstrap interval over "
        f"images, {args.bootstrap} rounds): **box** exact ground-truth boxes; **extreme** the four extreme clicks "
        "with the box they span (`--prompt extreme`); **random click** one uniform interior click, single-mask "
        "output (`--prompt points`); **mIoU@k** the click protocol (`--prompt clicks`: first click at the "
        "object's most interior point, with SAM's most confident of three masks; each next click at the centre of "
        "the largest error region, the previous logits as the mask prompt); NoC@85 / NoC@90 the clicks needed to "
        f"reach that IoU, counted as {args.max_clicks} when not reached.",
        "",
        "| model | box | extreme | random click | " + " | ".join(f"mIoU@{k}" for k in cols) + " | NoC@85 | NoC@90 |",
        "|---|" + "---:|" * (3 + len(cols) + 2),
    ]
    for label, s in stats["models"].items():
        c = s["clicks"]
        at = [pm(s["click_bands"][k - 1]) if k == 1 else f"{100 * c['miou_at'][k - 1]:.2f}" for k in cols]
        lines.append(
            f"| {label} | {pm(s['box'])} | {pm(s['extreme'])} | {pm(s['random_click'])} | "
            + " | ".join(at)
            + f" | {c['noc85']:.2f} | {c['noc90']:.2f} |"
        )
    p, checks = stats["paired"], stats["checks"]

    def verdict(name):
        return "**met**" if checks[name]["passed"] else "**not met**"

    lines += [
        "",
        "Mixed-trained minus box-trained, paired on the same images (percentage points, 95% bootstrap interval):",
        "",
        "| | difference | acceptance |",
        "|---|---:|---|",
        f"| box mean IoU | {bounds(p['box'])} | >= -{MAX_BOX_LOSS} points: {verdict('box_within')} |",
        f"| one-click mean IoU (mIoU@1) | {bounds(p['one_click'])} | >= +{MIN_CLICK_GAIN} points: "
        f"{verdict('one_click_gain')} |",
        f"| random-click mean IoU | {bounds(p['random_click'])} | |",
        "",
        f"![mean IoU after each click, with 95% bootstrap bands]({figure})",
        "",
        "mIoU after 1 and after "
        + f"{args.max_clicks} clicks: "
        + "; ".join(
            f"{label} {100 * s['clicks']['miou_at'][0]:.2f} -> {100 * s['clicks']['miou_at'][-1]:.2f}"
            for label, s in stats["models"].items()
        )
        + ". `mini` was pretrained without mask prompts "
        "(`recipes/pretrain_mini.py` gives its corrective round the clicks alone), so its mask-prompt encoder keeps "
        "its random initialisation, which the frozen-prompt-encoder strategies do not train: the protocol's mask "
        "prompt is new to a model until corrective-click training teaches the decoder to read it. One seed on "
        "generated images: the intervals cover the sampling of images only, not of training seeds. These are not "
        "SAM results (SAM was trained with 8 click rounds and mask prompts).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mini")
    ap.add_argument("--checkpoint", default=None, help="base checkpoint (default: the model's built-in weights)")
    ap.add_argument("--strategy", default="decoder")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--demo-train-images", type=int, default=160)
    ap.add_argument("--demo-val-images", type=int, default=40)
    ap.add_argument("--train-prompts", nargs="+", default=["box", "point"], help="the mixed run's prompt kinds")
    ap.add_argument("--click-rounds", type=int, default=3, help="the mixed run's corrective click rounds")
    ap.add_argument(
        "--point-share", type=float, default=0.3, help="the mixed run's share of click-first instances (SAM: 0.5)"
    )
    ap.add_argument(
        "--first-round-weight",
        type=float,
        default=0.8,
        help="the mixed run's share of the loss on the first prediction, the corrective rounds sharing the rest "
        "(SAM, micro-sam: every round alike; give 0 for that)",
    )
    ap.add_argument(
        "--click-sampling",
        default="interior",
        choices=["uniform", "interior"],
        help="the mixed run's training clicks: uniform over the object (SAM) or towards its middle",
    )
    ap.add_argument("--max-clicks", type=int, default=10, help="clicks per instance in the click protocol")
    ap.add_argument("--bootstrap", type=int, default=2000, help="bootstrap rounds of the intervals")
    ap.add_argument("--jobs", type=int, default=1, help="training processes at a time")
    ap.add_argument("--out", type=Path, default=REPO / "docs", help="folder of strategies.md and its figures")
    ap.add_argument("--runs", type=Path, default=None, help="where the runs go (default: outputs/interactive)")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more finetune.py options for both runs")
    args = ap.parse_args(argv)
    args.extra = [a for a in args.extra if a != "--"]
    if args.first_round_weight == 0:  # every round alike (the trainer's default)
        args.first_round_weight = None
    if args.max_clicks < 1:
        raise SystemExit(f"interactive: --max-clicks must be >= 1, got {args.max_clicks}")
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    command = "python recipes/interactive.py " + " ".join(argv if argv is not None else sys.argv[1:])

    import samadapt
    from samadapt.data import presets
    from samadapt.evaluation.plots import plot_click_curves
    from samadapt.evaluation.run import zero_shot_model

    runs_dir = args.runs or (REPO / "outputs" / "interactive")
    data_root = samadapt.samadapt_home() / "data" / "demo-waste"
    runs = [
        compare.Run("box-trained", runs_dir / "box", _argv(args, data_root, runs_dir / "box", ["box"], 0)),
        compare.Run(
            "mixed-trained",
            runs_dir / "mixed",
            _argv(
                args,
                data_root,
                runs_dir / "mixed",
                args.train_prompts,
                args.click_rounds,
                (
                    "--point-share",
                    str(args.point_share),
                    "--click-sampling",
                    args.click_sampling,
                    *(
                        ("--first-round-weight", str(args.first_round_weight))
                        if args.first_round_weight is not None
                        else ()
                    ),
                ),
            ),
        ),
    ]
    compare.run_all(runs, args.jobs, runs_dir / "logs")

    val = presets.demo(data_root, "val")
    models = {"zero-shot": zero_shot_model(args.model, args.checkpoint)}
    models.update({r.key: samadapt.load(r.run_dir / "adapter.safetensors", checkpoint=args.checkpoint) for r in runs})
    results = {}
    for label, model in models.items():
        print(f"evaluating {label}", flush=True)
        results[label] = evaluate_model(model, val, args)
    stats = summarize(results, args)

    fig = plot_click_curves(
        {k: s["clicks"] for k, s in stats["models"].items()},
        args.out / "figures" / "interactive_clicks.png",
        bands={k: [(b.low, b.high) for b in s["click_bands"]] for k, s in stats["models"].items()},
        title=f"demo / {args.model}: mean IoU after each click",
    )
    seconds = {r.key: r.summary()["seconds_per_epoch"] * r.summary()["epochs_run"] for r in runs}
    machine = compare._machine(args.jobs)
    (args.out / "interactive.json").write_text(
        json.dumps(
            _jsonable({"command": command, "date": started, "machine": machine, "train_seconds": seconds, **stats}),
            indent=2,
        )
    )
    compare_page.update_page(
        args.out / "strategies.md",
        SECTION,
        section(stats, args, command, started, machine, os.path.relpath(fig, args.out), seconds),
    )
    print(f"wrote {args.out / 'strategies.md'} (section {SECTION!r}), {args.out / 'interactive.json'}, {fig}")
    for label, s in stats["models"].items():
        c = s["clicks"]
        print(
            f"{label:14} box {100 * s['box'].mean:.2f}  mIoU@1 {100 * c['miou_at'][0]:.2f}  "
            f"mIoU@{args.max_clicks} {100 * c['miou_at'][-1]:.2f}  NoC@85 {c['noc85']:.2f}  NoC@90 {c['noc90']:.2f}"
        )
    for name, c in stats["checks"].items():
        verdict = "met" if c["passed"] else "NOT met"
        print(f"acceptance {name}: {c['value']:+.2f} points (limit {c['limit']:+.1f}): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The real-data part of ``recipes/compare.py``: every registered strategy on TrashCan 1.0 frames,
several seeds, four prompt kinds, a data-efficiency curve, 95% intervals (run through
``python recipes/compare.py --dataset trashcan --data-root OUT``; see that file's docstring)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare_page  # noqa: E402  (recipes/compare_page.py: the page's sections)

from samadapt.experiments import Run, machine_line, protocol_argv, run_all  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _frames_with_instances(ds) -> list[int]:
    return [i for k, i in enumerate(ds.image_ids) if ds.instance_annotations(k)]


def trashcan_strategies(chosen: list[str] | None) -> list[str]:
    """The strategies of a real-data comparison: every registered one unless chosen."""
    from samadapt.strategies import STRATEGIES

    unknown = [s for s in chosen or [] if s not in STRATEGIES]
    if unknown:
        raise SystemExit(f"compare: unknown strategies {unknown}; registered: {sorted(STRATEGIES)}")
    return list(chosen) if chosen else list(STRATEGIES)


def run_trashcan(args, command: str, started: str) -> int:
    import torch

    import samadapt
    from samadapt.data import presets
    from samadapt.evaluation import comparison as C
    from samadapt.evaluation.plots import plot_bars, plot_curves, plot_examples
    from samadapt.evaluation.uncertainty import bootstrap_interval

    t_start = time.perf_counter()
    if not args.data_root:
        raise SystemExit(
            "compare: --dataset trashcan needs --data-root (the folder `samadapt data import-trashcan` wrote)"
        )
    strategies = trashcan_strategies(args.strategies)
    train_all = presets.trashcan(args.data_root, "train", version=args.version)
    test_all = presets.trashcan(args.data_root, "val", version=args.version)
    frames = C.choose_frames(
        _frames_with_instances(train_all),
        _frames_with_instances(test_all),
        n_select=args.select_frames,
        n_train=args.train_frames,
        n_test=args.test_frames,
        seed=0,
    )
    runs_dir = args.runs or (REPO / "outputs" / "compare-trashcan")
    fractions = sorted(set(args.fractions) | {1.0})
    roots = {}
    for f in fractions:
        n = max(1, round(f * args.train_frames))
        roots[f] = C.write_trashcan_subset(
            args.data_root, args.version, frames["train"][:n], frames["select"], runs_dir / "data" / f"train{n}"
        )

    def make(s: str, f: float, seed: int) -> Run:
        key = f"{s}-f{round(100 * f):03d}-s{seed}"
        return Run(key, runs_dir / key, protocol_argv(args, s, seed, runs_dir / key, roots[f]))

    main = {(s, seed): make(s, 1.0, seed) for s in strategies for seed in args.seeds}
    run_all(list(main.values()), args.jobs, runs_dir / "logs")
    t_trained = time.perf_counter()

    torch.set_num_threads(os.cpu_count() or 1)
    test = test_all.subset(frames["test"], name=f"trashcan-{args.version}/val (subset)")
    base = samadapt.build_sam(args.model, args.checkpoint)
    zs = C.evaluate_prompts(samadapt.adapt(base, "decoder"), test, C.PROMPT_KINDS, examples=args.examples)
    results = {}  # (strategy, fraction, seed) -> evaluate_prompts' result
    for (s, seed), r in main.items():
        print(f"evaluating {r.key}", flush=True)
        model = samadapt.load(r.run_dir / "adapter.safetensors", checkpoint=args.checkpoint)
        results[(s, 1.0, seed)] = C.evaluate_prompts(
            model, test, C.PROMPT_KINDS, examples=args.examples if seed == args.seeds[0] else 0
        )

    def records(s, f, kind):
        return [results[(s, f, seed)][kind][0] for seed in args.seeds]

    box = "tight box"
    main_records = {"zero-shot": [zs[box][0]], **{s: records(s, 1.0, box) for s in strategies}}
    ap = {
        "zero-shot": [zs[box][1]["coco"]["AP"]],
        **{s: [results[(s, 1.0, seed)][box][1]["coco"]["AP"] for seed in args.seeds] for s in strategies},
    }
    stats = C.compare_records(
        main_records,
        "zero-shot",
        ap=ap,
        baseline="decoder" if "decoder" in strategies else None,
        categories=test.categories,
        top_classes=args.top_classes,
        n_boot=args.bootstrap,
    )
    prompts = {
        kind: C.compare_records(
            {"zero-shot": [zs[kind][0]], **{s: records(s, 1.0, kind) for s in strategies}},
            "zero-shot",
            n_boot=args.bootstrap,
        )
        for kind in C.PROMPT_KINDS
    }

    # data efficiency: the decoder and the best strategy that adapts the encoder
    t_evaluated = time.perf_counter()
    encoder_strategies = [
        s
        for s in strategies
        if not samadapt.adapt(samadapt.build_sam(args.model, args.checkpoint), s).encoder_is_frozen
    ]
    best_encoder = max(encoder_strategies, key=lambda s: stats[s]["mean_iou"].mean) if encoder_strategies else None
    eff_strategies = [s for s in ("decoder", best_encoder) if s in strategies]
    small = [f for f in fractions if f < 1.0]
    eff_runs = {(s, f, seed): make(s, f, seed) for s in eff_strategies for f in small for seed in args.seeds}
    run_all(list(eff_runs.values()), args.jobs, runs_dir / "logs")
    for (s, f, seed), r in eff_runs.items():
        model = samadapt.load(r.run_dir / "adapter.safetensors", checkpoint=args.checkpoint)
        results[(s, f, seed)] = C.evaluate_prompts(model, test, {box: C.PROMPT_KINDS[box]}, coco_for=())
    efficiency = {
        s: {f: bootstrap_interval(records(s, f, box), "iou", n_boot=args.bootstrap) for f in fractions}
        for s in eff_strategies
    }
    t_end = time.perf_counter()

    summaries = {key: r.summary() for key, r in [(f"{s}/{seed}", r) for (s, seed), r in main.items()]}
    costs = {s: compare_page.costs([main[(s, seed)].summary() for seed in args.seeds]) for s in strategies}
    n_per_fraction = {f: max(1, round(f * args.train_frames)) for f in fractions}

    fig_dir = args.out / "figures"
    labels = ["zero-shot", *strategies]
    bars = plot_bars(
        {k: {p: (prompts[p][k]["mean_iou"].mean) for p in C.PROMPT_KINDS} for k in labels},
        list(C.PROMPT_KINDS),
        fig_dir / "trashcan_prompts.png",
        scale=100,
        ylabel="mean IoU (%)",
        title=f"TrashCan {args.version} / {args.model}: mean IoU by prompt (95% CI)",
        intervals={
            k: {p: (prompts[p][k]["mean_iou"].low, prompts[p][k]["mean_iou"].high) for p in C.PROMPT_KINDS}
            for k in labels
        },
    )
    curve = plot_curves(
        {s: {100 * f: (v.mean, v.low, v.high) for f, v in efficiency[s].items()} for s in efficiency},
        fig_dir / "trashcan_efficiency.png",
        xlabel="% of the training frames",
        ylabel="mean IoU (%)",
        scale=100,
        reference=("zero-shot", stats["zero-shot"]["mean_iou"].mean),
        title=f"TrashCan {args.version}: mean IoU vs training frames (95% CI)",
    )
    examples = {
        "zero-shot": zs[box][0].examples,
        **{s: results[(s, 1.0, args.seeds[0])][box][0].examples for s in strategies},
    }
    ex = plot_examples(examples, fig_dir / "trashcan_examples.png", max_rows=args.examples)
    figures = {k: os.path.relpath(p, args.out) for k, p in (("prompts", bars), ("efficiency", curve), ("examples", ex))}

    box_fill = C.box_fill_baseline(test)
    info = {
        "command": command,
        "date": started,
        "data_root": args.data_root,
        "machine": machine_line(args.jobs),
        "version": args.version,
        "box_fill_mean_iou": box_fill,
        "frames": {k: len(v) for k, v in frames.items()},
        "test_instances": stats["zero-shot"]["num_instances"],
        "epochs": args.epochs,
        "seeds": args.seeds,
        "strategies": strategies,
        "best_encoder": best_encoder,
        "fractions": n_per_fraction,
        "bootstrap": args.bootstrap,
        "extra": args.extra,
        "minutes": {
            "training": (t_trained - t_start) / 60,
            "evaluation": (t_evaluated - t_trained) / 60,
            "efficiency": (t_end - t_evaluated) / 60,
            "total": (t_end - t_start) / 60,
        },
        "test_frames": [test_all.file_image_info(i)["file_name"] for i in frames["test"]],
    }
    from samadapt.evaluation.comparison import intervals_to_json

    (args.out / "strategies_trashcan.json").write_text(
        json.dumps(
            intervals_to_json(
                {
                    **info,
                    "stats": stats,
                    "prompts": prompts,
                    "efficiency": {s: {str(f): v for f, v in e.items()} for s, e in efficiency.items()},
                    "costs": costs,
                    "runs": summaries,
                }
            ),
            indent=2,
            default=str,
        )
    )
    section = compare_page.trashcan_section(info, stats, prompts, efficiency, costs, figures)
    compare_page.update_page(args.out / "strategies.md", "trashcan", section)
    print(f"wrote {args.out / 'strategies.md'} ({(t_end - t_start) / 60:.1f} min)")
    for s in strategies:
        g = stats[s]["gain"]
        print(
            f"{s:10} mean IoU {100 * stats[s]['mean_iou'].mean:.2f}  gain {100 * g.mean:+.2f} "
            f"[{100 * g.low:+.2f}, {100 * g.high:+.2f}]"
        )
    return 0


def render_trashcan(args) -> int:
    """Rewrite the page's TrashCan section from the JSON an earlier run wrote (no training, no
    evaluation): for changes to the page's wording. The section keeps that run's command and date."""
    from samadapt.evaluation.uncertainty import Interval

    def revive(x):
        if isinstance(x, dict) and {"mean", "low", "high", "level", "method"} == set(x):
            return Interval(**x)
        return {k: revive(v) for k, v in x.items()} if isinstance(x, dict) else x

    path = args.out / "strategies_trashcan.json"
    if not path.is_file():
        raise SystemExit(f"compare: --render-only needs {path} from an earlier run")
    raw = json.loads(path.read_text())
    if args.note is not None:  # kept in the JSON, so later renders keep it
        raw["note"] = args.note
        path.write_text(json.dumps(raw, indent=2))
    data = revive(raw)
    efficiency = {s: {float(f): v for f, v in e.items()} for s, e in data["efficiency"].items()}
    info = {**data, "fractions": {float(f): n for f, n in data["fractions"].items()}}
    figures = {k: f"figures/trashcan_{k}.png" for k in ("prompts", "efficiency", "examples")}
    section = compare_page.trashcan_section(info, data["stats"], data["prompts"], efficiency, data["costs"], figures)
    compare_page.update_page(args.out / "strategies.md", "trashcan", section)
    print(f"wrote {args.out / 'strategies.md'} from {path}")
    return 0

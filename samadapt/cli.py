"""The ``samadapt`` command: parses arguments, calls the library, prints.

Subcommands are entries of :data:`SUBCOMMANDS`. Adding one is a ``run`` function (the parsed
``argparse.Namespace`` in, an exit code out; library calls and printing only), an ``add_arguments``
function for its options, and one line in that list::

    Subcommand("data summary", "summarise a dataset", _add_data_summary, _run_data_summary),

A name with a space (``"data summary"``) becomes a nested command (``samadapt data summary``); the
group (``data``) is created on first use. Library errors (:class:`samadapt.SamAdaptError`) are
printed as ``samadapt: error: <message>`` and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .errors import SamAdaptError

EXIT_ERROR = 2


@dataclass(frozen=True)
class Subcommand:
    """One ``samadapt`` subcommand.

    name: the command words (``"info"``, ``"data summary"``); help: one line for ``--help``;
    add_arguments: adds its options to its parser; run: does the work and returns the exit code.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


# ---------------------------------------------------------------------------- samadapt info
def _add_info(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _info() -> dict[str, Any]:
    from .models import MODEL_TYPES
    from .sizes import strategy_size
    from .strategies import STRATEGIES

    model_types = [
        {
            "name": c.name,
            "tag": c.tag,
            "image_size": c.image_size,
            "encoder_embed_dim": c.encoder_embed_dim,
            "encoder_depth": c.encoder_depth,
            "encoder_num_heads": c.encoder_num_heads,
            "checkpoint": c.checkpoint or (f"built-in {c.builtin_weights}" if c.builtin_weights else None),
            "description": c.description,
        }
        for c in MODEL_TYPES.values()
    ]
    strategies = [{"name": s.name, "description": s.description} for s in STRATEGIES.values()]
    parameters = {}
    for mt in MODEL_TYPES:
        sizes = {s: strategy_size(mt, s) for s in STRATEGIES}
        parameters[mt] = {
            "base": next(iter(sizes.values())).base,
            "strategies": {
                s: {"trainable": z.trainable, "total": z.total, "trainable_percent": round(z.trainable_percent, 3),
                    "adapter_bytes": z.adapter_bytes}
                for s, z in sizes.items()
            },
        }
    return {"model_types": model_types, "strategies": strategies, "parameters": parameters,
            "note": "default options of each strategy; counted on the meta device (no weights)"}


def _run_info(args: argparse.Namespace) -> int:
    info = _info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print("Model types")
    _print_table(
        [[m["name"], m["tag"], str(m["image_size"]), f"{m['encoder_embed_dim']}x{m['encoder_depth']}",
          str(m["encoder_num_heads"]), m["checkpoint"] or "-"] for m in info["model_types"]],
        ["name", "tag", "image", "encoder dim x depth", "heads", "weights"],
    )
    print("\nStrategies")
    _print_table([[s["name"], s["description"]] for s in info["strategies"]], ["name", "description"])
    print("\nTrainable parameters (default options; adapter file size in MB)")
    names = [s["name"] for s in info["strategies"]]
    rows = []
    for mt, p in info["parameters"].items():
        cells = [f"{_millions(p['strategies'][s]['trainable'])} ({p['strategies'][s]['adapter_bytes'] / 1e6:.1f} MB)"
                 for s in names]
        rows.append([mt, _millions(p["base"]), *cells])
    _print_table(rows, ["model", "total", *names])
    return 0


# ---------------------------------------------------------------------------- samadapt list
def _add_list(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _main_metric(card: dict[str, Any]) -> str:
    """The headline number of an adapter card: fine-tuned mean IoU where the card has it."""
    metrics = card.get("metrics")
    if not isinstance(metrics, dict):
        return "-"
    for where in (metrics.get("fine_tuned"), metrics):
        if isinstance(where, dict) and isinstance(where.get("mean_iou"), (int, float)):
            return f"mIoU {100 * where['mean_iou']:.2f}"
    return "-"


def _run_list(args: argparse.Namespace) -> int:
    from .hub import adapters_dir, list_adapters

    adapters = list_adapters()
    if args.json:
        print(json.dumps(adapters, indent=2, default=str))
        return 0
    if not adapters:
        print(f"no adapters in {adapters_dir()}")
        return 0
    _print_table(
        [[a["name"], str(a.get("model_type", "?")), str(a.get("strategy", "?")), str(a.get("dataset", "?")),
          _main_metric(a), a["path"]] for a in adapters],
        ["name", "model type", "strategy", "dataset", "metric", "path"],
    )
    return 0


# ---------------------------------------------------------------------------- samadapt download-checkpoint
def _add_download(parser: argparse.ArgumentParser) -> None:
    from .models.checkpoints import OFFICIAL_CHECKPOINTS

    parser.add_argument("model_type", choices=sorted(c.model_type for c in OFFICIAL_CHECKPOINTS.values()))
    parser.add_argument("--url", help="download from this URL instead of the official one (a mirror)")
    parser.add_argument("--dir", help="target folder (default: $SAMADAPT_HOME/checkpoints)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--sha256", help=argparse.SUPPRESS)  # expected digest override, for tests of mirrors


def _run_download(args: argparse.Namespace) -> int:
    from .hub import download_checkpoint

    path = download_checkpoint(args.model_type, url=args.url, directory=args.dir, progress=not args.no_progress,
                               sha256=args.sha256)
    print(f"{path} (sha256 verified)")
    return 0


def _add_data_summary(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="taco, zerowaste, trashcan, coco or demo")
    parser.add_argument("--root", help="dataset folder (taco, zerowaste, trashcan, demo)")
    parser.add_argument("--images-root", help="images folder (coco)")
    parser.add_argument("--annotation-file", help="COCO instances JSON (coco)")
    parser.add_argument("--split", nargs="+", help="splits to summarise (default: all of the preset's)")
    parser.add_argument("--version", dest="trashcan_version", choices=["instance", "material"], help="trashcan version")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _run_data_summary(args: argparse.Namespace) -> int:
    from .data.summary import format_summary, summarize_preset

    kw: dict[str, Any] = {}
    if args.dataset == "coco":
        kw = {"images_root": args.images_root, "annotation_file": args.annotation_file}
    else:
        kw["root"] = args.root
        if args.trashcan_version:
            kw["version"] = args.trashcan_version
    summary = summarize_preset(args.dataset, splits=tuple(args.split) if args.split else None, **kw)
    print(json.dumps(summary, indent=2, default=str) if args.json else format_summary(summary))
    return 0


def _add_eval(parser: argparse.ArgumentParser) -> None:
    from .training.eval_run import add_eval_arguments

    add_eval_arguments(parser)


def _run_eval(args: argparse.Namespace) -> int:
    from .training.eval_run import run_eval

    return run_eval(args)


SUBCOMMANDS: list[Subcommand] = [
    Subcommand("info", "model types, strategies and their trainable parameter counts", _add_info, _run_info),
    Subcommand("list", "adapters installed in $SAMADAPT_HOME", _add_list, _run_list),
    Subcommand("download-checkpoint", "download an official SAM checkpoint and verify its sha256",
               _add_download, _run_download),
    Subcommand("data summary", "images, instances per category and split, sizes, and what was skipped and why",
               _add_data_summary, _run_data_summary),
    Subcommand("eval", "evaluate zero-shot SAM and adapters on a dataset with the same prompts", _add_eval, _run_eval),
]


# ---------------------------------------------------------------------------- parser and entry point
def build_parser(subcommands: Sequence[Subcommand] | None = None) -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="samadapt", description="Adapt Segment Anything (SAM) to waste segmentation.")
    parser.add_argument("--version", action="version", version=f"samadapt {__version__}")
    groups: dict[tuple[str, ...], argparse._SubParsersAction] = {
        (): parser.add_subparsers(dest="command", metavar="command", required=True)
    }
    for sub in SUBCOMMANDS if subcommands is None else subcommands:
        words = tuple(sub.name.split())
        for depth in range(1, len(words)):  # create the groups of a nested command ("data" of "data summary")
            if words[:depth] not in groups:
                group = groups[words[: depth - 1]].add_parser(words[depth - 1], help=f"{words[depth - 1]} commands")
                groups[words[:depth]] = group.add_subparsers(dest=f"command_{depth}", metavar="command", required=True)
        p = groups[words[:-1]].add_parser(words[-1], help=sub.help, description=sub.help)
        sub.add_arguments(p)
        p.set_defaults(_run=sub.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``samadapt`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors (argparse already printed)
        return int(e.code or 0)
    try:
        return int(args._run(args) or 0)
    except SamAdaptError as e:
        print(f"samadapt: error: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

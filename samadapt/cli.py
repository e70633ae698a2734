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

from .errors import ConfigError, SamAdaptError, TrainingInterrupted

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
    description: str | None = None  # the command's --help text (default: help)


def _print_table(rows: list[list[str]], header: list[str]) -> None:
    from .evaluation.report import text_table

    print(text_table(header, rows))


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
                s: {
                    "trainable": z.trainable,
                    "total": z.total,
                    "trainable_percent": round(z.trainable_percent, 3),
                    "adapter_bytes": z.adapter_bytes,
                }
                for s, z in sizes.items()
            },
        }
    return {
        "model_types": model_types,
        "strategies": strategies,
        "parameters": parameters,
        "note": "default options of each strategy; counted on the meta device (no weights)",
    }


def _run_info(args: argparse.Namespace) -> int:
    info = _info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print("Model types")
    _print_table(
        [
            [
                m["name"],
                m["tag"],
                str(m["image_size"]),
                f"{m['encoder_embed_dim']}x{m['encoder_depth']}",
                str(m["encoder_num_heads"]),
                m["checkpoint"] or "-",
            ]
            for m in info["model_types"]
        ],
        ["name", "tag", "image", "encoder dim x depth", "heads", "weights"],
    )
    print("\nStrategies")
    _print_table([[s["name"], s["description"]] for s in info["strategies"]], ["name", "description"])
    print("\nTrainable parameters (default options; adapter file size in MB)")
    names = [s["name"] for s in info["strategies"]]
    rows = []
    for mt, p in info["parameters"].items():
        cells = [
            f"{_millions(p['strategies'][s]['trainable'])} ({p['strategies'][s]['adapter_bytes'] / 1e6:.1f} MB)"
            for s in names
        ]
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
    note = " (on its training images)" if (card.get("data") or {}).get("note") else ""
    for where in (metrics.get("fine_tuned"), metrics):
        if isinstance(where, dict) and isinstance(where.get("mean_iou"), (int, float)):
            return f"mIoU {100 * where['mean_iou']:.2f}{note}"
    return "-"


def _run_list(args: argparse.Namespace) -> int:
    from .hub import list_adapters
    from .paths import adapters_dir

    adapters = list_adapters()
    if args.json:
        print(json.dumps(adapters, indent=2, default=str))
        return 0
    if not adapters:
        print(f"no adapters in {adapters_dir()}")
        return 0
    _print_table(
        [
            [
                a["name"],
                str(a.get("model_type", "?")),
                str(a.get("strategy", "?")),
                str(a.get("dataset", "?")),
                _main_metric(a),
                a["path"],
            ]
            for a in adapters
        ],
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

    path = download_checkpoint(
        args.model_type, url=args.url, directory=args.dir, progress=not args.no_progress, sha256=args.sha256
    )
    print(f"{path} (sha256 verified)")
    return 0


def _add_data_summary(parser: argparse.ArgumentParser) -> None:
    from .data.presets import DATASET_CARDS

    parser.add_argument("--dataset", required=True, choices=sorted(DATASET_CARDS), help="dataset preset")
    parser.add_argument("--data-root", help="folder holding the dataset in its official layout (every preset but coco)")
    parser.add_argument("--images-root", help="dataset coco: the images folder")
    parser.add_argument("--annotation-file", help="dataset coco: the COCO instances JSON")
    parser.add_argument("--split", nargs="+", help="splits to summarise (default: every split of the preset)")
    parser.add_argument(
        "--dataset-options",
        type=json.loads,
        default=None,
        metavar="JSON",
        help='options of the preset, e.g. \'{"version": "material"}\' for trashcan',
    )
    parser.add_argument("--json", action="store_true", help="print JSON")


def _run_data_summary(args: argparse.Namespace) -> int:
    from .data.summary import format_summary, summarize_preset

    sources = {"data_root": args.data_root, "images_root": args.images_root, "annotation_file": args.annotation_file}
    summary = summarize_preset(
        args.dataset,
        splits=tuple(args.split) if args.split else None,
        **{k: v for k, v in sources.items() if v is not None},
        **(args.dataset_options or {}),
    )
    print(json.dumps(summary, indent=2, default=str) if args.json else format_summary(summary))
    return 0


# ---------------------------------------------------------------------------- samadapt train
TRAIN_DESCRIPTION = """Fine-tune SAM with a chosen strategy (the options of recipes/finetune.py).

  samadapt train --strategy decoder                                   # built-in demo, CPU, minutes
  samadapt train --strategy lora --lora-rank 8 --dataset taco --data-root TACO/data \\
      --model vit_h --checkpoint sam_vit_h_4b8939.pth
  samadapt train --config run.yaml --epochs 3                         # YAML keys = option names

Every option is a field of samadapt.config.TrainConfig (--lr -> lr); a strategy's own options are
--<strategy>-<option>. Options given here override the YAML file. Several GPUs (or CPU processes):
accelerate launch --multi_gpu --num_processes N recipes/finetune.py ...
"""


def _none_or(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its errors
    return parse


def _add_option(parser, flag: str, f, hint, dest: str, choices=None, aliases: tuple[str, ...] = ()) -> None:
    """One dataclass field as a command-line option (and its old names, ``aliases``), with its help,
    default and choices."""
    import dataclasses
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    optional = origin in (typing.Union, types.UnionType) and type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    choices = choices or f.metadata.get("choices")
    kw: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "metavar": f.name.upper()}
    if base is bool:
        kw = {"dest": dest, "default": argparse.SUPPRESS, "action": argparse.BooleanOptionalAction}
    elif typing.get_origin(base) in (tuple, list):
        kw["nargs"] = "+"
    elif typing.get_origin(base) is dict or base is dict:
        kw.update(type=json.loads, metavar="JSON")
    elif base in (int, float, str):
        kw["type"] = _none_or(base) if optional else base
    if choices:
        # "none" (-> None) is a choice where it means something other than leaving the option out: a
        # field whose default is None gains nothing from it ("--mixed-precision none" beside "no")
        with_none = "none" in choices or (optional and default is not None)
        kw["choices"] = [c for c in choices if c != "none"] + ([None] if with_none else [])
        kw["metavar"] = "{" + ",".join([c for c in choices if c != "none"] + (["none"] if with_none else [])) + "}"
        if not with_none:
            kw["type"] = base
    shown = (
        "none"
        if default is None
        else (
            " ".join(map(str, default))
            if isinstance(default, (list, tuple))
            else json.dumps(default)
            if isinstance(default, dict)
            else default
        )
    )
    text = f.metadata.get("help") or ""
    # a help text that explains its default itself ("default: the preset's split") keeps its words
    kw["help"] = (text if "default" in text else f"{text} (default: {shown})").replace("%", "%%")
    if aliases:
        kw["help"] += f" (formerly {', '.join(aliases)})"
    parser.add_argument(flag, *aliases, **kw)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``samadapt train`` and ``recipes/finetune.py``: every field of
    :class:`~samadapt.config.TrainConfig` and of each strategy's config."""
    import dataclasses
    import typing

    from .config import RENAMED_KEYS, TrainConfig
    from .data.presets import DATASET_CARDS
    from .models import MODEL_TYPES
    from .strategies import STRATEGIES

    old_names = {new: "--" + old.replace("_", "-") for old, new in RENAMED_KEYS.items()}
    parser.add_argument(
        "--config",
        metavar="YAML",
        help="YAML file of the options below (keys: option names with _ or -); options on the command line override it",
    )
    registries = {"strategy": sorted(STRATEGIES), "model": sorted(MODEL_TYPES), "dataset": sorted(DATASET_CARDS)}
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name != "strategy_options" and not f.metadata.get("hidden"):
            flag = "--" + f.name.replace("_", "-")
            aliases = (old_names[f.name],) if f.name in old_names else ()
            _add_option(parser, flag, f, hints[f.name], f.name, registries.get(f.name), aliases)
    for name, strat in sorted(STRATEGIES.items()):
        group = parser.add_argument_group(f"options of --strategy {name}", strat.description)
        shints = typing.get_type_hints(strat.config_class)
        for f in dataclasses.fields(strat.config_class):
            if not f.metadata.get("hidden"):
                _add_option(group, f"--{name}-{f.name.replace('_', '-')}", f, shints[f.name], f"{name}__{f.name}")


def train_config_from_args(args: argparse.Namespace):
    """The :class:`~samadapt.config.TrainConfig` of parsed ``add_train_arguments`` options merged
    over the ``--config`` YAML file (merged before the one validation, so a key the file lacks may
    come from the command line)."""
    from .config import TrainConfig, read_yaml

    ns = {k: v for k, v in vars(args).items() if not k.startswith("_") and not k.startswith("command")}
    config_file = ns.pop("config", None)
    strategy_opts: dict[str, dict] = {}
    for key in [k for k in ns if "__" in k]:
        strat, opt = key.split("__", 1)
        strategy_opts.setdefault(strat, {})[opt] = ns.pop(key)
    data = read_yaml(config_file) if config_file else {}
    data.update(ns)
    strategy = data.get("strategy", TrainConfig.strategy)
    other = sorted(set(strategy_opts) - {strategy})
    if other:
        flags = ", ".join(f"--{other[0]}-{o.replace('_', '-')}" for o in strategy_opts[other[0]])
        raise ConfigError(f"{flags} belong(s) to --strategy {other[0]}, but --strategy is {strategy!r}")
    data["strategy_options"] = {**(data.get("strategy_options") or {}), **strategy_opts.get(strategy, {})}
    return TrainConfig.from_dict(data)


def run_train(args: argparse.Namespace) -> int:
    """``samadapt train``: train as the parsed options say."""
    from .training.trainer import train

    train(train_config_from_args(args))
    return 0


def _lazy(module: str, name: str) -> Callable:
    """``module.name``, imported when first called (so ``samadapt --help`` stays fast)."""
    return lambda *a: getattr(__import__(module, fromlist=[name]), name)(*a)


SUBCOMMANDS: list[Subcommand] = [
    Subcommand(
        "train",
        "fine-tune SAM with a chosen strategy (the options of recipes/finetune.py)",
        add_train_arguments,
        run_train,
        TRAIN_DESCRIPTION,
    ),
    Subcommand("info", "model types, strategies and their trainable parameter counts", _add_info, _run_info),
    Subcommand("list", "adapters installed in $SAMADAPT_HOME", _add_list, _run_list),
    Subcommand(
        "download-checkpoint", "download an official SAM checkpoint and verify its sha256", _add_download, _run_download
    ),
    Subcommand(
        "data summary",
        "images, instances per category and split, sizes, and what was skipped and why",
        _add_data_summary,
        _run_data_summary,
    ),
    Subcommand(
        "eval",
        "evaluate zero-shot SAM and adapters on a dataset with the same prompts",
        _lazy("samadapt.evaluation.cli", "add_eval_arguments"),
        _lazy("samadapt.evaluation.cli", "run_eval"),
    ),
    Subcommand(
        "data import-trashcan",
        "TrashCan 1.0's raw Supervise.ly frames to its official COCO layout",
        _lazy("samadapt.data.importers.commands", "add_import_trashcan"),
        _lazy("samadapt.data.importers.commands", "run_import_trashcan"),
    ),
    Subcommand(
        "data import-supervisely",
        "a Supervise.ly project export to COCO, with a class mapping",
        _lazy("samadapt.data.importers.commands", "add_import_supervisely"),
        _lazy("samadapt.data.importers.commands", "run_import_supervisely"),
    ),
    Subcommand(
        "segment",
        "masks for every image from a detector's boxes (COCO results) or automatically, with classes",
        _lazy("samadapt.segment.cli", "add_segment_arguments"),
        _lazy("samadapt.segment.cli", "run_segment"),
    ),
    Subcommand(
        "export",
        "write an adapter as a plain SAM checkpoint, an ONNX pair, a transformers or a peft folder",
        _lazy("samadapt.exporters.cli", "add_export_arguments"),
        _lazy("samadapt.exporters.cli", "run_export"),
    ),
    Subcommand(
        "annotate",
        "label a folder of images in the browser, the adapted model proposing each mask",
        _lazy("samadapt.annotate.cli", "add_annotate_arguments"),
        _lazy("samadapt.annotate.cli", "run_annotate"),
    ),
    Subcommand(
        "engine",
        "retrain on the annotations made so far and install the new adapter (the data engine)",
        _lazy("samadapt.engine.cli", "add_engine_arguments"),
        _lazy("samadapt.engine.cli", "run_engine"),
    ),
]


# ---------------------------------------------------------------------------- parser and entry point
def build_parser(subcommands: Sequence[Subcommand] | None = None) -> argparse.ArgumentParser:
    from ._version import __version__

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
        p = groups[words[:-1]].add_parser(
            words[-1],
            help=sub.help,
            description=sub.description or sub.help,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_arguments(p)
        p.set_defaults(_run=sub.run)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "samadapt") -> int:
    """Run ``samadapt`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    Library errors print one line (``samadapt: error: ...``) and return 2; Ctrl-C returns 130 after
    one line saying what was saved (printed by the main process of a multi-process run)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors (argparse already printed)
        return int(e.code or 0)
    return run_parsed(args, prog)


def run_parsed(args: argparse.Namespace, prog: str) -> int:
    """Run a parsed command (``args._run``), turning library errors and Ctrl-C into one line and
    an exit code."""
    import os

    rank = int(os.environ.get("RANK", "0"))
    where = f" [process {rank}]" if rank else ""
    try:
        return int(args._run(args) or 0)
    except TrainingInterrupted as e:
        if rank == 0:
            print(f"{prog}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        if rank == 0:
            print(f"{prog}: interrupted", file=sys.stderr)
        return TrainingInterrupted.exit_code
    except SamAdaptError as e:
        print(f"{prog}{where}: error: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

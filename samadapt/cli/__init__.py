"""The ``samadapt`` command: parses arguments, calls the library, prints.

Every command's options and its "parsed options -> library call -> print" glue live in this package,
one module per command group; argparse is used nowhere else in samadapt:

- :mod:`.train`: ``samadapt train`` (and ``recipes/finetune.py``);
- :mod:`.evaluate`: ``samadapt eval`` (and ``recipes/evaluate.py``);
- :mod:`.info`: ``samadapt info``, ``list`` and ``download-checkpoint``;
- :mod:`.data`: ``samadapt data summary``, ``data import-trashcan`` and ``data import-supervisely``;
- :mod:`.segment`, :mod:`.export`, :mod:`.annotate`, :mod:`.engine`: the commands of those names;
- :mod:`.options`: an option dataclass (:func:`samadapt.options.option` fields) as options, for
  train and eval (:func:`~samadapt.cli.options.add_dataclass_options`).

Subcommands are entries of :data:`SUBCOMMANDS`. Adding one is a ``run`` function (the parsed
``argparse.Namespace`` in, an exit code out; library calls and printing only), an ``add_arguments``
function for its options, and one line in that list::

    Subcommand("data summary", "summarise a dataset", add_data_summary, run_data_summary),

A name with a space (``"data summary"``) becomes a nested command (``samadapt data summary``); the
group (``data``) is created on first use. Library errors (:class:`samadapt.SamAdaptError`) are
printed as ``samadapt: error: <message>`` and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

from ..errors import SamAdaptError, TrainingInterrupted
from .data import add_data_summary, run_data_summary
from .info import add_download_arguments, add_info_arguments, add_list_arguments, run_download, run_info, run_list
from .train import TRAIN_DESCRIPTION, add_train_arguments, run_train, train_config_from_args

__all__ = [
    "EXIT_ERROR",
    "SUBCOMMANDS",
    "TRAIN_DESCRIPTION",
    "Subcommand",
    "add_train_arguments",
    "build_parser",
    "main",
    "run_parsed",
    "run_train",
    "train_config_from_args",
]

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
    Subcommand("info", "model types, strategies and their trainable parameter counts", add_info_arguments, run_info),
    Subcommand("list", "adapters installed in $SAMADAPT_HOME", add_list_arguments, run_list),
    Subcommand(
        "download-checkpoint",
        "download an official SAM checkpoint and verify its sha256",
        add_download_arguments,
        run_download,
    ),
    Subcommand(
        "data summary",
        "images, instances per category and split, sizes, and what was skipped and why",
        add_data_summary,
        run_data_summary,
    ),
    Subcommand(
        "eval",
        "evaluate zero-shot SAM and adapters on a dataset with the same prompts",
        _lazy("samadapt.cli.evaluate", "add_eval_arguments"),
        _lazy("samadapt.cli.evaluate", "run_eval"),
    ),
    Subcommand(
        "data import-trashcan",
        "TrashCan 1.0's raw Supervise.ly frames to its official COCO layout",
        _lazy("samadapt.cli.data", "add_import_trashcan"),
        _lazy("samadapt.cli.data", "run_import_trashcan"),
    ),
    Subcommand(
        "data import-supervisely",
        "a Supervise.ly project export to COCO, with a class mapping",
        _lazy("samadapt.cli.data", "add_import_supervisely"),
        _lazy("samadapt.cli.data", "run_import_supervisely"),
    ),
    Subcommand(
        "segment",
        "masks for every image from a detector's boxes (COCO results) or automatically, with classes",
        _lazy("samadapt.cli.segment", "add_segment_arguments"),
        _lazy("samadapt.cli.segment", "run_segment"),
    ),
    Subcommand(
        "export",
        "write an adapter as a plain SAM checkpoint, an ONNX pair, a transformers or a peft folder",
        _lazy("samadapt.cli.export", "add_export_arguments"),
        _lazy("samadapt.cli.export", "run_export"),
    ),
    Subcommand(
        "annotate",
        "label a folder of images in the browser, the adapted model proposing each mask",
        _lazy("samadapt.cli.annotate", "add_annotate_arguments"),
        _lazy("samadapt.cli.annotate", "run_annotate"),
    ),
    Subcommand(
        "engine",
        "retrain on the annotations made so far and install the new adapter (the data engine)",
        _lazy("samadapt.cli.engine", "add_engine_arguments"),
        _lazy("samadapt.cli.engine", "run_engine"),
    ),
]


# ---------------------------------------------------------------------------- parser and entry point
def build_parser(subcommands: Sequence[Subcommand] | None = None) -> argparse.ArgumentParser:
    from .._version import __version__

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

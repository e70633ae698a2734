"""``samadapt data summary``, ``samadapt data import-trashcan`` and ``samadapt data import-supervisely``
(options and runs; the importers are :mod:`samadapt.data.importers`)."""

from __future__ import annotations

import argparse
import json

__all__ = [
    "add_data_summary",
    "add_import_supervisely",
    "add_import_trashcan",
    "run_data_summary",
    "run_import_supervisely",
    "run_import_trashcan",
]


# ---------------------------------------------------------------------------- samadapt data summary
def add_data_summary(parser: argparse.ArgumentParser) -> None:
    from ..data.presets import DATASET_CARDS

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


def run_data_summary(args: argparse.Namespace) -> int:
    from ..data.summary import format_summary, summarize_preset

    sources = {"data_root": args.data_root, "images_root": args.images_root, "annotation_file": args.annotation_file}
    summary = summarize_preset(
        args.dataset,
        splits=tuple(args.split) if args.split else None,
        **{k: v for k, v in sources.items() if v is not None},
        **(args.dataset_options or {}),
    )
    print(json.dumps(summary, indent=2, default=str) if args.json else format_summary(summary))
    return 0


# ---------------------------------------------------------------------------- samadapt data import-*
def _common(parser: argparse.ArgumentParser) -> None:
    from ..data.importers.output import IMAGE_MODES

    parser.add_argument(
        "--images",
        choices=IMAGE_MODES,
        default="symlink",
        help="how image files reach OUT: symbolic links to SOURCE (default), hard links, or copies",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier import in OUT (without it a re-run with the same settings does nothing)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_import_trashcan(parser: argparse.ArgumentParser) -> None:
    from ..data.importers.trashcan import VERSIONS

    parser.add_argument(
        "source",
        metavar="SOURCE",
        help="folder holding original_data/{images,annotations}/ and splits/{instance,material}_{train,val}.txt",
    )
    parser.add_argument(
        "out", metavar="OUT", help="output folder: the layout the trashcan preset reads (--data-root OUT)"
    )
    parser.add_argument(
        "--version",
        dest="versions",
        nargs="+",
        choices=VERSIONS,
        default=list(VERSIONS),
        help="dataset versions to write (default: both)",
    )
    _common(parser)


def run_import_trashcan(args: argparse.Namespace) -> int:
    from ..data.importers.trashcan import import_trashcan

    result = import_trashcan(
        args.source,
        args.out,
        versions=args.versions,
        images=args.images,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(result.format())
    return 0


def add_import_supervisely(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "project", metavar="PROJECT", help="Supervise.ly project export (meta.json, <dataset>/{ann,img}/)"
    )
    parser.add_argument("out", metavar="OUT", help="output folder: OUT/<dataset>/{annotations.json,images/}")
    parser.add_argument(
        "--mapping",
        metavar="FILE",
        help="JSON or YAML {classTitle: category or null}; default: every class keeps its title",
    )
    parser.add_argument(
        "--skip-unmapped",
        action="store_true",
        help="leave out (counted) objects whose class the mapping lacks, instead of stopping",
    )
    _common(parser)


def run_import_supervisely(args: argparse.Namespace) -> int:
    from ..data.importers.project import import_supervisely

    result = import_supervisely(
        args.project,
        args.out,
        mapping=args.mapping,
        skip_unmapped=args.skip_unmapped,
        images=args.images,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(result.format())
    return 0

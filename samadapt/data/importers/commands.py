"""``samadapt data import-trashcan`` and ``samadapt data import-supervisely`` (options and runs;
``samadapt.cli`` lists them)."""

from __future__ import annotations

import argparse

from .output import IMAGE_MODES


def _common(parser: argparse.ArgumentParser) -> None:
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
    from .trashcan import VERSIONS

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
    from .trashcan import import_trashcan

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
    from .project import import_supervisely

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

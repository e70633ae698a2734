"""``samadapt annotate``: its options; the page, its server and its models are
:func:`samadapt.annotate.serve.annotate_folder`.

samadapt annotate IMAGES --out annotations.json [--adapter NAME | --model TYPE --checkpoint F]
    [--categories FILE | --annotation-file EXISTING.json] [--host 127.0.0.1] [--port 0] [--no-browser]
"""

from __future__ import annotations

import argparse

__all__ = ["DESCRIPTION", "add_annotate_arguments", "run_annotate"]

DESCRIPTION = """Label a folder of images in the browser: the model proposes a mask for every box or click.

  samadapt annotate IMAGES --out annotations.json --adapter trashcan-mini --categories classes.json
  samadapt annotate IMAGES --out annotations.json --annotation-file existing.json   # continue a dataset

Starts a local server and prints the page's URL (with its access token). Drag a box, click to add a
positive point, shift-click (or right-click) for a negative one; Enter accepts; 1-9 choose the category;
n / p go to the next / previous image. The COCO file (--out) is written after every change, and running
the command again on it continues it. Details: docs/annotate.md.
"""


def add_annotate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.add_argument("images", metavar="IMAGES", help="folder of the images (sub-folders included)")
    parser.add_argument("--out", required=True, metavar="FILE.json", help="COCO file to write (continued if it exists)")
    m = parser.add_argument_group("model")
    m.add_argument("--adapter", metavar="NAME_OR_PATH", help="adapter name or file (default: the base model)")
    m.add_argument("--model", default=None, help="base model type without --adapter (default: mini)")
    m.add_argument("--checkpoint", default=None, help="base SAM checkpoint (official vit_* need one)")
    m.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    c = parser.add_argument_group("categories (default: one category, 'object')")
    how = c.add_mutually_exclusive_group()
    how.add_argument(
        "--categories", metavar="FILE", help='JSON list of names (["bottle", "can"]) or of COCO category records'
    )
    how.add_argument(
        "--annotation-file",
        metavar="EXISTING.json",
        help="COCO file giving the categories; its annotations of these images are loaded as accepted",
    )
    s = parser.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    s.add_argument("--port", type=int, default=0, help="port (default 0: a free one)")
    s.add_argument("--no-browser", action="store_true", help="only print the URL, do not open a browser")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    e = parser.add_argument_group("adapt (the page's Adapt button: samadapt engine)")
    e.add_argument("--adapt-epochs", type=int, default=None, help="epochs of each run (default: samadapt engine's)")


def run_annotate(args: argparse.Namespace) -> int:
    from ..annotate.serve import annotate_folder

    annotate_folder(
        args.images,
        args.out,
        adapter=args.adapter,
        model_type=args.model,
        checkpoint=args.checkpoint,
        device=args.device,
        categories=args.categories,
        annotation_file=args.annotation_file,
        host=args.host,
        port=args.port,
        open_browser=not args.no_browser,
        progress=not args.no_progress,
        adapt_epochs=args.adapt_epochs,
    )
    return 0

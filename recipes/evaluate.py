"""Evaluate zero-shot SAM and fine-tuned adapters on a dataset, every model with the same prompts.

    python recipes/evaluate.py --dataset demo --adapter demo-mini --adapter demo-mini-lora
    python recipes/evaluate.py --dataset taco --data-root /data/TACO/data --model vit_h \\
        --checkpoint sam_vit_h_4b8939.pth --adapter taco-vith --adapter taco-vith-lora --prompt jitter

Writes metrics.json, metrics.md and examples.png into --out (default outputs/eval-<dataset>) and
prints the table. ``samadapt eval`` takes the same options (samadapt.cli.evaluate).
"""

from __future__ import annotations

import argparse
import sys

from samadapt.cli.evaluate import add_eval_arguments, run_eval
from samadapt.errors import SamAdaptError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_eval_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_eval(args)
    except SamAdaptError as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

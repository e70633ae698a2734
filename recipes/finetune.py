"""Fine-tune SAM with a chosen strategy: the recipe behind ``samadapt train`` (same options).

    accelerate launch recipes/finetune.py --strategy decoder                 # built-in demo
    accelerate launch recipes/finetune.py --strategy lora --lora-rank 8 \\
        --dataset taco --data-root /data/TACO/data --model vit_h --checkpoint sam_vit_h_4b8939.pth
    python recipes/finetune.py --config run.yaml --epochs 3                  # YAML keys = option names

Every option is a field of ``samadapt.config.TrainConfig`` (``--lr`` -> ``lr``); a strategy's own
options are ``--<strategy>-<option>`` (``--lora-rank``, ``--adapter-placement attn mlp``). Options
given on the command line override the YAML file. ``python recipes/finetune.py --help`` lists them.
"""

from __future__ import annotations

import argparse
import sys

from samadapt.cli import TRAIN_DESCRIPTION, add_train_arguments, run_parsed, run_train, train_config_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finetune.py", description=TRAIN_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_train_arguments(parser)
    return parser


def config_from_args(argv: list[str] | None = None):
    """The validated ``TrainConfig`` of a command line."""
    return train_config_from_args(build_parser().parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, usage errors (argparse already printed)
        return int(e.code or 0)
    args._run = run_train
    return run_parsed(args, "finetune")


if __name__ == "__main__":
    sys.exit(main())

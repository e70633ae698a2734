"""Fine-tune SAM with a chosen strategy.

    accelerate launch recipes/finetune.py --strategy decoder                 # built-in demo
    accelerate launch recipes/finetune.py --strategy lora --lora-rank 8 \\
        --dataset taco --data-root /data/TACO/data --model vit_h --checkpoint sam_vit_h_4b8939.pth
    python recipes/finetune.py --config run.yaml --epochs 3                  # YAML keys = option names

Every option is a field of ``samadapt.config.TrainConfig`` (``--lr`` -> ``lr``); a strategy's own
options are ``--<strategy>-<option>`` (``--lora-rank``, ``--adapter-placement attn mlp``). Options
given on the command line override the YAML file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing

from samadapt.config import TrainConfig, read_yaml
from samadapt.errors import SamAdaptError
from samadapt.strategies import STRATEGIES


def _add_field(parser: argparse.ArgumentParser, flag: str, f: dataclasses.Field, hints: dict, dest: str) -> None:
    hint = hints[f.name]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    base = next((a for a in args if a is not type(None)), hint) if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) else hint
    kw: dict = {"dest": dest, "default": argparse.SUPPRESS}
    if base is bool:
        kw["action"] = argparse.BooleanOptionalAction
    elif typing.get_origin(base) in (tuple, list):
        kw["nargs"] = "+"
    elif typing.get_origin(base) is dict or base is dict:
        kw["type"] = json.loads
        kw["metavar"] = "JSON"
    elif base in (int, float, str):
        kw["type"] = base
    parser.add_argument(flag, **kw)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file with TrainConfig keys")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name == "strategy_options":
            continue
        _add_field(parser, "--" + f.name.replace("_", "-"), f, hints, f.name)
    for name, strat in sorted(STRATEGIES.items()):
        group = parser.add_argument_group(f"options of --strategy {name}")
        shints = typing.get_type_hints(strat.config_class)
        for f in dataclasses.fields(strat.config_class):
            _add_field(group, f"--{name}-{f.name.replace('_', '-')}", f, shints, f"{name}__{f.name}")
    return parser


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    ns = vars(build_parser().parse_args(argv))
    config_file = ns.pop("config", None)
    strategy_opts: dict[str, dict] = {}
    for key in [k for k in ns if "__" in k]:
        strat, opt = key.split("__", 1)
        strategy_opts.setdefault(strat, {})[opt] = ns.pop(key)
    # the YAML and the command line are merged before the one validation, so a key the file
    # lacks (e.g. data_root) may come from the command line
    data = read_yaml(config_file) if config_file else {}
    data.update(ns)
    strategy = data.get("strategy", TrainConfig.strategy)
    other = sorted(set(strategy_opts) - {strategy})
    if other:
        raise SamAdaptError(f"options for strategy {other[0]!r} given, but --strategy is {strategy!r}")
    data["strategy_options"] = {**(data.get("strategy_options") or {}), **strategy_opts.get(strategy, {})}
    return TrainConfig.from_dict(data)


def main(argv: list[str] | None = None) -> int:
    from samadapt.training.trainer import train

    try:
        cfg = config_from_args(argv)
        train(cfg)
    except SamAdaptError as e:
        print(f"finetune: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``samadapt train`` (and ``recipes/finetune.py``): every field of
:class:`~samadapt.config.TrainConfig` and of each strategy's config as an option, merged over a YAML file."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from .options import add_dataclass_options

__all__ = ["TRAIN_DESCRIPTION", "add_train_arguments", "run_train", "train_config_from_args"]

TRAIN_DESCRIPTION = """Fine-tune SAM with a chosen strategy (the options of recipes/finetune.py).

  samadapt train --strategy decoder                                   # built-in demo, CPU, minutes
  samadapt train --strategy lora --lora-rank 8 --dataset taco --data-root TACO/data \\
      --model vit_h --checkpoint sam_vit_h_4b8939.pth
  samadapt train --config run.yaml --epochs 3                         # YAML keys = option names

Every option is a field of samadapt.config.TrainConfig (--lr -> lr); a strategy's own options are
--<strategy>-<option>. Options given here override the YAML file. Several GPUs (or CPU processes):
accelerate launch --multi_gpu --num_processes N recipes/finetune.py ...
"""


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``samadapt train`` and ``recipes/finetune.py``: every field of
    :class:`~samadapt.config.TrainConfig` and of each strategy's config."""
    from ..config import RENAMED_KEYS, TrainConfig
    from ..data.presets import DATASET_CARDS
    from ..models.family import model_types
    from ..strategies import STRATEGIES

    parser.add_argument(
        "--config",
        metavar="YAML",
        help="YAML file of the options below (keys: option names with _ or -); options on the command line override it",
    )
    sections = {name: parser.add_argument_group(f"{name} options") for name in TrainConfig.GROUPS}
    add_dataclass_options(
        parser,
        TrainConfig,
        skip=("strategy_options",),
        groups={field: sections[name] for name, fields in TrainConfig.GROUPS.items() for field in fields},
        choices={"strategy": sorted(STRATEGIES), "model": sorted(model_types()), "dataset": sorted(DATASET_CARDS)},
        aliases={new: ("--" + old.replace("_", "-"),) for old, new in RENAMED_KEYS.items()},
    )
    for name, strat in sorted(STRATEGIES.items()):
        group = parser.add_argument_group(f"options of --strategy {name}", strat.description)
        add_dataclass_options(group, strat.config_class, prefix=f"{name}-", dest_prefix=f"{name}__")


def train_config_from_args(args: argparse.Namespace):
    """The :class:`~samadapt.config.TrainConfig` of parsed ``add_train_arguments`` options merged
    over the ``--config`` YAML file (merged before the one validation, so a key the file lacks may
    come from the command line)."""
    from ..config import TrainConfig, read_yaml

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
    from ..training.trainer import train

    train(train_config_from_args(args))
    return 0

"""Checks and data of a run, before its first step: the run's name and folder (:func:`run_name`,
:func:`run_folder`, :func:`choose_run_folder`); every name, path and option is checked before
anything is read (``TrainConfig.check_files``, :func:`check_output_dir`), and the data loaders
before training (:func:`check_loaders`), so that a mistake costs seconds, not an epoch."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..adapter_store import adapter_name
from ..config import TrainConfig
from ..errors import ConfigError, DataError
from ..files import next_free_folder


def run_name(cfg: TrainConfig) -> str:
    """``--name``, else the adapter's registered name, e.g. ``trashcan_instance-mini-adapter``."""
    return cfg.name or adapter_name(cfg.dataset_tag, cfg.model, cfg.strategy)


def run_folder(cfg: TrainConfig) -> Path:
    """``--output-dir``, else ``outputs/<run name>``."""
    return Path(cfg.output_dir) if cfg.output_dir else Path("outputs") / run_name(cfg)


@dataclass
class RunData:
    """The images of a run: ``train`` (what it trains on), ``val`` (what the zero-shot and final
    evaluations measure), ``epoch_val`` (the indices of ``val`` validated after each epoch, for the
    best epoch and early stopping) and ``card`` (what the adapter card, ``metrics.json`` and
    ``run_summary.json`` record of them, subsets included)."""

    train: Any
    val: Any
    epoch_val: list[int]
    card: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """One log line on the subsets used, or "" when every image is used everywhere."""
        parts = [
            f"{what}: a seeded subset of {sub['images']} of the {sub['of']} images ({sub['option']}, seed {sub['seed']})"
            for what, sub in (("training", self.card.get("train_subset")), ("evaluation", self.card.get("val_subset")))
            if sub
        ]
        if len(self.epoch_val) < len(self.val):
            parts.append(
                f"per-epoch validation (best epoch, early stopping): a fixed seeded subset of {len(self.epoch_val)} "
                f"of the {len(self.val)} validation images (--epoch-val-images); zero-shot and final numbers on all "
                f"{len(self.val)}"
            )
        return "; ".join(parts)


def build_run_data(cfg: TrainConfig) -> RunData:
    """The configured dataset's splits (:func:`build_datasets`) cut to ``--max-train-images`` /
    ``--max-val-images`` and the per-epoch validation subset (``--epoch-val-images``): seeded
    random subsets (:func:`~samadapt.data.subsets.seeded_indices`, by ``--seed``), the per-epoch
    one inside the evaluated one."""
    from ..data.subsets import seeded_indices

    train, val = build_datasets(cfg)
    card: dict[str, Any] = {"dataset": cfg.dataset_tag, "train_split": train.name, "val_split": val.name}

    def cut(ds, key: str, n: int | None, option: str, purpose: str):
        if n is None or n >= len(ds):
            return ds
        keep = seeded_indices(ds, n, seed=cfg.seed, purpose=purpose)
        card[f"{key}_subset"] = {"images": n, "of": len(ds), "seed": cfg.seed, "option": option}
        return ds.subset([ds.image_ids[k] for k in keep])

    train = cut(train, "train", cfg.max_train_images, "--max-train-images", "train")
    val = cut(val, "val", cfg.max_val_images, "--max-val-images", "eval")
    card["train_images"], card["val_images"] = len(train), len(val)
    epoch_val = seeded_indices(val, cfg.epoch_val_images, seed=cfg.seed, purpose="eval")
    card["epoch_val_images"] = len(epoch_val)
    if cfg.validate_on_train:
        card["note"] = (
            "validated on the training images (--validate-on-train): the metrics are not measured on held-out data"
        )
    return RunData(train, val, epoch_val, card)


def build_datasets(cfg: TrainConfig):
    """(train, val) ``CocoInstances`` of the configured dataset, from its card, whole; the demo
    data is generated first if needed."""
    from ..data.presets import get_dataset_card

    card = get_dataset_card(cfg.dataset)
    sources = {"train": cfg._sources(val=False), "val": cfg._sources(val=True)}
    if card.generate is not None:
        root = card.root(cfg.data_root)
        card.generate(root, n_train=cfg.demo_train_images, n_val=cfg.demo_val_images, progress=cfg.progress)
        sources = {"train": {"data_root": root}, "val": {"data_root": root}}
    train = card.open(cfg.train_split, options=cfg.dataset_options, **sources["train"])
    val = card.open(cfg.val_split, options=cfg.dataset_options, **sources["val"])
    return train, val


def check_loaders(cfg: TrainConfig, train_instances, val_instances) -> None:
    """Fail in seconds, not hours (micro-sam's ``_check_loader``): every image file of both splits
    exists, each split holds an instance, and one training sample loads."""
    for what, ds in (("training", train_instances), ("validation", val_instances)):
        if len(ds) == 0:
            raise DataError(f"the {what} split {ds.name!r} has no images (after skips: {ds.skips or 'none'})")
        ds.verify_images()
        if ds.num_instances == 0:
            raise DataError(
                f"the {what} split {ds.name!r} has {len(ds)} images but no instance to "
                f"{'train' if what == 'training' else 'evaluate'} on (skips: {ds.skips or 'none'})"
            )
    train_instances[0]  # decodes one image and its masks


def choose_run_folder(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the run folder it will use. Without ``--output-dir`` (nor ``--resume`` or
    ``--overwrite``), a default folder ``outputs/<name>`` that holds an earlier run is left as it is
    and the new run goes to the next free ``outputs/<name>-2``, ``-3``, ..., said in one line: the
    README's command works every time, and no earlier run is lost. A ``--output-dir`` given keeps
    its refusal (:func:`check_output_dir`)."""
    if cfg.output_dir or cfg.resume or cfg.overwrite:
        return cfg
    default = run_folder(cfg)
    folder = next_free_folder(default)
    if folder == default:
        return cfg
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"{default} holds an earlier run (kept as it is): this run goes to {folder}. Choose the folder with "
            f"--output-dir; continue the earlier run with --resume, or replace it with --overwrite"
        )
    return dataclasses.replace(cfg, output_dir=str(folder))


def check_output_dir(cfg: TrainConfig) -> None:
    """A run folder that holds anything is continued (``--resume``) or cleared (``--overwrite``),
    never mixed with a new run: its old epoch states would outlive the new ones."""
    folder = run_folder(cfg)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--output-dir {str(folder)!r} is a file, not a folder")
    if cfg.resume or cfg.overwrite or not folder.is_dir() or not any(folder.iterdir()):
        return
    raise ConfigError(
        f"the run folder {str(folder)!r} is not empty (a run was started there). Continue it with "
        f"--resume, delete it and start afresh with --overwrite, or choose another --output-dir"
    )


def launched_processes() -> int:
    """How many processes the launcher started (torchrun / accelerate set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))

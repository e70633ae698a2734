"""Checks and data of a run, before its first step: the run's name and folder (:func:`run_name`,
:func:`run_folder`); every name, path and option is checked before anything is read
(``TrainConfig.check_files``, :func:`check_output_dir`), and the data loaders before training
(:func:`check_loaders`), so that a mistake costs seconds, not an epoch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..errors import ConfigError, DataError
from ..hub import adapter_name
from ..paths import samadapt_home


def run_name(cfg: TrainConfig) -> str:
    """``--name``, else the adapter's registered name, e.g. ``trashcan_instance-mini-adapter``."""
    return cfg.name or adapter_name(cfg.dataset_tag, cfg.model, cfg.strategy)


def run_folder(cfg: TrainConfig) -> Path:
    """``--output-dir``, else ``outputs/<run name>``."""
    return Path(cfg.output_dir) if cfg.output_dir else Path("outputs") / run_name(cfg)


def build_datasets(cfg: TrainConfig):
    """(train, val) ``CocoInstances`` of the configured dataset, from its card; the demo data is
    generated first if needed."""
    from ..data.presets import get_dataset_card

    card = get_dataset_card(cfg.dataset)
    sources = {"train": cfg._sources(val=False), "val": cfg._sources(val=True)}
    if cfg.dataset == "demo":
        from ..data import make_demo_dataset

        root = Path(cfg.data_root) if cfg.data_root else samadapt_home() / "data" / "demo-waste"
        make_demo_dataset(
            root,
            domain="waste",
            n_train=cfg.demo_train_images,
            n_val=cfg.demo_val_images,
            seed=0,
            progress=cfg.progress,
        )
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


def data_card(cfg: TrainConfig, train_instances, val_instances) -> dict[str, Any]:
    """What the adapter was trained and measured on, for its card."""
    card = {
        "dataset": cfg.dataset_tag,
        "train_split": train_instances.name,
        "train_images": len(train_instances),
        "val_split": val_instances.name,
        "val_images": num_val_images(val_instances, cfg),
    }
    if cfg.validate_on_train:
        card["note"] = (
            "validated on the training images (--validate-on-train): the metrics are not measured on held-out data"
        )
    return card


def launched_processes() -> int:
    """How many processes the launcher started (torchrun / accelerate set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def num_val_images(dataset, cfg: TrainConfig) -> int:
    return len(dataset) if cfg.max_val_images is None else min(len(dataset), cfg.max_val_images)

"""Typed, validated configuration of a fine-tuning run.

The recipe (``recipes/finetune.py``) turns command-line arguments and an optional YAML file into a
:class:`TrainConfig`; the library takes only the config. It is saved beside the outputs
(``config.yaml``) and inside the adapter's metadata.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

DATASETS = ("taco", "zerowaste", "trashcan", "coco", "demo")
MIXED_PRECISION = ("no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "adam")
EVAL_PROMPTS = ("box", "jitter", "loose", "points")
#: experiment trackers Accelerate can log to (``log_with``); "none" turns logging off
LOGGERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "all")


def _choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"`{name}` is {value!r}; choose one of {list(choices)}")


def _positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ConfigError(f"`{name}` should be {'non-negative' if allow_zero else 'positive'}, got {value!r}")


@dataclass
class TrainConfig:
    """Everything a fine-tuning run needs. Defaults run the built-in demo (generated waste data,
    pretrained ``mini`` model) in a few minutes on a 2-core CPU."""

    # what to adapt
    strategy: str = "decoder"
    strategy_options: dict[str, Any] = field(default_factory=dict)
    model: str = "mini"
    checkpoint: str | None = None
    # data
    dataset: str = "demo"
    data_root: str | None = None
    images_root: str | None = None  # dataset=coco
    annotation_file: str | None = None  # dataset=coco
    val_images_root: str | None = None  # dataset=coco
    val_annotation_file: str | None = None  # dataset=coco
    dataset_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"version": "material"} for trashcan
    train_split: str = "train"
    val_split: str = "val"
    demo_train_images: int = 160
    demo_val_images: int = 40
    max_val_images: int | None = None
    # optimisation
    epochs: int = 8
    lr: float = 3e-4
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    warmup_steps: int = 10
    min_lr_ratio: float = 0.05
    batch_size: int = 4
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    prompts_per_image: int = 16
    box_noise: float = 0.1
    box_noise_max_px: float = 20.0
    multimask: bool = False
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    patience: int = 3
    min_delta: float = 0.0
    mixed_precision: str | None = None  # None: as `accelerate launch --mixed_precision` says (else "no")
    gradient_checkpointing: bool = False
    # speed
    cache_embeddings: bool = True
    cache_dir: str | None = None
    num_workers: int = 0
    # evaluation
    eval_prompt: str = "box"
    zero_shot: bool = True
    num_examples: int = 6
    # bookkeeping
    seed: int = 0
    name: str | None = None
    output_dir: str | None = None
    resume: bool = False
    publish: bool = True
    progress: bool = True
    log_with: str | None = "tensorboard"

    def __post_init__(self) -> None:
        from .models.registry import get_model_card
        from .strategies.base import get_strategy

        get_model_card(self.model)
        get_strategy(self.strategy).make_config(**self.strategy_options)  # validates the options
        _choice("dataset", self.dataset, DATASETS)
        if self.mixed_precision is not None:
            _choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("eval_prompt", self.eval_prompt, EVAL_PROMPTS)
        if isinstance(self.log_with, str) and self.log_with.lower() in ("none", ""):
            self.log_with = None  # so `--log-with none` turns logging off from the command line
        if self.log_with is not None:
            _choice("log_with", self.log_with, LOGGERS + ("none",))
        for name in ("epochs", "lr", "batch_size", "grad_accum", "prompts_per_image", "demo_train_images", "demo_val_images"):
            _positive(name, getattr(self, name))
        for name in ("weight_decay", "warmup_steps", "box_noise", "box_noise_max_px", "focal_weight", "dice_weight",
                     "iou_weight", "patience", "min_delta", "num_workers", "min_lr_ratio", "num_examples"):
            _positive(name, getattr(self, name), allow_zero=True)
        if self.focal_weight + self.dice_weight == 0:
            raise ConfigError("`focal_weight` and `dice_weight` are both 0: the masks would get no loss")
        if self.dataset == "coco" and not (self.images_root and self.annotation_file):
            raise ConfigError("dataset 'coco' needs `images_root` and `annotation_file` (and val_* for validation)")
        if self.dataset in ("taco", "zerowaste", "trashcan") and not self.data_root:
            raise ConfigError(f"dataset {self.dataset!r} needs `data_root` (the folder holding the dataset)")

    # ------------------------------------------------------------------ derived names
    @property
    def dataset_tag(self) -> str:
        return self.dataset if self.dataset != "trashcan" else f"trashcan_{self.dataset_options.get('version', 'instance')}"

    @property
    def run_name(self) -> str:
        from .hub import adapter_name

        return self.name or adapter_name(self.dataset_tag, self.model, self.strategy)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else Path("outputs") / self.run_name

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; valid keys: {sorted(names)}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "TrainConfig":
        data = read_yaml(path)
        data.update(overrides)
        return cls.from_dict(data)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def check_resumable(self, saved: "TrainConfig", saved_path: str | Path) -> None:
        """Raise :class:`ConfigError` when ``self`` would not continue the run that ``saved`` (its
        ``config.yaml``) started: only the settings in :data:`RESUME_MAY_CHANGE`, which do not change
        what is computed, may differ."""
        import yaml

        ours, theirs = (yaml.safe_load(c.to_yaml()) for c in (self, saved))  # the same normal form
        changed = [k for k in ours if k not in RESUME_MAY_CHANGE and ours[k] != theirs.get(k)]
        if changed:
            what = ", ".join(f"{k} {theirs.get(k)!r} -> {ours[k]!r}" for k in changed)
            raise ConfigError(
                f"--resume: the run in {str(self.run_dir)!r} was started with other settings ({what}); resuming "
                f"would not continue it. Resume with its own settings (`--config {saved_path} --resume`), or "
                f"start a new run with another --output-dir / --name")


# settings a resumed run may change: none of them changes what is computed
RESUME_MAY_CHANGE = frozenset({"resume", "progress", "num_workers", "log_with", "publish", "cache_dir", "name",
                               "output_dir"})


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The keys of a YAML config file (``-`` in names read as ``_``), not yet validated: callers
    merge their overrides first, so a key the file lacks may come from the command line."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}

"""Typed, validated configuration of a fine-tuning run.

The recipe (``recipes/finetune.py``) turns command-line arguments and an optional YAML file into a
:class:`TrainConfig`; the library takes only the config. It is saved beside the outputs
(``config.yaml``) and inside the adapter's metadata.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .data.presets import DEMO_TRAIN_IMAGES, DEMO_VAL_IMAGES, get_dataset_card
from .errors import ConfigError
from .evaluation.config import EVAL_PROMPTS  # validation prompt kinds: one home, the evaluation's
from .options import check_keys, option

MIXED_PRECISION = ("no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "adam")
KEEP_EPOCH = ("best", "last")
#: training prompt kinds, one drawn per instance (``train_prompts``): its noisy box or one positive click
TRAIN_PROMPTS = ("box", "point")
#: how training clicks are drawn inside the object (``click_sampling``)
CLICK_SAMPLING = ("uniform", "interior")
#: experiment trackers Accelerate can log to (``log_with``); "none" turns logging off
LOGGERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "all")


def _choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"`{name}` is {value!r}; choose one of {list(choices)}")


def _positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ConfigError(f"`{name}` should be {'non-negative' if allow_zero else 'positive'}, got {value!r}")


def _fraction(value: Any) -> bool:
    """A number strictly between 0 and 1 (not a bool)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 < value < 1


def _count(value: Any) -> bool:
    """An integer >= 0 (not a bool)."""
    return not isinstance(value, bool) and isinstance(value, int) and value >= 0


# the options checked by ``_positive``: those that must be > 0, and those that may also be 0
_POSITIVE = ("epochs", "lr", "batch_size", "grad_accum", "prompts_per_image", "demo_train_images", "demo_val_images")
_NON_NEGATIVE = (
    "weight_decay",
    "warmup_steps",
    "box_noise",
    "box_noise_max_px",
    "focal_weight",
    "dice_weight",
    "iou_weight",
    "patience",
    "min_delta",
    "num_workers",
    "min_lr_ratio",
    "num_examples",
)


@dataclass
class TrainConfig:
    """Everything a fine-tuning run needs. Defaults run the built-in demo (generated waste data,
    pretrained ``mini`` model) in a few minutes on a 2-core CPU."""

    # -- model: what to adapt
    strategy: str = option("decoder", "what to train: a registered strategy (see `samadapt info`)")
    strategy_options: dict[str, Any] = option(
        dict, "the strategy's own options (on the command line: --<strategy>-<option>)"
    )
    model: str = option("mini", "model type: a registered SAM architecture (vit_b, vit_l, vit_h, mini)")
    checkpoint: str | None = option(
        None,
        "base SAM checkpoint file (default: the built-in mini weights; official "
        "vit_* need one: `samadapt download-checkpoint vit_h`)",
    )
    # -- data: the images: a dataset preset or COCO files, splits, subsets
    dataset: str = option("demo", "dataset preset (see docs/data.md); coco for any COCO instance-segmentation file")
    data_root: str | None = option(
        None,
        "folder holding the dataset in its official layout (taco, zerowaste, trashcan; "
        "demo: default SAMADAPT_HOME/data/demo-waste)",
    )
    images_root: str | None = option(None, "dataset coco: folder the training file's file_name entries are relative to")
    annotation_file: str | None = option(None, "dataset coco: the training COCO instances JSON")
    val_images_root: str | None = option(
        None, "dataset coco: images folder of the validation file (default: --images-root)"
    )
    val_annotation_file: str | None = option(None, "dataset coco: the validation COCO instances JSON")
    validate_on_train: bool = option(
        False,
        "dataset coco without --val-annotation-file: validate on the training images "
        "(optimistic; the adapter's card then says so)",
    )
    dataset_options: dict[str, Any] = option(dict, 'options of the preset, e.g. {"version": "material"} for trashcan')
    train_split: str | None = option(None, "training split (default: the preset's training split)")
    val_split: str | None = option(
        None,
        "validation split (default: the preset's held-out split: TACO's seeded test, "
        "ZeroWaste-f's val, TrashCan's val)",
    )
    demo_train_images: int = option(DEMO_TRAIN_IMAGES, "dataset demo: training images to generate")
    demo_val_images: int = option(DEMO_VAL_IMAGES, "dataset demo: validation images to generate")
    max_train_images: int | None = option(
        None,
        "train on a seeded random subset of N training images (picked by --seed; the subset is "
        "recorded on the adapter card, in metrics.json and run_summary.json)",
    )
    max_val_images: int | None = option(
        None,
        "evaluate (zero-shot, each epoch, final) on a seeded random subset of N validation "
        "images (picked by --seed, as `samadapt eval --max-images N --seed S` picks them)",
    )
    epoch_val_images: int | None = option(
        200,
        "validate each epoch (best epoch, early stopping) on a fixed seeded subset of at most N of "
        "the validation images, to keep epochs affordable on large sets; the zero-shot and final "
        "numbers are measured on all of them (none: every epoch on all)",
    )
    # -- optimisation: steps, schedule, loss, which epoch is kept
    epochs: int = option(8, "epochs (early stopping may end sooner)")
    lr: float = option(3e-4, "peak learning rate")
    weight_decay: float = option(1e-4, "weight decay of the optimiser")
    optimizer: str = option("adamw", "optimiser", choices=OPTIMIZERS)
    warmup_steps: int = option(10, "linear warm-up steps before the cosine schedule")
    min_lr_ratio: float = option(0.05, "final learning rate as a fraction of --lr")
    batch_size: int = option(4, "images per step and process")
    grad_accum: int = option(1, "gradient accumulation steps")
    max_grad_norm: float | None = option(1.0, "gradient clipping norm (none to turn off)")
    focal_weight: float = option(20.0, "weight of the focal loss (SAM: 20)")
    dice_weight: float = option(1.0, "weight of the dice loss (SAM: 1)")
    iou_weight: float = option(1.0, "weight of the MSE of the IoU head (SAM: 1)")
    patience: int = option(3, "early stopping: epochs without validation improvement (0 turns it off)")
    min_delta: float = option(0.0, "early stopping: smallest mean-IoU gain that counts as improvement")
    keep_epoch: str = option(
        "best",
        "the weights the run keeps: best (the epoch of highest validation mean IoU) or last (the end of "
        "the schedule; for validation sets too small to choose by, as the data engine's)",
        choices=KEEP_EPOCH,
    )
    # -- prompts: the prompts training draws: boxes, clicks, corrective rounds
    prompts_per_image: int = option(16, "instances (prompts) sampled per training image")
    box_noise: float = option(0.1, "training box noise: std as a fraction of the box side (SAM: 0.1)")
    box_noise_max_px: float = option(20.0, "training box noise: cap in pixels (SAM: 20)")
    multimask: bool = option(False, "train SAM's 3 multimask outputs, back-propagating the lowest loss")
    train_prompts: list[str] = option(
        lambda: ["box", "point"],
        "training prompt kinds, one drawn per instance: box (its noisy box), point (one positive "
        "click, multimask output, lowest loss back-propagated); box alone with --click-rounds 0 is "
        "the protocol of 'Don't waste SAM'",
    )
    click_sampling: str = option(
        "interior",
        "training clicks: uniform (SAM: the first click anywhere in the object, each corrective one "
        "anywhere in the error), or interior (RITM: the first click towards the object's middle, "
        "each corrective one towards the middle of the largest error region, the clicks the click "
        "protocol makes), with probability proportional to the distance to the region's boundary",
    )
    point_share: float = option(
        0.3, "with --train-prompts box point: the share of instances whose first prompt is the click (SAM: 0.5)"
    )
    first_round_weight: float | None = option(
        0.5,
        "with --click-rounds: the share of the loss given to the first "
        "prediction, the corrective rounds sharing the rest (none: every "
        "round weighs the same, as in SAM and micro-sam)",
    )
    click_rounds: int = option(
        3,
        "corrective clicks after the first prediction: each round adds a click from the error "
        "region and feeds the previous low-res logits as the mask prompt, as SAM was trained",
    )
    # -- parts: what the adapter carries beside the strategy's tensors (samadapt.models.parts)
    classify: bool = option(
        False,
        "add a class head on the mask decoder's output token that predicts each instance's "
        "category (cross-entropy beside the mask loss, on each instance's first prompt); saved in "
        "the adapter with its validation accuracy against the most frequent class, used by "
        "`samadapt segment --classify`",
    )
    auto_calibration_images: int = option(
        8,
        "automatic masks: at the end of training, calibrate their thresholds on the first N "
        "validation images and store them in the adapter, for `samadapt segment --auto` (0: do not)",
    )
    # -- speed: memory and speed; the numbers do not depend on them
    mixed_precision: str | None = option(
        None, "default: what `accelerate launch --mixed_precision` says, else no", choices=MIXED_PRECISION
    )
    activation_checkpointing: bool = option(
        False,
        "recompute each image-encoder block's activations in backward "
        "instead of keeping them (less memory, slower; lora, adapter, full, "
        "bitfit): AdaptedSam.set_fast_paths(activation_checkpointing=True)",
    )
    cache_embeddings: bool = option(True, "frozen encoders: compute each image embedding once and cache it")
    cache_dir: str | None = option(None, "embedding cache folder (default SAMADAPT_HOME/cache)")
    num_workers: int = option(0, "DataLoader worker processes")
    # -- evaluation: what is measured besides training
    eval_prompt: str = option(
        "box",
        "validation prompts: box (exact ground-truth boxes, the paper's protocol), "
        "jitter, loose, points, center or extreme",
        choices=EVAL_PROMPTS,
    )
    zero_shot: bool = option(True, "evaluate the un-tuned base first")
    num_examples: int = option(6, "images in examples.png")
    # -- run: seed, names, folders, logging
    seed: int = option(0, "seed of data order, prompts and initialisation")
    name: str | None = option(
        None,
        "adapter name, <dataset>-<model tag>[-<strategy>] (default: from dataset, model and "
        "strategy, e.g. taco-vith-lora)",
    )
    output_dir: str | None = option(
        None, "run folder (default outputs/<name>, or the next free outputs/<name>-2, -3, ... when it holds a run)"
    )
    resume: bool = option(False, "continue the run in --output-dir from its last saved epoch")
    overwrite: bool = option(False, "delete what --output-dir holds and start afresh")
    publish: bool = option(True, "install the adapter under its name in SAMADAPT_HOME (samadapt.load(name))")
    progress: bool = option(True, "progress bars")
    log_with: str | None = option("tensorboard", "experiment tracker (none to turn off)", choices=LOGGERS + ("none",))

    #: the options by group, as ``samadapt train --help`` shows them (every field in one group)
    GROUPS: ClassVar[dict[str, tuple[str, ...]]] = {
        "model": ("strategy", "strategy_options", "model", "checkpoint"),
        "data": (
            "dataset",
            "data_root",
            "images_root",
            "annotation_file",
            "val_images_root",
            "val_annotation_file",
            "validate_on_train",
            "dataset_options",
            "train_split",
            "val_split",
            "demo_train_images",
            "demo_val_images",
            "max_train_images",
            "max_val_images",
            "epoch_val_images",
        ),
        "optimisation": (
            "epochs",
            "lr",
            "weight_decay",
            "optimizer",
            "warmup_steps",
            "min_lr_ratio",
            "batch_size",
            "grad_accum",
            "max_grad_norm",
            "focal_weight",
            "dice_weight",
            "iou_weight",
            "patience",
            "min_delta",
            "keep_epoch",
        ),
        "prompts": (
            "prompts_per_image",
            "box_noise",
            "box_noise_max_px",
            "multimask",
            "train_prompts",
            "click_sampling",
            "point_share",
            "first_round_weight",
            "click_rounds",
        ),
        "parts": ("classify", "auto_calibration_images"),
        "speed": ("mixed_precision", "activation_checkpointing", "cache_embeddings", "cache_dir", "num_workers"),
        "evaluation": ("eval_prompt", "zero_shot", "num_examples"),
        "run": ("seed", "name", "output_dir", "resume", "overwrite", "publish", "progress", "log_with"),
    }

    def __post_init__(self) -> None:
        from .models.family import get_card
        from .strategies.base import get_strategy

        get_card(self.model)
        get_strategy(self.strategy).make_config(**self.strategy_options)  # validates the options
        if isinstance(self.log_with, str) and self.log_with.lower() in ("none", ""):
            self.log_with = None  # so `--log-with none` turns logging off from the command line
        self._check_choices()
        self._check_prompts()
        self._check_numbers()
        self._check_dataset()
        if self.resume and self.overwrite:
            raise ConfigError("--resume continues the run in --output-dir and --overwrite deletes it: give one of them")
        if self.name is not None:
            self._check_name()

    def _check_choices(self) -> None:
        """Every field declared with ``option(..., choices=...)`` holds one of them (or None, where
        its type allows None: the launcher's mixed precision, no tracker)."""
        for f in dataclasses.fields(self):
            value, choices = getattr(self, f.name), f.metadata.get("choices")
            if choices and not (value is None and "None" in str(f.type)):
                _choice(f.name, value, choices)
        _choice("click_sampling", self.click_sampling, CLICK_SAMPLING)

    def _check_prompts(self) -> None:
        """The training prompts: their kinds, the share of clicks, the corrective rounds and their weight."""
        kinds = self.train_prompts
        if isinstance(kinds, str) or not isinstance(kinds, (list, tuple)) or not kinds or len(set(kinds)) != len(kinds):
            raise ConfigError(
                f"`train_prompts` is {kinds!r}; give a list of distinct kinds from {list(TRAIN_PROMPTS)}, "
                "e.g. ['box', 'point']"
            )
        for kind in kinds:
            if kind not in TRAIN_PROMPTS:
                raise ConfigError(f"`train_prompts` has {kind!r}; choose kinds from {list(TRAIN_PROMPTS)}")
        self.train_prompts = list(kinds)
        if not _fraction(self.point_share):
            raise ConfigError(
                f"`point_share` should be a fraction strictly between 0 and 1 (SAM: 0.5), got "
                f"{self.point_share!r}; to train on one kind only, give it alone in train_prompts"
            )
        if self.first_round_weight is not None and not _fraction(self.first_round_weight):
            raise ConfigError(
                f"`first_round_weight` should be a fraction strictly between 0 and 1, or none for equal "
                f"rounds, got {self.first_round_weight!r}"
            )
        if not _count(self.click_rounds):
            raise ConfigError(
                f"`click_rounds` should be an integer >= 0 (SAM trained with 8), got {self.click_rounds!r}"
            )

    def _check_numbers(self) -> None:
        """Counts, sizes, rates and weights: positive, non-negative, or a number of images."""
        if not _count(self.auto_calibration_images):
            raise ConfigError(
                f"`auto_calibration_images` should be an integer >= 0 (0: no calibration), got "
                f"{self.auto_calibration_images!r}"
            )
        for name in _POSITIVE:
            _positive(name, getattr(self, name))
        for name in _NON_NEGATIVE:
            _positive(name, getattr(self, name), allow_zero=True)
        for name in ("max_train_images", "max_val_images", "epoch_val_images"):
            value = getattr(self, name)
            if value is not None and not (_count(value) and value >= 1):
                raise ConfigError(f"`{name}` should be a positive number of images, or none for all; got {value!r}")
        if self.focal_weight + self.dice_weight == 0:
            raise ConfigError("`focal_weight` and `dice_weight` are both 0: the masks would get no loss")

    def _check_dataset(self) -> None:
        """Dataset name, splits (defaults from the dataset's card), options and the options naming
        its files: all checked here, before any file is read."""

        card = get_dataset_card(self.dataset)
        self.train_split = self.train_split or card.train_split
        self.val_split = self.val_split or card.val_split
        card.check_split(self.train_split, "--train-split")
        card.check_split(self.val_split, "--val-split")
        card.check_options(self.dataset_options, "--dataset-options: ")
        missing = [s for s in card.sources if s != "data_root" and not getattr(self, s)]
        if card.default_root is None and "data_root" in card.sources and not self.data_root:
            missing.append("data_root")
        if missing:
            flags = " and ".join("--" + m.replace("_", "-") for m in missing)
            raise ConfigError(f"dataset {self.dataset!r} needs {flags} (expected layout: {card.layout})")
        if card.held_out_file and not self.val_annotation_file and not self.validate_on_train:
            raise ConfigError(
                f"dataset {self.dataset!r} without --val-annotation-file would validate on the training images and report "
                "that as the gain. Give the held-out file (--val-annotation-file FILE.json, and --val-images-root "
                "if its images are elsewhere), or pass --validate-on-train to do it anyway (the card then says so)"
            )
        if self.validate_on_train and not card.held_out_file:
            raise ConfigError(
                f"--validate-on-train is for dataset coco; {self.dataset} has a held-out split (--val-split)"
            )
        if self.validate_on_train and self.val_annotation_file:
            raise ConfigError("--validate-on-train and --val-annotation-file contradict each other: give one")

    def _check_name(self) -> None:
        from .adapter_store import parse_adapter_name
        from .models.family import get_card

        parsed = parse_adapter_name(self.name)
        want = get_card(self.model)
        if parsed.model_type != want.name or parsed.strategy != self.strategy:
            suffix = "" if self.strategy == "decoder" else f"-{self.strategy}"
            raise ConfigError(
                f"--name {self.name!r} names model {parsed.model_type} and strategy {parsed.strategy}, but this run "
                f"trains {self.strategy} on {self.model}: name it {parsed.dataset}-{want.tag}{suffix}"
            )

    def check_files(self) -> None:
        """Raise :class:`~samadapt.errors.SamAdaptError` when a file or folder the run needs is
        missing (checkpoint, dataset files), reading none of them: run before hours of work."""
        from .errors import CheckpointNotFoundError

        if self.checkpoint is not None and not Path(self.checkpoint).expanduser().is_file():
            raise CheckpointNotFoundError(f"--checkpoint {self.checkpoint!r} does not exist")
        card = get_dataset_card(self.dataset)
        if card.generate is not None:
            return  # generated at the start of the run
        for what, split, sources in (
            ("--train-split", self.train_split, self._sources(val=False)),
            ("--val-split", self.val_split, self._sources(val=True)),
        ):
            card.check(split, what, options=self.dataset_options, **sources)

    def _sources(self, *, val: bool) -> dict[str, Any]:
        """The options naming the files of the training (or validation) split."""
        if "data_root" in get_dataset_card(self.dataset).sources:
            return {"data_root": self.data_root}
        if not val:
            return {"images_root": self.images_root, "annotation_file": self.annotation_file}
        return {
            "images_root": self.val_images_root or self.images_root,
            "annotation_file": self.val_annotation_file or self.annotation_file,
        }

    # ------------------------------------------------------------------ derived names
    @property
    def dataset_tag(self) -> str:
        return get_dataset_card(self.dataset).tag(self.dataset_options)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """The config of ``data`` (a ``config.yaml``'s keys); keys renamed since are read under their
        new names (:data:`RENAMED_KEYS`), so the ``config.yaml`` of older runs still loads."""
        data = dict(data)
        for old, new in RENAMED_KEYS.items():
            if old in data:
                value = data.pop(old)
                data.setdefault(new, value)  # the new name wins where both are given (command line over file)
        check_keys(cls, data, what="config keys")
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
                f"--resume: the run in {str(Path(saved_path).parent)!r} was started with other settings ({what}); resuming "
                f"would not continue it. Resume with its own settings (`--config {saved_path} --resume`), or "
                f"start a new run with another --output-dir / --name"
            )


# keys of older config.yaml files -> their names now (TrainConfig.from_dict reads both)
RENAMED_KEYS = {"gradient_checkpointing": "activation_checkpointing"}

# settings a resumed run may change: none of them changes what is trained (the automatic-mask
# calibration is computed after training, from the best epoch)
RESUME_MAY_CHANGE = frozenset(
    {
        "resume",
        "progress",
        "num_workers",
        "log_with",
        "publish",
        "cache_dir",
        "name",
        "output_dir",
        "auto_calibration_images",
    }
)


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

"""How an evaluation is run: the prompt kind and its options, the seed, the images and batches.

:class:`EvalConfig` is the one set of evaluation options: :func:`~samadapt.evaluation.evaluate.evaluate`,
:func:`~samadapt.evaluation.evaluate.evaluate_records` and
:func:`~samadapt.evaluation.run.compare_models` take it, and ``samadapt eval`` /
``recipes/evaluate.py`` build their prompt and batch options from its fields (their help is the
fields' ``option(...)`` text). A leaf module: it imports only :mod:`samadapt.errors` and
:mod:`samadapt.options`, so :mod:`samadapt.config` can read :data:`EVAL_PROMPTS` from here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..options import check_keys, option

__all__ = ["CLICK_PROMPT", "EVAL_PROMPTS", "EvalConfig"]

#: prompt kinds: exact GT boxes, SAM's box noise, boxes grown by a margin, clicks inside the object,
#: one click at the object's most interior pixel, the four extreme clicks with the box they span
EVAL_PROMPTS = ("box", "jitter", "loose", "points", "center", "extreme")

#: the interactive protocol (:mod:`samadapt.evaluation.clicks`): a prompt kind of ``samadapt eval`` only
CLICK_PROMPT = "clicks"


def _integer(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"`{name}` must be an integer >= {low}, got {value!r}")
    if value < low:
        raise ConfigError(f"`{name}` must be >= {low}, got {value!r}")


@dataclass(frozen=True)
class EvalConfig:
    """The options of an evaluation; every model evaluated with one config meets the same prompts
    (drawn from a generator seeded by (seed, image id))."""

    prompt: str = option(
        "box",
        "box: exact ground-truth boxes (the paper's protocol); jitter: SAM's box noise; "
        "loose: boxes grown by --loose-margin; points: clicks inside the object; center: one "
        "click at the object's most interior pixel; extreme: the four extreme clicks and the "
        "box they span; clicks: the interactive protocol, --max-clicks corrective clicks per "
        "instance (mIoU per click, NoC@85/90; samadapt eval only)",
        choices=EVAL_PROMPTS + (CLICK_PROMPT,),
    )
    loose_margin: float = option(0.1, "prompt loose: margin, fraction of the box side")
    num_points: int = option(1, "prompt points: positive clicks per instance")
    num_negative_points: int = option(0, "prompt points: negative clicks per instance")
    seed: int = option(0, "seed of the prompts and of --max-images' subset (the trainer evaluates with its --seed)")
    max_clicks: int = option(20, "prompt clicks: clicks per instance, the cap of NoC (RITM and SAM: 20)")
    mask_prompt: bool = option(True, "prompt clicks: give the previous low-res logits as the mask prompt")
    max_images: int | None = option(
        None,
        "evaluate a seeded random subset of N images (picked by --seed: training's "
        "--max-val-images N with the same seed picks the same ones)",
    )
    batch_size: int = option(4, "images per forward pass")
    num_examples: int = option(6, "images kept per model for examples.png")
    coco: bool = option(True, "compute COCO mask AP (one RLE encoding per mask)")
    max_mask_pixels: int = option(
        1 << 29,
        "at most this many full-resolution mask pixels (instances x H x W) per "
        "forward pass; images with more instances are predicted in chunks",
        hidden=True,
    )

    def __post_init__(self) -> None:
        if self.prompt not in EVAL_PROMPTS + (CLICK_PROMPT,):
            raise ConfigError(f"unknown prompt {self.prompt!r}; choose one of {list(EVAL_PROMPTS + (CLICK_PROMPT,))}")
        m = self.loose_margin
        if isinstance(m, bool) or not (isinstance(m, (int, float)) and math.isfinite(m) and m >= 0):
            raise ConfigError(f"`loose_margin` must be a finite number >= 0, got {m!r}")
        for name, low in (
            ("num_points", 0),
            ("num_negative_points", 0),
            ("seed", 0),
            ("max_clicks", 1),
            ("batch_size", 1),
            ("num_examples", 0),
            ("max_mask_pixels", 1),
        ):
            _integer(name, getattr(self, name), low)
        if self.max_images is not None:
            _integer("max_images", self.max_images, 0)
        if self.prompt == "points" and self.num_points < 1:
            raise ConfigError(f"prompt='points' needs num_points >= 1, got {self.num_points}")
        for name in ("mask_prompt", "coco"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"`{name}` must be True or False, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvalConfig":
        check_keys(cls, data, owner="EvalConfig")
        return cls(**data)

    @classmethod
    def of(cls, config: "EvalConfig | None" = None, **options: Any) -> "EvalConfig":
        """``config`` (default: the defaults) with ``options`` (field names) replaced."""
        check_keys(cls, options, owner="EvalConfig")
        base = cls() if config is None else config
        if not isinstance(base, cls):
            raise ConfigError(f"config must be an EvalConfig, got {type(base).__name__}")
        return dataclasses.replace(base, **options) if options else base

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

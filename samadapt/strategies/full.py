"""Full fine-tuning: every parameter trains (the upper bound the parameter-efficient strategies are
compared with, and how ``recipes/pretrain_mini.py`` trains the ``mini`` model from scratch).

Its adapter file is the whole model, so prefer the other strategies for the official backbones.
On SAM 2.1 "every parameter" is every parameter of the image path: the video modules (memory
attention, memory encoder, object pointers, ...) stay frozen and are not saved.
"""

from __future__ import annotations

from dataclasses import dataclass

from segment_anything.modeling import Sam

from ..errors import ConfigError
from ..models.family import family_of
from ..options import option
from .base import Strategy, StrategyConfig, register_strategy


@dataclass
class FullConfig(StrategyConfig):
    train_decoder: bool = option(True, "always True: the strategy trains the decoder", hidden=True)

    def __post_init__(self) -> None:
        if self.train_decoder is not True:
            raise ConfigError(
                f"the 'full' strategy trains everything; train_decoder={self.train_decoder!r} is not an option"
            )


@register_strategy
class FullStrategy(Strategy):
    name = "full"
    config_class = FullConfig
    description = "every parameter trainable (baseline; the adapter file is the whole model)"

    def apply(self, sam: Sam, config: StrategyConfig) -> None:
        self.unfreeze(sam)
        unused = family_of(sam).parts(sam).unused  # SAM 2.1's video modules: never trainable
        for name, p in sam.named_parameters():
            if name in unused:
                p.requires_grad_(False)

"""Decoder-only fine-tuning (the protocol of "Don't waste SAM", MedSAM v0, lightning-sam).

The mask decoder trains; the image encoder and prompt encoder stay frozen, so image embeddings can
be computed once and reused every epoch (``samadapt.training.cache``). On SAM 2.1 the decoder's
``conv_s0`` / ``conv_s1`` stay frozen too: they compute the high-resolution features the cache holds.
"""

from __future__ import annotations

from dataclasses import dataclass

from segment_anything.modeling import Sam

from ..errors import ConfigError
from ..options import option
from .base import Strategy, StrategyConfig, register_strategy


@dataclass
class DecoderConfig(StrategyConfig):
    train_decoder: bool = option(True, "always True: the strategy trains the decoder", hidden=True)

    def __post_init__(self) -> None:
        if self.train_decoder is not True:
            raise ConfigError(
                f"the 'decoder' strategy trains the mask decoder; train_decoder={self.train_decoder!r} "
                "would train nothing. Use train_decoder=True (the default)."
            )


@register_strategy
class DecoderStrategy(Strategy):
    name = "decoder"
    config_class = DecoderConfig
    description = "mask decoder trainable; image and prompt encoders frozen"

    def apply(self, sam: Sam, config: StrategyConfig) -> None:
        self.freeze_all(sam)
        self.unfreeze_decoder(sam)

    def uses_image_encoder_gradients(self, config: StrategyConfig) -> bool:
        return False

"""BitFit (Ben Zaken et al., 2022): every bias of the image encoder trains, with the mask decoder.

The weights stay frozen; only the additive terms move, about 0.1% of a ViT's parameters. Because the
encoder's output changes, image embeddings cannot be cached (unlike ``decoder``), but the backward
pass needs no weight gradients for the encoder's matrices.
"""

from __future__ import annotations

from dataclasses import dataclass

from segment_anything.modeling import Sam

from ..models.family import family_of
from .base import Strategy, StrategyConfig, register_strategy


@dataclass
class BitFitConfig(StrategyConfig):
    """BitFit's options: ``train_decoder`` (default True) also trains the whole mask decoder."""


@register_strategy
class BitFitStrategy(Strategy):
    name = "bitfit"
    config_class = BitFitConfig
    description = "every bias of the image encoder trainable, plus the mask decoder (BitFit)"

    def apply(self, sam: Sam, config: StrategyConfig) -> None:
        self.freeze_all(sam)
        for name, p in family_of(sam).parts(sam).image_encoder.named_parameters():
            if name.rsplit(".", 1)[-1] == "bias":
                p.requires_grad_(True)
        if config.train_decoder:
            self.unfreeze_decoder(sam)

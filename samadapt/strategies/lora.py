"""LoRA on the image encoder's attention, through ``peft`` (SAMed, micro-sam, Medical-SAM-Adapter).

peft inserts low-rank A, B matrices beside the chosen ``nn.Linear`` layers of every ViT block
(``image_encoder.blocks.N.attn.qkv`` by default); B starts at zero, so the adapted model starts
identical to SAM. The mask decoder trains too unless ``train_decoder=False``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from segment_anything.modeling import Sam

from ..errors import ConfigError
from ..options import option
from .base import Strategy, StrategyConfig, register_strategy

if TYPE_CHECKING:  # peft imports transformers (seconds): only when a LoRA model is built
    from peft import LoraConfig as PeftLoraConfig

# Which Linear layers of an upstream ViT block each target name selects.
TARGETS = {
    "qkv": r"attn\.qkv",
    "proj": r"attn\.proj",
    "mlp": r"mlp\.lin[12]",
}
ADAPTER_NAME = "default"


@dataclass
class LoraConfig(StrategyConfig):
    rank: int = option(4, "rank r of the low-rank update B @ A")
    alpha: float = option(4.0, "LoRA scaling: the update is multiplied by alpha / rank")
    dropout: float = option(0.0, "dropout on the LoRA branch's input")
    targets: tuple[str, ...] = option(("qkv",), "names of the encoder Linear layers that get LoRA (qkv, proj, "
                                                "lin1, lin2)")
    train_decoder: bool = option(True, "also train the mask decoder")

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank <= 0:
            raise ConfigError(f"LoRA `rank` should be a positive integer, got {self.rank!r}")
        if not self.alpha > 0:
            raise ConfigError(f"LoRA `alpha` should be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA `dropout` should be in [0, 1), got {self.dropout!r}")
        self.targets = tuple(self.targets)
        bad = [t for t in self.targets if t not in TARGETS]
        if bad or not self.targets:
            raise ConfigError(f"LoRA `targets` {list(self.targets)} invalid; choose a non-empty subset of {sorted(TARGETS)}")

    def to_peft(self) -> PeftLoraConfig:
        from peft import LoraConfig as PeftLoraConfig

        pattern = r"image_encoder\.blocks\.\d+\.(" + "|".join(TARGETS[t] for t in self.targets) + ")"
        return PeftLoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=pattern,
            bias="none",
        )


@register_strategy
class LoraStrategy(Strategy):
    name = "lora"
    config_class = LoraConfig
    description = "LoRA (peft) on image-encoder attention; mask decoder trainable"

    def apply(self, sam: Sam, config: StrategyConfig) -> None:
        from peft import inject_adapter_in_model

        assert isinstance(config, LoraConfig)
        self.freeze_all(sam)
        inject_adapter_in_model(config.to_peft(), sam, adapter_name=ADAPTER_NAME)
        for name, p in sam.named_parameters():
            p.requires_grad_("lora_" in name)
        if config.train_decoder:
            self.unfreeze(sam.mask_decoder)

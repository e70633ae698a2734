"""LoRA through ``peft`` (SAMed, micro-sam, Medical-SAM-Adapter), on any ``nn.Linear`` layers of SAM.

peft inserts low-rank A, B matrices beside the chosen ``nn.Linear`` layers; B starts at zero, so the
adapted model starts identical to SAM. The mask decoder trains too unless ``train_decoder=False``.

``targets`` chooses the layers. A short name selects a layer of every image-encoder block, as the
papers do: ``qkv`` (``image_encoder.blocks.N.attn.qkv``, the default), ``proj`` (``attn.proj``),
``mlp`` (``mlp.lin1`` and ``mlp.lin2``); on SAM 2.1 the same names select the layers of every Hiera
block, ``image_encoder.trunk.blocks.N.attn.qkv`` / ``.attn.proj`` / ``.mlp.layers.{0,1}`` (the table is
the model family's: ``samadapt.models.family``). A target holding a ``.`` is a module-path pattern
(``fnmatch``: ``*`` matches any characters, dots included) over the full module names of the
``Sam``, and selects every ``nn.Linear`` whose path it matches, so LoRA on the mask decoder is an
option, not another strategy: ``targets=("mask_decoder.transformer.*_proj",)`` puts it on every
attention projection of the decoder's two-way transformer.

``use_dora`` (``--lora-use-dora``, peft's name) makes it DoRA (Liu et al. 2024, arXiv 2402.09353): the
adapted weight ``m * (W + s B A) / ||W + s B A||`` (norms per output row), with the magnitude vector
``m`` (peft's ``lora_magnitude_vector``, initialised to ``||W||``) trained beside A and B.

The strategy owns how LoRA leaves samadapt: :meth:`LoraStrategy.merged_state_dict` folds every layer
with peft's own ``merge`` (which applies DoRA's magnitude) on a copy of the model, and
:meth:`LoraStrategy.to_peft` / :meth:`LoraStrategy.from_peft` write and read peft's folder format.
"""

from __future__ import annotations

import copy
import fnmatch
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from segment_anything.modeling import Sam
from torch import nn

from ..errors import AdapterMismatchError, ConfigError
from ..models.family import Sam1Family, all_roots, decoder_roots, family_of
from ..options import option
from .base import Strategy, StrategyConfig, register_strategy

if TYPE_CHECKING:  # peft imports transformers (seconds): only when a LoRA model is built
    from peft import LoraConfig as PeftLoraConfig

# Which Linear layers of an upstream ViT block each short target name selects (SAM 1's table; every
# family has its own: ``samadapt.models.family``, SAM 2.1's ``mlp`` is ``mlp.layers.0`` / ``.1``).
TARGETS = Sam1Family.lora_targets
ADAPTER_NAME = "default"
PREFIX = "lora_"
#: the first component of every module path of the image path of a model of any family
SAM_PARTS = all_roots()


def is_pattern(target: str) -> bool:
    """True for a module-path pattern, False for a short name (``qkv``, ``proj``, ``mlp``)."""
    return "." in target


def _short_regex(targets, sam=None) -> str:
    """The peft ``target_modules`` regex of short target names in ``sam``'s family (SAM 1's when
    ``sam`` is None: what every adapter before module-path patterns was made with, so their peft
    exports stay the same)."""
    family = Sam1Family() if sam is None else family_of(sam)
    return family.short_target_regex(targets)


def linear_paths(sam: Sam) -> list[str]:
    """The module paths of ``sam``'s ``nn.Linear`` layers that LoRA can target, before or after
    LoRA is inserted: a layer peft has wrapped counts under its own path (not as its ``base_layer``),
    and LoRA's own A and B layers do not count."""
    from peft.tuners.lora import LoraLayer

    paths = []
    for name, module in sam.named_modules():
        parts = name.split(".")
        if any(p.startswith(PREFIX) for p in parts) or parts[-1] == "base_layer":
            continue
        if isinstance(module, (nn.Linear, LoraLayer)):
            paths.append(name)
    return paths


@dataclass
class LoraConfig(StrategyConfig):
    rank: int = option(4, "rank r of the low-rank update B @ A")
    alpha: float = option(4.0, "LoRA scaling: the update is multiplied by alpha / rank")
    dropout: float = option(0.0, "dropout on the LoRA branch's input")
    targets: tuple[str, ...] = option(
        ("qkv",),
        "the Linear layers that get LoRA: qkv, proj, mlp (those layers of "
        "every image-encoder block), or module-path patterns such as "
        "mask_decoder.transformer.*_proj (fnmatch over the Sam's module "
        "names; every nn.Linear matched)",
    )
    use_dora: bool = option(
        False, "DoRA (weight-decomposed LoRA, peft's use_dora): also train a magnitude per output row of each layer"
    )
    train_decoder: bool = option(True, "also train the mask decoder")

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise ConfigError(f"LoRA `rank` should be a positive integer, got {self.rank!r}")
        if not self.alpha > 0:
            raise ConfigError(f"LoRA `alpha` should be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA `dropout` should be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.use_dora, bool):
            raise ConfigError(f"LoRA `use_dora` should be true or false, got {self.use_dora!r}")
        if isinstance(self.targets, str):
            self.targets = (self.targets,)
        self.targets = tuple(self.targets)
        bad = [
            t
            for t in self.targets
            if not isinstance(t, str)
            or (not is_pattern(t) and t not in TARGETS)
            or (is_pattern(t) and not (t.split(".")[0] in SAM_PARTS or t[0] in "*?["))
        ]
        if bad or not self.targets or len(set(self.targets)) != len(self.targets):
            raise ConfigError(
                f"LoRA `targets` {list(self.targets)} invalid; choose a non-empty set of short names from "
                f"{sorted(TARGETS)} and module-path patterns starting with one of {list(SAM_PARTS)} (e.g. "
                f"'mask_decoder.transformer.*_proj')" + (f"; bad: {bad}" if bad else "")
            )

    @property
    def patterns(self) -> tuple[str, ...]:
        return tuple(t for t in self.targets if is_pattern(t))

    def target_paths(self, sam: Sam) -> list[str]:
        """The module paths of the Linear layers of ``sam`` that the targets select, in module order.
        Raises :class:`ConfigError` when a pattern selects none (naming some it could match)."""
        paths = linear_paths(sam)
        short = re.compile(_short_regex([t for t in self.targets if not is_pattern(t)], sam))
        has_short = any(not is_pattern(t) for t in self.targets)
        for pattern in self.patterns:
            if not any(fnmatch.fnmatchcase(p, pattern) for p in paths):
                near = [p for p in paths if p.split(".")[0] == pattern.split(".")[0]] or paths
                raise ConfigError(
                    f"LoRA target pattern {pattern!r} matches no nn.Linear layer of this Sam; its "
                    f"Linear layers are named like {near[:3] + near[-2:]}"
                )
        return [
            p
            for p in paths
            if (has_short and short.fullmatch(p)) or any(fnmatch.fnmatchcase(p, pattern) for pattern in self.patterns)
        ]

    def to_peft(self, sam: Sam | None = None) -> PeftLoraConfig:
        """The peft config of these options. Short names give a ``target_modules`` regex (as peft
        matches it); module-path patterns are resolved against ``sam`` (needed then, adapted or
        not) to the list of the layers' full names, which peft matches exactly."""
        from peft import LoraConfig as PeftLoraConfig

        if not self.patterns:
            target_modules = _short_regex(self.targets, sam)
        elif sam is None:
            raise ConfigError(
                f"LoRA targets {list(self.patterns)} are module-path patterns: to_peft needs the Sam "
                "they select layers of (to_peft(sam))"
            )
        else:
            target_modules = self.target_paths(sam)
        return PeftLoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=target_modules,
            bias="none",
            use_dora=self.use_dora,
        )


@register_strategy
class LoraStrategy(Strategy):
    name = "lora"
    config_class = LoraConfig
    description = "LoRA (peft) on image-encoder attention; mask decoder trainable"
    prefix = PREFIX
    peft_type = "LORA"

    def apply(self, sam: Sam, config: StrategyConfig) -> None:
        from peft import inject_adapter_in_model

        assert isinstance(config, LoraConfig)
        peft_config = config.to_peft(sam)  # resolves (and checks) patterns before anything changes
        self.freeze_all(sam)
        inject_adapter_in_model(peft_config, sam, adapter_name=ADAPTER_NAME)
        self.train_own(sam, train_decoder=config.train_decoder)

    def uses_image_encoder_gradients(self, config: StrategyConfig) -> bool:
        """False when every target lies outside the image encoder (LoRA on the decoder only): the
        encoder then stays frozen and its embeddings may be cached, as for ``decoder``."""
        assert isinstance(config, LoraConfig)
        outside = tuple(f"{root}." for root in decoder_roots())
        return any(not is_pattern(t) or not t.startswith(outside) for t in config.targets)

    # ------------------------------------------------------------------ leaving samadapt
    def merged_state_dict(self, sam: Sam, config: StrategyConfig) -> dict[str, torch.Tensor]:
        """Every LoRA layer merged into its base ``nn.Linear`` by peft's own ``merge`` (``W + s B A``;
        for DoRA rescaled to the trained magnitude), on a float32 copy of ``sam``, then unwrapped to
        the upstream layer, so the keys are upstream's."""
        from peft.tuners.lora import LoraLayer

        with torch.no_grad():
            merged = copy.deepcopy(sam).float()
            layers = [(name, m) for name, m in merged.named_modules() if isinstance(m, LoraLayer)]
            for name, layer in layers:
                if not layer.merged:  # a merged layer holds W + delta in its base weight already
                    layer.merge()
                parent, _, child = name.rpartition(".")
                setattr(merged.get_submodule(parent), child, layer.get_base_layer())
        return super().merged_state_dict(merged, config)

    def to_peft(self, sam: Sam, config: StrategyConfig) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """peft's config (module-path pattern targets resolved on ``sam``) and LoRA tensors, as
        ``PeftModel.save_pretrained`` writes them (DoRA's magnitude as ``...lora_magnitude_vector``)."""
        from peft import get_peft_model_state_dict

        assert isinstance(config, LoraConfig)
        peft_config = config.to_peft(sam).to_dict()
        peft_config["peft_type"] = self.peft_type
        peft_config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in peft_config.items()}
        tensors = get_peft_model_state_dict(sam, adapter_name=ADAPTER_NAME)
        return peft_config, {f"base_model.model.{k}": v.detach().cpu().contiguous() for k, v in tensors.items()}

    def from_peft(self, peft_config: dict[str, Any], *, train_decoder: bool) -> LoraConfig:
        """The options of a peft LoRA config. Its targets must be Linear layers of the image
        encoder's blocks (``qkv``, ``proj``, ``lin1``/``lin2``) or full module paths of the ``Sam``;
        peft options samadapt's LoRA has no equivalent for are refused, not ignored."""
        tm = peft_config.get("target_modules")
        tm_text = tm if isinstance(tm, str) else " ".join(tm or [])
        if isinstance(tm, list) and tm and all(str(t).split(".")[0] in SAM_PARTS for t in tm):
            targets = list(tm)  # full module paths (written for module-path pattern targets): exact patterns
        else:
            targets = [t for t in TARGETS if t in tm_text or (t == "mlp" and "lin" in tm_text)]
        if not targets:
            raise AdapterMismatchError(
                f"peft target_modules {tm!r} name no image-encoder block layer ({sorted(TARGETS)})"
            )
        unsupported = {
            k: peft_config[k]
            for k, off in (("use_rslora", False), ("rank_pattern", {}), ("alpha_pattern", {}), ("bias", "none"))
            if peft_config.get(k, off) not in (off, None)
        }
        if unsupported:
            raise AdapterMismatchError(f"peft LoRA options {unsupported} have no samadapt equivalent")
        return LoraConfig(
            rank=int(peft_config["r"]),
            alpha=float(peft_config["lora_alpha"]),
            dropout=float(peft_config.get("lora_dropout") or 0.0),
            targets=tuple(targets),
            use_dora=bool(peft_config.get("use_dora") or False),
            train_decoder=train_decoder,
        )

    def load_peft_weights(self, sam: Sam, tensors: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        stripped = {k.removeprefix("base_model.model."): v for k, v in tensors.items()}
        result = set_peft_model_state_dict(sam, stripped, adapter_name=ADAPTER_NAME)
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        missing = [k for k in (getattr(result, "missing_keys", []) or []) if self.owns(k)]
        if unexpected or missing:
            raise AdapterMismatchError(f"peft adapter does not fit: unexpected {unexpected[:3]}, missing {missing[:3]}")

"""The interface every adaptation strategy implements, and the strategy registry.

A strategy is one module holding a config dataclass and an ``apply`` function that changes an
upstream ``Sam`` in place: it freezes every parameter, inserts its own modules (if any) and marks
trainable exactly the parameters it adapts. The modules a strategy inserts are named with the
strategy's declared ``prefix`` (as peft names LoRA's ``lora_``): :meth:`Strategy.owns` is the one
filter that tells its parameters from SAM's, used to mark them trainable (:meth:`Strategy.train_own`),
by the exporters (which of them fold into SAM's weights) and by the peft import.

A strategy also owns how its modules leave samadapt: :meth:`Strategy.merged_state_dict` folds them
into SAM's own weights where they fold (LoRA), :meth:`Strategy.tracing` puts them in a form torch's
ONNX tracer records, and a strategy with a ``peft_type`` reads and writes peft's folder format
(:meth:`Strategy.to_peft`, :meth:`Strategy.from_peft`, :meth:`Strategy.load_peft_weights`). The
defaults suit a strategy that trains SAM's own parameters. Everything else is generic and lives
elsewhere: trainable parameters are those with ``requires_grad``; the adapter file holds exactly those
tensors (``samadapt.adapter_io``); the exporters call these methods and never branch on a strategy's
name. Adding a strategy is one new file plus one ``@register_strategy`` line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, ContextManager

import torch
from segment_anything.modeling import Sam

from ..errors import AdapterFileError, ConfigError, ExportError, UnknownNameError
from ..models.family import family_of
from ..options import check_keys, option


@dataclass
class StrategyConfig:
    """Base class of the strategies' option dataclasses (validated in ``__post_init__``)."""

    train_decoder: bool = option(True, "also train the mask decoder")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StrategyConfig":
        check_keys(cls, data, what="options", owner=cls.__name__)
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)


class Strategy(ABC):
    """One way of adapting SAM. Subclasses set ``name`` and ``config_class`` and implement ``apply``.

    ``prefix``: how the modules the strategy inserts are named (a name, or a tuple of names, that a
    component of their parameters' paths starts with, e.g. ``"lora_"`` for
    ``image_encoder.blocks.0.attn.qkv.lora_A.default.weight``); None for a strategy that inserts
    nothing and trains some of SAM's own parameters (``decoder``, ``full``, ``bitfit``).

    ``peft_type``: the ``peft_type`` of peft's ``adapter_config.json`` this strategy reads and writes
    (``"LORA"``), or None for a strategy peft has no format for.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[StrategyConfig]]
    description: ClassVar[str] = ""
    prefix: ClassVar[str | tuple[str, ...] | None] = None
    peft_type: ClassVar[str | None] = None

    @classmethod
    def prefixes(cls) -> tuple[str, ...]:
        """``prefix`` as a tuple (empty for None)."""
        if cls.prefix is None:
            return ()
        return (cls.prefix,) if isinstance(cls.prefix, str) else tuple(cls.prefix)

    @classmethod
    def owns(cls, name: str) -> bool:
        """True when parameter (or module) ``name``, a path in the ``Sam``, belongs to a module this
        strategy inserted: one of its dotted components starts with the strategy's prefix."""
        prefixes = cls.prefixes()
        return bool(prefixes) and any(part.startswith(prefixes) for part in name.split("."))

    def train_own(self, sam: Sam, *, train_decoder: bool) -> None:
        """Mark trainable exactly the parameters this strategy inserted (:meth:`owns`), and the mask
        decoder's too with ``train_decoder``."""
        for name, p in sam.named_parameters():
            p.requires_grad_(self.owns(name))
        if train_decoder:
            self.unfreeze_decoder(sam)

    def make_config(self, **options: Any) -> StrategyConfig:
        return self.config_class.from_dict(options)

    @abstractmethod
    def apply(self, sam: Sam, config: StrategyConfig) -> None:
        """Adapt ``sam`` in place. Must leave trainable exactly the parameters the strategy adapts."""

    @staticmethod
    def freeze_all(sam: Sam) -> None:
        for p in sam.parameters():
            p.requires_grad_(False)

    @staticmethod
    def unfreeze(module) -> None:
        for p in module.parameters():
            p.requires_grad_(True)

    @staticmethod
    def unfreeze_decoder(sam) -> None:
        """Mark the mask decoder trainable: SAM 1's ``mask_decoder``; SAM 2.1's ``sam_mask_decoder``
        except ``conv_s0`` / ``conv_s1``, which sit on the embedding cache's side (docs/sam2.md)."""
        for p in family_of(sam).parts(sam).decoder_parameters():
            p.requires_grad_(True)

    def uses_image_encoder_gradients(self, config: StrategyConfig) -> bool:
        """True when a backward pass must go through the image encoder (so its output cannot be cached)."""
        return True

    # ------------------------------------------------------------------ leaving samadapt
    def merged_state_dict(self, sam: Sam, config: StrategyConfig) -> dict[str, torch.Tensor]:
        """``sam``'s weights with every module this strategy inserted folded into SAM's own
        parameters where it folds, as fresh float32 CPU tensors under upstream names
        (``...attn.qkv.weight``). Modules that do not fold keep their own names, so the exporters can
        name them (and refuse the formats that cannot carry them). ``sam`` is not changed.

        The default, for strategies that insert nothing or nothing that folds: the state dict as it is.
        """
        with torch.no_grad():
            return {k: t.detach().float().cpu().clone() for k, t in sam.state_dict().items()}

    def tracing(self, sam: Sam) -> ContextManager[Sam]:
        """A context in which this strategy's modules in ``sam`` are in a form torch's ONNX tracer
        records with the same numbers (restored afterwards). The default: as they are."""
        return contextlib.nullcontext(sam)

    def to_peft(self, sam: Sam, config: StrategyConfig) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """peft's ``adapter_config.json`` (a JSON-able dict) and ``adapter_model.safetensors`` tensors
        (keys as peft writes them: ``base_model.model.<name>``) of this strategy's modules in ``sam``."""
        peft_strategies = " and ".join(repr(s.name) for s in STRATEGIES.values() if s.peft_type) or "no"
        raise ExportError(f"only {peft_strategies} adapters have a peft format; this one is {self.name!r}")

    def from_peft(self, peft_config: dict[str, Any], *, train_decoder: bool) -> StrategyConfig:
        """This strategy's config for a peft ``adapter_config.json`` of its ``peft_type`` (read as a
        dict); ``train_decoder`` says whether the folder holds a trained mask decoder."""
        raise AdapterFileError(f"strategy {self.name!r} reads no peft adapter")

    def load_peft_weights(self, sam: Sam, tensors: dict[str, torch.Tensor]) -> None:
        """Copy peft's ``adapter_model.safetensors`` ``tensors`` into ``sam`` (adapted with the config
        :meth:`from_peft` gave); raises :class:`~samadapt.errors.AdapterMismatchError` when they do not fit."""
        raise AdapterFileError(f"strategy {self.name!r} reads no peft adapter")


STRATEGIES: dict[str, Strategy] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ConfigError(f"strategy name {name!r} must be lower-case letters, digits and '_'")
    if name in STRATEGIES:
        raise ConfigError(f"strategy {name!r} is registered already")
    if not (isinstance(cls.config_class, type) and issubclass(cls.config_class, StrategyConfig)):
        raise ConfigError(f"strategy {name!r}: config_class must subclass StrategyConfig")
    prefix = cls.prefix
    parts = (prefix,) if isinstance(prefix, str) else prefix
    if prefix is not None and not (
        isinstance(parts, tuple)
        and parts
        and all(isinstance(p, str) and re.fullmatch(r"[a-z][a-z0-9_]*", p) for p in parts)
    ):
        raise ConfigError(
            f"strategy {name!r}: prefix {prefix!r} must be None, a lower-case name such as 'lora_', "
            "or a tuple of such names"
        )
    taken = {p: other.name for other in STRATEGIES.values() for p in other.prefixes()}
    clash = sorted(p for p in cls.prefixes() for q in taken if p.startswith(q) or q.startswith(p))
    if clash:
        raise ConfigError(
            f"strategy {name!r}: prefix {clash[0]!r} overlaps a registered strategy's (prefixes "
            f"taken: {taken}); choose a prefix of its own"
        )
    STRATEGIES[name] = cls()
    return cls


def peft_strategy(peft_type: Any) -> Strategy:
    """The registered strategy that reads peft adapters of ``peft_type`` (``"LORA"``)."""
    for strategy in STRATEGIES.values():
        if strategy.peft_type is not None and strategy.peft_type == peft_type:
            return strategy
    known = sorted(s.peft_type for s in STRATEGIES.values() if s.peft_type)
    raise AdapterFileError(f"a peft {peft_type!r} adapter has no samadapt strategy; supported: {known}")


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise UnknownNameError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}") from None

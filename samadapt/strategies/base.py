"""The interface every adaptation strategy implements, and the strategy registry.

A strategy is one module holding a config dataclass and an ``apply`` function that changes an
upstream ``Sam`` in place: it freezes every parameter, inserts its own modules (if any) and marks
trainable exactly the parameters it adapts. Everything else is generic and lives elsewhere:
trainable parameters are those with ``requires_grad``; the adapter file holds exactly those tensors
(``samadapt.adapter_io``). Adding a strategy is one new file plus one ``@register_strategy`` line.
"""

from __future__ import annotations

import dataclasses
import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from segment_anything.modeling import Sam

from ..errors import ConfigError, UnknownNameError
from ..options import option


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
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown options {unknown} for {cls.__name__}; valid options: {sorted(names)}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)


class Strategy(ABC):
    """One way of adapting SAM. Subclasses set ``name`` and ``config_class`` and implement ``apply``."""

    name: ClassVar[str]
    config_class: ClassVar[type[StrategyConfig]]
    description: ClassVar[str] = ""

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

    def uses_image_encoder_gradients(self, config: StrategyConfig) -> bool:
        """True when a backward pass must go through the image encoder (so its output cannot be cached)."""
        return True


STRATEGIES: dict[str, Strategy] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ConfigError(f"strategy name {name!r} must be lower-case letters, digits and '_'")
    if name in STRATEGIES:
        raise ConfigError(f"strategy {name!r} is registered already")
    if not (isinstance(cls.config_class, type) and issubclass(cls.config_class, StrategyConfig)):
        raise ConfigError(f"strategy {name!r}: config_class must subclass StrategyConfig")
    STRATEGIES[name] = cls()
    return cls


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise UnknownNameError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}") from None

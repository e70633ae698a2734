"""Adaptation strategies behind one interface, chosen from a registry."""

from . import adapter, bitfit, decoder, full, lora  # noqa: F401  (registers the built-in strategies)
from .adapter import AdapterConfig
from .base import STRATEGIES, Strategy, StrategyConfig, get_strategy, register_strategy
from .decoder import DecoderConfig
from .full import FullConfig
from .lora import LoraConfig

__all__ = [
    "STRATEGIES",
    "AdapterConfig",
    "DecoderConfig",
    "FullConfig",
    "LoraConfig",
    "Strategy",
    "StrategyConfig",
    "get_strategy",
    "register_strategy",
]

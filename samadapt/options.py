"""``option()``: a dataclass field that carries its command-line help.

Config dataclasses (:class:`~samadapt.config.TrainConfig`, the strategies' configs) declare each
field with ``option(default, "help text")``; the command line (``samadapt train``,
``recipes/finetune.py``) shows that text, the default and the choices, as Hugging Face's
``HfArgumentParser`` reads ``metadata["help"]``. :func:`check_keys` is the one unknown-key check of
their ``from_dict``. A leaf module: it imports only :mod:`samadapt.errors`.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable
from dataclasses import field
from typing import Any

from .errors import ConfigError


def option(default: Any, help: str, *, choices: tuple | None = None, hidden: bool = False) -> Any:
    """A dataclass field with ``metadata = {"help", "choices", "hidden"}``.

    A callable ``default`` (``dict``, ``lambda: ["box"]``) becomes the ``default_factory``;
    ``choices`` are shown and enforced on the command line; ``hidden`` keeps the field off it.
    """
    metadata = {"help": help, "choices": choices, "hidden": hidden}
    if callable(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


def check_keys(cls: type, keys: Iterable[str], *, what: str = "options", owner: str | None = None) -> None:
    """Raise :class:`~samadapt.errors.ConfigError` when ``keys`` hold a name that is not a field of
    the dataclass ``cls``, naming the unknown keys, the closest valid one and every valid one.

    ``what`` names the keys in the message ("options", "config keys"); ``owner`` (default: none)
    is added as "for <owner>"."""
    names = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(set(keys) - set(names))
    if not unknown:
        return
    close = difflib.get_close_matches(unknown[0], names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    where = f" for {owner}" if owner else ""
    raise ConfigError(f"unknown {what} {unknown}{where}{hint}; valid {what}: {names}")

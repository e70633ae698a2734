"""``option()``: a dataclass field that carries its command-line help.

Config dataclasses (:class:`~samadapt.config.TrainConfig`, the strategies' configs) declare each
field with ``option(default, "help text")``; the command line (``samadapt train``,
``recipes/finetune.py``) shows that text, the default and the choices, as Hugging Face's
``HfArgumentParser`` reads ``metadata["help"]``. A leaf module: it imports nothing of samadapt.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any


def option(default: Any, help: str, *, choices: tuple | None = None, hidden: bool = False) -> Any:
    """A dataclass field with ``metadata = {"help", "choices", "hidden"}``.

    A callable ``default`` (``dict``, ``lambda: ["box"]``) becomes the ``default_factory``;
    ``choices`` are shown and enforced on the command line; ``hidden`` keeps the field off it.
    """
    metadata = {"help": help, "choices": choices, "hidden": hidden}
    if callable(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)

"""The adapter store: named adapters under ``SAMADAPT_HOME``, each with its card, and
:func:`load`, which puts one on the base checkpoint it was made for (found by
:func:`samadapt.models.checkpoints.find_base_checkpoint`).

Layout (the folders are :mod:`samadapt.paths`)::

    $SAMADAPT_HOME/                       (default ~/.cache/samadapt)
        adapters/<name>/adapter.safetensors
        adapters/<name>/card.json         the card (below)
        checkpoints/sam_vit_h_4b8939.pth  base checkpoints under their official file names

One card schema, whether training published the adapter (:func:`publish_adapter`) or a file made
elsewhere was installed (:func:`install_adapter`, the data engine's turns): ``name``, ``dataset``,
``model_type``, ``strategy``, ``strategy_config``, ``base_id``, ``trainable_parameters``, ``date``,
and what its maker measured: ``metrics`` (``{"fine_tuned": {...}, ...}``, the shape of a run's
``metrics``), ``data``, ``training``, ``engine`` where it has them.

Names are ``<dataset>-<tag>[-<strategy>]`` with tag one of the model tags (``vitb``, ``vitl``,
``vith``, ``mini``); the ``decoder`` strategy takes the bare name (``taco-vith``), the others append
theirs (``taco-vith-lora``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .adapted import AdaptedSam
from .adapter_io import load_adapter, read_adapter_metadata, save_adapter
from .errors import CheckpointError, ConfigError, UnknownNameError
from .files import atomic_write
from .models.checkpoints import find_base_checkpoint
from .models.family import build_model, get_card, model_type_for_tag, model_types
from .paths import adapters_dir
from .strategies.base import STRATEGIES

ADAPTER_FILE = "adapter.safetensors"
CARD_FILE = "card.json"
DEFAULT_STRATEGY = "decoder"


@dataclass(frozen=True)
class AdapterName:
    dataset: str
    model_type: str
    strategy: str

    def __str__(self) -> str:
        tag = get_card(self.model_type).tag
        suffix = "" if self.strategy == DEFAULT_STRATEGY else f"-{self.strategy}"
        return f"{self.dataset}-{tag}{suffix}"


def adapter_name(dataset: str, model_type: str, strategy: str) -> str:
    """The registered name for an adapter, e.g. ``adapter_name("taco", "vit_h", "lora") == "taco-vith-lora"``."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9_]*", dataset):
        raise ConfigError(f"dataset name {dataset!r} must be lower-case letters, digits and '_' (no '-')")
    if strategy not in STRATEGIES:
        raise UnknownNameError(f"unknown strategy {strategy!r}; choose one of {sorted(STRATEGIES)}")
    return str(AdapterName(dataset, get_card(model_type).name, strategy))


def parse_adapter_name(name: str) -> AdapterName:
    parts = name.split("-")
    tags = sorted(c.tag for c in model_types().values())
    if len(parts) not in (2, 3) or not re.fullmatch(r"[a-z0-9][a-z0-9_]*", parts[0]):
        raise ConfigError(
            f"adapter name {name!r} is not of the form <dataset>-<tag>[-<strategy>] with tag in {tags} "
            f"(for example 'taco-vith' or 'taco-vith-lora')"
        )
    strategy = parts[2] if len(parts) == 3 else DEFAULT_STRATEGY
    if strategy not in STRATEGIES:
        raise ConfigError(f"adapter name {name!r}: unknown strategy {strategy!r}; choose one of {sorted(STRATEGIES)}")
    if parts[1] not in tags:
        example = f"{parts[0]}-mini-{parts[1]}" if parts[1] in STRATEGIES else f"{parts[0]}-vith"
        raise ConfigError(
            f"adapter name {name!r}: {parts[1]!r} is not a model tag; names are <dataset>-<tag>[-<strategy>] with "
            f"tag in {tags} (for example {example!r})"
        )
    return AdapterName(parts[0], model_type_for_tag(parts[1]), strategy)


def list_adapters() -> list[dict[str, Any]]:
    """Every adapter under ``SAMADAPT_HOME/adapters``: its name and card."""
    root = adapters_dir()
    out = []
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if (d / ADAPTER_FILE).is_file():
                card = {}
                if (d / CARD_FILE).is_file():
                    try:
                        card = json.loads((d / CARD_FILE).read_text())
                    except ValueError:
                        card = {"error": "unreadable card.json"}
                out.append({"name": d.name, "path": str(d / ADAPTER_FILE), **card})
    return out


def publish_adapter(
    model: AdaptedSam, dataset: str, *, card: dict[str, Any] | None = None, name: str | None = None
) -> Path:
    """Save ``model``'s adapter and ``card.json`` under its registered name in ``SAMADAPT_HOME``."""
    name = name or adapter_name(dataset, model.model_type, model.strategy)
    parse_adapter_name(name)
    d = adapters_dir() / name
    info = {k: v for k, v in (card or {}).items() if k in ("metrics", "training")}
    save_adapter(model, d / ADAPTER_FILE, dataset=dataset, **info)
    trainable = model.num_parameters(trainable_only=True)
    card = _card(name, d / ADAPTER_FILE, {"dataset": dataset, "trainable_parameters": trainable, **(card or {})})
    atomic_write(d / CARD_FILE, lambda tmp: Path(tmp).write_text(json.dumps(card, indent=2, default=str)))
    return d / ADAPTER_FILE


def _card(name: str, path: Path, measured: dict[str, Any]) -> dict[str, Any]:
    """The card of adapter ``name``: what its file (``path``) says of it, then ``measured`` (dataset,
    metrics, data, training, engine: whatever its maker knows)."""
    meta = read_adapter_metadata(path)
    card = {
        "name": name,
        "dataset": meta["info"].get("dataset"),
        "model_type": meta["model_type"],
        "strategy": meta["strategy"],
        "strategy_config": meta["strategy_config"],
        "base_id": meta["base_id"],
        "trainable_parameters": None,  # counted from the file below unless given
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **measured,
    }
    if card["trainable_parameters"] is None:
        card["trainable_parameters"] = _tensor_elements(path)
    return card


def _tensor_elements(path: str | os.PathLike) -> int:
    from math import prod

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return sum(prod(f.get_slice(k).get_shape()) for k in f.keys())


def install_adapter(path: str | os.PathLike, name: str, card: dict[str, Any]) -> Path:
    """Install an adapter file saved elsewhere (a run's ``adapter.safetensors``, byte for byte) under
    ``name`` in ``SAMADAPT_HOME``, with ``card`` (beside the file's own metadata) as its ``card.json``.
    The name's folder appears whole or not at all; an existing one is refused."""
    import shutil

    from .files import atomic_directory

    parse_adapter_name(name)
    d = adapters_dir() / name
    card = _card(name, Path(path), card)  # a file that is no adapter fails here, before anything is written
    if d.exists():
        raise ConfigError(f"an adapter named {name!r} exists already ({d}); choose another name")
    with atomic_directory(d) as tmp:
        shutil.copyfile(path, tmp / ADAPTER_FILE)
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=2, default=str))
    return d / ADAPTER_FILE


def resolve_adapter(name_or_path: str | os.PathLike) -> Path:
    """An adapter file from a path (file or folder) or a registered name."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    if p.is_dir() and (p / ADAPTER_FILE).is_file():
        return p / ADAPTER_FILE
    name = str(name_or_path)
    f = adapters_dir() / name / ADAPTER_FILE
    if f.is_file():
        return f
    known = [a["name"] for a in list_adapters()]
    raise UnknownNameError(
        f"no adapter named {name!r} in {adapters_dir()} and no such file; known adapters: "
        f"{known or 'none yet'} (train one with `accelerate launch recipes/finetune.py`, or pass a path)"
    )


def load(
    name_or_path: str | os.PathLike, *, checkpoint: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> AdaptedSam:
    """Load a named adapter (``"taco-vith"``) or an adapter file onto the base it was made for.

    The base is the checkpoint recorded in the adapter's metadata (found in
    ``SAMADAPT_HOME/checkpoints`` under its official name), the one given as ``checkpoint``, or
    samadapt's built-in weights for ``mini``. Returns the model in eval mode on ``device``.
    """
    path = resolve_adapter(name_or_path)
    meta = read_adapter_metadata(path)
    model_type, base_id = meta["model_type"], meta["base_id"]
    if base_id.startswith("builtin:") and checkpoint is None:
        sam = build_model(model_type)
    elif base_id.startswith("random:") and checkpoint is None:
        raise CheckpointError(
            f"adapter {str(path)!r} was trained on randomly initialised {model_type} weights, which "
            "cannot be rebuilt; pass the checkpoint it was trained from"
        )
    else:
        sam = build_model(model_type, find_base_checkpoint(model_type, base_id, checkpoint))
    model = load_adapter(path, sam)
    return model.to(device).eval()

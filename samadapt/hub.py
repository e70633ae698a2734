"""Named adapters under ``SAMADAPT_HOME`` and the base checkpoints they need.

Layout (the folders are :mod:`samadapt.paths`)::

    $SAMADAPT_HOME/                       (default ~/.cache/samadapt)
        adapters/<name>/adapter.safetensors
        adapters/<name>/card.json         dataset, model type, strategy, metrics, training config, date
        checkpoints/sam_vit_h_4b8939.pth  base checkpoints under their official file names

Names are ``<dataset>-<tag>[-<strategy>]`` with tag one of the model tags (``vitb``, ``vitl``,
``vith``, ``mini``); the ``decoder`` strategy takes the bare name (``taco-vith``), the others append
theirs (``taco-vith-lora``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .adapted import AdaptedSam
from .adapter_io import load_adapter, read_adapter_metadata, save_adapter
from .errors import CheckpointError, CheckpointNotFoundError, ConfigError, UnknownNameError
from .files import atomic_write
from .models.checkpoints import OFFICIAL_CHECKPOINTS, file_sha256, official_checkpoint
from .models.registry import MODEL_TYPES, build_sam, get_model_card, model_type_for_tag
from .paths import adapters_dir, checkpoints_dir
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
        tag = get_model_card(self.model_type).tag
        suffix = "" if self.strategy == DEFAULT_STRATEGY else f"-{self.strategy}"
        return f"{self.dataset}-{tag}{suffix}"


def adapter_name(dataset: str, model_type: str, strategy: str) -> str:
    """The registered name for an adapter, e.g. ``adapter_name("taco", "vit_h", "lora") == "taco-vith-lora"``."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9_]*", dataset):
        raise ConfigError(f"dataset name {dataset!r} must be lower-case letters, digits and '_' (no '-')")
    if strategy not in STRATEGIES:
        raise UnknownNameError(f"unknown strategy {strategy!r}; choose one of {sorted(STRATEGIES)}")
    return str(AdapterName(dataset, get_model_card(model_type).name, strategy))


def parse_adapter_name(name: str) -> AdapterName:
    parts = name.split("-")
    tags = sorted(c.tag for c in MODEL_TYPES.values())
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
    card = {
        "name": name,
        "dataset": dataset,
        "model_type": model.model_type,
        "strategy": model.strategy,
        "strategy_config": model.config.to_dict(),
        "base_id": model.base.base_id,
        "trainable_parameters": model.num_parameters(trainable_only=True),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **(card or {}),
    }
    save_adapter(
        model, d / ADAPTER_FILE, dataset=dataset, **{k: v for k, v in card.items() if k in ("metrics", "training")}
    )
    atomic_write(d / CARD_FILE, lambda tmp: Path(tmp).write_text(json.dumps(card, indent=2, default=str)))
    return d / ADAPTER_FILE


def install_adapter(path: str | os.PathLike, name: str, card: dict[str, Any]) -> Path:
    """Install an adapter file saved elsewhere (a run's ``adapter.safetensors``, byte for byte) under
    ``name`` in ``SAMADAPT_HOME``, with ``card`` (beside the file's own metadata) as its ``card.json``.
    The name's folder appears whole or not at all; an existing one is refused."""
    import shutil

    from .files import atomic_directory

    parse_adapter_name(name)
    meta = read_adapter_metadata(path)  # a file that is no adapter fails here, before anything is written
    d = adapters_dir() / name
    if d.exists():
        raise ConfigError(f"an adapter named {name!r} exists already ({d}); choose another name")
    card = {
        "name": name,
        "model_type": meta["model_type"],
        "strategy": meta["strategy"],
        "base_id": meta["base_id"],
        **card,
    }
    card.setdefault("date", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
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


def find_base_checkpoint(model_type: str, base_id: str, checkpoint: str | os.PathLike | None = None) -> Path:
    """The checkpoint file whose sha256 is ``base_id``: the one given, or the official file in
    ``SAMADAPT_HOME/checkpoints``."""
    want = base_id.removeprefix("sha256:")
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise CheckpointNotFoundError(
                f"base checkpoint {str(checkpoint)!r} does not exist; the adapter needs the {model_type} "
                f"checkpoint with {'sha256 ' + want if base_id.startswith('sha256:') else 'base id ' + base_id}: "
                "pass the path of that file"
            )
        return Path(checkpoint)
    official = official_checkpoint(model_type)
    if official is not None:
        path = checkpoints_dir() / official.filename
        if official.sha256 == want:
            if path.is_file():
                return path
            raise CheckpointNotFoundError(
                f"the adapter needs the official {model_type} checkpoint {official.filename} (sha256 "
                f"{official.sha256}), expected at {path}. Run `samadapt download-checkpoint {model_type}` "
                f"or download {official.url} there, or pass checkpoint=..."
            )
    # a fine-tuned base: look for a file with that hash among the local checkpoints
    if checkpoints_dir().is_dir():
        for f in sorted(checkpoints_dir().glob("*.pth")):
            if file_sha256(f) == want:
                return f
    raise CheckpointNotFoundError(
        f"the adapter needs a {model_type} base checkpoint with sha256 {want}, not found in "
        f"{checkpoints_dir()}; pass checkpoint=<path to that file>"
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
        sam = build_sam(model_type)
    elif base_id.startswith("random:") and checkpoint is None:
        raise CheckpointError(
            f"adapter {str(path)!r} was trained on randomly initialised {model_type} weights, which "
            "cannot be rebuilt; pass the checkpoint it was trained from"
        )
    else:
        sam = build_sam(model_type, find_base_checkpoint(model_type, base_id, checkpoint))
    model = load_adapter(path, sam)
    return model.to(device).eval()


def download_checkpoint(
    model_type: str,
    *,
    url: str | None = None,
    directory: str | os.PathLike | None = None,
    progress: bool = True,
    sha256: str | None = None,
) -> Path:
    """Download the official checkpoint of ``model_type`` into ``SAMADAPT_HOME/checkpoints`` with a
    progress bar, verify its sha256, and only then move it into place."""
    from tqdm.auto import tqdm

    official = official_checkpoint(model_type)
    if official is None:
        raise UnknownNameError(
            f"model type {model_type!r} has no official checkpoint; choose one of "
            f"{sorted(c.model_type for c in OFFICIAL_CHECKPOINTS.values())}"
        )
    url = url or official.url
    want = sha256 or official.sha256
    dest = Path(directory or checkpoints_dir()) / official.filename
    if dest.is_file() and file_sha256(dest) == want:
        return dest

    def fetch(tmp: str) -> None:  # into a temporary file beside dest; renamed only once its sha256 is right
        try:
            with urllib.request.urlopen(url) as resp, open(tmp, "wb") as out:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=official.filename, disable=not progress) as bar:
                    for chunk in iter(lambda: resp.read(1 << 20), b""):
                        out.write(chunk)
                        bar.update(len(chunk))
        except OSError as e:
            raise CheckpointError(
                f"downloading {url} failed ({e}); check the network or download it by hand to {dest}"
            ) from None
        got = file_sha256(tmp, use_cache=False)
        if got != want:
            raise CheckpointError(
                f"{url} downloaded with sha256 {got}, expected {want}: the download is corrupt; try again"
            )

    atomic_write(dest, fetch)
    return dest

"""SAM checkpoint files: the official ones, hashing, key remapping and strict loading."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from ..errors import CheckpointError

# Full sha256 of the official files (the suffix of each file name is NOT a prefix of its sha256).
# Values as published by several independent projects that verify these downloads.
OFFICIAL_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"


@dataclass(frozen=True)
class OfficialCheckpoint:
    model_type: str
    filename: str
    sha256: str
    size_bytes: int | None = None

    @property
    def url(self) -> str:
        return OFFICIAL_BASE_URL + self.filename


OFFICIAL_CHECKPOINTS: dict[str, OfficialCheckpoint] = {
    c.filename: c
    for c in (
        OfficialCheckpoint(
            "vit_b", "sam_vit_b_01ec64.pth",
            "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", 375_042_383,
        ),
        OfficialCheckpoint(
            "vit_l", "sam_vit_l_0b3195.pth",
            "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        ),
        OfficialCheckpoint(
            "vit_h", "sam_vit_h_4b8939.pth",
            "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", 2_564_550_879,
        ),
    )
}


def official_checkpoint(model_type: str) -> OfficialCheckpoint | None:
    for c in OFFICIAL_CHECKPOINTS.values():
        if c.model_type == model_type:
            return c
    return None


def _hash_cache_path() -> Path:
    from ..hub import samadapt_home

    return samadapt_home() / "sha256-cache.json"


def file_sha256(path: str | os.PathLike, *, use_cache: bool = True) -> str:
    """sha256 of a file, hex. Results are cached by (path, size, mtime) so a 2.5 GB ViT-H file
    is hashed once, not on every load."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    cache_file = _hash_cache_path() if use_cache else None
    cache: dict[str, str] = {}
    if cache_file is not None and cache_file.is_file():
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}
        if key in cache:
            return cache[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if cache_file is not None:
        cache[key] = digest
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(cache))
            os.replace(tmp, cache_file)
        except OSError:
            pass  # the cache is an optimisation only
    return digest


def remap_state_dict(state: Mapping) -> dict[str, torch.Tensor]:
    """Bring a SAM state dict saved by another codebase to upstream ``Sam`` keys.

    Handles the wrappers people save: ``{"model": sd}`` / ``{"state_dict": sd}``, the ``module.``
    prefix of DDP and the ``model.`` / ``sam.`` prefixes of Lightning-style modules. The official
    files need none of this and pass through unchanged.
    """
    for wrapper in ("model", "state_dict"):
        if wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for prefix in ("module.", "model.", "sam."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a SAM-format checkpoint with ``weights_only=True`` (no pickled code runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise CheckpointError(
            f"could not read checkpoint {str(path)!r} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "is the file truncated or not a torch.save state dict? Download it again."
        ) from None
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds a {type(state).__name__}, not a state dict"
        )
    return remap_state_dict(state)


def _guess_model_type(state: Mapping[str, torch.Tensor]) -> str | None:
    from .registry import MODEL_TYPES

    pe = state.get("image_encoder.pos_embed")
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    if pe is None:
        return None
    for name, card in MODEL_TYPES.items():
        if pe.shape[-1] == card.encoder_embed_dim and depth == card.encoder_depth:
            return name
    return None


def load_state_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], *, model_type: str, source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists what differs and what the file is."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:
        guess = _guess_model_type(state)
        hint = (
            f" The file looks like a {guess!r} checkpoint: build with model_type={guess!r}."
            if guess and guess != model_type
            else " Check that the file is a SAM checkpoint of this model type."
        )

        def few(xs: list[str]) -> str:
            return ", ".join(xs[:5]) + (f" (+{len(xs) - 5} more)" if len(xs) > 5 else "")

        raise CheckpointError(
            f"checkpoint {source!r} does not fit model type {model_type!r}: "
            f"{len(missing)} missing keys [{few(missing)}], {len(unexpected)} unexpected keys "
            f"[{few(unexpected)}], {len(shapes)} shape mismatches [{few(shapes)}].{hint}"
        )
    module.load_state_dict(state, strict=True)

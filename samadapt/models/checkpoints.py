"""SAM checkpoint files: the official ones, hashing, reading and key remapping.

File I/O only: this module knows nothing of model types beyond the names of the official files
(strict loading into a model, and guessing a file's model type, sit beside the registry in
:mod:`samadapt.models.registry`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from ..errors import CheckpointError
from ..files import atomic_write_text
from ..paths import hash_cache_file

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
            "vit_b",
            "sam_vit_b_01ec64.pth",
            "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            375_042_383,
        ),
        OfficialCheckpoint(
            "vit_l",
            "sam_vit_l_0b3195.pth",
            "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        ),
        OfficialCheckpoint(
            "vit_h",
            "sam_vit_h_4b8939.pth",
            "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            2_564_550_879,
        ),
    )
}


def official_checkpoint(model_type: str) -> OfficialCheckpoint | None:
    for c in OFFICIAL_CHECKPOINTS.values():
        if c.model_type == model_type:
            return c
    return None


def file_sha256(path: str | os.PathLike, *, use_cache: bool = True) -> str:
    """sha256 of a file, hex. Results are cached by (path, size, mtime) so a 2.5 GB ViT-H file
    is hashed once, not on every load."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    cache_file = hash_cache_file() if use_cache else None
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
            atomic_write_text(cache_file, json.dumps(cache))
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
                key = key[len(prefix) :]
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
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(state).__name__}, not a state dict")
    return remap_state_dict(state)

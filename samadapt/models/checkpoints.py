"""SAM checkpoint files: the official ones and their download, finding a base by its sha256,
hashing, reading and key remapping.

File I/O only: this module knows nothing of model types beyond the names of the official files
(strict loading into a model, and guessing a file's model type, sit beside the registry in
:mod:`samadapt.models.registry`).
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from ..errors import CheckpointError, CheckpointNotFoundError, UnknownNameError
from ..files import atomic_write, atomic_write_text
from ..paths import checkpoints_dir, hash_cache_file

# Full sha256 of the official files (the suffix of each file name is NOT a prefix of its sha256).
# Values as published by several independent projects that verify these downloads.
OFFICIAL_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"


@dataclass(frozen=True)
class OfficialCheckpoint:
    model_type: str
    filename: str
    sha256: str
    size_bytes: int | None = None
    base_url: str = OFFICIAL_BASE_URL  # Meta's download folder of the file's family

    @property
    def url(self) -> str:
        return self.base_url + self.filename


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
    """The official file of ``model_type`` (SAM 1 or SAM 2.1), or None."""
    return downloadable_checkpoints().get(model_type)


def downloadable_checkpoints() -> dict[str, OfficialCheckpoint]:
    """model type -> its official file, of both families: SAM 1's table above and the SAM 2.1 cards
    (:mod:`samadapt.models.sam2_family.cards`), what ``samadapt download-checkpoint`` offers."""
    from .sam2_family.cards import OFFICIAL_BASE_URL as SAM2_BASE_URL
    from .sam2_family.cards import SAM2_MODEL_TYPES

    out = {c.model_type: c for c in OFFICIAL_CHECKPOINTS.values()}
    for card in SAM2_MODEL_TYPES.values():
        if card.checkpoint and card.sha256:
            out[card.name] = OfficialCheckpoint(card.name, card.checkpoint, card.sha256, card.size_bytes, SAM2_BASE_URL)
    return out


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
        for f in sorted([*checkpoints_dir().glob("*.pth"), *checkpoints_dir().glob("*.pt")]):
            if file_sha256(f) == want:
                return f
    raise CheckpointNotFoundError(
        f"the adapter needs a {model_type} base checkpoint with sha256 {want}, not found in "
        f"{checkpoints_dir()}; pass checkpoint=<path to that file>"
    )


def download_checkpoint(
    model_type: str,
    *,
    url: str | None = None,
    directory: str | os.PathLike | None = None,
    progress: bool = True,
    sha256: str | None = None,
) -> Path:
    """Download the official checkpoint of ``model_type`` (SAM 1 or SAM 2.1) into
    ``SAMADAPT_HOME/checkpoints`` with a progress bar, verify its sha256, and only then move it into
    place."""
    from tqdm.auto import tqdm

    offered = downloadable_checkpoints()
    official = offered.get(model_type)
    if official is None:
        raise UnknownNameError(f"model type {model_type!r} has no official checkpoint; choose one of {sorted(offered)}")
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

"""Build SAM 2.1 models from Meta's ``sam2`` package and load official-format checkpoints.

``build_sam2_model`` calls upstream ``sam2.build_sam.build_sam2`` (Hydra config composition and
instantiation, with its default ``apply_postprocessing=True``: the single-mask output falls back to
the best multimask output when unstable, in eval mode only) with no weights, then loads the file
itself: strictly, with an error that lists what differs and names the model type the file looks
like, after checking an official file's sha256 (``samadapt.models.checkpoints`` reads and hashes;
the rule is docs/checkpoints.md's, as for SAM 1).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import torch

from ...errors import CheckpointError, ConfigError
from ..checkpoints import file_sha256, read_checkpoint
from ..registry import BaseInfo, load_state_strict
from .cards import SAM2_MODEL_TYPES, Sam2Card, get_sam2_card, sam2_card_for_file

if TYPE_CHECKING:
    from sam2.modeling.sam2_base import SAM2Base

#: the two commands that install Meta's package (PyPI's ``sam2`` 1.1.0 is an sdist whose build
#: imports torch, so pip's isolated build environment cannot build it)
INSTALL_HINT = 'pip install torch torchvision && SAM2_BUILD_CUDA=0 pip install --no-build-isolation "sam2==1.1.0"'


def require_sam2() -> None:
    """Import Meta's ``sam2`` package, or raise an error that says how to install it."""
    try:
        import sam2.build_sam  # noqa: F401
    except ImportError as e:
        raise ConfigError(
            f"SAM 2.1 models need Meta's `sam2` package, which is not installed ({e}). Install it with\n"
            f"    {INSTALL_HINT}\n"
            "(torch first: the sam2 sdist's build imports it; SAM2_BUILD_CUDA=0 skips its optional CUDA "
            "extension). Then `pip install samadapt[sam2]` finds it in place."
        ) from None


def build_sam2_architecture(card: Sam2Card, device: str | torch.device = "cpu") -> SAM2Base:
    """The card's architecture with upstream's random initialisation, in eval mode."""
    require_sam2()
    from sam2.build_sam import build_sam2

    return build_sam2(
        card.config, ckpt_path=None, device=str(device), mode="eval", hydra_overrides_extra=list(card.overrides)
    )


def build_sam2_model(
    model_type: str,
    checkpoint: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
) -> SAM2Base:
    """Build a SAM 2.1 model of a registered type, in eval mode, on ``device``.

    Args:
        model_type: ``sam2.1_hiera_tiny``, ``_small``, ``_base_plus``, ``_large`` or ``_test``.
        checkpoint: a file in SAM 2.1's official format (``{"model": state_dict}``, as
            ``sam2.1_hiera_*.pt`` and what ``build_sam2(cfg, ckpt_path=...)`` reads). Loaded strictly.
            An official file name has its sha256 checked; any other name loads and its sha256
            becomes the base id. None: upstream's random initialisation (base id ``random:<type>``).

    The model carries a :class:`samadapt.models.BaseInfo` as ``model.samadapt_base``.
    """
    card = get_sam2_card(model_type)
    model = build_sam2_architecture(card, "cpu")
    if checkpoint is None:
        info = BaseInfo(model_type, f"random:{model_type}", None)
    else:
        checkpoint = Path(checkpoint)
        digest = _check_official_file(checkpoint, model_type)
        state = read_checkpoint(checkpoint)
        load_sam2_state(model, state, model_type=model_type, source=str(checkpoint))
        info = BaseInfo(model_type, f"sha256:{digest}", str(checkpoint))
    model = model.to(device).eval()
    model.samadapt_base = info
    return model


def _check_official_file(path: Path, model_type: str) -> str | None:
    """sha256 of ``path`` (None if it is not a file); an official name must match its model type
    and its published sha256. Hashing comes before unpickling, so a truncated download fails here
    with the download command rather than with an unpickling error."""
    official = sam2_card_for_file(path.name)
    if official is not None and official.name != model_type:
        raise CheckpointError(
            f"{path.name!r} is the official {official.name!r} checkpoint, but model type {model_type!r} "
            f"was asked for: use model_type={official.name!r}"
        )
    digest = file_sha256(path) if path.is_file() else None
    if official is not None and official.sha256 and digest is not None and digest != official.sha256:
        raise CheckpointError(
            f"{str(path)!r} has sha256 {digest}, but the official {official.checkpoint} has {official.sha256}: "
            f"the download is corrupt or incomplete. Delete it and download it again from {official.url}."
        )
    return digest


def load_sam2_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor], *, model_type: str, source: str) -> None:
    """Strict ``load_state_dict``; on a mismatch the error also names the SAM 2.1 type the file fits."""
    try:
        load_state_strict(model, state, model_type=model_type, source=source)
    except CheckpointError as e:
        guess = guess_sam2_model_type(state)
        if guess is None or guess == model_type:
            raise
        raise CheckpointError(f"{e} The file is a {guess!r} checkpoint: build with model_type={guess!r}.") from None


def guess_sam2_model_type(state: Mapping[str, torch.Tensor]) -> str | None:
    """The registered SAM 2.1 type whose parameter names and shapes are exactly those of ``state``."""
    got = {k: tuple(v.shape) for k, v in state.items()}
    for name in SAM2_MODEL_TYPES:
        if _state_shapes(name) == got:
            return name
    return None


@lru_cache(maxsize=None)
def _state_shapes(model_type: str) -> dict[str, tuple[int, ...]]:
    """Parameter and buffer shapes of a model type, from a weightless build (accelerate's
    ``init_empty_weights``: upstream's Hiera calls ``.item()`` in its constructor, so the meta
    device alone cannot build it)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = build_sam2_architecture(get_sam2_card(model_type), "meta")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}

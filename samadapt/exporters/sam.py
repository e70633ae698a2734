"""The ``sam`` format: a plain SAM state dict, and the folding every other format starts from.

An adapted model becomes plain upstream SAM weights when every module its strategy added folds into
SAM's own parameters (the strategy folds them: :meth:`samadapt.strategies.Strategy.merged_state_dict`):
LoRA and DoRA do (peft's merge into each ``nn.Linear``), a trained
mask decoder or a fully fine-tuned model already are SAM weights. Modules that compute something SAM
has no parameter for (the ``adapter`` strategy's bottlenecks and prompt generator) do not fold;
:func:`added_parameters` names them, and the formats that cannot carry them refuse the model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from segment_anything.modeling import Sam

from ..adapted import AdaptedSam
from ..models.registry import build_sam_architecture, load_state_strict
from ..strategies.base import get_strategy


def merged_state_dict(model: AdaptedSam) -> dict[str, torch.Tensor]:
    """``model.sam``'s weights with every module its strategy added folded in where it folds, as
    fresh float32 CPU tensors under upstream names (``...attn.qkv.weight``, not
    ``...qkv.base_layer.weight``): :meth:`samadapt.strategies.Strategy.merged_state_dict`.

    Parameters of modules that do not fold (adapter blocks) are kept under their own names, so
    :func:`added_parameters` can name them. The model is not changed.
    """
    return get_strategy(model.strategy).merged_state_dict(model.sam, model.config)


def reference_keys(model: AdaptedSam) -> set[str]:
    """The state-dict keys of an unadapted upstream ``Sam`` of ``model``'s architecture (for the
    official types exactly ``segment_anything.sam_model_registry[type]()``'s keys)."""
    with torch.device("meta"):
        return set(build_sam_architecture(model.card).state_dict())


def added_parameters(model: AdaptedSam) -> list[str]:
    """Names of ``model``'s tensors that do not fold into SAM's weights (empty for ``decoder``,
    ``lora`` and ``full``; the bottlenecks and prompt generator for ``adapter``)."""
    return sorted(set(merged_state_dict(model)) - reference_keys(model))


def plain_state_dict(model: AdaptedSam) -> dict[str, torch.Tensor]:
    """The folded weights with exactly the keys of an upstream ``Sam`` of this architecture.
    The caller has checked :func:`added_parameters` is empty."""
    state = merged_state_dict(model)
    want = reference_keys(model)
    if set(state) != want:  # an internal invariant: export() refuses such models before this
        raise AssertionError(f"keys differ from upstream Sam: {sorted(set(state) ^ want)[:5]}")
    return state


def plain_sam(model: AdaptedSam) -> Sam:
    """A fresh upstream ``Sam`` (CPU, eval mode, upstream attention) holding ``model``'s folded weights."""
    sam = build_sam_architecture(model.card)
    load_state_strict(sam, plain_state_dict(model), model_type=model.model_type, source="the folded adapter")
    return sam.eval()


def write_sam(model: AdaptedSam, tmp: Path, metadata: dict) -> None:
    """``torch.save`` of :func:`plain_state_dict` to ``tmp``: a file that
    ``segment_anything.sam_model_registry[type](checkpoint=...)`` loads as it loads the official ones.
    (The format has no place for metadata; the dispatcher writes it beside the file.)"""
    torch.save(plain_state_dict(model), tmp)


def how_to_load(model_type: str, path: str | Path) -> str:
    """One line saying how to load a ``sam`` export of ``model_type`` at ``path``: upstream's
    ``sam_model_registry`` for the official types; ``mini`` (samadapt's own size) is not in it, so
    ``samadapt.build_sam`` builds its upstream ``Sam``."""
    from segment_anything import sam_model_registry

    if model_type in sam_model_registry:
        return f"load it with segment_anything.sam_model_registry[{model_type!r}](checkpoint={str(path)!r})"
    return (
        f"{model_type!r} is not in segment_anything's sam_model_registry: load it with "
        f"samadapt.build_sam({model_type!r}, {str(path)!r}), an upstream segment_anything Sam (SamPredictor, "
        f"SamAutomaticMaskGenerator take it)"
    )

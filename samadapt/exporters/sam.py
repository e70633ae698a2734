"""The ``sam`` format: a plain SAM state dict, and the folding every other format starts from.

An adapted model becomes plain upstream SAM weights when every module its strategy added folds into
SAM's own parameters (the strategy folds them: :meth:`samadapt.strategies.Strategy.merged_state_dict`):
LoRA and DoRA do (peft's merge into each ``nn.Linear``), a trained
mask decoder or a fully fine-tuned model already are SAM weights. Modules that compute something SAM
has no parameter for (the ``adapter`` strategy's bottlenecks and prompt generator) do not fold;
:func:`added_parameters` names them, and the formats that cannot carry them refuse the model.

Both model families fold the same way (the strategies' folding does not depend on the family); the
upstream key set, the plain model and the file layout are the family's: SAM 1's ``Sam`` state dict,
or SAM 2.1's ``SAM2Base`` written by :func:`samadapt.exporters.sam2_checkpoint.write_sam2_checkpoint`
(``{"model": state_dict}``, what ``sam2.build_sam.build_sam2(config, ckpt_path=...)`` loads).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from segment_anything.modeling import Sam
from torch import nn

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
    """The state-dict keys of an unadapted upstream model of ``model``'s architecture (for the
    official SAM 1 types exactly ``segment_anything.sam_model_registry[type]()``'s keys; for SAM 2.1
    those of ``build_sam2(config)``'s ``SAM2Base``, video modules included)."""
    if model.family.name == "sam":
        with torch.device("meta"):
            return set(build_sam_architecture(model.card).state_dict())
    return set(_sam2_reference_keys(model.model_type))


@lru_cache(maxsize=None)
def _sam2_reference_keys(model_type: str) -> frozenset[str]:
    """A SAM 2.1 type's state-dict keys (a weightless Hydra build costs a second or two: once per type)."""
    from ..models.family import family_for_type

    return frozenset(family_for_type(model_type).architecture(model_type).state_dict())


def added_parameters(model: AdaptedSam) -> list[str]:
    """Names of ``model``'s tensors that do not fold into SAM's weights (empty for ``decoder``,
    ``lora`` and ``full``; the bottlenecks and prompt generator for ``adapter``)."""
    return sorted(set(merged_state_dict(model)) - reference_keys(model))


def plain_state_dict(model: AdaptedSam) -> dict[str, torch.Tensor]:
    """The folded weights with exactly the keys of an upstream model of this architecture (``Sam``
    or ``SAM2Base``). The caller has checked :func:`added_parameters` is empty."""
    state = merged_state_dict(model)
    want = reference_keys(model)
    if set(state) != want:  # an internal invariant: export() refuses such models before this
        raise AssertionError(f"keys differ from upstream {model.family.label}: {sorted(set(state) ^ want)[:5]}")
    return state


def plain_sam(model: AdaptedSam) -> Sam:
    """A fresh upstream ``Sam`` (CPU, eval mode, upstream attention) holding ``model``'s folded weights."""
    sam = build_sam_architecture(model.card)
    load_state_strict(sam, plain_state_dict(model), model_type=model.model_type, source="the folded adapter")
    return sam.eval()


def plain_model(model: AdaptedSam) -> nn.Module:
    """A fresh upstream model of ``model``'s family holding its folded weights (CPU, eval mode): SAM 1's
    :func:`plain_sam`, or a ``SAM2Base`` built by upstream ``build_sam2`` from the card's config."""
    if model.family.name == "sam":
        return plain_sam(model)
    from ..models.sam2_family.build import build_sam2_architecture, load_sam2_state

    plain = build_sam2_architecture(model.card, "cpu")
    # strict: the keys are checked by the load itself (plain_state_dict's check would build a second model)
    load_sam2_state(plain, merged_state_dict(model), model_type=model.model_type, source="the folded adapter")
    return plain.eval()


def write_sam(model: AdaptedSam, tmp: Path, metadata: dict) -> None:
    """SAM 1: ``torch.save`` of :func:`plain_state_dict` to ``tmp``, a file that
    ``segment_anything.sam_model_registry[type](checkpoint=...)`` loads as it loads the official ones.
    SAM 2.1: :func:`~samadapt.exporters.sam2_checkpoint.write_sam2_checkpoint` of :func:`plain_model`,
    ``{"model": state_dict}`` as Meta's files, which ``sam2.build_sam.build_sam2`` loads strictly.
    (The format has no place for metadata; the dispatcher writes it beside the file.)"""
    if model.family.name == "sam":
        torch.save(plain_state_dict(model), tmp)
        return
    from .sam2_checkpoint import write_sam2_checkpoint

    write_sam2_checkpoint(plain_model(model), tmp, metadata)


def how_to_load(model_type: str, path: str | Path) -> str:
    """One line saying how to load a ``sam`` export of ``model_type`` at ``path``: upstream's
    ``sam_model_registry`` for the official types; ``mini`` (samadapt's own size) is not in it, so
    ``samadapt.build_sam`` builds its upstream ``Sam``. SAM 2.1 types: upstream ``build_sam2`` with
    the card's config (and its Hydra overrides, for a type that is not an official architecture)."""
    from segment_anything import sam_model_registry

    from ..models.family import family_for_type

    if family_for_type(model_type).name == "sam2":
        card = family_for_type(model_type).card(model_type)
        overrides = f", hydra_overrides_extra={list(card.overrides)!r}" if card.overrides else ""
        return (
            f"load it with sam2.build_sam.build_sam2({card.config!r}, ckpt_path={str(path)!r}, device='cpu'"
            f"{overrides}); SAM2ImagePredictor and SAM2AutomaticMaskGenerator take the model it returns"
        )
    if model_type in sam_model_registry:
        return f"load it with segment_anything.sam_model_registry[{model_type!r}](checkpoint={str(path)!r})"
    return (
        f"{model_type!r} is not in segment_anything's sam_model_registry: load it with "
        f"samadapt.build_sam({model_type!r}, {str(path)!r}), an upstream segment_anything Sam (SamPredictor, "
        f"SamAutomaticMaskGenerator take it)"
    )

"""Model families: what the strategies and ``AdaptedSam`` ask of a model, answered once per family.

SAM 1 (``segment_anything``'s ``Sam``: ``vit_b`` ... ``mini``) and SAM 2.1 (Meta's ``SAM2Base``:
``sam2.1_hiera_*``) name their modules differently and run different forwards. A
:class:`ModelFamily` answers, for its models (docs/sam2.md, "Plan for phase 2", step 1):

- ``card`` / ``build`` / ``architecture`` (weightless, for names and shapes): the model types;
- ``transform`` / ``encode`` / ``decode``: pre- and postprocessing and the differentiable forward
  (``encode`` gives the family's features: SAM 1's embedding tensor, SAM 2.1's ``Sam2Features``);
- ``parts``: the module groups the strategies name (:class:`ModelParts`), and the short LoRA target
  names as module-path regexes (:meth:`ModelFamily.short_target_regex`).

:func:`family_of` finds a model's family, :func:`family_for_type` a model type's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, ContextManager

import torch
from segment_anything.modeling import Sam
from torch import nn

from ..errors import ConfigError, UnknownNameError
from .decoding import decode_masks
from .registry import MODEL_TYPES, build_sam, build_sam_architecture, get_model_card
from .sam2_family import (
    SAM2_MODEL_TYPES,
    Sam2Features,
    build_sam2_model,
    decode_prompts,
    encode_images,
    get_sam2_card,
)
from .sam2_family.build import build_sam2_architecture
from .sam2_family.predict import MASK_THRESHOLD, transform_for


@dataclass(frozen=True)
class ModelParts:
    """The module groups of one model that strategies name.

    image_encoder / prompt_encoder / mask_decoder: the three modules of the image path;
    encoder_blocks: the image encoder's transformer blocks, with ``block_dims`` the width of each
    block's output (a ViT's is constant; Hiera's doubles per stage); cache_side: names of the
    parameters an embedding cache of the image encoder is computed with besides the encoder
    (SAM 2.1's ``conv_s0`` / ``conv_s1`` / ``no_mem_embed``): no strategy with a frozen encoder trains
    them; unused: names of the parameters the image path never reads (SAM 2.1's video modules),
    never trainable.
    """

    image_encoder: nn.Module
    prompt_encoder: nn.Module
    mask_decoder: nn.Module
    encoder_blocks: nn.ModuleList
    block_dims: tuple[int, ...]
    cache_side: frozenset[str] = frozenset()
    unused: frozenset[str] = frozenset()
    mask_decoder_path: str = "mask_decoder"

    def decoder_parameters(self) -> list[nn.Parameter]:
        """The mask decoder's parameters that train with it (those on the cache's side excluded)."""
        return [
            p for n, p in self.mask_decoder.named_parameters() if f"{self.mask_decoder_path}.{n}" not in self.cache_side
        ]


class ModelFamily:
    """One family of models; subclasses answer for theirs (see the module docstring)."""

    name: ClassVar[str]
    label: ClassVar[str]  # in messages: "SAM 1", "SAM 2.1"
    #: first components of the image path's module names (where LoRA patterns may point)
    roots: ClassVar[tuple[str, ...]]
    #: the roots outside the image encoder (LoRA there leaves the encoder frozen)
    decoder_roots: ClassVar[tuple[str, ...]]
    #: dotted path of the image encoder's blocks, and each short LoRA target as a regex inside a block
    blocks_path: ClassVar[str]
    lora_targets: ClassVar[dict[str, str]]
    builder: ClassVar[str]  # the function that builds a base, for messages
    #: whether samadapt.models.fast / decoding's fast paths (SDPA, checkpointing, shared decoding) apply
    fast_paths: ClassVar[bool] = False

    def owns(self, model: nn.Module) -> bool:
        raise NotImplementedError

    def types(self) -> dict[str, Any]:
        raise NotImplementedError

    def card(self, model_type: str):
        raise NotImplementedError

    def build(self, model_type: str, checkpoint=None) -> nn.Module:
        raise NotImplementedError

    def weightless(self) -> ContextManager:
        """A context in which modules are built without memory (parameters on the meta device)."""
        return torch.device("meta")

    def architecture(self, model_type: str) -> nn.Module:
        """A weightless build (parameters on the meta device): names and shapes only. Strategies
        applied to it inside :meth:`weightless` add weightless parameters too."""
        raise NotImplementedError

    def parts(self, model: nn.Module) -> ModelParts:
        raise NotImplementedError

    def transform(self, model: nn.Module):
        """The model's pre- and postprocessing. SAM 1's ``SamTransform`` lives in
        ``samadapt.transforms``, on this floor beside ``models``, so ``AdaptedSam`` builds that one."""
        raise NotImplementedError

    def encode(self, model: nn.Module, images: torch.Tensor):
        raise NotImplementedError

    def decode(self, model, features, image_index, *, points, labels, boxes, mask_inputs, multimask, chunk):
        """(logits (N, M, S/4, S/4), iou (N, M)) of N prompts, decoded ``chunk`` prompts at a time."""
        raise NotImplementedError

    def embedding(self, features) -> torch.Tensor:
        """The (B, C, S/16, S/16) image embedding of ``features`` (its size, device and dtype)."""
        raise NotImplementedError

    def stack(self, items: list):
        """Per-image features (no batch dimension) -> the batch's, as ``torch.stack`` stacks tensors."""
        raise NotImplementedError

    def embedding_shape(self, model: nn.Module) -> tuple[int, int, int]:
        """(C, h, w) of one image's embedding (SAM 2.1: of its ``image_embed``)."""
        pe = self.parts(model).prompt_encoder
        return (int(pe.embed_dim), *(int(s) for s in pe.image_embedding_size))

    def dtype(self, model: nn.Module) -> torch.dtype:
        raise NotImplementedError

    def device(self, model: nn.Module) -> torch.device:
        raise NotImplementedError

    def mask_threshold(self, model: nn.Module) -> float:
        raise NotImplementedError

    def short_target_regex(self, targets) -> str:
        """The peft ``target_modules`` regex of short LoRA target names (``qkv``, ``proj``, ``mlp``)."""
        blocks = self.blocks_path.replace(".", r"\.")
        return blocks + r"\.\d+\.(" + "|".join(self.lora_targets[t] for t in targets) + ")"

    def build_hint(self, model_type: str) -> str:
        return f"{self.builder}({model_type!r}, ...)"


class Sam1Family(ModelFamily):
    """Upstream ``segment_anything``'s ``Sam`` (``vit_b``, ``vit_l``, ``vit_h``, ``mini``)."""

    name = "sam"
    label = "SAM 1"
    roots = ("image_encoder", "prompt_encoder", "mask_decoder")
    decoder_roots = ("mask_decoder", "prompt_encoder")
    blocks_path = "image_encoder.blocks"
    lora_targets = {"qkv": r"attn\.qkv", "proj": r"attn\.proj", "mlp": r"mlp\.lin[12]"}
    builder = "build_sam"
    fast_paths = True

    def owns(self, model: nn.Module) -> bool:
        return isinstance(model, Sam)

    def types(self) -> dict[str, Any]:
        return MODEL_TYPES

    def card(self, model_type: str):
        return get_model_card(model_type)

    def build(self, model_type: str, checkpoint=None) -> nn.Module:
        return build_sam(model_type, checkpoint)

    def architecture(self, model_type: str) -> nn.Module:
        with self.weightless():
            return build_sam_architecture(get_model_card(model_type))

    def parts(self, model: nn.Module) -> ModelParts:
        enc = model.image_encoder
        dims = (enc.patch_embed.proj.out_channels,) * len(enc.blocks)
        return ModelParts(enc, model.prompt_encoder, model.mask_decoder, enc.blocks, dims)

    def encode(self, model: nn.Module, images: torch.Tensor):
        return model.image_encoder(images)

    def decode(self, model, features, image_index, *, points, labels, boxes, mask_inputs, multimask, chunk):
        image_pe = model.prompt_encoder.get_dense_pe()
        logits, ious = [], []
        for start in range(0, image_index.numel(), chunk):
            sl = slice(start, start + chunk)
            sparse, dense = model.prompt_encoder(
                points=(points[sl], labels[sl]) if points is not None else None,
                boxes=boxes[sl] if boxes is not None else None,
                masks=mask_inputs[sl] if mask_inputs is not None else None,
            )
            lo, iou = decode_masks(
                model.mask_decoder, features, image_pe, sparse, dense, image_index[sl], multimask=multimask
            )
            logits.append(lo)
            ious.append(iou)
        return torch.cat(logits), torch.cat(ious)

    def embedding(self, features) -> torch.Tensor:
        return features

    def stack(self, items: list):
        return torch.stack(list(items))

    def dtype(self, model: nn.Module) -> torch.dtype:
        return model.pixel_mean.dtype

    def device(self, model: nn.Module) -> torch.device:
        return model.pixel_mean.device

    def mask_threshold(self, model: nn.Module) -> float:
        return model.mask_threshold


#: SAM2Base's modules on the image path (everything else serves video: memory attention, memory
#: encoder, object pointers, ...)
SAM2_IMAGE_PATH = ("image_encoder", "sam_prompt_encoder", "sam_mask_decoder", "no_mem_embed")
SAM2_CACHE_SIDE = frozenset(
    {f"sam_mask_decoder.conv_s{i}.{w}" for i in (0, 1) for w in ("weight", "bias")} | {"no_mem_embed"}
)


class Sam2Family(ModelFamily):
    """Meta's ``sam2`` ``SAM2Base`` used on images (``sam2.1_hiera_*``; docs/sam2.md)."""

    name = "sam2"
    label = "SAM 2.1"
    roots = ("image_encoder", "sam_prompt_encoder", "sam_mask_decoder")
    decoder_roots = ("sam_mask_decoder", "sam_prompt_encoder")
    blocks_path = "image_encoder.trunk.blocks"
    lora_targets = {"qkv": r"attn\.qkv", "proj": r"attn\.proj", "mlp": r"mlp\.layers\.[01]"}
    builder = "build_sam2_model"

    def owns(self, model: nn.Module) -> bool:
        return hasattr(model, "sam_mask_decoder") and hasattr(model, "sam_prompt_encoder")

    def types(self) -> dict[str, Any]:
        return SAM2_MODEL_TYPES

    def card(self, model_type: str):
        return get_sam2_card(model_type)

    def build(self, model_type: str, checkpoint=None) -> nn.Module:
        return build_sam2_model(model_type, checkpoint)

    def weightless(self) -> ContextManager:
        # upstream's Hiera calls .item() in its constructor: the meta device alone cannot build it
        from accelerate import init_empty_weights

        return init_empty_weights()

    def architecture(self, model_type: str) -> nn.Module:
        with self.weightless():
            return build_sam2_architecture(get_sam2_card(model_type), "meta")

    def parts(self, model: nn.Module) -> ModelParts:
        blocks = model.image_encoder.trunk.blocks
        unused = frozenset(n for n, _ in model.named_parameters() if n.split(".")[0] not in SAM2_IMAGE_PATH)
        return ModelParts(
            model.image_encoder,
            model.sam_prompt_encoder,
            model.sam_mask_decoder,
            blocks,
            tuple(int(b.dim_out) for b in blocks),
            cache_side=SAM2_CACHE_SIDE,
            unused=unused,
            mask_decoder_path="sam_mask_decoder",
        )

    def transform(self, model: nn.Module):
        return transform_for(model)

    def encode(self, model: nn.Module, images: torch.Tensor):
        return encode_images(model, images)

    def decode(self, model, features, image_index, *, points, labels, boxes, mask_inputs, multimask, chunk):
        logits, ious = [], []
        for start in range(0, image_index.numel(), chunk):
            sl = slice(start, start + chunk)
            lo, iou = decode_prompts(
                model,
                features,
                image_index[sl],
                points=points[sl] if points is not None else None,
                labels=labels[sl] if labels is not None else None,
                boxes=boxes[sl] if boxes is not None else None,
                mask_inputs=mask_inputs[sl] if mask_inputs is not None else None,
                multimask=multimask,
            )
            logits.append(lo)
            ious.append(iou)
        return torch.cat(logits), torch.cat(ious)

    def embedding(self, features) -> torch.Tensor:
        return features.image_embed

    def stack(self, items: list):
        return Sam2Features.stack(list(items))

    def dtype(self, model: nn.Module) -> torch.dtype:
        return model.sam_prompt_encoder.no_mask_embed.weight.dtype

    def device(self, model: nn.Module) -> torch.device:
        return model.sam_prompt_encoder.no_mask_embed.weight.device

    def mask_threshold(self, model: nn.Module) -> float:
        return MASK_THRESHOLD


FAMILIES: tuple[ModelFamily, ...] = (Sam1Family(), Sam2Family())


def family_of(model: nn.Module) -> ModelFamily:
    """The family of a built model (a ``Sam`` or a ``SAM2Base``)."""
    for family in FAMILIES:
        if family.owns(model):
            return family
    raise UnknownNameError(
        f"a {type(model).__name__} is no model of a known family; samadapt adapts segment_anything's Sam "
        "(build_sam) and sam2's SAM2Base (build_sam2_model)"
    )


def family_for_type(model_type: str) -> ModelFamily:
    """The family whose registry holds ``model_type``."""
    for family in FAMILIES:
        if model_type in family.types():
            return family
    known = sorted(t for f in FAMILIES for t in f.types())
    raise UnknownNameError(f"unknown model type {model_type!r}; choose one of {known}")


def model_types() -> dict[str, Any]:
    """Every registered model type of every family, name -> card. Raises :class:`ConfigError`
    when two families register one name or tag (SAM 1's ``register_model_type`` checks only its
    own registry)."""
    check_unique_names()
    return {name: card for family in FAMILIES for name, card in family.types().items()}


def get_card(model_type: str):
    """The card of ``model_type``, a SAM 1 ``ModelCard`` or a SAM 2.1 ``Sam2Card``."""
    return family_for_type(model_type).card(model_type)


def build_model(model_type: str, checkpoint=None) -> nn.Module:
    """A base model of ``model_type`` (either family) in eval mode: SAM 1's ``build_sam`` or SAM
    2.1's ``build_sam2_model``, each loading ``checkpoint`` by docs/checkpoints.md's rules."""
    return family_for_type(model_type).build(model_type, checkpoint)


def model_type_for_tag(tag: str) -> str:
    """The model type whose short tag (adapter names: ``vith``, ``s21t``) is ``tag``."""
    for name, card in model_types().items():
        if card.tag == tag:
            return name
    tags = sorted(c.tag for c in model_types().values())
    raise UnknownNameError(f"unknown model tag {tag!r}; choose one of {tags}")


def check_unique_names() -> None:
    """Raise when two families register the same model-type name or tag (one namespace)."""
    names = [n for f in FAMILIES for n in f.types()]
    tags = [c.tag for f in FAMILIES for c in f.types().values()]
    for what, values in (("model type", names), ("tag", tags)):
        dup = sorted({v for v in values if values.count(v) > 1})
        if dup:
            raise ConfigError(f"{what} {dup} registered by more than one model family")


def all_roots() -> tuple[str, ...]:
    """Every family's image-path roots (what a LoRA module-path pattern may start with)."""
    return tuple(dict.fromkeys(r for f in FAMILIES for r in f.roots))


def decoder_roots() -> tuple[str, ...]:
    """Every family's roots outside the image encoder."""
    return tuple(dict.fromkeys(r for f in FAMILIES for r in f.decoder_roots))

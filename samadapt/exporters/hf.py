"""The ``hf`` format: a folder ``transformers.SamModel.from_pretrained`` and
``SamProcessor.from_pretrained`` load (``config.json``, ``model.safetensors`` with transformers' key
names, the processor's config), written by their own ``save_pretrained``.

The configuration and key names follow transformers' ``models/sam`` (``configuration_sam.py``,
``modeling_sam.py``) and its conversion script ``convert_sam_to_hf.py``; :func:`to_transformers_keys`
is samadapt's own mapping, checked by a strict load into ``SamModel``. ``SamConfig`` expresses every
registered model type, ``mini`` included (256 px input, 128-dim prompt encoder, window 8): only
sizes differ, and transformers' SAM reads them all from the config.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from ..adapted import AdaptedSam
from ..errors import ExportError
from ..files import atomic_write
from ..models.registry import ModelCard
from .sam import plain_state_dict

# (pattern, replacement) applied in order to every upstream key; a key no rule touches keeps its name
# (attn.qkv, attn.proj, rel_pos_*, mlp.lin*, the decoder's attention projections, embeddings, tokens)
_KEY_RULES: tuple[tuple[str, str], ...] = (
    (r"^image_encoder\.", "vision_encoder."),
    (r"^vision_encoder\.blocks\.", "vision_encoder.layers."),
    (r"^vision_encoder\.patch_embed\.proj\.", "vision_encoder.patch_embed.projection."),
    (r"^vision_encoder\.neck\.0\.", "vision_encoder.neck.conv1."),
    (r"^vision_encoder\.neck\.1\.", "vision_encoder.neck.layer_norm1."),
    (r"^vision_encoder\.neck\.2\.", "vision_encoder.neck.conv2."),
    (r"^vision_encoder\.neck\.3\.", "vision_encoder.neck.layer_norm2."),
    (r"^(vision_encoder\.layers\.\d+)\.norm([12])\.", r"\1.layer_norm\2."),
    (r"^(mask_decoder\.transformer\.layers\.\d+)\.norm([1-4])\.", r"\1.layer_norm\2."),
    (r"^mask_decoder\.transformer\.norm_final_attn\.", "mask_decoder.transformer.layer_norm_final_attn."),
    (r"^mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (r"^mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (r"^mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
    (r"^prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"^prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"^prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"^prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"^prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    (r"^prompt_encoder\.point_embeddings\.", "prompt_encoder.point_embed."),
    (
        r"^prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$",
        "prompt_encoder.shared_embedding.positional_embedding",
    ),
)
# upstream's MLP (layers.0 .. layers.{d-1}) is transformers' SamFeedForward (proj_in, layers.*, proj_out)
_MLP = re.compile(r"^(mask_decoder\.(?:iou_prediction_head|output_hypernetworks_mlps\.\d+))\.layers\.(\d+)\.(.+)$")


def to_transformers_keys(state: dict[str, torch.Tensor], *, mlp_depth: int = 3) -> dict[str, torch.Tensor]:
    """Upstream ``Sam`` state dict -> ``transformers.SamModel`` state dict (the same tensors).

    ``mlp_depth``: layers of the decoder's IoU head and hypernetwork MLPs (3 in every SAM). The
    positional-encoding matrix is also stored as ``shared_image_embedding.positional_embedding``,
    the copy ``SamModel`` ties to the prompt encoder's.
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        for pattern, replacement in _KEY_RULES:
            key = re.sub(pattern, replacement, key)
        mlp = _MLP.match(key)
        if mlp:
            prefix, index, rest = mlp.group(1), int(mlp.group(2)), mlp.group(3)
            layer = "proj_in" if index == 0 else "proj_out" if index == mlp_depth - 1 else f"layers.{index - 1}"
            key = f"{prefix}.{layer}.{rest}"
        out[key] = tensor
    out["shared_image_embedding.positional_embedding"] = out["prompt_encoder.shared_embedding.positional_embedding"]
    return out


def transformers_config(card: ModelCard):
    """The ``transformers.SamConfig`` of a model card (field names of ``configuration_sam.py``)."""
    from transformers import SamConfig

    vision = dict(
        hidden_size=card.encoder_embed_dim,
        output_channels=card.prompt_embed_dim,
        num_hidden_layers=card.encoder_depth,
        num_attention_heads=card.encoder_num_heads,
        image_size=card.image_size,
        patch_size=card.patch_size,
        window_size=card.window_size,
        global_attn_indexes=list(card.encoder_global_attn_indexes),
        mlp_ratio=4.0,
        num_pos_feats=card.prompt_embed_dim // 2,
        layer_norm_eps=1e-6,
    )
    prompt = dict(
        hidden_size=card.prompt_embed_dim,
        image_size=card.image_size,
        patch_size=card.patch_size,
        mask_input_channels=card.mask_in_chans,
        layer_norm_eps=1e-6,
    )
    decoder = dict(
        hidden_size=card.prompt_embed_dim,
        mlp_dim=card.decoder_mlp_dim,
        num_hidden_layers=2,
        num_attention_heads=card.decoder_num_heads,
        iou_head_depth=3,
        iou_head_hidden_dim=card.iou_head_hidden_dim,
        num_multimask_outputs=3,
    )
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def transformers_processor(card: ModelCard):
    """A ``SamProcessor`` for the card's input size: resize the longest side to S, pad to S x S, the
    mean / std SAM uses (ImageNet's, on 0..1 pixels: upstream's 0..255 values / 255)."""
    from transformers import SamImageProcessor, SamProcessor

    s, low = card.image_size, card.low_res_size
    image_processor = SamImageProcessor(
        size={"longest_edge": s},
        pad_size={"height": s, "width": s},
        mask_size={"longest_edge": low},
        mask_pad_size={"height": low, "width": low},
    )
    return SamProcessor(image_processor=image_processor)


def write_hf(model: AdaptedSam, folder: Path, metadata: dict[str, Any]) -> None:
    """Save the folded model with ``SamModel.save_pretrained`` (after a strict load of the remapped
    weights) and the processor with ``SamProcessor.save_pretrained``; the metadata goes into the
    safetensors header (``"samadapt"``) and ``config.json`` (``"samadapt"``).

    SAM 2.1: the folded ``SAM2Base`` (:func:`samadapt.exporters.sam.plain_model`) through
    :func:`samadapt.exporters.sam2_hf.write_sam2_hf` (``Sam2Model`` + ``Sam2Processor``), the
    metadata in the same two places."""
    from transformers import SamModel

    if model.family.name == "sam2":
        from .sam import plain_model
        from .sam2_hf import write_sam2_hf

        write_sam2_hf(plain_model(model), folder, metadata)
        stamp_safetensors(folder, metadata)
        return
    config = transformers_config(model.card)
    state = to_transformers_keys(plain_state_dict(model))
    with torch.device("meta"):  # the weights come from the state dict: skip the random initialisation
        hf_model = SamModel(config)
    expected = set(hf_model.state_dict())
    if set(state) != expected:
        raise ExportError(  # transformers changed its SAM layout: the mapping needs an update
            f"the remapped weights do not fit transformers' SamModel: missing {sorted(expected - set(state))[:5]}, "
            f"unexpected {sorted(set(state) - expected)[:5]}; samadapt.exporters.hf.to_transformers_keys needs updating"
        )
    hf_model.load_state_dict(state, strict=True, assign=True)
    hf_model.tie_weights()
    hf_model.eval()
    hf_model.config.samadapt = metadata
    hf_model.save_pretrained(str(folder), safe_serialization=True)
    transformers_processor(model.card).save_pretrained(str(folder))
    stamp_safetensors(folder, metadata)


def stamp_safetensors(folder: Path, metadata: dict[str, Any]) -> None:
    """Put ``metadata`` (JSON) under ``"samadapt"`` in the header of every ``model*.safetensors``
    that ``save_pretrained`` wrote into ``folder``."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    for weights in sorted(Path(folder).glob("model*.safetensors")):  # one file, or the shards of a big model
        with safe_open(str(weights), framework="pt") as f:
            header = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        header["samadapt"] = json.dumps(metadata, sort_keys=True, default=str)
        # atomic_write also gives the file the usual mode (safetensors writes 0600)
        atomic_write(weights, lambda tmp: save_file(tensors, tmp, metadata=header))

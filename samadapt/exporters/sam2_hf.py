"""The ``hf`` format for SAM 2.1: a folder ``transformers.Sam2Model`` and ``Sam2Processor`` read
(``config.json``, ``model.safetensors``, the processor's config), written by their own
``save_pretrained``.

Keys: :func:`to_transformers_sam2_keys` applies the rules of transformers' own conversion script
(``src/transformers/models/sam2/convert_sam2_to_hf.py``, ``replace_keys``: the same substring table,
in the same order, and the same MLP / neck / point-embedding fix-ups); the transformers wheel does
not ship the script, so the rules are restated here and checked by a load into ``Sam2Model`` whose
only leftovers may be the video modules ``Sam2Model`` itself declares ignorable.

Config: read from the upstream model object (Hiera widths, heads, stages, windows, global blocks,
neck channels, input size), so the four official types and the test variant all convert.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..errors import ExportError

# transformers' convert_sam2_to_hf.py KEYS_TO_MODIFY_MAPPING, in its order (each applied as a
# substring replacement to the key as modified so far)
KEYS_TO_MODIFY_MAPPING: tuple[tuple[str, str], ...] = (
    ("iou_prediction_head.layers.0", "iou_prediction_head.proj_in"),
    ("iou_prediction_head.layers.1", "iou_prediction_head.layers.0"),
    ("iou_prediction_head.layers.2", "iou_prediction_head.proj_out"),
    ("mask_decoder.output_upscaling.0", "mask_decoder.upscale_conv1"),
    ("mask_decoder.output_upscaling.1", "mask_decoder.upscale_layer_norm"),
    ("mask_decoder.output_upscaling.3", "mask_decoder.upscale_conv2"),
    ("mask_downscaling.0", "mask_embed.conv1"),
    ("mask_downscaling.1", "mask_embed.layer_norm1"),
    ("mask_downscaling.3", "mask_embed.conv2"),
    ("mask_downscaling.4", "mask_embed.layer_norm2"),
    ("mask_downscaling.6", "mask_embed.conv3"),
    ("dwconv", "depthwise_conv"),
    ("pwconv", "pointwise_conv"),
    ("fuser", "memory_fuser"),
    ("point_embeddings", "point_embed"),
    ("pe_layer.positional_encoding_gaussian_matrix", "shared_embedding.positional_embedding"),
    ("obj_ptr_tpos_proj", "temporal_positional_encoding_projection_layer"),
    ("no_obj_embed_spatial", "occlusion_spatial_embedding_parameter"),
    ("sam_prompt_encoder", "prompt_encoder"),
    ("sam_mask_decoder", "mask_decoder"),
    ("maskmem_tpos_enc", "memory_temporal_positional_encoding"),
    ("gamma", "scale"),
    ("image_encoder.neck", "vision_encoder.neck"),
    ("image_encoder", "vision_encoder.backbone"),
    ("neck.0", "neck.conv1"),
    ("neck.1", "neck.layer_norm1"),
    ("neck.2", "neck.conv2"),
    ("neck.3", "neck.layer_norm2"),
    ("pix_feat_proj", "feature_projection"),
    ("patch_embed.proj", "patch_embed.projection"),
    ("no_mem_embed", "no_memory_embedding"),
    ("no_mem_pos_enc", "no_memory_positional_encoding"),
    ("obj_ptr", "object_pointer"),
    (".norm", ".layer_norm"),
    ("trunk.", ""),
    ("out_proj", "o_proj"),
)
# (pattern on the renamed key, {layer number: replacement of "layers.<n>"}) as the script's regex fix-ups
_LAYER_FIXUPS: tuple[tuple[re.Pattern, int, dict[int, tuple[str, str]]], ...] = (
    (
        re.compile(r"vision_encoder.backbone.blocks.(\d+).mlp.layers.(\d+).*"),
        2,
        {0: ("layers.0", "proj_in"), 1: ("layers.1", "proj_out")},
    ),
    (
        re.compile(r"mask_decoder.transformer.layers.(\d+).mlp.layers.(\d+).*"),
        2,
        {0: ("mlp.layers.0", "mlp.proj_in"), 1: ("mlp.layers.1", "mlp.proj_out")},
    ),
    (
        re.compile(r"mask_decoder.pred_obj_score_head.layers.(\d+).*"),
        1,
        {0: ("layers.0", "proj_in"), 1: ("layers.1", "layers.0"), 2: ("layers.2", "proj_out")},
    ),
    (
        re.compile(r".*.output_hypernetworks_mlps.(\d+).layers.(\d+).*"),
        2,
        {0: ("layers.0", "proj_in"), 1: ("layers.1", "layers.0"), 2: ("layers.2", "proj_out")},
    ),
    (
        re.compile(r"object_pointer_proj.layers.(\d+).*"),
        1,
        {0: ("layers.0", "proj_in"), 1: ("layers.1", "layers.0"), 2: ("layers.2", "proj_out")},
    ),
)


def _rename(key: str) -> str:
    for old, new in KEYS_TO_MODIFY_MAPPING:
        if old in key:
            key = key.replace(old, new)
    for pattern, group, table in _LAYER_FIXUPS:
        match = re.match(pattern, key)
        if match and int(match.group(group)) in table:
            old, new = table[int(match.group(group))]
            key = key.replace(old, new)
    if re.match(r"vision_encoder.neck.convs.(\d+).conv", key):
        key = key.replace(".conv.", ".")
    if re.match(r"memory_encoder.o_proj.*", key):
        key = key.replace(".o_proj.", ".projection.")
    return key


def to_transformers_sam2_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Upstream ``SAM2Base`` state dict -> transformers ``Sam2Model`` names (the same tensors; the
    four point embeddings stacked into one, the positional matrix shared, as the script does)."""
    out = {_rename(k): v for k, v in state.items()}
    out["shared_image_embedding.positional_embedding"] = out["prompt_encoder.shared_embedding.positional_embedding"]
    out["prompt_encoder.point_embed.weight"] = torch.cat(
        [out.pop(f"prompt_encoder.point_embed.{i}.weight") for i in range(4)], dim=0
    )
    return out


def sam2_hf_config(model: torch.nn.Module) -> Any:
    """A ``transformers.Sam2Config`` describing ``model`` (a ``SAM2Base``)."""
    from transformers import (
        Sam2Config,
        Sam2HieraDetConfig,
        Sam2MaskDecoderConfig,
        Sam2PromptEncoderConfig,
        Sam2VisionConfig,
    )

    trunk, neck = model.image_encoder.trunk, model.image_encoder.neck
    ends = list(trunk.stage_ends)
    size = int(model.image_size)
    heads = [trunk.blocks[e].attn.num_heads for e in ends]
    backbone = Sam2HieraDetConfig(
        hidden_size=trunk.patch_embed.proj.out_channels,
        num_attention_heads=heads[0],
        image_size=[size, size],
        query_stride=list(trunk.q_stride),
        window_positional_embedding_background_size=list(trunk.window_pos_embed_bkg_spatial_size),
        num_query_pool_stages=len(trunk.q_pool_blocks),
        blocks_per_stage=[b - a for a, b in zip([-1, *ends[:-1]], ends)],
        embed_dim_per_stage=[trunk.blocks[e].dim_out for e in ends],
        num_attention_heads_per_stage=heads,
        window_size_per_stage=list(trunk.window_spec),
        global_attention_blocks=list(trunk.global_att_blocks),
    )
    stride = size // model.sam_image_embedding_size
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=list(neck.backbone_channel_list),
        backbone_feature_sizes=[[size // s, size // s] for s in (stride // 4, stride // 2, stride)],
        fpn_hidden_size=neck.d_model,
        fpn_top_down_levels=list(neck.fpn_top_down_levels),
        num_feature_levels=model.num_feature_levels,
    )
    decoder = model.sam_mask_decoder
    return Sam2Config(
        vision_config=vision,
        prompt_encoder_config=Sam2PromptEncoderConfig(
            hidden_size=model.sam_prompt_encoder.embed_dim, image_size=size, patch_size=stride
        ),
        mask_decoder_config=Sam2MaskDecoderConfig(
            hidden_size=decoder.transformer_dim,
            dynamic_multimask_via_stability=decoder.dynamic_multimask_via_stability,
            dynamic_multimask_stability_delta=decoder.dynamic_multimask_stability_delta,
            dynamic_multimask_stability_thresh=decoder.dynamic_multimask_stability_thresh,
        ),
    )


def sam2_hf_processor(image_size: int) -> Any:
    """``Sam2Processor`` for an S x S model: images resized to S x S, masks at S/4."""
    from transformers import Sam2ImageProcessor, Sam2Processor

    image_processor = Sam2ImageProcessor(
        size={"height": image_size, "width": image_size},
        mask_size={"height": image_size // 4, "width": image_size // 4},
    )
    return Sam2Processor(image_processor=image_processor, target_size=image_size)


def sam2_hf_model(model: torch.nn.Module) -> Any:
    """A ``transformers.Sam2Model`` holding ``model``'s weights (eval mode, CPU)."""
    from transformers import Sam2Model

    hf = Sam2Model(sam2_hf_config(model)).eval()
    state = to_transformers_sam2_keys({k: v.detach().float().cpu() for k, v in model.state_dict().items()})
    missing, unexpected = hf.load_state_dict(state, strict=False)
    ignorable = [re.compile(p) for p in Sam2Model._keys_to_ignore_on_load_unexpected]
    unexpected = [k for k in unexpected if not any(p.search(k) for p in ignorable)]
    if missing or unexpected:
        raise ExportError(
            f"the SAM 2.1 weights do not map onto transformers' Sam2Model: {len(missing)} missing "
            f"{sorted(missing)[:5]}, {len(unexpected)} unexpected {sorted(unexpected)[:5]}; this transformers "
            "version's Sam2Model differs from the one samadapt was tested with"
        )
    return hf


def write_sam2_hf(model: torch.nn.Module, folder: Path, metadata: dict | None = None) -> None:
    """``save_pretrained`` of :func:`sam2_hf_model` and :func:`sam2_hf_processor` into ``folder``;
    ``metadata``, where given, goes into ``config.json`` under ``"samadapt"``."""
    folder = Path(folder)
    hf = sam2_hf_model(model)
    if metadata is not None:
        hf.config.samadapt = metadata
    hf.save_pretrained(folder)
    sam2_hf_processor(int(model.image_size)).save_pretrained(folder)

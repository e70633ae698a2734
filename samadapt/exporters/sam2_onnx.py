"""The ``onnx`` format for SAM 2.1: an encoder / decoder pair with samexporter's SAM 2 interface
(the one AnyLabeling / X-AnyLabeling load), plus the single-mask outputs of samadapt's ``predict``.

Folder::

    encoder.onnx   image (1, 3, S, S) float32: the RGB image resized to S x S (aspect ratio not kept),
                   scaled to 0..1 and normalised with ImageNet's mean and std, i.e.
                   ``Sam2Transform.preprocess_image`` (``SAM2ImagePredictor``'s transform)
                   -> high_res_feats_0 (1, C/8, S/4, S/4), high_res_feats_1 (1, C/4, S/8, S/8),
                      image_embed (1, C, S/16, S/16)          (C = 256; S = 1024 for the official types)
    decoder.onnx   image_embed, high_res_feats_0, high_res_feats_1 (as the encoder gives them, batch 1),
                   point_coords (N, P, 2) float32 XY in the S x S input frame (x * S / W, y * S / H),
                   point_labels (N, P) float32 (1 foreground, 0 background, 2 / 3 box corners, -1 none),
                   mask_input (N, 1, S/4, S/4) float32, has_mask_input (N,) float32 (1 uses mask_input)
                   -> masks (N, 3, S/4, S/4) and iou_predictions (N, 3): the multimask outputs;
                      single_masks (N, 1, S/4, S/4) and single_iou_predictions (N, 1): the single-mask
                      output with upstream's stability fallback (``predict(multimask=False)``).
                   Masks are low-resolution logits clamped to [-32, 32] (mask = logits > 0); bring them
                   to the image with one bilinear resize to (H, W) (no padding to crop).
                   N and P are dynamic. A box is two points labelled 2 and 3 placed before the clicks,
                   as ``SAM2ImagePredictor`` builds it; the graph appends the padding point itself.

Both graphs run upstream modules (``forward_image``, ``_prepare_backbone_features``, the prompt
encoder's ``_embed_points`` and ``mask_downscaling``, ``sam_mask_decoder.predict_masks``); only the
no-mask switch is written out (``has * mask_embedding + (1 - has) * no_mask_embed``), so that one
graph serves both cases. Exported with torch's TorchScript-based exporter (``dynamo=False``), opset
17, as samadapt's SAM 1 pair and samexporter's.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from ..models.sam2_family.forward import encode_images

OPSET = 17
ENCODER, DECODER = "encoder.onnx", "decoder.onnx"
ENCODER_OUTPUTS = ["high_res_feats_0", "high_res_feats_1", "image_embed"]
DECODER_INPUTS = [
    "image_embed",
    "high_res_feats_0",
    "high_res_feats_1",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
]
DECODER_OUTPUTS = ["masks", "iou_predictions", "single_masks", "single_iou_predictions"]


class Sam2OnnxEncoder(nn.Module):
    """image (1, 3, S, S) -> (high_res_feats_0, high_res_feats_1, image_embed)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = encode_images(self.model, image)
        return feats.high_res[0], feats.high_res[1], feats.image_embed


class Sam2OnnxDecoder(nn.Module):
    """The decoder interface of the module docstring, on one image's features."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        image_embed: torch.Tensor,
        high_res_feats_0: torch.Tensor,
        high_res_feats_1: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        prompt_encoder, decoder = self.model.sam_prompt_encoder, self.model.sam_mask_decoder
        n = point_coords.shape[0]
        sparse = prompt_encoder._embed_points(point_coords, point_labels, pad=True)
        has = has_mask_input.reshape(-1, 1, 1, 1)
        no_mask = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = has * prompt_encoder.mask_downscaling(mask_input) + (1 - has) * no_mask
        dense = dense.expand(n, -1, *prompt_encoder.image_embedding_size)
        masks, iou, _, _ = decoder.predict_masks(
            image_embeddings=image_embed.expand(n, -1, -1, -1),
            image_pe=prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            repeat_image=False,
            high_res_features=[high_res_feats_0, high_res_feats_1],
        )
        single, single_iou = decoder._dynamic_multimask_via_stability(masks, iou)
        return (
            masks[:, 1:].clamp(-32.0, 32.0),
            iou[:, 1:],
            single.clamp(-32.0, 32.0),
            single_iou,
        )


def _export(
    module: nn.Module, inputs: dict[str, torch.Tensor], outputs: list[str], dynamic: dict, path: Path, metadata: dict
) -> None:
    import onnx

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        torch.onnx.export(
            module,
            tuple(inputs.values()),
            str(path),
            input_names=list(inputs),
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {"samadapt": json.dumps(metadata, sort_keys=True, default=str)})
    onnx.save_model(proto, str(path))


def write_sam2_onnx(model: nn.Module, folder: Path, metadata: dict | None = None) -> None:
    """Write ``encoder.onnx`` and ``decoder.onnx`` of a ``SAM2Base`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    metadata = metadata or {}
    training = model.training
    model.eval()
    size = int(model.image_size)
    device = model.sam_prompt_encoder.no_mask_embed.weight.device  # the dummy inputs go where the model is
    try:
        with torch.no_grad():
            image = torch.randn(1, 3, size, size, device=device)
            _export(Sam2OnnxEncoder(model), {"image": image}, ENCODER_OUTPUTS, {}, folder / ENCODER, metadata)
            high0, high1, embed = Sam2OnnxEncoder(model)(image)
            low = model.sam_prompt_encoder.mask_input_size
            inputs = {
                "image_embed": embed,
                "high_res_feats_0": high0,
                "high_res_feats_1": high1,
                "point_coords": torch.rand(2, 3, 2, device=device) * size,
                "point_labels": torch.tensor([[2.0, 3.0, 1.0], [1.0, 0.0, 1.0]], device=device),
                "mask_input": torch.randn(2, 1, *low, device=device),
                "has_mask_input": torch.tensor([1.0, 0.0], device=device),
            }
            dynamic = {
                "point_coords": {0: "num_prompts", 1: "num_points"},
                "point_labels": {0: "num_prompts", 1: "num_points"},
                "mask_input": {0: "num_prompts"},
                "has_mask_input": {0: "num_prompts"},
                **{name: {0: "num_prompts"} for name in DECODER_OUTPUTS},
            }
            _export(Sam2OnnxDecoder(model), inputs, DECODER_OUTPUTS, dynamic, folder / DECODER, metadata)
    finally:
        model.train(training)

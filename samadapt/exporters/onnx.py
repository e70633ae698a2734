"""The ``onnx`` format: the encoder / decoder pair that SAM's own ONNX tools and labelling tools load.

Folder::

    encoder.onnx       image (1, 3, S, S) float32 -> image_embeddings (1, C, S/16, S/16). ``image`` is what
                       SamPredictor feeds the encoder: RGB resized with ResizeLongestSide(S), normalised
                       with the model card's mean and std, zero-padded bottom-right to S x S
                       (samadapt.SamTransform.preprocess_image). The adaptation runs inside: LoRA merged
                       into the weights, adapter blocks and the high-frequency prompt generator as graph.
    decoder.onnx       segment_anything.utils.onnx.SamOnnxModel(return_single_mask=True) of the adapted
                       model (its crop of the padding made dynamic, see dynamic_crop_decoder): inputs
                       image_embeddings, point_coords (1, N, 2) in the resized frame, point_labels
                       (1, N) (1 / 0 clicks, 2 / 3 box corners, -1 padding), mask_input (1, 1, S/4,
                       S/4), has_mask_input (1,), orig_im_size (2,) as (H, W); outputs masks
                       (1, 1, H, W) logits, iou_predictions (1, 1), low_res_masks (1, 1, S/4, S/4). As
                       upstream, the single mask is chosen by the number of points: 3 or more (e.g. clicks
                       plus the -1 padding point) give the single-mask output; 1 or 2 (one click, or a
                       box alone) the best of the 3 multimask outputs by predicted IoU.
    encoder_rgb.onnx   (rgb_encoder=True) image (H, W, 3) float32 RGB in 0..255, resized so the longest
                       side is S (H, W <= S): normalisation and padding inside, the input AnyLabeling and
                       X-AnyLabeling feed (samexporter's ``--use-preprocess`` encoder).
    encoder_int8.onnx, decoder_int8.onnx (and encoder_rgb_int8.onnx)   (quantize=True)
                       onnxruntime.quantization.quantize_dynamic (uint8 weights, activations quantised
                       at run time: segment-anything's export script's settings).

Each graph carries the export metadata as the ONNX metadata property ``samadapt`` (JSON).

The exporter is torch's TorchScript-based one (``dynamo=False``): ``SamOnnxModel`` is written for
tracing, and it needs no onnxscript. A strategy whose modules the tracer cannot record as they are
gives a traceable form of them (:meth:`samadapt.strategies.Strategy.tracing`): the ``adapter``
strategy's prompt generator exports its FFT high-pass filter in its exact linear form.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from torch import nn

from ..adapted import AdaptedSam
from ..errors import ExportError
from ..models.fast import disable_activation_checkpointing, disable_sdpa_attention
from ..strategies.base import Strategy, get_strategy
from .sam import added_parameters, plain_sam

OPSET = 17  # segment-anything's export script's default
ENCODER, DECODER, ENCODER_RGB = "encoder.onnx", "decoder.onnx", "encoder_rgb.onnx"
EXTERNAL_DATA_BYTES = 1 << 31  # protobuf's 2 GiB limit: bigger graphs keep their weights in <name>.data


@contextlib.contextmanager
def traceable(sam: Sam, strategy: Strategy) -> Iterator[Sam]:
    """``sam`` in eval mode with upstream attention, no activation checkpointing and ``strategy``'s
    modules in their traceable form (:meth:`samadapt.strategies.Strategy.tracing`), for the tracer;
    every module class (and SDPA mode, and train mode) is restored afterwards."""
    saved = [(m, type(m), m.__dict__.get("samadapt_rel_pos")) for m in sam.modules()]
    training = sam.training
    sam.eval()
    disable_sdpa_attention(sam)
    disable_activation_checkpointing(sam)
    try:
        with strategy.tracing(sam):
            yield sam
    finally:
        for m, cls, rel_pos in saved:
            m.__class__ = cls
            if rel_pos is not None:
                m.samadapt_rel_pos = rel_pos
        sam.train(training)


class OnnxImageEncoder(nn.Module):
    """The adapted image encoder behind the ``encoder.onnx`` interface.

    rgb_input False: image (B, 3, S, S) preprocessed as SamPredictor does -> (B, C, S/16, S/16).
    rgb_input True: image (H, W, 3) float RGB 0..255, longest side S -> (1, C, S/16, S/16); the
    normalisation (the model's pixel_mean / pixel_std) and bottom-right zero padding happen inside.
    """

    def __init__(self, sam: Sam, *, rgb_input: bool = False) -> None:
        super().__init__()
        self.image_encoder = sam.image_encoder
        self.rgb_input = rgb_input
        self.register_buffer("pixel_mean", sam.pixel_mean.detach().clone(), persistent=False)
        self.register_buffer("pixel_std", sam.pixel_std.detach().clone(), persistent=False)

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.rgb_input:
            x = (image.permute(2, 0, 1) - self.pixel_mean) / self.pixel_std
            size = self.image_encoder.img_size
            image = F.pad(x, (0, size - x.shape[-1], 0, size - x.shape[-2]))[None]
        return self.image_encoder(image)


def dynamic_crop_decoder(sam: Sam) -> nn.Module:
    """``segment_anything.utils.onnx.SamOnnxModel(sam, return_single_mask=True)`` whose crop of the
    padding follows ``orig_im_size`` at run time.

    Upstream crops with ``masks[..., : int(prepadded_size[0]), : int(prepadded_size[1])]``; the
    tracer records those ``int()`` as the numbers of the export's dummy input, so upstream's graph
    crops every image as if it had the dummy's 2:3 aspect ratio (segment-anything issues #56, #753;
    tools that always pass one fixed ``orig_im_size``, as AnyLabeling does, never see it). Here the
    crop is an ``index_select`` over ``arange(prepadded_size)``, which the tracer keeps dynamic;
    inputs, outputs and every other step are upstream's.
    """
    from segment_anything.utils.onnx import SamOnnxModel

    class DynamicCropSamOnnxModel(SamOnnxModel):
        def mask_postprocessing(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
            """(1, M, S/4, S/4) logits -> (1, M, H, W): upsample to S, crop the padding, resize to H x W."""
            masks = F.interpolate(masks, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
            prepadded = self.resize_longest_image_size(orig_im_size, self.img_size)
            masks = masks.index_select(2, torch.arange(prepadded[0], device=masks.device))
            masks = masks.index_select(3, torch.arange(prepadded[1], device=masks.device))
            size = orig_im_size.to(torch.int64)
            return F.interpolate(masks, size=(size[0], size[1]), mode="bilinear", align_corners=False)

    return DynamicCropSamOnnxModel(sam, return_single_mask=True)


def _save(
    module: nn.Module,
    inputs: dict[str, torch.Tensor],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    path: Path,
    metadata: dict[str, Any],
    external_data_bytes: int = EXTERNAL_DATA_BYTES,
) -> None:
    """Trace ``module`` to ``path``, with ``metadata`` as the ``samadapt`` property; weights go to
    ``<name>.data`` beside it when the graph is over ``external_data_bytes``."""
    import onnx

    scratch = path.parent / f".{path.name}.trace"  # a big graph's tracer output is one file per tensor
    scratch.mkdir()
    try:
        with warnings.catch_warnings():
            # the tracer's notes on shapes taken as constants (the input size is fixed by design),
            # and torch's notice that dynamo is now the default exporter (see the module docstring)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=UserWarning)
            torch.onnx.export(
                module,
                tuple(inputs.values()),
                str(scratch / path.name),
                input_names=list(inputs),
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        proto = onnx.load(str(scratch / path.name))
        onnx.helper.set_model_props(proto, {"samadapt": json.dumps(metadata, sort_keys=True, default=str)})
        big = proto.ByteSize() > external_data_bytes
        onnx.save_model(
            proto,
            str(path),
            save_as_external_data=big,
            all_tensors_to_one_file=True,
            location=f"{path.name}.data",
            size_threshold=1024,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _quantize(src: Path, dst: Path, metadata: dict[str, Any]) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # segment-anything's export script's settings; uint8 weights, activations quantised at run time
    quantize_dynamic(
        model_input=str(src),
        model_output=str(dst),
        per_channel=False,
        reduce_range=False,
        weight_type=QuantType.QUInt8,
        use_external_data_format=src.with_name(f"{src.name}.data").exists(),
    )
    proto = onnx.load(str(dst))
    if not any(p.key == "samadapt" for p in proto.metadata_props):
        onnx.helper.set_model_props(proto, {"samadapt": json.dumps(metadata, sort_keys=True, default=str)})
        onnx.save_model(proto, str(dst))


def write_onnx(
    model: AdaptedSam,
    folder: Path,
    metadata: dict[str, Any],
    *,
    quantize: bool = False,
    rgb_encoder: bool = False,
    external_data_bytes: int = EXTERNAL_DATA_BYTES,
) -> None:
    """Write the pair (and the optional graphs) into ``folder``; see the module docstring. A SAM 2.1
    model goes to :func:`write_sam2_onnx_adapted` (its own pair; no optional graphs)."""
    if model.family.name == "sam2":
        if quantize or rgb_encoder:  # export() refuses these first; a direct call is refused here too
            raise ExportError(f"the SAM 2.1 ONNX pair has no optional graphs: {SAM2_NO_OPTIONS}")
        write_sam2_onnx_adapted(model, folder, metadata)
        return
    # a model whose adaptation folds into SAM's weights is exported as a plain upstream Sam (the
    # merged LoRA costs nothing at run time); adapter blocks are traced where they are, in place
    source = model.sam if added_parameters(model) else plain_sam(model)
    device = source.pixel_mean.device
    size = source.image_encoder.img_size
    emb = source.prompt_encoder.image_embedding_size
    meta = metadata
    with traceable(source, get_strategy(model.strategy)), torch.no_grad():
        image = torch.randn(1, 3, size, size, device=device)
        _save(
            OnnxImageEncoder(source),
            {"image": image},
            ["image_embeddings"],
            {},
            folder / ENCODER,
            meta,
            external_data_bytes,
        )
        if rgb_encoder:
            rgb = torch.rand(size, size * 3 // 4, 3, device=device) * 255
            _save(
                OnnxImageEncoder(source, rgb_input=True),
                {"image": rgb},
                ["image_embeddings"],
                {"image": {0: "height", 1: "width"}},
                folder / ENCODER_RGB,
                meta,
                external_data_bytes,
            )
        decoder_inputs = {  # as segment-anything's scripts/export_onnx_model.py
            "image_embeddings": torch.randn(1, source.prompt_encoder.embed_dim, *emb, device=device),
            "point_coords": torch.randint(0, size, (1, 5, 2), device=device).float(),
            "point_labels": torch.randint(0, 4, (1, 5), device=device).float(),
            "mask_input": torch.randn(1, 1, 4 * emb[0], 4 * emb[1], device=device),
            "has_mask_input": torch.tensor([1.0], device=device),
            "orig_im_size": torch.tensor([1500.0, 2250.0], device=device),
        }
        _save(
            dynamic_crop_decoder(source),
            decoder_inputs,
            ["masks", "iou_predictions", "low_res_masks"],
            {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
            folder / DECODER,
            meta,
            external_data_bytes,
        )
    if quantize:
        for name in (ENCODER, DECODER, *((ENCODER_RGB,) if rgb_encoder else ())):
            _quantize(
                folder / name,
                folder / name.replace(".onnx", "_int8.onnx"),
                {**meta, "quantized": "int8 dynamic (uint8 weights)"},
            )


#: why ``quantize`` / ``rgb_encoder`` are refused for SAM 2.1 (the dispatcher's message too)
SAM2_NO_OPTIONS = (
    "quantize (int8 graphs) and rgb_encoder (encoder_rgb.onnx) are written for SAM 1 only; a SAM 2.1 "
    "model exports encoder.onnx + decoder.onnx (samadapt.exporters.sam2_onnx), quantise them with "
    "onnxruntime.quantization.quantize_dynamic yourself if needed"
)


def write_sam2_onnx_adapted(model: AdaptedSam, folder: Path, metadata: dict[str, Any]) -> None:
    """The SAM 2.1 pair of :mod:`samadapt.exporters.sam2_onnx` for an adapted model: a model whose
    adaptation folds (decoder, lora / DoRA, bitfit, full) is exported as the plain folded ``SAM2Base``
    (:func:`samadapt.exporters.sam.plain_model`); one with modules that do not fold (``adapter``
    bottlenecks) is traced as it is, its modules in their traceable form
    (:meth:`samadapt.strategies.Strategy.tracing`), so they run inside ``encoder.onnx``."""
    from .sam import plain_model
    from .sam2_onnx import write_sam2_onnx

    if not added_parameters(model):
        write_sam2_onnx(plain_model(model), folder, metadata)
        return
    with get_strategy(model.strategy).tracing(model.sam) as source:
        write_sam2_onnx(source, folder, metadata)  # puts the model in eval mode and restores it

"""A differentiable, batched SAM 2.1 forward: several images, each with its own prompts.

``SAM2ImagePredictor``'s methods run under ``torch.no_grad`` and take one image at a time. Training
goes through the same upstream modules in the same order, without the decorator:

1. :func:`encode_images`: ``model.forward_image`` (Hiera trunk, FPN neck, and the mask decoder's
   ``conv_s0`` / ``conv_s1`` projections of the two high-resolution levels), then
   ``model._prepare_backbone_features``, then ``model.no_mem_embed`` added to the lowest-resolution
   level (what the predictor does for a single image: ``directly_add_no_mem_embed``). The result,
   :class:`Sam2Features`, is everything the decoder reads: the image embedding and two
   high-resolution maps.
2. :func:`decode_prompts`: prompts as the predictor's ``_predict`` builds them (a box is two points
   with labels 2 and 3, placed before the clicks; the prompt encoder always appends its padding
   point since it gets no ``boxes``), ``model.sam_prompt_encoder`` (its no-mask embedding when there
   is no mask prompt), then ``model.sam_mask_decoder(..., high_res_features=...)`` with each prompt's
   image features gathered by index (``repeat_image=False``). In eval mode with one mask per
   prompt, the decoder's own stability fallback applies, as in the predictor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ...errors import ConfigError

if TYPE_CHECKING:
    from sam2.modeling.sam2_base import SAM2Base


#: the names of :class:`Sam2Features`' tensors (the embedding cache stores them under these)
FEATURE_NAMES = ("image_embed", "high_res_feats_0", "high_res_feats_1")


@dataclass
class Sam2Features:
    """What the SAM 2.1 decoder reads for B images.

    image_embed: (B, C, S/16, S/16), the lowest FPN level plus ``no_mem_embed`` (C = 256).
    high_res: ((B, C/8, S/4, S/4), (B, C/4, S/8, S/8)), the FPN's two finest levels after the
    decoder's ``conv_s0`` / ``conv_s1``.

    It indexes like SAM 1's embedding tensor (B, C, h, w), so code written for that works on it:
    ``features[i]`` is image i's features without the batch dimension, ``features[None]`` adds
    one, iterating gives each image's, ``len`` / ``shape`` / ``dtype`` / ``device`` are the image
    embedding's, and :meth:`stack` stacks per-image features as ``torch.stack`` does tensors.
    """

    image_embed: torch.Tensor
    high_res: tuple[torch.Tensor, torch.Tensor]

    def __len__(self) -> int:
        return self.image_embed.shape[0]

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (self.image_embed, *self.high_res)

    @property
    def shape(self) -> torch.Size:
        return self.image_embed.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.image_embed.dtype

    @property
    def device(self) -> torch.device:
        return self.image_embed.device

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    def __getitem__(self, index) -> Sam2Features:
        """Index every tensor along the batch dimension (``None`` adds one, as for a tensor)."""
        return Sam2Features(self.image_embed[index], (self.high_res[0][index], self.high_res[1][index]))

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def named_tensors(self) -> dict[str, torch.Tensor]:
        return dict(zip(FEATURE_NAMES, self.tensors))

    @classmethod
    def from_named(cls, tensors: dict[str, torch.Tensor]) -> Sam2Features:
        embed, hr0, hr1 = (tensors[n] for n in FEATURE_NAMES)
        return cls(embed, (hr0, hr1))

    @classmethod
    def stack(cls, items: list[Sam2Features]) -> Sam2Features:
        """Per-image features (no batch dimension) -> the features of the batch."""
        embed, hr0, hr1 = (torch.stack([it.tensors[k] for it in items]) for k in range(3))
        return cls(embed, (hr0, hr1))

    def per_prompt(self, image_index: torch.Tensor) -> Sam2Features:
        """Each prompt's image features (N first): a broadcast view for one image, else gathered."""
        n = image_index.shape[0]
        if len(self) == 1:
            pick = lambda t: t.expand(n, *t.shape[1:])  # noqa: E731
        else:
            pick = lambda t: t.index_select(0, image_index)  # noqa: E731
        return Sam2Features(pick(self.image_embed), (pick(self.high_res[0]), pick(self.high_res[1])))

    def select(self, index: int | slice | torch.Tensor) -> Sam2Features:
        """Features of some images (an int keeps the batch dimension)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return Sam2Features(self.image_embed[index], (self.high_res[0][index], self.high_res[1][index]))

    def to(self, *args, **kwargs) -> Sam2Features:
        return Sam2Features(self.image_embed.to(*args, **kwargs), tuple(t.to(*args, **kwargs) for t in self.high_res))

    @classmethod
    def cat(cls, parts: list[Sam2Features]) -> Sam2Features:
        return cls(
            torch.cat([p.image_embed for p in parts]),
            (torch.cat([p.high_res[0] for p in parts]), torch.cat([p.high_res[1] for p in parts])),
        )


def encode_images(model: SAM2Base, images: torch.Tensor) -> Sam2Features:
    """Preprocessed images (B, 3, S, S) -> :class:`Sam2Features` (differentiable)."""
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[-1] != model.image_size:
        raise ConfigError(
            f"encode_images takes (B, 3, {model.image_size}, {model.image_size}) float images preprocessed by "
            f"Sam2Transform; got {tuple(images.shape)}"
        )
    backbone_out = model.forward_image(images)
    _, vision_feats, _, feat_sizes = model._prepare_backbone_features(backbone_out)
    if model.directly_add_no_mem_embed:
        vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
    b = images.shape[0]
    feats = [f.permute(1, 2, 0).view(b, -1, *hw) for f, hw in zip(vision_feats, feat_sizes)]
    return Sam2Features(feats[-1], (feats[0], feats[1]))


def prompt_points(
    points: torch.Tensor | None, labels: torch.Tensor | None, boxes: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The predictor's ``concat_points``: each box as two corner points labelled 2 and 3, placed
    before the prompt's clicks. points (N, P, 2) with labels (N, P); boxes (N, 4); input frame."""
    if points is None and boxes is None:
        raise ConfigError("a prompt needs a box or points")
    if (points is None) != (labels is None):
        raise ConfigError("points and labels must be given together (1 = foreground, 0 = background)")
    if points is not None and (points.ndim != 3 or points.shape[-1] != 2 or tuple(labels.shape) != points.shape[:2]):
        raise ConfigError(
            f"points must be (N, P, 2) with labels (N, P); got {tuple(points.shape)} and {tuple(labels.shape)}"
        )
    if boxes is None:
        return points.float(), labels.int()
    box_coords = boxes.float().reshape(-1, 2, 2)
    box_labels = torch.tensor([[2, 3]], dtype=torch.int, device=boxes.device).repeat(box_coords.shape[0], 1)
    if points is None:
        return box_coords, box_labels
    if points.shape[0] != box_coords.shape[0]:
        raise ConfigError(f"{box_coords.shape[0]} boxes but {points.shape[0]} point prompts; they must match")
    return torch.cat([box_coords, points.float()], dim=1), torch.cat([box_labels, labels.int()], dim=1)


def decode_prompts(
    model: SAM2Base,
    features: Sam2Features,
    image_index: torch.Tensor,
    *,
    points: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    boxes: torch.Tensor | None = None,
    mask_inputs: torch.Tensor | None = None,
    multimask: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode N prompts over the B images of ``features`` (differentiable).

    Args:
        image_index: (N,) int64, the image of each prompt.
        points: (N, P, 2) XY in the input frame with ``labels`` (N, P): 1 foreground, 0 background.
        boxes: (N, 4) XYXY in the input frame. Boxes, points, or both (then one box per point prompt).
        mask_inputs: (N, 1, S/4, S/4) mask prompts (a previous prediction's low-res logits), or None.
        multimask: the 3 multimask outputs instead of the single-mask output.

    Returns:
        low-res mask logits (N, M, S/4, S/4) (mask = logits > 0) and predicted IoU (N, M), M = 3 or 1.
    """
    coords, point_labels = prompt_points(points, labels, boxes)
    n = coords.shape[0]
    if image_index.shape != (n,):
        raise ConfigError(f"image_index has shape {tuple(image_index.shape)}; the prompts need ({n},)")
    low = model.sam_prompt_encoder.mask_input_size
    if mask_inputs is not None and tuple(mask_inputs.shape) != (n, 1, *low):
        raise ConfigError(
            f"mask_inputs have shape {tuple(mask_inputs.shape)}; the prompts need ({n}, 1, {low[0]}, {low[1]})"
        )
    sparse, dense = model.sam_prompt_encoder(points=(coords, point_labels), boxes=None, masks=mask_inputs)
    feats = features.per_prompt(image_index)
    logits, iou, _, _ = model.sam_mask_decoder(
        image_embeddings=feats.image_embed,
        image_pe=model.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
        repeat_image=False,
        high_res_features=list(feats.high_res),
    )
    return logits, iou

"""Inference on SAM 2.1: ``predict`` / ``predict_batch`` with the interface of ``AdaptedSam.predict``.

Prompts are in the pixels of each image: ``boxes`` (N, 4) XYXY, ``points`` (N, P, 2) XY with
``labels`` (N, P) (or (P, 2) with (P,) for one prompt), or both. Results equal
``SAM2ImagePredictor(model).predict`` with the same prompts (tests/models/test_sam2_family.py): masks
(N, H, W) bool and scores (N,), or (N, 3, H, W) and (N, 3) with ``multimask``; with
``return_logits`` also the low-resolution logits (N, M, S/4, S/4), clamped to [-32, 32] as the
predictor returns them (ready to be a ``mask_input`` of the next round).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from ...errors import ConfigError
from .forward import Sam2Features, decode_prompts, encode_images
from .transforms import Sam2Transform, check_image

if TYPE_CHECKING:
    from sam2.modeling.sam2_base import SAM2Base


#: ``SAM2ImagePredictor``'s default ``mask_threshold``: a mask is logits > 0
MASK_THRESHOLD = 0.0


def transform_for(model: SAM2Base) -> Sam2Transform:
    return Sam2Transform(int(model.image_size))


def prompts_in_input_frame(
    transform: Sam2Transform, image_shape, boxes, points, labels
) -> tuple[tuple[int, int], torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(original size, boxes, points, labels) with the prompts mapped into the model's input frame."""
    size = (int(image_shape[0]), int(image_shape[1]))
    b = transform.apply_boxes(boxes, size) if boxes is not None else None
    p = lab = None
    if points is not None:
        if labels is None:
            raise ConfigError("points need labels (1 = foreground, 0 = background)")
        p = torch.as_tensor(np.asarray(points), dtype=torch.float32)
        lab = torch.as_tensor(np.asarray(labels), dtype=torch.int32)
        if p.ndim == 2:  # (P, 2): one prompt of P points, as SAM2ImagePredictor.predict takes them
            p, lab = p[None], lab.reshape(1, -1)
        if p.ndim != 3 or p.shape[-1] != 2 or tuple(lab.shape) != tuple(p.shape[:2]):
            raise ConfigError(
                f"points must be (N, P, 2) with labels (N, P); got {tuple(p.shape)} and {tuple(lab.shape)}"
            )
        p = transform.apply_points(p, size)
    if b is None and p is None:
        raise ConfigError("predict needs boxes or points")
    return size, b, p, lab


def predict(
    model: SAM2Base,
    image: np.ndarray,
    boxes: np.ndarray | None = None,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    *,
    multimask: bool = False,
    return_logits: bool = False,
    mask_input: np.ndarray | torch.Tensor | None = None,
):
    """Masks for one RGB uint8 image (H, W, 3); see the module docstring.

    ``mask_input``: (N, 1, S/4, S/4) low-res logits of a previous round, one per prompt."""
    return predict_batch(
        model,
        [image],
        [boxes],
        None if points is None else [points],
        None if labels is None else [labels],
        multimask=multimask,
        return_logits=return_logits,
        mask_inputs=None if mask_input is None else [mask_input],
    )[0]


@torch.no_grad()
def predict_batch(
    model: SAM2Base,
    images: Sequence[np.ndarray],
    boxes: Sequence[np.ndarray | None],
    points: Sequence[np.ndarray | None] | None = None,
    labels: Sequence[np.ndarray | None] | None = None,
    *,
    multimask: bool = False,
    return_logits: bool = False,
    batch_size: int = 8,
    features: Sam2Features | None = None,
    mask_inputs: Sequence[np.ndarray | torch.Tensor | None] | None = None,
) -> list[tuple]:
    """:func:`predict` for several images: the encoder in batches of ``batch_size``, one decoder pass
    per batch over all their prompts. ``features``: the images' :class:`Sam2Features` computed
    earlier (an embedding cache); the encoder is then skipped. Returns one result per image."""
    n = len(images)
    points = points if points is not None else [None] * n
    labels = labels if labels is not None else [None] * n
    mask_inputs = mask_inputs if mask_inputs is not None else [None] * n
    if not (len(boxes) == len(points) == len(labels) == len(mask_inputs) == n):
        raise ConfigError(f"got {n} images but prompts for {len(boxes)}")
    if features is not None and len(features) != n:
        raise ConfigError(f"got {n} images but features of {len(features)}")
    tf = transform_for(model)
    device = model.device
    dtype = model.sam_prompt_encoder.no_mask_embed.weight.dtype
    results: list[tuple] = []
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        imgs = [check_image(images[i]) for i in idx]
        prompts = [prompts_in_input_frame(tf, imgs[j].shape, boxes[i], points[i], labels[i]) for j, i in enumerate(idx)]
        if features is None:
            feats = encode_images(model, torch.stack([tf.preprocess_image(im) for im in imgs]).to(device, dtype))
        else:
            feats = features.select(slice(idx[0], idx[-1] + 1)).to(device, dtype)
        counts = [(p[1] if p[1] is not None else p[2]).shape[0] for p in prompts]
        image_index = torch.repeat_interleave(torch.arange(len(idx)), torch.tensor(counts)).to(device)
        logits, iou = decode_prompts(
            model,
            feats,
            image_index,
            points=_cat([p[2] for p in prompts], device),
            labels=_cat([p[3] for p in prompts], device),
            boxes=_cat([p[1] for p in prompts], device),
            mask_inputs=_cat([_as_tensor(mask_inputs[i]) for i in idx], device, dtype),
            multimask=multimask,
        )
        for j, (size, *_rest) in enumerate(prompts):
            sel = image_index == j
            low, scores = logits[sel].float(), iou[sel].float()
            masks = tf.postprocess_masks(low, size, MASK_THRESHOLD)
            if not multimask:
                masks, scores = masks[:, 0], scores[:, 0]
            res = (masks.cpu().numpy(), scores.cpu().numpy())
            results.append(res + (low.clamp(-32.0, 32.0).cpu().numpy(),) if return_logits else res)
    return results


def _as_tensor(x) -> torch.Tensor | None:
    return None if x is None else torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)


def _cat(parts: list[torch.Tensor | None], device, dtype=None) -> torch.Tensor | None:
    """All images' prompts of one kind, or None; every image must give the same kinds."""
    if all(p is None for p in parts):
        return None
    if any(p is None for p in parts):
        raise ConfigError("every image of a batch must use the same prompt kinds (all boxes, all points, or both)")
    out = torch.cat(parts).to(device)
    return out.to(dtype) if dtype is not None else out

"""Preprocessing identical to ``SamPredictor.set_image``, shared by training and inference.

One :class:`SamTransform` maps an RGB uint8 image (H, W, 3) to the model's input tensor
(3, S, S) and maps boxes, points and ground-truth masks into the same frame; it maps low-resolution
mask logits back to the original image. S is the model type's ``image_size`` (1024 for the official
models). Resizing uses upstream ``ResizeLongestSide`` so the pixels are exactly those SamPredictor
feeds the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SamTransform:
    """Resize the longest side to ``image_size``, normalise, pad bottom-right to a square.

    Args:
        image_size: the model's input side S (``ModelCard.image_size``).
    """

    image_size: int

    @property
    def low_res_size(self) -> int:
        """Side of the low-resolution mask frame (S / 4)."""
        return self.image_size // 4

    @property
    def _resizer(self) -> ResizeLongestSide:
        return ResizeLongestSide(self.image_size)

    def input_size(self, original_size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the image after resizing, before padding."""
        return ResizeLongestSide.get_preprocess_shape(original_size[0], original_size[1], self.image_size)

    def preprocess_image(self, image: np.ndarray) -> torch.Tensor:
        """RGB uint8 (H, W, 3) -> float32 (3, S, S), normalised and zero-padded bottom-right.

        Equal to ``sam.preprocess(...)`` of what ``SamPredictor.set_image`` builds.
        """
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
        resized = self._resizer.apply_image(image)
        x = torch.as_tensor(resized).permute(2, 0, 1).contiguous().float()
        mean = torch.tensor(PIXEL_MEAN).view(-1, 1, 1)
        std = torch.tensor(PIXEL_STD).view(-1, 1, 1)
        x = (x - mean) / std
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.image_size - w, 0, self.image_size - h))

    def apply_boxes(self, boxes: np.ndarray | torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """Boxes (N, 4) XYXY in original pixels -> (N, 4) float32 in the input frame."""
        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        return self._resizer.apply_boxes_torch(boxes, original_size)

    def apply_points(self, points: np.ndarray | torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """Points (..., 2) XY in original pixels -> same shape, float32, in the input frame."""
        points = torch.as_tensor(points, dtype=torch.float32)
        return self._resizer.apply_coords_torch(points, original_size)

    def masks_to_low_res(self, masks: np.ndarray | torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """Ground-truth masks (N, H, W) bool -> (N, S/4, S/4) float32 in {0, 1}, aligned with the
        low-resolution logits SAM's decoder outputs (resize like the image, pad, area-downsample by 4,
        threshold at 0.5)."""
        m = torch.as_tensor(np.asarray(masks), dtype=torch.float32)
        if m.ndim == 2:
            m = m[None]
        n = m.shape[0]
        if n == 0:
            return torch.zeros(0, self.low_res_size, self.low_res_size)
        h, w = self.input_size(original_size)
        m = F.interpolate(m[:, None], size=(h, w), mode="bilinear", align_corners=False)
        m = F.pad(m, (0, self.image_size - w, 0, self.image_size - h))
        m = F.avg_pool2d(m, kernel_size=4)
        return (m[:, 0] > 0.5).float()

    def postprocess_logits(self, low_res_logits: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """Logits (..., S/4, S/4) -> (..., H, W) at the original size, as ``Sam.postprocess_masks``:
        upsample to S, crop the padding, resize to the original size (bilinear)."""
        lead = low_res_logits.shape[:-2]
        x = low_res_logits.reshape(-1, 1, *low_res_logits.shape[-2:])
        x = F.interpolate(x, (self.image_size, self.image_size), mode="bilinear", align_corners=False)
        h, w = self.input_size(original_size)
        x = x[..., :h, :w]
        x = F.interpolate(x, tuple(original_size), mode="bilinear", align_corners=False)
        return x.reshape(*lead, *original_size)

    def postprocess_masks(self, low_res_logits: torch.Tensor, original_size: tuple[int, int], threshold: float = 0.0,
                          *, max_float_bytes: int = 1 << 28) -> torch.Tensor:
        """Boolean masks ``postprocess_logits(...) > threshold``, upsampled a few masks at a time so
        that the float intermediates (S x S and H x W per mask) stay under ``max_float_bytes``: a
        12-megapixel photo with 50 prompts would otherwise hold 2.4 GB of float logits."""
        lead = low_res_logits.shape[:-2]
        flat = low_res_logits.reshape(-1, *low_res_logits.shape[-2:])
        per_mask = 4 * (self.image_size ** 2 + original_size[0] * original_size[1])
        step = max(1, max_float_bytes // per_mask)
        out = torch.empty((flat.shape[0], *original_size), dtype=torch.bool, device=flat.device)
        for k in range(0, flat.shape[0], step):
            out[k:k + step] = self.postprocess_logits(flat[k:k + step], original_size) > threshold
        return out.reshape(*lead, *original_size)

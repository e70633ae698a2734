"""Preprocessing and postprocessing identical to ``SAM2ImagePredictor``'s, for training and inference.

SAM 2 resizes every image to a S x S square **without keeping its aspect ratio** (torchvision's
``Resize((S, S))``, antialiased bilinear) and normalises 0..1 RGB with ImageNet's mean and std;
SAM 1 resizes the longest side and pads. Prompts follow the image: x is scaled by S / W and y by
S / H. Masks come back by one bilinear resize of the S/4 x S/4 logits to H x W (no padding to crop).

Every step calls upstream ``sam2.utils.transforms.SAM2Transforms`` (the object the predictor
holds), so the numbers are the predictor's by construction; this class adds batching of the
postprocessing (memory bound) and the ground-truth masks of training in the logits' frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import ConfigError


@lru_cache(maxsize=8)
def _upstream(image_size: int):
    """Upstream ``SAM2Transforms`` with the predictor's defaults (mask threshold 0, no hole filling)."""
    import warnings

    from sam2.utils.transforms import SAM2Transforms

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        return SAM2Transforms(resolution=image_size, mask_threshold=0.0)


def check_image(image) -> np.ndarray:
    """An RGB uint8 (H, W, 3) array, or a :class:`ConfigError` naming what was given."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ConfigError(f"expected an RGB uint8 image of shape (H, W, 3), got {image.dtype} {image.shape}")
    return image


@dataclass(frozen=True)
class Sam2Transform:
    """The model's input frame is S x S (``Sam2Card.image_size``); low-res logits are S/4 x S/4."""

    image_size: int

    @property
    def low_res_size(self) -> int:
        return self.image_size // 4

    def input_size(self, original_size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) the image fills in the input frame: all of it (no padding; SAM 1's pads)."""
        return (self.image_size, self.image_size)

    def preprocess_image(self, image: np.ndarray) -> torch.Tensor:
        """RGB uint8 (H, W, 3) -> float32 (3, S, S), what ``SAM2ImagePredictor.set_image`` feeds
        ``forward_image``."""
        return _upstream(self.image_size)(check_image(image))

    def apply_points(self, points: np.ndarray | torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """Points (..., 2) XY in original pixels -> float32 in the input frame (x * S / W, y * S / H)."""
        points = torch.as_tensor(np.asarray(points) if not isinstance(points, torch.Tensor) else points)
        return _upstream(self.image_size).transform_coords(points.float(), normalize=True, orig_hw=original_size)

    def apply_boxes(self, boxes: np.ndarray | torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """Boxes (N, 4) XYXY in original pixels -> (N, 4) float32 in the input frame."""
        boxes = torch.as_tensor(np.asarray(boxes) if not isinstance(boxes, torch.Tensor) else boxes)
        boxes = boxes.float().reshape(-1, 4)
        return _upstream(self.image_size).transform_boxes(boxes, normalize=True, orig_hw=original_size).reshape(-1, 4)

    def postprocess_logits(self, low_res_logits: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """Logits (..., S/4, S/4) -> (..., H, W) float, as the predictor's ``postprocess_masks``."""
        lead = low_res_logits.shape[:-2]
        x = low_res_logits.reshape(-1, 1, *low_res_logits.shape[-2:])
        out = _upstream(self.image_size).postprocess_masks(x, tuple(int(s) for s in original_size))
        return out.reshape(*lead, *out.shape[-2:])

    def postprocess_masks(
        self,
        low_res_logits: torch.Tensor,
        original_size: tuple[int, int],
        threshold: float = 0.0,
        *,
        max_float_bytes: int = 1 << 28,
    ) -> torch.Tensor:
        """Boolean masks ``postprocess_logits(...) > threshold``, a few masks at a time so that the
        float H x W intermediates stay under ``max_float_bytes``."""
        lead = low_res_logits.shape[:-2]
        flat = low_res_logits.reshape(-1, *low_res_logits.shape[-2:])
        h, w = (int(s) for s in original_size)
        step = max(1, max_float_bytes // (4 * h * w))
        out = torch.empty((flat.shape[0], h, w), dtype=torch.bool, device=flat.device)
        for k in range(0, flat.shape[0], step):
            out[k : k + step] = self.postprocess_logits(flat[k : k + step], (h, w)) > threshold
        return out.reshape(*lead, h, w)

    def masks_to_low_res(self, masks: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Ground-truth masks (N, H, W) -> (N, S/4, S/4) float32 in {0, 1} aligned with the logits:
        resized like the image (bilinear to S x S, aspect ratio not kept), area-downsampled by 4,
        thresholded at 0.5 (the SAM 1 path's rule, in SAM 2's frame)."""
        m = torch.as_tensor(np.asarray(masks.cpu() if isinstance(masks, torch.Tensor) else masks), dtype=torch.float32)
        if m.ndim == 2:
            m = m[None]
        if m.shape[0] == 0:
            return torch.zeros(0, self.low_res_size, self.low_res_size)
        s = self.image_size
        m = F.interpolate(m[:, None], size=(s, s), mode="bilinear", align_corners=False)
        return (F.avg_pool2d(m, kernel_size=4)[:, 0] > 0.5).float()

    def sampled_to_low_res(self, sample, box: tuple[int, int, int, int] | None, original_size: tuple[int, int]):
        """One mask given by ``sample(rows, cols)`` (the interface of SAM 1's
        ``SamTransform.sampled_to_low_res``, which the dataset calls) -> (1, S/4, S/4), equal to
        :meth:`masks_to_low_res` of the full mask. Builds the full mask (bool, H x W) from the pixels
        of its tight ``box`` (x1, y1, x2, y2 inclusive; None for an empty mask)."""
        full = np.zeros(tuple(int(s) for s in original_size), dtype=bool)
        if box is not None:
            x1, y1, x2, y2 = (int(v) for v in box)
            full[y1 : y2 + 1, x1 : x2 + 1] = sample(np.arange(y1, y2 + 1), np.arange(x1, x2 + 1))
        return self.masks_to_low_res(full[None])

"""Preprocessing identical to ``SamPredictor.set_image``, shared by training and inference.

One :class:`SamTransform` maps an RGB uint8 image (H, W, 3) to the model's input tensor
(3, S, S) and maps boxes, points and ground-truth masks into the same frame; it maps low-resolution
mask logits back to the original image. S is the model type's ``image_size`` (1024 for the official
models). Resizing uses upstream ``ResizeLongestSide`` so the pixels are exactly those SamPredictor
feeds the encoder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

from .errors import ConfigError

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
_MEAN = np.array(PIXEL_MEAN, dtype=np.float32)
_STD = np.array(PIXEL_STD, dtype=np.float32)


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
            raise ConfigError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
        resized = self._resizer.apply_image(image)
        h, w = resized.shape[:2]
        # numpy, not torch: this per-image element-wise work gains nothing from torch's intra-op
        # threads and stalls at their barriers on a busy CPU (benchmarks/cache_fill.py); float32
        # subtract and divide round as torch's do, so the values are the same bit for bit
        out = np.zeros((3, self.image_size, self.image_size), dtype=np.float32)
        out[:, :h, :w] = ((resized.astype(np.float32) - _MEAN) / _STD).transpose(2, 0, 1)
        return torch.from_numpy(out)

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
        threshold at 0.5).

        Equal to :meth:`masks_to_low_res_reference` bit for bit, without its full-resolution float32
        copy: each mask is resized from the pixels its box reads (:meth:`sampled_to_low_res`)."""
        m = np.asarray(masks.cpu() if isinstance(masks, torch.Tensor) else masks)
        if m.ndim == 2:
            m = m[None]
        if m.shape[0] == 0:
            return torch.zeros(0, self.low_res_size, self.low_res_size)
        if m.dtype != bool and not np.isin(m, (0, 1)).all():  # soft masks: only the reference handles them
            return self.masks_to_low_res_reference(m, original_size)
        out = []
        for mk in m.astype(bool, copy=False):
            rows, cols = np.flatnonzero(mk.any(axis=1)), np.flatnonzero(mk.any(axis=0))
            box = (cols[0], rows[0], cols[-1], rows[-1]) if len(rows) else None
            out.append(self.sampled_to_low_res(lambda r, c, mk=mk: mk[np.ix_(r, c)], box, original_size))
        return torch.cat(out)

    def masks_to_low_res_reference(
        self, masks: np.ndarray | torch.Tensor, original_size: tuple[int, int]
    ) -> torch.Tensor:
        """:meth:`masks_to_low_res` as a full-resolution float32 resize (N x H x W x 4 bytes): the
        definition the exact path is checked against."""
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

    def sampled_to_low_res(
        self,
        sample: Callable[[np.ndarray, np.ndarray], np.ndarray],
        box: tuple[int, int, int, int] | None,
        original_size: tuple[int, int],
    ) -> torch.Tensor:
        """One mask -> (1, S/4, S/4) float32, equal to :meth:`masks_to_low_res` of the full mask.

        Args:
            sample: ``sample(rows, cols)`` -> bool (len(rows), len(cols)), the mask at those pixels
                of the original image (e.g. :func:`samadapt.data.masks.rle_sampler`).
            box: (x1, y1, x2, y2) inclusive pixel indices of the mask's tight box; None if empty.
            original_size: (H, W).

        Bilinear resizing reads two source rows and two source columns per output pixel, so only
        the output pixels whose sources meet the box can be non-zero; those are computed from at
        most (2h x 2w) sampled pixels, with torch's own CPU arithmetic (see :func:`_linear_taps`),
        into the (h, w) frame, which is then padded and pooled exactly as the reference does.
        Memory is bounded by the model's input size, whatever the image's. Where this torch build's
        arithmetic is not the one reproduced (checked once per process), the reference is used.
        """
        s4 = self.low_res_size
        h, w = self.input_size(original_size)
        frame = torch.zeros(1, 1, h, w)
        if box is not None:
            x1, y1, x2, y2 = (int(v) for v in box)
            if not _exact_taps_match_torch(tuple(original_size), (h, w)):
                full = np.zeros(tuple(original_size), dtype=bool)
                rows, cols = np.arange(y1, y2 + 1), np.arange(x1, x2 + 1)
                full[y1 : y2 + 1, x1 : x2 + 1] = sample(rows, cols)
                return self.masks_to_low_res_reference(full[None], original_size)
            frame[0, 0] = _resize_crop(sample, (y1, x1, y2, x2), tuple(original_size), (h, w))
        m = F.pad(frame, (0, self.image_size - w, 0, self.image_size - h))
        m = F.avg_pool2d(m, kernel_size=4)
        return (m[:, 0] > 0.5).float().reshape(1, s4, s4)

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

    def postprocess_masks(
        self,
        low_res_logits: torch.Tensor,
        original_size: tuple[int, int],
        threshold: float = 0.0,
        *,
        max_float_bytes: int = 1 << 28,
    ) -> torch.Tensor:
        """Boolean masks ``postprocess_logits(...) > threshold``, upsampled a few masks at a time so
        that the float intermediates (S x S and H x W per mask) stay under ``max_float_bytes``: a
        12-megapixel photo with 50 prompts would otherwise hold 2.4 GB of float logits."""
        lead = low_res_logits.shape[:-2]
        flat = low_res_logits.reshape(-1, *low_res_logits.shape[-2:])
        per_mask = 4 * (self.image_size**2 + original_size[0] * original_size[1])
        step = max(1, max_float_bytes // per_mask)
        out = torch.empty((flat.shape[0], *original_size), dtype=torch.bool, device=flat.device)
        for k in range(0, flat.shape[0], step):
            out[k : k + step] = self.postprocess_logits(flat[k : k + step], original_size) > threshold
        return out.reshape(*lead, *original_size)


# ---------------------------------------------------------------------------- exact bilinear on a crop
@lru_cache(maxsize=64)
def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]:
    """Source indices (i0, i1) and float32 weights (w0, w1) of ``F.interpolate(mode="bilinear",
    align_corners=False)`` along one axis, as torch's CPU kernel computes them
    (``area_pixel_compute_source_index``, its ``scale * (i + 0.5) - 0.5`` fused into one rounding,
    then ``guard_index_and_lambda``)."""
    scale = np.float32(np.float32(n_in) / np.float32(n_out))
    i = np.arange(n_out, dtype=np.float32) + np.float32(0.5)
    src = (np.float64(scale) * i.astype(np.float64) - 0.5).astype(np.float32)  # one rounding, as an FMA
    src = np.maximum(src, np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    w1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1)).astype(np.float32)
    w0 = (np.float32(1) - w1).astype(np.float32)
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    return i0, i1, torch.from_numpy(w0), torch.from_numpy(w1)


def _fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float32 ``a * b + c`` rounded once (as a fused multiply-add), for float32 inputs.

    The product is exact in float64 and the float64 sum's rounding error is recovered (two-sum), so
    the one case where rounding the float64 sum to float32 differs from rounding the exact value
    (the sum lands on a float32 midpoint) is resolved by the error's sign."""
    p = a.double() * b.double()
    c = c.double()
    s = p + c
    bp = s - p
    err = (p - (s - bp)) + (c - bp)
    r = s.float()
    rd = r.double()
    other = torch.where(
        s > rd,
        torch.nextafter(r, torch.full_like(r, float("inf"))),
        torch.nextafter(r, torch.full_like(r, float("-inf"))),
    )
    tie = (s != rd) & (s - rd == other.double() - s) & (err != 0)
    fixed = torch.where(err > 0, torch.maximum(r, other), torch.minimum(r, other))
    return torch.where(tie, fixed, r)


def _resize_crop(
    sample: Callable[[np.ndarray, np.ndarray], np.ndarray],
    box: tuple[int, int, int, int],
    in_hw: tuple[int, int],
    out_hw: tuple[int, int],
) -> torch.Tensor:
    """(out_h, out_w) float32: ``F.interpolate`` (bilinear, align_corners=False) of a binary mask of
    size ``in_hw`` that is zero outside ``box`` = (y1, x1, y2, x2), computed on the output pixels
    whose source rows and columns meet the box (all others are exactly 0)."""
    y1, x1, y2, x2 = box
    r0, r1, a0, a1 = _linear_taps(in_hw[0], out_hw[0])
    c0, c1, b0, b1 = _linear_taps(in_hw[1], out_hw[1])
    out = torch.zeros(out_hw)
    rows = np.flatnonzero(((r0 >= y1) & (r0 <= y2)) | ((r1 >= y1) & (r1 <= y2)))
    cols = np.flatnonzero(((c0 >= x1) & (c0 <= x2)) | ((c1 >= x1) & (c1 <= x2)))
    if not len(rows) or not len(cols):
        return out
    # the distinct source rows / columns these outputs read, sampled once
    src_r, inv_r = np.unique(np.concatenate([r0[rows], r1[rows]]), return_inverse=True)
    src_c, inv_c = np.unique(np.concatenate([c0[cols], c1[cols]]), return_inverse=True)
    x = torch.from_numpy(np.ascontiguousarray(sample(src_r, src_c))).float()
    nr, nc = len(rows), len(cols)
    ir0, ir1 = torch.from_numpy(inv_r[:nr]), torch.from_numpy(inv_r[nr:])
    ic0, ic1 = torch.from_numpy(inv_c[:nc]), torch.from_numpy(inv_c[nc:])
    wb0, wb1 = b0[cols], b1[cols]
    wa0, wa1 = a0[rows][:, None], a1[rows][:, None]
    # torch's kernel: along the width t = x0 * w0 + x1 * w1 (exact for a binary mask, fused or
    # not), then along the height fma(t_top, a0, t_bottom * a1)
    xr0, xr1 = x[ir0], x[ir1]
    t_top = xr0[:, ic0] * wb0 + xr0[:, ic1] * wb1
    t_bot = xr1[:, ic0] * wb0 + xr1[:, ic1] * wb1
    out[torch.from_numpy(rows)[:, None], torch.from_numpy(cols)[None, :]] = _fma(t_top, wa0, t_bot * wa1)
    return out


def _exact_taps_match_torch(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> bool:
    """Whether :func:`_resize_crop` reproduces this torch build's ``F.interpolate`` bit for bit when
    resizing to ``out_hw``: torch picks its CPU loop (and so its rounding) by the output's shape, so
    this is checked once per output size, on a random mask no larger than about twice the output
    (downsampling stays downsampling), never at the full image size."""
    probe = tuple(min(n, 2 * m + 3) for n, m in zip(in_hw, out_hw))
    return _probe_matches(probe, tuple(out_hw))


@lru_cache(maxsize=256)
def _probe_matches(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> bool:
    m = np.random.default_rng(0).random(in_hw) < 0.5
    ref = F.interpolate(torch.from_numpy(m).float()[None, None], size=out_hw, mode="bilinear", align_corners=False)[
        0, 0
    ]
    got = _resize_crop(lambda r, c: m[np.ix_(r, c)], (0, 0, in_hw[0] - 1, in_hw[1] - 1), in_hw, out_hw)
    return torch.equal(got, ref)


# ---------------------------------------------------------------------------- prompts from users
def _numbers(values) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]"


def check_boxes(boxes, original_size: tuple[int, int], what: str = "boxes") -> np.ndarray:
    """``boxes`` as float32 (N, 4) XYXY pixels of an image of ``original_size`` (H, W), refused with a
    :class:`ConfigError` that names the box and its index when one is not finite, is inverted
    (x1 < x0 or y1 < y0: an XYWH box or swapped corners) or lies wholly outside the image. A box
    partly outside is kept as drawn (SAM takes it so; the mask stays inside the image)."""
    b = np.asarray(boxes, dtype=np.float32)
    if b.ndim == 1 and b.size == 4:
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 4:
        raise ConfigError(f"{what} must be an (N, 4) array of XYXY pixels, got shape {b.shape}")
    h, w = original_size
    for i, (x0, y0, x1, y1) in enumerate(b):
        name = f"{what}[{i}] = {_numbers(b[i])}"
        if not np.isfinite(b[i]).all():
            raise ConfigError(f"{name} is not finite")
        if x1 < x0 or y1 < y0:
            raise ConfigError(
                f"{name} is inverted ({'x1 < x0' if x1 < x0 else ''}{' and ' if x1 < x0 and y1 < y0 else ''}"
                f"{'y1 < y0' if y1 < y0 else ''}): boxes are XYXY, [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1 "
                f"(from COCO's XYWH: [x, y, x + w, y + h])"
            )
        if x1 < 0 or y1 < 0 or x0 > w or y0 > h:
            raise ConfigError(f"{name} lies wholly outside the image ({w} x {h} pixels, W x H)")
    return b


def check_points(points, labels, original_size: tuple[int, int], what: str = "points") -> None:
    """Refuse, naming the point and its index, a point that is not finite or lies outside the image
    of ``original_size`` (H, W), and a label other than 1 (foreground), 0 (background) or -1 (padding,
    which SAM ignores wherever it is)."""
    pts = np.asarray(points, dtype=np.float32)
    lab = np.asarray(labels).reshape(pts.shape[:-1])
    h, w = original_size

    def name(i: tuple) -> str:
        return f"{what}{''.join(f'[{int(k)}]' for k in i)} = {_numbers(pts[i])}"

    for i in np.ndindex(*lab.shape):
        if lab[i] not in (-1, 0, 1):
            raise ConfigError(f"{name(i)} has label {lab[i].item()!r}: labels are 1 (foreground), 0 (background) or -1")
        x, y = pts[i]
        if lab[i] == -1:
            continue
        if not (np.isfinite(x) and np.isfinite(y)):
            raise ConfigError(f"{name(i)} is not finite")
        if not (0 <= x <= w and 0 <= y <= h):
            raise ConfigError(f"{name(i)} lies outside the image ({w} x {h} pixels, W x H); points are XY pixels")

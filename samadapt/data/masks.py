"""Instance masks from COCO segmentations without a full-resolution float copy.

A TACO photo is 6000x5312: one mask is 32 MB as bool and 127 MB as float32, and its 90 objects
are 2.9 GB as bool. This module keeps masks as COCO run-length encodings (a few kB each) and
decodes only what is asked for:

- :func:`segmentation_to_rle`: polygons or RLE -> one compressed RLE (what ``annToMask`` decodes);
- :func:`rle_box` / :func:`rle_area`: the tight box and pixel count, without decoding;
- :func:`rle_sampler`: the mask's values at a grid of rows x columns (what resizing to the model's
  frame reads), decoded from the runs, in memory bounded by the grid, not by the image;
- :class:`InstanceMasks`: a lazy (N, H, W) bool stack that decodes the masks an index asks for
  (``masks[k]``, ``masks[a:b]``, ``masks[:, ::4, ::4]``) and all of them only for ``np.asarray``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from pycocotools import mask as mask_utils

__all__ = ["InstanceMasks", "decode_rle", "rle_area", "rle_box", "rle_counts", "rle_sampler", "segmentation_to_rle"]

#: at most this many grid points are looked up at once by :func:`rle_sampler` (8 bytes each)
_SAMPLE_CHUNK = 1 << 20


def segmentation_to_rle(segmentation: list | dict, height: int, width: int) -> dict:
    """COCO segmentation (polygons, compressed or uncompressed RLE) -> one compressed RLE."""
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def decode_rle(rle: dict) -> np.ndarray:
    """Compressed RLE -> bool (H, W) (pycocotools' decode, as ``annToMask``)."""
    return mask_utils.decode(rle).astype(bool)


def rle_area(rle: dict) -> int:
    """Number of pixels of a compressed RLE (exact, without decoding)."""
    return int(mask_utils.area(rle))


def rle_box(rle: dict) -> np.ndarray:
    """Tight box of a compressed RLE -> float32 (4,) XYXY in inclusive pixel indices, equal to
    :func:`~samadapt.data.prompts.boxes_from_masks` of the decoded mask ([0, 0, 0, 0] if empty)."""
    x, y, w, h = (int(v) for v in mask_utils.toBbox(rle))
    if w == 0 or h == 0:
        return np.zeros(4, dtype=np.float32)
    return np.array([x, y, x + w - 1, y + h - 1], dtype=np.float32)


def rle_counts(rle: dict) -> np.ndarray:
    """The run lengths of a compressed RLE (pycocotools' LEB128-like string) -> int64 array.

    Runs alternate background / foreground, starting with background, in column-major order
    (``rleFrString`` of pycocotools' ``maskApi.c``).
    """
    s = rle["counts"]
    s = s.decode("ascii") if isinstance(s, bytes) else s
    counts: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x = k = 0
        more = True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return np.asarray(counts, dtype=np.int64)


def rle_sampler(rle: dict) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``sample(rows, cols)`` -> bool (len(rows), len(cols)): the mask at those pixels.

    Looks the grid points up in the run boundaries (a pixel is foreground when an odd number of
    boundaries lie at or before its column-major index), a chunk of grid points at a time: memory
    is bounded by the grid, never by the image.
    """
    height = int(rle["size"][0])
    ends = np.cumsum(rle_counts(rle))  # end (exclusive) of each run, column-major

    def sample(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        out = np.empty((len(rows), len(cols)), dtype=bool)
        step = max(1, _SAMPLE_CHUNK // max(len(rows), 1))
        for c0 in range(0, len(cols), step):
            flat = cols[None, c0 : c0 + step] * height + rows[:, None]
            out[:, c0 : c0 + step] = np.searchsorted(ends, flat, side="right") % 2 == 1
        return out

    return sample


class InstanceMasks:
    """A lazy bool (N, H, W) stack of masks held as compressed RLEs.

    Indexing decodes only the masks it selects, one at a time: ``masks[k]`` (H, W), ``masks[a:b]``
    (b - a, H, W), ``masks[:, ::4, ::4]`` (subsampled as each mask is decoded); ``np.asarray(masks)``
    decodes all of them (N x H x W bytes). ``len``, ``shape``, :meth:`boxes` and :meth:`areas` decode
    nothing.
    """

    dtype = np.dtype(bool)
    ndim = 3

    def __init__(self, rles: Sequence[dict], size: tuple[int, int]) -> None:
        self.rles = list(rles)
        self.size = (int(size[0]), int(size[1]))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.rles), *self.size)

    def __len__(self) -> int:
        return len(self.rles)

    def boxes(self) -> np.ndarray:
        """float32 (N, 4) XYXY tight boxes (as ``boxes_from_masks`` of the decoded masks)."""
        return np.stack([rle_box(r) for r in self.rles]) if self.rles else np.zeros((0, 4), np.float32)

    def areas(self) -> np.ndarray:
        """int64 (N,) pixel counts."""
        return np.asarray([rle_area(r) for r in self.rles], dtype=np.int64)

    def _decode(self, ks: Sequence[int], rest: tuple) -> np.ndarray:
        first = decode_rle(self.rles[ks[0]])[rest] if len(ks) else np.broadcast_to(False, self.size)[rest]
        out = np.empty((len(ks), *first.shape), dtype=bool)
        for j, k in enumerate(ks):
            out[j] = first if j == 0 else decode_rle(self.rles[k])[rest]
        return out

    def __getitem__(self, key):
        head, rest = (key[0], tuple(key[1:])) if isinstance(key, tuple) else (key, ())
        if rest and any(r is Ellipsis or r is None for r in rest):
            return np.asarray(self)[key]
        if isinstance(head, (int, np.integer)):
            k = range(len(self.rles))[int(head)]  # IndexError as a list would raise
            return decode_rle(self.rles[k])[rest]
        if isinstance(head, slice):
            return self._decode(range(len(self.rles))[head], rest)
        idx = np.asarray(head)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return self._decode([int(i) for i in idx.reshape(-1)], rest)

    def __iter__(self):
        for r in self.rles:
            yield decode_rle(r)

    def __array__(self, dtype=None, copy=None):
        out = self._decode(range(len(self.rles)), ())
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"InstanceMasks(n={len(self.rles)}, size={self.size})"

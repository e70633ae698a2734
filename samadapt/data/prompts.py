"""Prompts derived from ground-truth masks: tight, loose and noisy boxes, and point clicks.

The "Don't waste SAM" protocol prompts SAM with one box per instance, taken from the ground-truth
mask. SAM's own training adds noise to those boxes (std 10% of the box side, at most 20 px), so the
decoder learns to tolerate imprecise boxes; evaluation uses the exact boxes. Points follow SAM's
interactive setting: positive clicks inside the object, negative ones just outside it.

All randomness comes from an explicit ``numpy.random.Generator`` so a sample's prompts depend only
on its seed (see :class:`~samadapt.data.sam_dataset.SamPromptDataset`).

Coordinate conventions (those of ``segment_anything``): boxes are XYXY with x1, y1, x2, y2 the
inclusive pixel indices of the mask's extreme pixels (``amg.batched_mask_to_box``); points are XY
at pixel centres (column + 0.5, row + 0.5); ``image_hw`` is (H, W).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from ..errors import ConfigError
from ..options import check_keys

__all__ = [
    "POINT_KINDS",
    "PromptConfig",
    "as_generator",
    "boxes_from_masks",
    "center_points",
    "distance_to_background",
    "extreme_points",
    "jitter_boxes",
    "loosen_boxes",
    "make_prompts",
    "sample_points",
]

#: label of a padding point, ignored by SAM's prompt encoder
PAD_LABEL = -1

#: how a :class:`PromptConfig` places its clicks: drawn at random (:func:`sample_points`), one at the
#: most interior pixel (:func:`center_points`), or the four extreme pixels (:func:`extreme_points`)
POINT_KINDS = ("sampled", "center", "extreme")


def as_generator(generator: np.random.Generator | int | None) -> np.random.Generator:
    """A ``numpy.random.Generator`` from a generator or a seed."""
    if isinstance(generator, np.random.Generator):
        return generator
    return np.random.default_rng(generator)


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """Tight boxes around masks: bool (N, H, W) -> float32 (N, 4) XYXY, inclusive pixel indices.

    An empty mask gets the box [0, 0, 0, 0], as in ``segment_anything.utils.amg.batched_mask_to_box``.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ConfigError(f"masks must be (N, H, W), got shape {masks.shape}")
    n, h, w = masks.shape
    if n == 0:
        return np.zeros((0, 4), dtype=np.float32)
    cols = masks.any(axis=1)  # (N, W)
    rows = masks.any(axis=2)  # (N, H)
    x1 = cols.argmax(axis=1)
    x2 = w - 1 - cols[:, ::-1].argmax(axis=1)
    y1 = rows.argmax(axis=1)
    y2 = h - 1 - rows[:, ::-1].argmax(axis=1)
    boxes = np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)
    boxes[~cols.any(axis=1)] = 0.0
    return boxes


def _clip_boxes(boxes: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """Clip XYXY boxes to pixel indices 0..W-1, 0..H-1 and make x1 <= x2, y1 <= y2."""
    h, w = image_hw
    b = boxes.copy()
    b[:, 0::2] = np.clip(b[:, 0::2], 0, w - 1)
    b[:, 1::2] = np.clip(b[:, 1::2], 0, h - 1)
    x = np.sort(b[:, 0::2], axis=1)
    y = np.sort(b[:, 1::2], axis=1)
    return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1).astype(np.float32)


def _sides(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) side length per coordinate: width for x1, x2 and height for y1, y2."""
    wh = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)
    return np.abs(wh[:, [0, 1, 0, 1]])


def jitter_boxes(
    boxes: np.ndarray,
    generator: np.random.Generator | int | None,
    *,
    std_ratio: float = 0.1,
    max_px: float = 20.0,
    image_hw: tuple[int, int],
) -> np.ndarray:
    """SAM's training noise on box prompts.

    Each coordinate moves by a gaussian offset whose standard deviation is ``std_ratio`` times the box
    side along that axis (width for x, height for y), the standard deviation being capped at
    ``max_px`` pixels (SAM: "noise with standard deviation equal to 10% of the box sidelength, to a
    maximum of 20 pixels"). The result is clipped to the image and kept valid (x1 <= x2, y1 <= y2).

    Args:
        boxes: (N, 4) XYXY in pixels.
        generator: numpy Generator (or a seed).
        std_ratio: noise std as a fraction of the side; 0 returns the boxes clipped.
        max_px: cap on the noise std, in pixels.
        image_hw: (H, W) of the image.

    Returns:
        float32 (N, 4).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if std_ratio < 0 or max_px < 0:
        raise ConfigError(f"box noise must be >= 0, got std_ratio={std_ratio}, max_px={max_px}")
    rng = as_generator(generator)
    std = np.minimum(std_ratio * _sides(boxes), max_px)
    noisy = boxes + rng.standard_normal(boxes.shape) * std
    return _clip_boxes(noisy, image_hw)


def loosen_boxes(boxes: np.ndarray, margin: float, image_hw: tuple[int, int]) -> np.ndarray:
    """Grow each side of (N, 4) XYXY boxes by ``margin`` times the box side along its axis, clipped
    to the image -> float32 (N, 4). ``margin=0.1`` grows a 100 px wide box to 120 px."""
    if margin < 0:
        raise ConfigError(f"loose margin must be >= 0, got {margin}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    grow = margin * _sides(boxes) * np.array([-1.0, -1.0, 1.0, 1.0])
    return _clip_boxes(boxes + grow, image_hw)


def center_points(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One positive click per mask at its most interior pixel (RITM's and SAM's first click: the
    pixel farthest from the background), deterministic.

    The distance is the chessboard distance (found by repeated 3x3 erosion, the image border counting
    as background); among the pixels at the largest distance the one nearest their mean is taken.

    Args:
        masks: bool (N, H, W).

    Returns:
        coords float32 (N, 1, 2) XY at pixel centres, labels int64 (N, 1): 1, or -1 (padding at
        (0, 0)) for an empty mask.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ConfigError(f"masks must be (N, H, W), got shape {masks.shape}")
    n = masks.shape[0]
    coords = np.zeros((n, 1, 2), dtype=np.float32)
    labels = np.full((n, 1), PAD_LABEL, dtype=np.int64)
    for i in range(n):
        ys, xs = np.nonzero(masks[i])
        if not len(ys):
            continue
        y0, x0 = ys.min(), xs.min()
        core = np.pad(masks[i, y0 : ys.max() + 1, x0 : xs.max() + 1], 1)  # cropped, with a background border
        while True:  # erode until nothing would be left: what remains is the most interior ring
            eroded = core.copy()
            eroded[1:-1, 1:-1] = np.logical_and.reduce(
                [
                    core[1 + dy : core.shape[0] - 1 + dy, 1 + dx : core.shape[1] - 1 + dx]
                    for dy in (-1, 0, 1)
                    for dx in (-1, 0, 1)
                ]
            )
            eroded[[0, -1], :] = False
            eroded[:, [0, -1]] = False
            if not eroded.any():
                break
            core = eroded
        cy, cx = np.nonzero(core)
        k = int(np.argmin((cy - cy.mean()) ** 2 + (cx - cx.mean()) ** 2))
        coords[i, 0] = (x0 + cx[k] - 1 + 0.5, y0 + cy[k] - 1 + 0.5)
        labels[i, 0] = 1
    return coords, labels


def _pick(rng: np.random.Generator, flat_idx: np.ndarray, n: int) -> np.ndarray:
    """``n`` entries of ``flat_idx``, without replacement when there are enough."""
    return flat_idx[rng.choice(len(flat_idx), size=n, replace=len(flat_idx) < n)]


def distance_to_background(mask: np.ndarray) -> np.ndarray:
    """(H, W) float64: each pixel's Euclidean distance to the nearest pixel outside ``mask`` (H, W)
    bool, the image border counting as outside (RITM's convention); 0 outside the mask. Computed on
    the mask's bounding box only, so a small object in a 6000x4000 photo stays cheap."""
    from scipy.ndimage import distance_transform_edt

    mask = np.asarray(mask, dtype=bool)
    dist = np.zeros(mask.shape, dtype=np.float64)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return dist
    sl = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    dist[sl] = distance_transform_edt(np.pad(mask[sl], 1))[1:-1, 1:-1]  # the padding is the outside
    return dist


def largest_error_region(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, bool] | None:
    """Where an annotator corrects a prediction: the largest 4-connected region of missed object
    pixels or of false-foreground pixels (ties: the missed region, then the first in raster order).

    Args:
        gt, pred: (H, W) bool ground truth and predicted mask.

    Returns:
        (region (H, W) bool, positive): ``positive`` is True for missed object (a positive click
        corrects it), False for false foreground; None when the prediction has no error. The
        click protocol clicks the region's most interior pixel; corrective-click training samples
        it towards the middle (RITM trains with the clicks it evaluates with).
    """
    from scipy.ndimage import label

    err = gt ^ pred
    if not err.any():
        return None
    # only the errors' bounding box matters (a 6000x4000 photo, a small object)
    rows, cols = np.flatnonzero(err.any(axis=1)), np.flatnonzero(err.any(axis=0))
    sl = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    best: tuple[int, bool, np.ndarray] | None = None
    for positive, errors in ((True, gt[sl] & ~pred[sl]), (False, pred[sl] & ~gt[sl])):
        labels, n = label(errors)
        if n == 0:
            continue
        areas = np.bincount(labels.ravel())[1:]
        k = int(np.argmax(areas))
        if best is None or areas[k] > best[0]:
            best = (int(areas[k]), positive, labels == k + 1)
    assert best is not None
    region = np.zeros(err.shape, dtype=bool)
    region[sl] = best[2]
    return region, best[1]


def sample_points(
    masks: np.ndarray, n_pos: int, n_neg: int, generator: np.random.Generator | int | None, *, interior: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Click prompts for each mask: ``n_pos`` inside it, then ``n_neg`` outside it.

    Positives are uniform over the mask's pixels (SAM's training clicks); with ``interior`` their
    probability is proportional to the pixel's distance to the background
    (:func:`distance_to_background`), so clicks fall towards the middle of the object, where
    annotators click and where the click protocol's first click goes (RITM trains with clicks
    kept off the boundary). Negatives are uniform over the pixels outside the
    mask but inside its box grown by 10% (the confusable surroundings); if there are none there,
    anywhere outside the mask. Where no pixel qualifies (empty mask, mask covering the image), the
    point is padding: label -1 at (0, 0), which SAM's prompt encoder ignores.

    Args:
        masks: bool (N, H, W).
        n_pos, n_neg: points per mask of each kind.
        generator: numpy Generator (or a seed).

    Returns:
        coords float32 (N, n_pos + n_neg, 2) XY at pixel centres, labels int64 (N, n_pos + n_neg)
        with 1 = positive, 0 = negative, -1 = padding.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ConfigError(f"masks must be (N, H, W), got shape {masks.shape}")
    if n_pos < 0 or n_neg < 0:
        raise ConfigError(f"point counts must be >= 0, got n_pos={n_pos}, n_neg={n_neg}")
    rng = as_generator(generator)
    n, h, w = masks.shape
    p = n_pos + n_neg
    coords = np.zeros((n, p, 2), dtype=np.float32)
    labels = np.full((n, p), PAD_LABEL, dtype=np.int64)
    if p == 0 or n == 0:
        return coords, labels
    boxes = loosen_boxes(boxes_from_masks(masks), 0.1, (h, w)).astype(np.int64)
    for i in range(n):
        m = masks[i]
        if n_pos:
            inside = np.flatnonzero(m)
            if len(inside):
                if interior:
                    weight = distance_to_background(m).ravel()[inside]
                    sel = inside[rng.choice(len(inside), size=n_pos, replace=True, p=weight / weight.sum())]
                else:
                    sel = _pick(rng, inside, n_pos)
                coords[i, :n_pos, 0] = sel % w + 0.5
                coords[i, :n_pos, 1] = sel // w + 0.5
                labels[i, :n_pos] = 1
        if n_neg:
            x1, y1, x2, y2 = boxes[i]
            crop = ~m[y1 : y2 + 1, x1 : x2 + 1]
            cw = x2 - x1 + 1
            outside = np.flatnonzero(crop)
            if len(outside) and m.any():
                sel = _pick(rng, outside, n_neg)
                xs, ys = sel % cw + x1, sel // cw + y1
            else:
                outside = np.flatnonzero(~m)
                if not len(outside):
                    continue
                sel = _pick(rng, outside, n_neg)
                xs, ys = sel % w, sel // w
            coords[i, n_pos:, 0] = xs + 0.5
            coords[i, n_pos:, 1] = ys + 0.5
            labels[i, n_pos:] = 0
    return coords, labels


def extreme_points(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The four extreme clicks of each mask (the annotation prompt of DEXTR and of the Sama study):
    its leftmost, rightmost, topmost and bottommost pixels, in that order.

    Where several pixels share an extreme (a straight edge), the middle one along that edge is taken
    (the lower middle of an even count), so the clicks are deterministic. The box the four clicks span
    is the mask's tight box: ``boxes_from_masks(masks)`` equals ``[left.x, top.y, right.x, bottom.y]
    - 0.5``.

    Args:
        masks: bool (N, H, W).

    Returns:
        coords float32 (N, 4, 2) XY at pixel centres, labels int64 (N, 4): 1 (positive clicks), or
        -1 (padding at (0, 0)) for an empty mask.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ConfigError(f"masks must be (N, H, W), got shape {masks.shape}")
    n = masks.shape[0]
    coords = np.zeros((n, 4, 2), dtype=np.float32)
    labels = np.full((n, 4), PAD_LABEL, dtype=np.int64)
    for i in range(n):
        ys, xs = np.nonzero(masks[i])  # row-major: for equal rows, xs ascend
        if not len(ys):
            continue

        def middle(values: np.ndarray) -> int:
            return int(np.sort(values)[(len(values) - 1) // 2])

        left, right, top, bottom = xs.min(), xs.max(), ys.min(), ys.max()
        coords[i] = (
            np.array(
                [
                    [left, middle(ys[xs == left])],
                    [right, middle(ys[xs == right])],
                    [middle(xs[ys == top]), top],
                    [middle(xs[ys == bottom]), bottom],
                ],
                np.float32,
            )
            + 0.5
        )
        labels[i] = 1
    return coords, labels


@dataclass(frozen=True)
class PromptConfig:
    """How prompts are made from ground-truth masks, for training and for evaluation
    (:func:`make_prompts`; evaluation's prompt kinds are configs of exact boxes, see
    :func:`samadapt.evaluation.evaluate.prompt_config`).

    Args:
        box_noise: std of the box-corner noise as a fraction of the box side (SAM: 0.1).
        box_noise_max_px: cap on that std, in pixels of the original image (SAM: 20).
        loose_margin: grow the box by this fraction of its side before the noise (0 = tight box).
        num_points: positive clicks per instance (``points="sampled"``).
        num_negative_points: negative clicks per instance (``points="sampled"``).
        use_boxes: prompt with a box; at least a box or a click is needed.
        interior_points: draw the positive clicks towards the object's middle (probability
            proportional to the distance to the background) instead of uniformly.
        points: how the clicks are placed (:data:`POINT_KINDS`): ``sampled`` (``num_points`` +
            ``num_negative_points`` at random), ``center`` (one at the most interior pixel) or
            ``extreme`` (the four extreme pixels; the box is then the tight box they span); the last
            two are deterministic and leave ``num_points`` and ``num_negative_points`` at 0.
    """

    box_noise: float = 0.1
    box_noise_max_px: float = 20.0
    loose_margin: float = 0.0
    num_points: int = 0
    num_negative_points: int = 0
    use_boxes: bool = True
    interior_points: bool = False
    points: str = "sampled"

    def __post_init__(self) -> None:
        for name in ("box_noise", "box_noise_max_px", "loose_margin"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"PromptConfig.{name} must be a finite number >= 0, got {v!r}")
        for name in ("num_points", "num_negative_points"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"PromptConfig.{name} must be an integer >= 0, got {v!r}")
        for name in ("use_boxes", "interior_points"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"PromptConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if self.points not in POINT_KINDS:
            raise ConfigError(f"PromptConfig.points is {self.points!r}; choose one of {list(POINT_KINDS)}")
        if self.points != "sampled" and (self.num_points or self.num_negative_points):
            raise ConfigError(
                f"PromptConfig(points={self.points!r}) places its own clicks; leave num_points and "
                f"num_negative_points at 0 (got {self.num_points} and {self.num_negative_points})"
            )
        if not self.use_boxes and self.points_per_instance == 0:
            raise ConfigError(
                "PromptConfig has no prompt: use_boxes=False and num_points=0; set use_boxes=True or num_points >= 1"
            )

    @property
    def points_per_instance(self) -> int:
        """P, the clicks per instance."""
        return {"center": 1, "extreme": 4}.get(self.points, self.num_points + self.num_negative_points)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PromptConfig":
        check_keys(cls, d, what="PromptConfig keys")
        return cls(**d)


def make_prompts(
    masks: np.ndarray | Callable[[], np.ndarray],
    config: PromptConfig,
    generator: np.random.Generator | int | None,
    *,
    boxes: np.ndarray | None = None,
    image_hw: tuple[int, int] | None = None,
) -> dict[str, np.ndarray | None]:
    """The prompts of some instances as ``config`` says: the one prompt builder of training
    (:class:`~samadapt.data.sam_dataset.SamPromptDataset`, one instance at a time) and evaluation
    (:func:`~samadapt.evaluation.evaluate.evaluate_records`, one image at a time).

    The box is the instance's (``boxes``, default its tight box; with ``points="extreme"`` always the
    tight box), grown by ``loose_margin``, then jittered by ``box_noise``. The noise is drawn whether
    or not ``use_boxes``, so the clicks that follow from the same generator do not depend on it.

    Args:
        masks: bool (N, H, W) ground truth, or a function returning it, called only when the masks
            are needed (clicks, or no ``boxes``): a caller holding RLEs decodes nothing for boxes.
        config: the prompts to make.
        generator: numpy Generator (or a seed) of the box noise and the sampled clicks.
        boxes: (N, 4) XYXY tight boxes of the instances, in pixels.
        image_hw: (H, W); default the masks' (required when ``masks`` is a function).

    Returns:
        ``boxes`` float32 (N, 4) XYXY or None (``use_boxes`` False); ``points`` float32 (N, P, 2) XY at
        pixel centres and ``labels`` int64 (N, P), or both None when P is 0; in pixels of the image.
    """
    decoded: list[np.ndarray] = []

    def get_masks() -> np.ndarray:
        if not decoded:
            m = np.asarray(masks() if callable(masks) else masks, dtype=bool)
            if m.ndim != 3:
                raise ConfigError(f"masks must be (N, H, W), got shape {m.shape}")
            decoded.append(m)
        return decoded[0]

    if image_hw is None:
        if callable(masks):
            raise ConfigError("make_prompts: give image_hw when masks is a function")
        image_hw = get_masks().shape[1:]
    hw = (int(image_hw[0]), int(image_hw[1]))
    rng = as_generator(generator)
    if boxes is None or config.points == "extreme":
        box = boxes_from_masks(get_masks())
    else:
        box = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if config.loose_margin:
        box = loosen_boxes(box, config.loose_margin, hw)
    if config.box_noise:
        box = jitter_boxes(box, rng, std_ratio=config.box_noise, max_px=config.box_noise_max_px, image_hw=hw)
    coords = labels = None
    if config.points == "center":
        coords, labels = center_points(get_masks())
    elif config.points == "extreme":
        coords, labels = extreme_points(get_masks())
    elif config.points_per_instance:
        coords, labels = sample_points(
            get_masks(), config.num_points, config.num_negative_points, rng, interior=config.interior_points
        )
    return {"boxes": box if config.use_boxes else None, "points": coords, "labels": labels}

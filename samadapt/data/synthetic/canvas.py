"""The drawing kit both demo domains share: noise, polygons, masks and the back-to-front compositor.

Everything is vectorised numpy (or PIL for filters), and every random draw goes through the image's
own ``np.random.Generator``, so a scene is a pure function of its seed. Ground truth is exact by
construction: :class:`Scene` records which object owns each pixel while it composites, and an
object's annotation is what it still owns at the end (:meth:`Scene.annotations`).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter
from pycocotools import mask as mask_utils

#: Objects with fewer visible pixels than this are drawn but not annotated.
MIN_VISIBLE_AREA = 40
#: Smallest object, as the square root of its area in pixels; the largest covers 40% of the image.
MIN_OBJECT_SIDE = 16.0
MAX_OBJECT_AREA_FRACTION = 0.4


@dataclass
class DemoSample:
    """One rendered image and its exact ground truth (what one COCO image entry holds).

    Attributes:
        image: RGB uint8, shape (H, W, 3), before JPEG compression.
        masks: visible region of each annotated object, bool, shape (N, H, W); pairwise disjoint.
        category_ids: (N,) int64, ids from :data:`CATEGORIES` of the domain.
        polygons: per object, the (K, 2) float64 XY polygon (pixel-corner coordinates, pycocotools
            convention) when the object is seen whole, else ``None`` (stored as RLE).
        attributes: per object, ``{"occluded", "truncated", "transparent"}`` booleans.
        scene: the background kind, one of :data:`SCENES` of the domain.
    """

    image: np.ndarray
    masks: np.ndarray
    category_ids: np.ndarray
    polygons: list[np.ndarray | None]
    attributes: list[dict]
    scene: str


# --------------------------------------------------------------------------------------------
# Small numeric helpers (all vectorised; every random draw goes through the image's rng)
# --------------------------------------------------------------------------------------------


def smooth_noise(rng: np.random.Generator, h: int, w: int, cells: float) -> np.ndarray:
    """Band-limited noise, (h, w) float32 with zero mean and unit std.

    A grid of about ``cells`` normal values along the longer side is upsampled bicubically, so
    features are roughly ``max(h, w) / cells`` pixels wide.
    """
    gy = max(2, int(round(cells * h / max(h, w))) + 2)
    gx = max(2, int(round(cells * w / max(h, w))) + 2)
    grid = rng.standard_normal((gy, gx)).astype(np.float32)
    out = np.asarray(Image.fromarray(grid, mode="F").resize((w, h), Image.BICUBIC), dtype=np.float32)
    out = out - out.mean()
    return out / (out.std() + 1e-6)


def fractal_noise(
    rng: np.random.Generator, h: int, w: int, cells: float, octaves: int = 4, persistence: float = 0.5
) -> np.ndarray:
    """Sum of :func:`smooth_noise` octaves (cells doubling, amplitude x ``persistence``); (h, w),
    zero mean, unit std."""
    out = np.zeros((h, w), np.float32)
    for o in range(octaves):
        out += persistence**o * smooth_noise(rng, h, w, cells * 2**o)
    out -= out.mean()
    return out / (out.std() + 1e-6)


def blur_rgb(canvas: np.ndarray, sigma_x: float, sigma_y: float | None = None) -> np.ndarray:
    """Gaussian blur of an RGB canvas (H, W, 3) float 0..255 (quantised to uint8 on the way, well
    below the sensor noise added later); sigmas in px, one per axis for motion blur."""
    sigma_y = sigma_x if sigma_y is None else sigma_y
    img = Image.fromarray(np.clip(np.round(canvas), 0, 255).astype(np.uint8))
    return np.asarray(img.filter(ImageFilter.GaussianBlur((sigma_x, sigma_y))), np.float32)


def hsv(h: float, s: float, v: float) -> np.ndarray:
    """HSV in [0, 1] -> RGB (3,) float32 in 0..255."""
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))), np.float32) * 255


def rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def signed_area(p: np.ndarray) -> float:
    """Shoelace area of a closed (K, 2) polygon (positive when counter-clockwise in XY)."""
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def resample(p: np.ndarray, n: int) -> np.ndarray:
    """(n, 2) points equally spaced along the perimeter of the closed polygon ``p`` (K, 2)."""
    closed = np.vstack([p, p[:1]])
    seg = np.hypot(*np.diff(closed, axis=0).T)
    t = np.concatenate([[0.0], np.cumsum(seg)])
    s = np.linspace(0.0, t[-1], n, endpoint=False)
    return np.stack([np.interp(s, t, closed[:, 0]), np.interp(s, t, closed[:, 1])], axis=1)


def periodic_noise(rng: np.random.Generator, n: int, k_min: int, k_max: int, slope: float) -> np.ndarray:
    """(n,) zero-mean periodic 1-D noise: sinusoids of frequency k_min..k_max with amplitude
    k**-slope and random phase, normalised to max |value| = 1."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    k = np.arange(k_min, k_max + 1)
    amp = k.astype(np.float64) ** -slope * rng.uniform(0.5, 1.0, len(k))
    phase = rng.uniform(0, 2 * np.pi, len(k))
    out = (amp[:, None] * np.sin(k[:, None] * t[None] + phase[:, None])).sum(0)
    return out / (np.abs(out).max() + 1e-9)


def crumple(rng: np.random.Generator, p: np.ndarray, amplitude: float, n: int = 160, k_max: int = 40) -> np.ndarray:
    """Deform a closed polygon's outline: resample to ``n`` points and push each along its normal by
    multi-scale periodic noise of peak ``amplitude`` px (bumps, dents and folds of all sizes)."""
    q = resample(p, n)
    tangent = np.roll(q, -1, axis=0) - np.roll(q, 1, axis=0)
    normal = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-9
    if signed_area(q) < 0:  # make the normals point outwards
        normal = -normal
    offset = amplitude * periodic_noise(rng, n, 2, k_max, slope=0.8)
    return q + offset[:, None] * normal


def raster(poly: np.ndarray, h: int, w: int) -> np.ndarray:
    """Rasterise an XY polygon (K, 2) exactly as ``COCO.annToMask`` does; bool (h, w)."""
    rle = mask_utils.frPyObjects([poly.reshape(-1).tolist()], h, w)
    return mask_utils.decode(rle)[:, :, 0].astype(bool)


def bbox_slices(mask: np.ndarray, pad: int) -> tuple[slice, slice]:
    """Row/column slices of the mask's bounding box grown by ``pad`` px, clipped to the image."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    h, w = mask.shape
    return (
        slice(max(0, rows[0] - pad), min(h, rows[-1] + 1 + pad)),
        slice(max(0, cols[0] - pad), min(w, cols[-1] + 1 + pad)),
    )


def erode(mask: np.ndarray, px: int) -> np.ndarray:
    """Binary erosion of a bool (h, w) mask by a (2 px + 1)-square (what lies ``px`` px inside)."""
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.filter(ImageFilter.MinFilter(2 * px + 1))) > 127


def soft(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Anti-aliased coverage (h, w) float32 in [0, 1] whose 0.5 level follows the bool mask's edge
    (a Gaussian of ``sigma`` px; 8-bit precision is plenty for an alpha)."""
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.filter(ImageFilter.GaussianBlur(sigma)), np.float32) / 255


# --------------------------------------------------------------------------------------------
# Objects and compositing (shared by both domains)
# --------------------------------------------------------------------------------------------


@dataclass
class Frame:
    """An object's local frame over a crop: ``u`` along its length, ``v`` across, in px from its
    centre (arrays (h, w) float32), ``un``/``vn`` the same divided by the half length/width."""

    u: np.ndarray
    v: np.ndarray
    un: np.ndarray
    vn: np.ndarray
    length: float
    width: float
    kind: str = ""


# A painter gets (rng, frame, mask crop, background colour under the object) and returns the
# object's colour (h, w, 3) float32 in 0..255 and its opacity (h, w) float32 in [0, 1].
Painter = Callable[[np.random.Generator, Frame, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class Shape:
    """A shape in its local frame: polygon (K, 2) centred on 0 with ``u`` along its length, its
    nominal length and width (px), and a ``kind`` that painters may use (e.g. ``"can_top"``)."""

    polygon: np.ndarray
    length: float
    width: float
    kind: str = ""


@dataclass
class Pose:
    """A shape placed in the image: polygon (K, 2) XY rounded to 0.01 px (as stored in the JSON),
    its exact mask (H, W) bool, rotation (rad) and centre (2,) XY px."""

    polygon: np.ndarray
    mask: np.ndarray
    angle: float
    centre: np.ndarray


def scale_to(shape: Shape, side: float) -> Shape:
    """Scale a shape so that the square root of its area is ``side`` px."""
    f = side / np.sqrt(abs(signed_area(shape.polygon)) + 1e-9)
    return Shape(shape.polygon * f, shape.length * f, shape.width * f, shape.kind)


def object_side(rng: np.random.Generator, h: int, w: int, factor: float = 1.0) -> float:
    """Draw an object's size (sqrt of its area, px): log-uniform from MIN_OBJECT_SIDE to 40% of
    the image area, times a per-category ``factor``, clipped to that range."""
    hi = np.sqrt(MAX_OBJECT_AREA_FRACTION * h * w)
    side = np.exp(rng.uniform(np.log(MIN_OBJECT_SIDE), np.log(hi))) * factor
    return float(np.clip(side, MIN_OBJECT_SIDE, hi))


class Scene:
    """Back-to-front compositor that keeps the exact ownership of every pixel.

    ``owner`` (H, W) int32 holds the index of the front-most object at each pixel (-1: background),
    so the visible region of object i is ``owner == i`` at any time.
    """

    def __init__(self, canvas: np.ndarray):
        self.canvas = canvas  # (H, W, 3) float32, 0..255
        self.h, self.w = canvas.shape[:2]
        self.owner = np.full((self.h, self.w), -1, np.int32)
        self.full_area: list[int] = []  # in-image area of each object's whole mask
        self.polygons: list[np.ndarray] = []
        self.category_ids: list[int] = []
        self.transparent: list[bool] = []
        self.truncated: list[bool] = []

    def place(
        self,
        rng: np.random.Generator,
        shape: Shape,
        *,
        inside: bool,
        max_cover: float,
        min_inside: float = 0.5,
        tries: int = 12,
    ) -> Pose | None:
        """Find a pose for ``shape`` that hides at most ``max_cover`` of any object's visible area.

        ``inside`` keeps the whole shape in the image; otherwise at least ``min_inside`` of its area
        must be. Returns ``None`` when no pose was found in ``tries``.
        """
        visible = np.bincount(self.owner.ravel() + 1, minlength=len(self.full_area) + 1)[1:]
        for _ in range(tries):
            angle = float(rng.uniform(0, 2 * np.pi))
            local = shape.polygon @ rotation(angle).T
            lo, hi = local.min(0), local.max(0)
            if inside:
                span = np.array([self.w, self.h]) - (hi - lo)
                if (span <= 1).any():
                    continue
                centre = -lo + rng.uniform([0.5, 0.5], span - 0.5)
            else:
                centre = rng.uniform([0, 0], [self.w, self.h])
            poly = np.round(local + centre, 2)
            mask = raster(poly, self.h, self.w)
            area = int(mask.sum())
            if area < MIN_VISIBLE_AREA or area < min_inside * abs(signed_area(poly)):
                continue
            covered = np.bincount(self.owner[mask] + 1, minlength=len(self.full_area) + 1)[1:]
            if len(covered) and (covered / np.maximum(visible, 1)).max() > max_cover:
                continue
            return Pose(poly, mask, angle, centre)
        return None

    @staticmethod
    def frame(pose: Pose, shape: Shape, rows: slice, cols: slice) -> Frame:
        """The object's local frame over the crop ``(rows, cols)`` of the image."""
        y, x = np.mgrid[rows, cols].astype(np.float32)
        x = x + 0.5 - pose.centre[0]  # pixel centres
        y = y + 0.5 - pose.centre[1]
        c, s = np.cos(pose.angle), np.sin(pose.angle)
        u, v = x * c + y * s, -x * s + y * c
        return Frame(u, v, u / (shape.length / 2), v / (shape.width / 2), shape.length, shape.width, shape.kind)

    def cast_shadow(self, mask: np.ndarray, offset: tuple[float, float], sigma: float, strength: float) -> None:
        """Darken what is already drawn by a blurred copy of ``mask`` shifted by ``offset`` (dx, dy)
        px. Shadows change pixels, never masks."""
        dx, dy = int(round(offset[0])), int(round(offset[1]))
        shifted = np.zeros_like(mask)
        ys, yd = (slice(0, self.h - dy), slice(dy, self.h)) if dy >= 0 else (slice(-dy, self.h), slice(0, self.h + dy))
        xs, xd = (slice(0, self.w - dx), slice(dx, self.w)) if dx >= 0 else (slice(-dx, self.w), slice(0, self.w + dx))
        shifted[yd, xd] = mask[ys, xs]
        if not shifted.any():
            return
        rows, cols = bbox_slices(shifted, int(3 * sigma) + 2)
        shade = soft(shifted[rows, cols], sigma)
        self.canvas[rows, cols] *= (1.0 - strength * shade)[..., None]

    def draw(
        self,
        rng: np.random.Generator,
        pose: Pose,
        shape: Shape,
        category_id: int,
        painter: Painter,
        *,
        edge_sigma: float = 0.6,
    ) -> None:
        """Composite an object over the canvas and make it the owner of its mask's pixels.

        The edge is anti-aliased with a Gaussian of ``edge_sigma`` px whose 0.5 level is the mask
        edge, so the drawn object and its mask agree to the pixel.
        """
        poly, mask = pose.polygon, pose.mask
        rows, cols = bbox_slices(mask, 3)
        crop = mask[rows, cols]
        fr = self.frame(pose, shape, rows, cols)
        under = np.median(self.canvas[rows, cols][crop], axis=0)
        colour, opacity = painter(rng, fr, crop, under)
        alpha = (soft(crop, edge_sigma) * opacity)[..., None]
        region = self.canvas[rows, cols]
        self.canvas[rows, cols] = alpha * colour + (1 - alpha) * region
        index = len(self.full_area)
        self.owner[mask] = index
        self.full_area.append(int(mask.sum()))
        self.polygons.append(poly)
        self.category_ids.append(category_id)
        self.transparent.append(bool(opacity[crop].mean() < 0.8))
        # cut by the image border: such polygons would need clipping, so they are stored as RLE
        self.truncated.append(bool((poly < 0).any() or (poly[:, 0] > self.w).any() or (poly[:, 1] > self.h).any()))

    def annotations(self) -> tuple[np.ndarray, np.ndarray, list, list]:
        """(masks (N, H, W) bool, category ids (N,), polygons, attributes) of the objects whose
        visible area is at least MIN_VISIBLE_AREA, back to front."""
        masks, cats, polys, attrs = [], [], [], []
        for i in range(len(self.full_area)):
            vis = self.owner == i
            area = int(vis.sum())
            if area < MIN_VISIBLE_AREA:
                continue
            occluded = area < self.full_area[i]
            whole = not occluded and not self.truncated[i]
            masks.append(vis)
            cats.append(self.category_ids[i])
            polys.append(self.polygons[i] if whole else None)
            attrs.append({"occluded": occluded, "truncated": self.truncated[i], "transparent": self.transparent[i]})
        h, w = self.owner.shape
        stack = np.stack(masks) if masks else np.zeros((0, h, w), bool)
        return stack, np.asarray(cats, np.int64), polys, attrs


def finish(canvas: np.ndarray, rng: np.random.Generator, noise_std: tuple[float, float] = (1.0, 3.0)) -> np.ndarray:
    """Add sensor noise and quantise: (H, W, 3) float -> uint8."""
    canvas = canvas + rng.normal(0, rng.uniform(*noise_std), canvas.shape).astype(np.float32)
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8)


def linear_ramp(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w) float32 ramp from -0.5 to 0.5 along a random direction across the image."""
    a = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = (x - w / 2) * np.cos(a) + (y - h / 2) * np.sin(a)
    return r / (np.abs(r).max() * 2 + 1e-6)

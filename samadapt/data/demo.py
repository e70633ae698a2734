"""Generated COCO instance-segmentation datasets: the data the demos, tests and ``mini`` model use.

No real waste images ship with samadapt, so this module renders small synthetic scenes in two
domains and writes them as standard COCO datasets:

``generic``
    What SAM-style promptable segmentation learns first: 1-8 opaque shapes (ellipses, rectangles,
    triangles, convex/star polygons, smooth blobs) with clear edges, flat or gently shaded colours
    that contrast with a plain, gradient or mildly noisy background, and moderate occlusion.
    The ``mini`` model is pretrained on it (``recipes/pretrain_mini.py``).

``waste``
    What makes waste hard for SAM (TACO, ZeroWaste-f, TrashCan): 3-15 objects of five material
    categories (ZeroWaste-f's ids 1-4 plus paper) on a per-image ``scene`` - a striped, grimy
    conveyor belt, gravel/grass/soil ground, or hazy underwater seabed with caustics and particles.
    Objects are deformable and crumpled (multi-scale outline noise), transparent or semi-transparent
    (the background shows through; only a rim and highlights mark the edge), camouflaged against
    the background, heavily cluttered and occluded, cast shadows (NOT part of any mask), and carry
    labels, print, tape, folds and specular stripes whose colour edges lie INSIDE the object.
    Parts of the image may be blurred.

Both domains share the image size, the pixel value range, the sensor noise and the object-size
distribution, so the gap between them is semantic, not statistical.

Ground truth is exact by construction: every object is a polygon rasterised with pycocotools (the
same rasteriser ``COCO.annToMask`` uses), the image is composited back to front with those masks,
and each annotation is the object's VISIBLE region (its mask minus the masks of everything drawn in
front of it, including transparent objects). Instance masks of one image therefore never overlap.
Objects seen whole are stored as polygons; occluded or cut by the image border, as compressed RLE.
Objects with fewer than :data:`MIN_VISIBLE_AREA` visible pixels are drawn but not annotated.

Output layout (``file_name`` is relative to ``root/<split>/images``)::

    root/dataset.json                     generator parameters + counts (the cache key)
    root/train/annotations.json           COCO: images, annotations, categories
    root/train/images/000000.jpg ...
    root/val/annotations.json
    root/val/images/000000.jpg ...

Every image is rendered from its own ``np.random.default_rng`` seeded with
``(seed, domain, split, index)``, so a dataset is byte-identical from run to run and any image can
be re-rendered alone with :func:`render_demo_image`.
"""

from __future__ import annotations

import colorsys
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from pycocotools import mask as mask_utils
from tqdm.auto import tqdm

from ..errors import ConfigError, DataError

__all__ = [
    "DEMO_VERSION",
    "DOMAINS",
    "SPLITS",
    "CATEGORIES",
    "SCENES",
    "MIN_VISIBLE_AREA",
    "DemoSample",
    "make_demo_dataset",
    "render_demo_image",
]

#: Bumped whenever the rendered bytes change, so cached datasets are regenerated.
DEMO_VERSION = 1
DOMAINS = ("generic", "waste")
SPLITS = ("train", "val")
CATEGORIES: dict[str, tuple[dict, ...]] = {
    "generic": (
        {"id": 1, "name": "ellipse", "supercategory": "shape"},
        {"id": 2, "name": "rectangle", "supercategory": "shape"},
        {"id": 3, "name": "triangle", "supercategory": "shape"},
        {"id": 4, "name": "polygon", "supercategory": "shape"},
        {"id": 5, "name": "blob", "supercategory": "shape"},
    ),
    # ids 1-4 are ZeroWaste-f's; 5 stands for TACO's paper classes.
    "waste": (
        {"id": 1, "name": "rigid_plastic", "supercategory": "plastic"},
        {"id": 2, "name": "cardboard", "supercategory": "paper"},
        {"id": 3, "name": "metal", "supercategory": "metal"},
        {"id": 4, "name": "soft_plastic", "supercategory": "plastic"},
        {"id": 5, "name": "paper", "supercategory": "paper"},
    ),
}
#: The ``scene`` recorded on each COCO image entry, per domain.
SCENES = {"generic": ("flat", "gradient", "textured"), "waste": ("conveyor", "ground", "underwater")}
#: Objects with fewer visible pixels than this are drawn but not annotated.
MIN_VISIBLE_AREA = 40
JPEG_QUALITY = 95
#: Longest image side for the default ``image_size`` (larger requested sizes raise the cap).
MAX_SIDE = 360
#: Relative jitter of each image side around ``image_size`` (so padding code gets exercised).
SIZE_JITTER = 0.1
#: Smallest object, as the square root of its area in pixels; the largest covers 40% of the image.
MIN_OBJECT_SIDE = 16.0
MAX_OBJECT_AREA_FRACTION = 0.4

_GENERATOR = "samadapt.data.demo"
_DOMAIN_KEYS = {"generic": 1, "waste": 2}
_SPLIT_KEYS = {"train": 1, "val": 2}


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


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


def _image_shape(rng: np.random.Generator, image_size: tuple[int, int]) -> tuple[int, int]:
    """Draw one image's (H, W): each side within +-10% of ``image_size``, longest side capped."""
    h0, w0 = image_size
    cap = max(MAX_SIDE, h0, w0)
    h = int(round(h0 * rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER)))
    w = int(round(w0 * rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER)))
    scale = min(1.0, cap / max(h, w))
    return max(8, int(h * scale)), max(8, int(w * scale))


def render_demo_image(
    domain: str, *, seed: int, split: str, index: int, image_size: tuple[int, int] = (240, 320)
) -> DemoSample:
    """Render image ``index`` of ``split`` exactly as :func:`make_demo_dataset` writes it.

    Args:
        domain: ``"generic"`` or ``"waste"``.
        seed: non-negative dataset seed.
        split: ``"train"`` or ``"val"``.
        index: 0-based image index within the split.
        image_size: nominal (H, W) in pixels; each image's sides vary by +-10%.
    """
    _check_domain(domain)
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    rng = np.random.default_rng([int(seed), _DOMAIN_KEYS[domain], _SPLIT_KEYS[split], int(index)])
    h, w = _image_shape(rng, image_size)
    return _render_generic(rng, h, w) if domain == "generic" else _render_waste(rng, h, w)


def make_demo_dataset(
    root: str | os.PathLike,
    *,
    domain: str = "waste",
    n_train: int = 200,
    n_val: int = 50,
    seed: int = 0,
    image_size: tuple[int, int] = (240, 320),
    progress: bool = True,
) -> Path:
    """Write a generated COCO instance-segmentation dataset under ``root`` (see the module doc).

    Cheap to call on every run: when ``root/dataset.json`` records the same parameters and
    :data:`DEMO_VERSION`, nothing is written. Otherwise the dataset is rendered into a temporary
    sibling directory and renamed into place, so an interrupted call never leaves half a dataset.

    Args:
        root: output directory; must be new, empty, or a dataset this function wrote.
        domain: ``"waste"`` (hard, waste-like scenes) or ``"generic"`` (simple shapes).
        n_train: number of training images (>= 0).
        n_val: number of validation images (>= 0).
        seed: non-negative seed; the same seed gives byte-identical files.
        image_size: nominal (H, W) in pixels, each side 64..1024; images vary by +-10% per side.
        progress: show a tqdm progress bar.

    Returns:
        ``Path(root)``.

    Raises:
        ConfigError: a parameter is out of range.
        DataError: ``root`` holds something that is not a demo dataset.
    """
    _check_domain(domain)
    for name, n in (("n_train", n_train), ("n_val", n_val)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"`{name}` must be a non-negative integer, got {n!r}")
    if n_train + n_val == 0:
        raise ConfigError("n_train and n_val are both 0: there is nothing to generate")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"`seed` must be a non-negative integer, got {seed!r}")
    try:
        sides = tuple(image_size)
    except TypeError:
        sides = ()
    if len(sides) != 2 or not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and 64 <= s <= 1024 for s in sides
    ):
        raise ConfigError(f"`image_size` must be (H, W) with integer sides in 64..1024, got {image_size!r}")
    image_size = (int(image_size[0]), int(image_size[1]))

    root = Path(root)
    params = {
        "domain": domain, "n_train": n_train, "n_val": n_val, "seed": seed, "image_size": list(image_size),
    }
    if _is_cached(root, params):
        return root
    if root.exists() and not root.is_dir():
        raise DataError(f"{str(root)!r} is a file, not a directory; pass a directory for the demo dataset")
    if root.exists() and any(root.iterdir()) and _read_manifest(root) is None:
        raise DataError(
            f"{str(root)!r} exists and is not a demo dataset (no dataset.json written by "
            f"make_demo_dataset); pass a new or empty directory"
        )

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        counts = {}
        with tqdm(total=n_train + n_val, desc=f"demo {domain} data", unit="img", disable=not progress) as bar:
            for split, n in (("train", n_train), ("val", n_val)):
                counts[split] = _write_split(tmp / split, domain, split, n, seed, image_size, bar)
        manifest = {"generator": _GENERATOR, "version": DEMO_VERSION, "params": params, "counts": counts}
        (tmp / "dataset.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _swap_into_place(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


# --------------------------------------------------------------------------------------------
# Writing and caching
# --------------------------------------------------------------------------------------------


def _check_domain(domain: str) -> None:
    if domain not in DOMAINS:
        raise ConfigError(f"unknown demo domain {domain!r}; choose one of {list(DOMAINS)}")


def _read_manifest(root: Path) -> dict | None:
    try:
        manifest = json.loads((root / "dataset.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("generator") == _GENERATOR else None


def _is_cached(root: Path, params: dict) -> bool:
    manifest = _read_manifest(root)
    if manifest is None or manifest.get("version") != DEMO_VERSION or manifest.get("params") != params:
        return False
    # A cheap completeness check (the rename makes partial datasets unlikely, not impossible:
    # someone may have deleted files by hand).
    for split, n in (("train", params["n_train"]), ("val", params["n_val"])):
        if not (root / split / "annotations.json").is_file():
            return False
        if sum(1 for _ in (root / split / "images").glob("*.jpg")) != n:
            return False
    return True


def _swap_into_place(tmp: Path, root: Path) -> None:
    """Rename the finished ``tmp`` to ``root``, replacing an old dataset there."""
    old = None
    if root.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        old.rmdir()
        os.replace(root, old)
    os.replace(tmp, root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_split(
    out: Path, domain: str, split: str, n: int, seed: int, image_size: tuple[int, int], bar: tqdm
) -> dict:
    """Render ``n`` images into ``out/images`` and write ``out/annotations.json``; return counts."""
    (out / "images").mkdir(parents=True)
    images, annotations = [], []
    for index in range(n):
        sample = render_demo_image(domain, seed=seed, split=split, index=index, image_size=image_size)
        h, w = sample.image.shape[:2]
        file_name = f"{index:06d}.jpg"
        Image.fromarray(sample.image).save(out / "images" / file_name, quality=JPEG_QUALITY)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w, "scene": sample.scene})
        for mask, cat, poly, attrs in zip(sample.masks, sample.category_ids, sample.polygons, sample.attributes):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            if poly is not None:
                # the exact doubles that were rasterised (already rounded to 0.01 px, so short in JSON)
                segmentation = [poly.reshape(-1).tolist()]
            else:
                segmentation = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(cat),
                "segmentation": segmentation,
                "area": int(mask_utils.area(rle)),
                "bbox": [float(x) for x in mask_utils.toBbox(rle)],
                "iscrowd": 0,
                "attributes": attrs,
            })
        bar.update(1)
    coco = {
        "info": {
            "description": f"samadapt generated {domain} scenes ({split})",
            "version": str(DEMO_VERSION),
            "contributor": _GENERATOR,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [dict(c) for c in CATEGORIES[domain]],
    }
    (out / "annotations.json").write_text(json.dumps(coco, separators=(",", ":")))
    return {"images": len(images), "annotations": len(annotations)}


# --------------------------------------------------------------------------------------------
# Small numeric helpers (all vectorised; every random draw goes through the image's rng)
# --------------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: float) -> np.ndarray:
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


def _fractal_noise(
    rng: np.random.Generator, h: int, w: int, cells: float, octaves: int = 4, persistence: float = 0.5
) -> np.ndarray:
    """Sum of :func:`_smooth_noise` octaves (cells doubling, amplitude x ``persistence``); (h, w),
    zero mean, unit std."""
    out = np.zeros((h, w), np.float32)
    for o in range(octaves):
        out += persistence**o * _smooth_noise(rng, h, w, cells * 2**o)
    out -= out.mean()
    return out / (out.std() + 1e-6)


def _blur_rgb(canvas: np.ndarray, sigma_x: float, sigma_y: float | None = None) -> np.ndarray:
    """Gaussian blur of an RGB canvas (H, W, 3) float 0..255 (quantised to uint8 on the way, well
    below the sensor noise added later); sigmas in px, one per axis for motion blur."""
    sigma_y = sigma_x if sigma_y is None else sigma_y
    img = Image.fromarray(np.clip(np.round(canvas), 0, 255).astype(np.uint8))
    return np.asarray(img.filter(ImageFilter.GaussianBlur((sigma_x, sigma_y))), np.float32)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """HSV in [0, 1] -> RGB (3,) float32 in 0..255."""
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))), np.float32) * 255


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def _signed_area(p: np.ndarray) -> float:
    """Shoelace area of a closed (K, 2) polygon (positive when counter-clockwise in XY)."""
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _resample(p: np.ndarray, n: int) -> np.ndarray:
    """(n, 2) points equally spaced along the perimeter of the closed polygon ``p`` (K, 2)."""
    closed = np.vstack([p, p[:1]])
    seg = np.hypot(*np.diff(closed, axis=0).T)
    t = np.concatenate([[0.0], np.cumsum(seg)])
    s = np.linspace(0.0, t[-1], n, endpoint=False)
    return np.stack([np.interp(s, t, closed[:, 0]), np.interp(s, t, closed[:, 1])], axis=1)


def _periodic_noise(rng: np.random.Generator, n: int, k_min: int, k_max: int, slope: float) -> np.ndarray:
    """(n,) zero-mean periodic 1-D noise: sinusoids of frequency k_min..k_max with amplitude
    k**-slope and random phase, normalised to max |value| = 1."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    k = np.arange(k_min, k_max + 1)
    amp = k.astype(np.float64) ** -slope * rng.uniform(0.5, 1.0, len(k))
    phase = rng.uniform(0, 2 * np.pi, len(k))
    out = (amp[:, None] * np.sin(k[:, None] * t[None] + phase[:, None])).sum(0)
    return out / (np.abs(out).max() + 1e-9)


def _crumple(rng: np.random.Generator, p: np.ndarray, amplitude: float, n: int = 160, k_max: int = 40) -> np.ndarray:
    """Deform a closed polygon's outline: resample to ``n`` points and push each along its normal by
    multi-scale periodic noise of peak ``amplitude`` px (bumps, dents and folds of all sizes)."""
    q = _resample(p, n)
    tangent = np.roll(q, -1, axis=0) - np.roll(q, 1, axis=0)
    normal = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-9
    if _signed_area(q) < 0:  # make the normals point outwards
        normal = -normal
    offset = amplitude * _periodic_noise(rng, n, 2, k_max, slope=0.8)
    return q + offset[:, None] * normal


def _raster(poly: np.ndarray, h: int, w: int) -> np.ndarray:
    """Rasterise an XY polygon (K, 2) exactly as ``COCO.annToMask`` does; bool (h, w)."""
    rle = mask_utils.frPyObjects([poly.reshape(-1).tolist()], h, w)
    return mask_utils.decode(rle)[:, :, 0].astype(bool)


def _bbox_slices(mask: np.ndarray, pad: int) -> tuple[slice, slice]:
    """Row/column slices of the mask's bounding box grown by ``pad`` px, clipped to the image."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    h, w = mask.shape
    return (
        slice(max(0, rows[0] - pad), min(h, rows[-1] + 1 + pad)),
        slice(max(0, cols[0] - pad), min(w, cols[-1] + 1 + pad)),
    )


def _erode(mask: np.ndarray, px: int) -> np.ndarray:
    """Binary erosion of a bool (h, w) mask by a (2 px + 1)-square (what lies ``px`` px inside)."""
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.filter(ImageFilter.MinFilter(2 * px + 1))) > 127


def _soft(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Anti-aliased coverage (h, w) float32 in [0, 1] whose 0.5 level follows the bool mask's edge
    (a Gaussian of ``sigma`` px; 8-bit precision is plenty for an alpha)."""
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.filter(ImageFilter.GaussianBlur(sigma)), np.float32) / 255


# --------------------------------------------------------------------------------------------
# Objects and compositing (shared by both domains)
# --------------------------------------------------------------------------------------------


@dataclass
class _Frame:
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
_Painter = Callable[[np.random.Generator, _Frame, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class _Shape:
    """A shape in its local frame: polygon (K, 2) centred on 0 with ``u`` along its length, its
    nominal length and width (px), and a ``kind`` that painters may use (e.g. ``"can_top"``)."""

    polygon: np.ndarray
    length: float
    width: float
    kind: str = ""


@dataclass
class _Pose:
    """A shape placed in the image: polygon (K, 2) XY rounded to 0.01 px (as stored in the JSON),
    its exact mask (H, W) bool, rotation (rad) and centre (2,) XY px."""

    polygon: np.ndarray
    mask: np.ndarray
    angle: float
    centre: np.ndarray


def _scale_to(shape: _Shape, side: float) -> _Shape:
    """Scale a shape so that the square root of its area is ``side`` px."""
    f = side / np.sqrt(abs(_signed_area(shape.polygon)) + 1e-9)
    return _Shape(shape.polygon * f, shape.length * f, shape.width * f, shape.kind)


def _object_side(rng: np.random.Generator, h: int, w: int, factor: float = 1.0) -> float:
    """Draw an object's size (sqrt of its area, px): log-uniform from MIN_OBJECT_SIDE to 40% of
    the image area, times a per-category ``factor``, clipped to that range."""
    hi = np.sqrt(MAX_OBJECT_AREA_FRACTION * h * w)
    side = np.exp(rng.uniform(np.log(MIN_OBJECT_SIDE), np.log(hi))) * factor
    return float(np.clip(side, MIN_OBJECT_SIDE, hi))


class _Scene:
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
        self, rng: np.random.Generator, shape: _Shape, *, inside: bool, max_cover: float, min_inside: float = 0.5,
        tries: int = 12,
    ) -> _Pose | None:
        """Find a pose for ``shape`` that hides at most ``max_cover`` of any object's visible area.

        ``inside`` keeps the whole shape in the image; otherwise at least ``min_inside`` of its area
        must be. Returns ``None`` when no pose was found in ``tries``.
        """
        visible = np.bincount(self.owner.ravel() + 1, minlength=len(self.full_area) + 1)[1:]
        for _ in range(tries):
            angle = float(rng.uniform(0, 2 * np.pi))
            local = shape.polygon @ _rotation(angle).T
            lo, hi = local.min(0), local.max(0)
            if inside:
                span = np.array([self.w, self.h]) - (hi - lo)
                if (span <= 1).any():
                    continue
                centre = -lo + rng.uniform([0.5, 0.5], span - 0.5)
            else:
                centre = rng.uniform([0, 0], [self.w, self.h])
            poly = np.round(local + centre, 2)
            mask = _raster(poly, self.h, self.w)
            area = int(mask.sum())
            if area < MIN_VISIBLE_AREA or area < min_inside * abs(_signed_area(poly)):
                continue
            covered = np.bincount(self.owner[mask] + 1, minlength=len(self.full_area) + 1)[1:]
            if len(covered) and (covered / np.maximum(visible, 1)).max() > max_cover:
                continue
            return _Pose(poly, mask, angle, centre)
        return None

    @staticmethod
    def frame(pose: _Pose, shape: _Shape, rows: slice, cols: slice) -> _Frame:
        """The object's local frame over the crop ``(rows, cols)`` of the image."""
        y, x = np.mgrid[rows, cols].astype(np.float32)
        x = x + 0.5 - pose.centre[0]  # pixel centres
        y = y + 0.5 - pose.centre[1]
        c, s = np.cos(pose.angle), np.sin(pose.angle)
        u, v = x * c + y * s, -x * s + y * c
        return _Frame(u, v, u / (shape.length / 2), v / (shape.width / 2), shape.length, shape.width, shape.kind)

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
        rows, cols = _bbox_slices(shifted, int(3 * sigma) + 2)
        shade = _soft(shifted[rows, cols], sigma)
        self.canvas[rows, cols] *= (1.0 - strength * shade)[..., None]

    def draw(
        self, rng: np.random.Generator, pose: _Pose, shape: _Shape, category_id: int, painter: _Painter, *,
        edge_sigma: float = 0.6,
    ) -> None:
        """Composite an object over the canvas and make it the owner of its mask's pixels.

        The edge is anti-aliased with a Gaussian of ``edge_sigma`` px whose 0.5 level is the mask
        edge, so the drawn object and its mask agree to the pixel.
        """
        poly, mask = pose.polygon, pose.mask
        rows, cols = _bbox_slices(mask, 3)
        crop = mask[rows, cols]
        fr = self.frame(pose, shape, rows, cols)
        under = np.median(self.canvas[rows, cols][crop], axis=0)
        colour, opacity = painter(rng, fr, crop, under)
        alpha = (_soft(crop, edge_sigma) * opacity)[..., None]
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


def _finish(canvas: np.ndarray, rng: np.random.Generator, noise_std: tuple[float, float] = (1.0, 3.0)) -> np.ndarray:
    """Add sensor noise and quantise: (H, W, 3) float -> uint8."""
    canvas = canvas + rng.normal(0, rng.uniform(*noise_std), canvas.shape).astype(np.float32)
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8)


def _linear_ramp(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w) float32 ramp from -0.5 to 0.5 along a random direction across the image."""
    a = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = (x - w / 2) * np.cos(a) + (y - h / 2) * np.sin(a)
    return r / (np.abs(r).max() * 2 + 1e-6)


# --------------------------------------------------------------------------------------------
# Generic domain: simple opaque shapes on plain backgrounds
# --------------------------------------------------------------------------------------------


def _generic_shape(rng: np.random.Generator, category_id: int) -> _Shape:
    """Unit-size local shape of a generic category (1 ellipse .. 5 blob)."""
    if category_id == 1:  # ellipse
        a, b = 1.0, rng.uniform(0.45, 1.0)
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        return _Shape(np.stack([a * np.cos(t), b * np.sin(t)], 1), 2 * a, 2 * b)
    if category_id == 2:  # rectangle
        a, b = 1.0, rng.uniform(0.35, 1.0)
        return _Shape(np.array([[-a, -b], [a, -b], [a, b], [-a, b]]), 2 * a, 2 * b)
    if category_id == 3:  # triangle, no sliver angles
        t = np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.35, 0.35, 3)
        r = rng.uniform(0.75, 1.0, 3)
        p = np.stack([r * np.cos(t), r * np.sin(t)], 1)
        return _Shape(p - p.mean(0), 2.0, 1.5)
    if category_id == 4:  # convex polygon or a fat star
        k = int(rng.integers(5, 9))
        t = np.linspace(0, 2 * np.pi, k, endpoint=False) + rng.uniform(-0.15, 0.15, k)
        if rng.random() < 0.4:
            t2 = t + np.pi / k
            inner = rng.uniform(0.55, 0.75)
            t = np.stack([t, t2], 1).ravel()
            r = np.stack([np.ones(k), np.full(k, inner)], 1).ravel()
        else:
            r = rng.uniform(0.9, 1.0, k)
        return _Shape(np.stack([r * np.cos(t), r * np.sin(t)], 1), 2.0, 2.0)
    # blob: smooth radial harmonics
    t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    r = 1.0 + sum(rng.uniform(0.05, 0.18) * np.cos(k * t + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4))
    squash = rng.uniform(0.6, 1.0)
    return _Shape(np.stack([r * np.cos(t), squash * r * np.sin(t)], 1), 2.0, 2 * squash)


def _distinct_colour(rng: np.random.Generator, avoid: list[np.ndarray], min_dist: float) -> np.ndarray:
    """A random colour at least ``min_dist`` (RGB, 0..255) from every colour in ``avoid``; the most
    distant of 16 draws when none qualifies."""
    best, best_d = None, -1.0
    for _ in range(16):
        c = _hsv(rng.random(), rng.uniform(0.15, 1.0), rng.uniform(0.3, 1.0))
        d = min((float(np.linalg.norm(c - a)) for a in avoid), default=1e9)
        if d >= min_dist:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def _render_generic(rng: np.random.Generator, h: int, w: int) -> DemoSample:
    """One generic scene of (h, w) px: 1-8 distinct-coloured shapes, moderate occlusion."""
    scene_kind = SCENES["generic"][int(rng.integers(3))]
    base = _hsv(rng.random(), rng.uniform(0.0, 0.5), rng.uniform(0.2, 0.85))
    canvas = np.broadcast_to(base, (h, w, 3)).astype(np.float32).copy()
    if scene_kind in ("gradient", "textured"):
        tint = rng.normal(0, 1, 3).astype(np.float32)
        canvas += _linear_ramp(rng, h, w)[..., None] * (rng.uniform(20, 45) + 8 * tint)
    if scene_kind == "textured":
        canvas += _smooth_noise(rng, h, w, rng.uniform(3, 8))[..., None] * rng.uniform(4, 9)
        canvas += _smooth_noise(rng, h, w, rng.uniform(40, 80))[..., None] * rng.uniform(2, 5)
    scene = _Scene(canvas)
    colours: list[np.ndarray] = []

    def painter_for(colour: np.ndarray) -> _Painter:
        def paint(rng, fr, crop, under):
            col = np.broadcast_to(colour, crop.shape + (3,)).astype(np.float32)
            if rng.random() < 0.5:  # gentle shading across the object
                a = rng.uniform(0, 2 * np.pi)
                ramp = (np.cos(a) * fr.un + np.sin(a) * fr.vn) * rng.uniform(8, 20)
                col = col + ramp[..., None]
            return col, np.ones(crop.shape, np.float32)

        return paint

    for _ in range(int(rng.integers(1, 9))):
        cat = int(rng.integers(1, 6))
        shape = _scale_to(_generic_shape(rng, cat), _object_side(rng, h, w))
        # mostly whole shapes; a few cut by the border so that case is not new on waste data
        placed = scene.place(rng, shape, inside=rng.random() < 0.85, min_inside=0.6, max_cover=0.3)
        if placed is None:
            continue
        under = canvas[placed.mask].mean(0)
        overlapped = {int(o) for o in np.unique(scene.owner[placed.mask]) if o >= 0}
        colour = _distinct_colour(rng, [under] + [colours[o] for o in overlapped], 80.0)
        colours.append(colour)
        scene.draw(rng, placed, shape, cat, painter_for(colour))
    masks, cats, polys, attrs = scene.annotations()
    return DemoSample(_finish(scene.canvas, rng), masks, cats, polys, attrs, scene_kind)


# --------------------------------------------------------------------------------------------
# Waste domain: backgrounds
# --------------------------------------------------------------------------------------------


def _conveyor(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Grey/brown rubber belt: ridges across the belt, panel seams, grime stains, speckle."""
    base = _hsv(rng.uniform(0.05, 0.6), rng.uniform(0.0, 0.25), rng.uniform(0.25, 0.6))
    canvas = np.broadcast_to(base, (h, w, 3)).astype(np.float32).copy()
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    along = x if rng.random() < 0.5 else y  # belt direction
    across = y if along is x else x
    period = rng.uniform(5, 14)
    ridges = np.sin(2 * np.pi * across / period) * rng.uniform(6, 14)
    seam_gap = rng.uniform(50, 110)
    seams = (np.mod(along + rng.uniform(0, seam_gap), seam_gap) < rng.uniform(1.5, 3.0)) * -rng.uniform(20, 40)
    grime = _fractal_noise(rng, h, w, rng.uniform(3, 6)) * rng.uniform(10, 20)
    stains = np.clip(_fractal_noise(rng, h, w, rng.uniform(4, 8)) - 1.0, 0, None) * -rng.uniform(15, 30)
    speckle = _smooth_noise(rng, h, w, rng.uniform(60, 120)) * rng.uniform(4, 10)
    canvas += (ridges + seams + grime + stains + speckle)[..., None]
    canvas *= 1 + _linear_ramp(rng, h, w)[..., None] * rng.uniform(0.1, 0.35)  # uneven lighting
    return canvas


def _ground(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Gravel, grass or soil: busy multi-scale texture in earthy colours."""
    kind = int(rng.integers(3))
    if kind == 0:  # gravel: many small stones of varied greys/browns
        base = _hsv(rng.uniform(0.05, 0.12), rng.uniform(0.05, 0.3), rng.uniform(0.4, 0.65))
        img = Image.new("RGB", (w, h), tuple(int(c) for c in base))
        draw = ImageDraw.Draw(img)
        n = int(h * w / rng.uniform(25, 60))
        xy = rng.uniform([0, 0], [w, h], (n, 2))
        rad = rng.uniform(1.5, 4.5, n)
        tone = rng.normal(0, 35, n)
        for (cx, cy), r, t in zip(xy, rad, tone):  # PIL ellipses: a few thousand C calls, ~10 ms
            c = tuple(int(np.clip(b + t, 0, 255)) for b in base)
            draw.ellipse((cx - r, cy - r * 0.8, cx + r, cy + r * 0.8), fill=c)
        canvas = np.asarray(img, np.float32).copy()
        canvas += _fractal_noise(rng, h, w, 4)[..., None] * 10
    elif kind == 1:  # grass: green streaks
        base = _hsv(rng.uniform(0.2, 0.33), rng.uniform(0.35, 0.7), rng.uniform(0.3, 0.6))
        canvas = np.broadcast_to(base, (h, w, 3)).astype(np.float32).copy()
        blades = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
        streak = np.asarray(blades.filter(ImageFilter.GaussianBlur((0.5, rng.uniform(2.5, 4.0)))), np.float32)
        streak = (streak - streak.mean()) / (streak.std() + 1e-6)
        canvas *= 1 + 0.22 * streak[..., None]
        canvas += _fractal_noise(rng, h, w, 5)[..., None] * np.array([12, 16, 6], np.float32)
    else:  # soil / sand
        base = _hsv(rng.uniform(0.05, 0.12), rng.uniform(0.25, 0.55), rng.uniform(0.35, 0.75))
        canvas = np.broadcast_to(base, (h, w, 3)).astype(np.float32).copy()
        canvas *= 1 + 0.15 * _fractal_noise(rng, h, w, 6, octaves=5, persistence=0.7)[..., None]
        canvas += _smooth_noise(rng, h, w, 100)[..., None] * 8
    canvas *= 1 + _linear_ramp(rng, h, w)[..., None] * rng.uniform(0.0, 0.3)
    return canvas


def _seabed(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Sandy/rocky seabed fading into blue-green water towards the top."""
    sand = _hsv(rng.uniform(0.12, 0.3), rng.uniform(0.2, 0.5), rng.uniform(0.35, 0.6))
    canvas = np.broadcast_to(sand, (h, w, 3)).astype(np.float32).copy()
    canvas *= 1 + 0.2 * _fractal_noise(rng, h, w, 5, octaves=5, persistence=0.65)[..., None]
    rocks = np.clip(_fractal_noise(rng, h, w, rng.uniform(3, 6)) - 0.8, 0, None)
    canvas *= 1 - 0.35 * np.clip(rocks, 0, 1)[..., None]
    return canvas


def _underwater_finish(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    """Water over everything: red loss, depth haze towards the top, caustics, blur, particles."""
    h, w = canvas.shape[:2]
    water = _hsv(rng.uniform(0.42, 0.55), rng.uniform(0.45, 0.8), rng.uniform(0.35, 0.6))
    canvas = canvas * np.array([rng.uniform(0.55, 0.8), rng.uniform(0.85, 1.0), 1.0], np.float32)
    y = np.linspace(1, 0, h, dtype=np.float32)[:, None, None]
    haze = np.clip(rng.uniform(0.1, 0.3) + rng.uniform(0.0, 0.2) * y, 0, 0.5)
    canvas = canvas * (1 - haze) + water * haze
    n = _fractal_noise(rng, h, w, rng.uniform(5, 9), octaves=2, persistence=0.4)
    caustic = np.clip(1 - np.abs(n) / 0.25, 0, 1) ** 2
    canvas = canvas + caustic[..., None] * rng.uniform(15, 40)
    canvas = _blur_rgb(canvas, rng.uniform(0.5, 1.0))
    layer = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(30, 150))):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.4, 1.6)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=int(rng.integers(120, 256)))
    specks = np.asarray(layer.filter(ImageFilter.GaussianBlur(0.6)), np.float32)[..., None] / 255
    return canvas * (1 - specks) + (water * 0.5 + 127) * specks


def _partial_blur(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    """Blur part of the image (defocus or motion along one axis), blended by a smooth region."""
    h, w = canvas.shape[:2]
    if rng.random() < 0.5:
        blurred = _blur_rgb(canvas, rng.uniform(1.2, 2.5))
    else:  # motion blur along x or y
        s = rng.uniform(2.0, 4.0)
        blurred = _blur_rgb(canvas, s, 0.3) if rng.random() < 0.5 else _blur_rgb(canvas, 0.3, s)
    region = np.clip(_linear_ramp(rng, h, w) * rng.uniform(2, 5) + rng.uniform(-0.5, 0.5) + 0.5, 0, 1)
    return canvas * (1 - region[..., None]) + blurred * region[..., None]


# --------------------------------------------------------------------------------------------
# Waste domain: objects (shape + painter per category)
# --------------------------------------------------------------------------------------------

_RIGID, _CARDBOARD, _METAL, _SOFT, _PAPER = 1, 2, 3, 4, 5
# Frequencies of the categories (ZeroWaste-f is dominated by cardboard and soft plastic).
_WASTE_P = np.array([0.24, 0.2, 0.14, 0.26, 0.16])
# Size factor per category (cans are small, cardboard big), applied to the shared size draw.
_WASTE_SIZE = {_RIGID: 1.0, _CARDBOARD: 1.35, _METAL: 0.8, _SOFT: 1.1, _PAPER: 0.95}


def _profile_shape(u: np.ndarray, half_width: np.ndarray) -> _Shape:
    """Closed polygon of a shape symmetric about the ``u`` axis from its half-width profile."""
    right = np.stack([u, half_width], 1)
    left = np.stack([u[::-1], -half_width[::-1]], 1)
    p = np.vstack([right, left])
    return _Shape(p - [[(u[0] + u[-1]) / 2, 0.0]], float(u[-1] - u[0]), float(2 * half_width.max()))


def _bottle_shape(rng: np.random.Generator) -> _Shape:
    """Bottle side view (body, shoulder, neck, cap) or a cup/tub; length 1."""
    u = np.linspace(0, 1, 48)
    if rng.random() < 0.7:
        body_w = rng.uniform(0.22, 0.36) / 2
        neck_w = body_w * rng.uniform(0.3, 0.45)
        s0, s1 = rng.uniform(0.5, 0.65), rng.uniform(0.72, 0.82)
        t = np.clip((u - s0) / (s1 - s0), 0, 1)
        hw = body_w + (neck_w - body_w) * (0.5 - 0.5 * np.cos(np.pi * t))
        hw = np.where(u > 0.92, neck_w * 1.15, hw)  # cap lip
    else:  # cup or tub: tapered, wide
        top, bottom = rng.uniform(0.45, 0.7) / 2, None
        bottom = top * rng.uniform(0.6, 0.85)
        hw = bottom + (top - bottom) * u
    corner = 0.06
    hw = hw * np.sqrt(np.clip(1 - ((corner - np.minimum(u, corner)) / corner) ** 2, 0.05, 1))  # round bottom
    return _profile_shape(u, hw)


def _can_shape(rng: np.random.Generator) -> _Shape:
    """Drink can: side view with elliptic ends, or seen from the top (a disc); length 1."""
    if rng.random() < 0.25:
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        return _Shape(0.5 * np.stack([np.cos(t), rng.uniform(0.85, 1.0) * np.sin(t)], 1), 1.0, 1.0, "can_top")
    half_w = rng.uniform(0.27, 0.33)
    cap = half_w * rng.uniform(0.15, 0.3)
    u = np.linspace(0, 1, 48)
    end = np.minimum(u, 1 - u)
    hw = half_w * np.sqrt(np.clip(1 - ((cap - np.minimum(end, cap)) / cap) ** 2, 0.05, 1))
    return _profile_shape(u, hw)


def _waste_shape(rng: np.random.Generator, category_id: int) -> tuple[_Shape, float]:
    """Unit-size shape of a waste category and its outline-crumple amplitude (fraction of size)."""
    if category_id == _RIGID:
        return _bottle_shape(rng), (rng.uniform(0.01, 0.04) if rng.random() < 0.4 else 0.0)  # dents
    if category_id == _METAL:
        return _can_shape(rng), (rng.uniform(0.03, 0.08) if rng.random() < 0.35 else 0.0)  # crushed
    if category_id == _CARDBOARD:
        a, b = 1.0, rng.uniform(0.45, 0.95)
        p = np.array([[-a, -b], [a, -b], [a, b], [-a, b]]) + rng.normal(0, 0.08, (4, 2))
        if rng.random() < 0.5:  # a cut or torn corner
            i = int(rng.integers(4))
            c, prev, nxt = p[i], p[i - 1], p[(i + 1) % 4]
            f = rng.uniform(0.2, 0.4, 2)
            p = np.insert(np.delete(p, i, 0), i, [c + f[0] * (prev - c), c + f[1] * (nxt - c)], 0)
        return _Shape(p, 2 * a, 2 * b), rng.uniform(0.005, 0.025)
    if category_id == _SOFT:  # crumpled bag / film: blobby, strongly deformed
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        r = 1.0 + sum(rng.uniform(0.08, 0.25) * np.cos(k * t + rng.uniform(0, 2 * np.pi)) for k in (2, 3))
        squash = rng.uniform(0.5, 1.0)
        return _Shape(np.stack([r * np.cos(t), squash * r * np.sin(t)], 1), 2.0, 2 * squash), rng.uniform(0.05, 0.1)
    # paper: a sheet (possibly crumpled) or a crumpled ball
    if rng.random() < 0.6:
        a, b = 1.0, rng.uniform(0.6, 0.9)
        p = np.array([[-a, -b], [a, -b], [a, b], [-a, b]]) + rng.normal(0, 0.05, (4, 2))
        return _Shape(p, 2 * a, 2 * b), rng.uniform(0.01, 0.05)
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    return _Shape(np.stack([np.cos(t), rng.uniform(0.7, 1.0) * np.sin(t)], 1), 2.0, 2.0), rng.uniform(0.06, 0.1)


def _camouflage(rng: np.random.Generator, colour: np.ndarray, under: np.ndarray, p: float) -> np.ndarray:
    """With probability ``p``, pull ``colour`` towards the background colour ``under`` (low
    contrast: the object differs from its surroundings by about 20-40 RGB units)."""
    if rng.random() >= p:
        return colour
    direction = rng.normal(0, 1, 3).astype(np.float32)
    return under + direction / np.linalg.norm(direction) * rng.uniform(20, 40)


def _bands(rng: np.random.Generator, coord: np.ndarray, period: tuple[float, float], duty: float) -> np.ndarray:
    """Bool stripes (text lines, print) along ``coord`` (px) with a random period and phase."""
    p = rng.uniform(*period)
    return np.mod(coord + rng.uniform(0, p), p) < duty * p


def _paint_rigid(rng, fr: _Frame, crop, under):
    clear = rng.random() < 0.55
    if clear:  # PET: faint tint, background shows through
        colour = _hsv(rng.uniform(0.3, 0.6), rng.uniform(0.0, 0.3), rng.uniform(0.75, 1.0))
        opacity = np.full(crop.shape, rng.uniform(0.25, 0.6), np.float32)
    else:
        palette = [(0.33, 0.7, 0.5), (0.6, 0.7, 0.6), (0.0, 0.0, 0.9), (0.08, 0.7, 0.4), (0.0, 0.7, 0.7), (0, 0, 0.15)]
        hh, ss, vv = palette[int(rng.integers(len(palette)))]
        colour = _camouflage(rng, _hsv(hh + rng.normal(0, 0.03), ss, vv), under, 0.25)
        opacity = np.ones(crop.shape, np.float32)
    shade = 1.0 - 0.35 * np.clip(fr.vn, -1, 1) ** 2
    col = colour * shade[..., None]
    # a specular stripe along the body, strongest on clear plastic
    hi = np.exp(-0.5 * ((fr.vn - rng.uniform(0.25, 0.55)) / 0.09) ** 2)
    col = col + hi[..., None] * (255 - col) * 0.8
    opacity = np.maximum(opacity, hi * 0.85)
    if rng.random() < 0.65:  # label band round the body, with print
        a = rng.uniform(-0.6, -0.1)
        band = (fr.un > a) & (fr.un < a + rng.uniform(0.35, 0.7))
        label = _hsv(rng.random(), rng.uniform(0.4, 1.0), rng.uniform(0.4, 1.0))
        print_ = _bands(rng, fr.u, (4, 9), 0.3) & (rng.random() < 0.6)
        label_col = np.where(print_[..., None], label * 0.4, label) * shade[..., None]
        col = np.where(band[..., None], label_col, col)
        opacity = np.where(band, 1.0, opacity)
    if rng.random() < 0.7:  # cap
        cap = fr.un > 0.84
        col = np.where(cap[..., None], _hsv(rng.random(), rng.uniform(0.3, 1), rng.uniform(0.3, 1)), col)
        opacity = np.where(cap, 1.0, opacity)
    if clear:  # the rim is what shows a clear bottle's edge
        rim = crop & ~_erode(crop, 1)
        col = np.where(rim[..., None], col * 0.75, col)
        opacity = np.where(rim, np.maximum(opacity, 0.8), opacity)
    return col, opacity


def _paint_metal(rng, fr: _Frame, crop, under):
    h, w = crop.shape
    if rng.random() < 0.4:
        colour = _hsv(0.6, rng.uniform(0, 0.1), rng.uniform(0.55, 0.8))  # bare aluminium
    else:
        colour = _hsv(rng.choice([0.0, 0.6, 0.33, 0.12, 0.95]), rng.uniform(0.5, 1.0), rng.uniform(0.4, 0.9))
    colour = _camouflage(rng, colour, under, 0.2)
    if fr.kind == "can_top":  # top view: rim ring and tab
        r = np.hypot(fr.un, fr.vn)
        shade = 0.7 + 0.5 * np.exp(-0.5 * ((r - 0.88) / 0.06) ** 2) - 0.25 * (r < 0.3)
        col = _hsv(0.6, 0.05, 0.75) * shade[..., None]
    else:  # side view: sharp metallic bands and specular stripes
        f = rng.uniform(1.0, 2.0)
        shade = 0.45 + 0.55 * np.abs(np.cos(np.pi * f * fr.vn + rng.uniform(0, np.pi)))
        col = colour * shade[..., None]
        for _ in range(int(rng.integers(1, 3))):
            spec = np.exp(-0.5 * ((fr.vn - rng.uniform(-0.7, 0.7)) / rng.uniform(0.04, 0.1)) ** 2)
            col = col + spec[..., None] * (250 - col) * 0.9
        ends = np.abs(fr.un) > rng.uniform(0.8, 0.9)
        col = np.where(ends[..., None], _hsv(0.6, 0.05, 0.8) * shade[..., None], col)
        if rng.random() < 0.6:  # printed logo stripe across the can
            logo = (np.abs(fr.un - rng.uniform(-0.4, 0.4)) < rng.uniform(0.08, 0.2)) & ~ends
            col = np.where(logo[..., None], _hsv(rng.random(), 0.8, rng.uniform(0.5, 1)) * shade[..., None], col)
    facets = _fractal_noise(rng, h, w, max(2.0, max(h, w) / 10), octaves=2)  # dents reflect unevenly
    col = col * (1 + 0.12 * facets)[..., None]
    return col, np.ones(crop.shape, np.float32)


def _paint_cardboard(rng, fr: _Frame, crop, under):
    h, w = crop.shape
    if rng.random() < 0.8:
        colour = _hsv(rng.uniform(0.06, 0.11), rng.uniform(0.35, 0.6), rng.uniform(0.45, 0.8))
    else:  # printed white or grey board
        colour = _hsv(rng.random(), rng.uniform(0, 0.15), rng.uniform(0.5, 0.9))
    colour = _camouflage(rng, colour, under, 0.3)
    shade = 1 + 0.1 * _fractal_noise(rng, h, w, max(2.0, max(h, w) / 12), octaves=3)
    if rng.random() < 0.5:  # corrugation
        shade = shade + 0.05 * np.sin(2 * np.pi * fr.v / rng.uniform(3, 5))
    if rng.random() < 0.4:  # fold: one flap is lit differently
        a = rng.uniform(0, 2 * np.pi)
        side = (np.cos(a) * fr.un + np.sin(a) * fr.vn) > rng.uniform(-0.4, 0.4)
        shade = shade * np.where(side, rng.uniform(0.7, 0.85), 1.0)
    col = colour * shade[..., None]
    if rng.random() < 0.45:  # packing tape along the box
        tape = np.abs(fr.vn - rng.uniform(-0.3, 0.3)) < rng.uniform(0.08, 0.18)
        tape_col = _hsv(rng.uniform(0.08, 0.12), rng.uniform(0.2, 0.5), rng.uniform(0.75, 0.95))
        col = np.where(tape[..., None], tape_col * shade[..., None], col)
    for _ in range(int(rng.integers(0, 3))):  # printed blocks / text
        cu, cv = rng.uniform(-0.6, 0.6, 2)
        block = (np.abs(fr.un - cu) < rng.uniform(0.08, 0.3)) & (np.abs(fr.vn - cv) < rng.uniform(0.05, 0.2))
        if rng.random() < 0.5:
            block &= _bands(rng, fr.v, (3, 6), 0.5)
        col = np.where(block[..., None], _hsv(rng.random(), rng.uniform(0, 0.9), rng.uniform(0.05, 0.5)), col)
    return col, np.ones(crop.shape, np.float32)


def _paint_soft(rng, fr: _Frame, crop, under):
    h, w = crop.shape
    transparent = rng.random() < 0.5
    palette = [(0, 0, 0.92), (0, 0, 0.12), (0.6, 0.6, 0.7), (0.95, 0.4, 0.85), (0.3, 0.5, 0.6), (0.15, 0.6, 0.8)]
    hh, ss, vv = palette[int(rng.integers(len(palette)))]
    colour = _camouflage(rng, _hsv(hh + rng.normal(0, 0.03), ss, vv), under, 0.2 if not transparent else 0.0)
    n = _fractal_noise(rng, h, w, max(2.0, max(h, w) / 18), octaves=3, persistence=0.6)
    ridge = 1 - np.abs(n)  # crumple ridges: bright thin lines between darker creases
    shade = 0.72 + 0.4 * ridge**2
    col = colour * shade[..., None] + (ridge**6 * 45)[..., None]
    opacity = np.ones(crop.shape, np.float32)
    if transparent:  # film: see-through except at bright creases and the edge
        opacity = np.clip(rng.uniform(0.25, 0.6) + 0.4 * ridge**6, 0, 1).astype(np.float32)
        rim = crop & ~_erode(crop, 1)
        opacity = np.where(rim, np.maximum(opacity, 0.75), opacity)
    if rng.random() < 0.3:  # printed logo
        logo = np.hypot(fr.un - rng.uniform(-0.4, 0.4), fr.vn - rng.uniform(-0.4, 0.4)) < rng.uniform(0.15, 0.35)
        col = np.where(logo[..., None], _hsv(rng.random(), 0.9, 0.7) * shade[..., None], col)
        opacity = np.where(logo, 1.0, opacity)
    return col, opacity


def _paint_paper(rng, fr: _Frame, crop, under):
    h, w = crop.shape
    if rng.random() < 0.75:
        colour = _hsv(rng.uniform(0.08, 0.16), rng.uniform(0.0, 0.15), rng.uniform(0.78, 0.97))
    else:
        colour = _hsv(rng.random(), rng.uniform(0.3, 0.6), rng.uniform(0.6, 0.95))
    colour = _camouflage(rng, colour, under, 0.15)
    shade = 1 + 0.08 * _fractal_noise(rng, h, w, max(2.0, max(h, w) / 12), octaves=3)
    for _ in range(int(rng.integers(0, 3))):  # creases: a step in lighting and a dark line
        a = rng.uniform(0, 2 * np.pi)
        d = np.cos(a) * fr.un + np.sin(a) * fr.vn - rng.uniform(-0.5, 0.5)
        crease = 1 - 0.25 * np.exp(-0.5 * (d * fr.length / 2) ** 2)  # about 1 px wide
        shade = shade * np.where(d > 0, rng.uniform(0.75, 0.9), 1.0) * crease
    col = colour * shade[..., None]
    if rng.random() < 0.6:  # text lines
        lines = _bands(rng, fr.v, (3.5, 6), 0.35) & (np.abs(fr.un) < 0.8) & (np.abs(fr.vn) < 0.8)
        words = _bands(rng, fr.u, (6, 16), 0.75)
        col = np.where((lines & words)[..., None], col * 0.35, col)
    return col, np.ones(crop.shape, np.float32)


_WASTE_PAINTERS: dict[int, _Painter] = {
    _RIGID: _paint_rigid, _CARDBOARD: _paint_cardboard, _METAL: _paint_metal, _SOFT: _paint_soft, _PAPER: _paint_paper,
}


def _render_waste(rng: np.random.Generator, h: int, w: int) -> DemoSample:
    """One waste scene of (h, w) px: background, then 3-15 objects back to front (each casting a
    shadow on what lies below), then the scene's optics (water, blur) and sensor noise."""
    scene_kind = SCENES["waste"][int(rng.integers(3))]
    canvas = {"conveyor": _conveyor, "ground": _ground, "underwater": _seabed}[scene_kind](rng, h, w)
    scene = _Scene(canvas)
    # sunlight / lamps: one shadow direction per image; diffuse light underwater
    light = rng.uniform(0, 2 * np.pi)
    shadow_len = {"conveyor": (2, 6), "ground": (3, 9), "underwater": (1, 3)}[scene_kind]
    shadow_strength = {"conveyor": (0.3, 0.5), "ground": (0.35, 0.55), "underwater": (0.1, 0.25)}[scene_kind]

    n = int(rng.integers(3, 16))
    cats = rng.choice(np.arange(1, 6), size=n, p=_WASTE_P)
    shapes = []
    for cat in cats:
        base, crumple = _waste_shape(rng, int(cat))
        shape = _scale_to(base, _object_side(rng, h, w, _WASTE_SIZE[int(cat)]))
        if crumple > 0:
            amp = crumple * np.sqrt(abs(_signed_area(shape.polygon)))
            shape = _Shape(_crumple(rng, shape.polygon, amp), shape.length, shape.width, shape.kind)
        shapes.append((int(cat), shape))
    # big things tend to lie underneath (piles): draw roughly largest first
    order = np.argsort([-np.sqrt(abs(_signed_area(s.polygon))) * rng.uniform(0.6, 1.6) for _, s in shapes])

    for i in order:
        cat, shape = shapes[i]
        placed = scene.place(rng, shape, inside=False, min_inside=0.6, max_cover=0.7)
        if placed is None:
            continue
        # taller (bigger) things cast longer shadows
        dist = rng.uniform(*shadow_len) * min(1.0, np.sqrt(placed.mask.sum()) / 40) + 1
        scene.cast_shadow(
            placed.mask, (dist * np.cos(light), dist * np.sin(light)), sigma=rng.uniform(1.5, 3.5),
            strength=rng.uniform(*shadow_strength),
        )
        scene.draw(rng, placed, shape, cat, _WASTE_PAINTERS[cat], edge_sigma=rng.uniform(0.6, 1.0))

    canvas = scene.canvas
    if scene_kind == "underwater":
        canvas = _underwater_finish(rng, canvas)
    if rng.random() < (0.15 if scene_kind == "underwater" else 0.35):  # water blurs already
        canvas = _partial_blur(rng, canvas)
    masks, cat_ids, polys, attrs = scene.annotations()
    return DemoSample(_finish(canvas, rng), masks, cat_ids, polys, attrs, scene_kind)

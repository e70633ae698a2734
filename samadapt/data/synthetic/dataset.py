"""Writing the demo datasets: :func:`make_demo_dataset` (COCO files + the ``dataset.json`` manifest
that makes it a cache) and :func:`render_demo_image` (one image and its exact masks).

Every image is rendered from its own ``np.random.Generator`` seeded with ``(seed, domain, split,
index)``, so a dataset is byte-identical from run to run and any image can be re-rendered alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm.auto import tqdm

from ...errors import ConfigError, DataError
from ...files import atomic_directory
from . import generic, waste
from .canvas import DemoSample

#: Bumped whenever the rendered bytes change, so cached datasets are regenerated.
DEMO_VERSION = 1
#: Each domain's module: its ``CATEGORIES``, ``SCENES`` and ``render(rng, h, w) -> DemoSample``.
_DOMAIN_MODULES = {"generic": generic, "waste": waste}
DOMAINS = tuple(_DOMAIN_MODULES)
SPLITS = ("train", "val")
CATEGORIES: dict[str, tuple[dict, ...]] = {d: m.CATEGORIES for d, m in _DOMAIN_MODULES.items()}
#: The ``scene`` recorded on each COCO image entry, per domain.
SCENES: dict[str, tuple[str, ...]] = {d: m.SCENES for d, m in _DOMAIN_MODULES.items()}
JPEG_QUALITY = 95
#: Longest image side for the default ``image_size`` (larger requested sizes raise the cap).
MAX_SIDE = 360
#: Relative jitter of each image side around ``image_size`` (so padding code gets exercised).
SIZE_JITTER = 0.1

# What the manifest and each annotations.json record as their writer: the module's name when the
# format was fixed, kept so that existing datasets stay cache hits and the files byte-identical.
_GENERATOR = "samadapt.data.demo"
_DOMAIN_KEYS = {"generic": 1, "waste": 2}
_SPLIT_KEYS = {"train": 1, "val": 2}


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
    return _DOMAIN_MODULES[domain].render(rng, h, w)


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
    """Write a generated COCO instance-segmentation dataset under ``root``.

    What is rendered and the layout written: :mod:`samadapt.data.synthetic`.

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
        "domain": domain,
        "n_train": n_train,
        "n_val": n_val,
        "seed": seed,
        "image_size": list(image_size),
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

    with atomic_directory(root) as tmp:  # replaces an old demo dataset there only once this one is complete
        counts = {}
        with tqdm(total=n_train + n_val, desc=f"demo {domain} data", unit="img", disable=not progress) as bar:
            for split, n in (("train", n_train), ("val", n_val)):
                counts[split] = _write_split(tmp / split, domain, split, n, seed, image_size, bar)
        manifest = {"generator": _GENERATOR, "version": DEMO_VERSION, "params": params, "counts": counts}
        (tmp / "dataset.json").write_text(json.dumps(manifest, indent=2) + "\n")
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


def _write_split(out: Path, domain: str, split: str, n: int, seed: int, image_size: tuple[int, int], bar: tqdm) -> dict:
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
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(cat),
                    "segmentation": segmentation,
                    "area": int(mask_utils.area(rle)),
                    "bbox": [float(x) for x in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                    "attributes": attrs,
                }
            )
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

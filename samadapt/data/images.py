"""Reading dataset images as RGB uint8 arrays in the frame their annotations use.

Waste datasets are messy image collections: TACO's originals carry EXIF orientation (and the
annotations are drawn in the rotated frame), some are PNG with alpha saved under ``.jpg`` names,
file names mix ``.jpg`` and ``.JPG``. :func:`read_image` and :func:`resolve_image_path` absorb these so
the rest of the library sees one thing: an (H, W, 3) uint8 RGB array whose size matches the
annotation file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ConfigError, DataError

__all__ = ["as_rgb_array", "pixels_to_uint8", "read_image", "resolve_image_path", "to_rgb_array"]


def resolve_image_path(images_root: str | os.PathLike, file_name: str) -> Path | None:
    """Path of ``file_name`` under ``images_root``, or None if it is not there.

    ``file_name`` may contain sub-folders (TACO: ``batch_1/000006.jpg``). When the exact name is
    missing, the extension is matched case-insensitively (``.jpg`` vs ``.JPG``): annotation files
    written on case-insensitive file systems often disagree with the images' real names.
    """
    path = Path(images_root) / file_name
    if path.is_file():
        return path
    parent = path.parent
    stem, suffix = os.path.splitext(path.name)
    if not suffix:
        return None
    # Cheap guesses first, then one listing of the folder (handles ".Jpg" and the like).
    for candidate in {suffix.lower(), suffix.upper()} - {suffix}:
        alt = parent / (stem + candidate)
        if alt.is_file():
            return alt
    try:
        names = os.listdir(parent)
    except OSError:
        return None
    want = suffix.lower()
    for name in names:
        s, x = os.path.splitext(name)
        if s == stem and x.lower() == want and (parent / name).is_file():
            return parent / name
    return None


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Any PIL image -> RGB uint8 array (H, W, 3).

    - grayscale (``L``, ``1``, ``LA``) is repeated over the three channels;
    - alpha (``RGBA``, ``LA``, ``PA``, palette with transparency) is dropped, keeping the colour
      values as stored: this is what ``cv2.imread`` and most SAM inference code do, so training sees
      the pixels that inference will see;
    - palette and CMYK / YCbCr / LAB images are converted by PIL;
    - 16-bit and 32-bit integer images (``I;16``, ``I``) are scaled to 0..255 (divided by 257 for
      16-bit data), float images (``F``) are taken as 0..1 when their maximum is <= 1, else 0..255
      (:func:`pixels_to_uint8`).
    """
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray = pixels_to_uint8(np.asarray(image))
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL warns when converting such palettes straight to RGB
    if image.mode != "RGB":
        image = image.convert("RGB")  # RGBA/LA: alpha dropped, colours kept
    return np.asarray(image, dtype=np.uint8).copy()


def pixels_to_uint8(a: np.ndarray) -> np.ndarray:
    """Pixel values of any integer or float type -> uint8, as image files are read: uint8 as is;
    16-bit data divided by 257 (0..65535 -> 0..255); other integers kept where they stay
    within 0..255 (8-bit data in a wider container), else scaled as 16-bit; floats taken as 0..1 when
    their maximum is <= 1, else 0..255; NaN becomes 0, and everything is rounded and clipped."""
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind == "f":
        scale = 255.0 if a.size and np.nanmax(a) <= 1.0 else 1.0
    elif a.dtype.kind in "iu" and a.dtype.itemsize != 2 and (not a.size or a.max() <= 255):
        scale = 1.0
    else:
        scale = 255.0 / 65535.0
    a = np.nan_to_num(a.astype(np.float64) * scale, nan=0.0)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def as_rgb_array(image, what: str = "image") -> np.ndarray:
    """An image given as an array (or a PIL image) -> RGB uint8 (H, W, 3), converted as
    :func:`read_image` converts files: grayscale (H, W) / (H, W, 1) and gray + alpha (H, W, 2) repeated
    over three channels, RGBA (H, W, 4) without its alpha, and 16-bit, other integer and float values
    scaled by :func:`pixels_to_uint8`.

    Raises:
        ConfigError: another shape (e.g. channels first) or a non-numeric type, named with ``what``.
    """
    if isinstance(image, Image.Image):
        return to_rgb_array(image)
    a = np.asarray(image)
    channels_last = a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 2, 3, 4))
    if a.dtype.kind not in "iuf" or not channels_last or 0 in a.shape:
        hint = " (channels first? pass image.transpose(1, 2, 0))" if a.ndim == 3 and a.shape[0] in (1, 3, 4) else ""
        raise ConfigError(
            f"expected {what} as an RGB uint8 array (H, W, 3), or grayscale (H, W), RGBA (H, W, 4), 16-bit "
            f"or float values to convert; got {a.dtype} {a.shape}{hint}"
        )
    if a.ndim == 3 and a.shape[2] in (1, 2):
        a = a[:, :, 0]  # gray (+ alpha)
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]  # RGBA: alpha dropped, colours kept
    a = pixels_to_uint8(a)
    return np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3), rotated by its EXIF orientation.

    The file type is sniffed from its content, so a PNG saved under a ``.jpg`` name loads fine.
    EXIF orientation is applied (``ImageOps.exif_transpose``) because the annotations of the waste
    datasets are drawn on the displayed, rotated image. See :func:`to_rgb_array` for mode handling.

    Raises:
        DataError: the file is missing or is not a readable image (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file {str(path)!r} does not exist")
    try:
        with Image.open(path) as im:
            im.load()  # decode now so truncated files fail here, with the file named
            im = ImageOps.exif_transpose(im)
            return to_rgb_array(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(
            f"cannot read image file {str(path)!r}: {e}. Check that it is a complete image "
            "(JPEG, PNG, ...) and re-download it if it is truncated"
        ) from e

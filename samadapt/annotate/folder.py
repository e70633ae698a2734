"""The images folder of an annotation run: which files there are, their sizes, and the only paths a
client's file name can reach.

A file name from the page is looked up in the listing made at start-up (every image file under the
folder, sub-folders included, hidden ones left out); a name that is not in it, ``../x`` included, is
unknown, so no path outside the folder is ever opened for a client. Sizes are read from the image
headers (EXIF orientation applied, as :func:`samadapt.data.images.read_image` does), so a folder of
thousands of photos lists in seconds; a file whose header cannot be read is listed as unreadable and
skipped, and so is one that fails later when decoded in full.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.images import read_image
from ..errors import DataError
from ..segment.detections import IMAGE_SUFFIXES

__all__ = ["FolderImage", "ImageFolder", "UnknownImageError"]

#: EXIF orientations that swap width and height (rotations by 90 degrees, transpositions)
_SWAPPED = (5, 6, 7, 8)


class UnknownImageError(DataError, KeyError):
    """A file name that is not one of the folder's images (the page answers 404)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass
class FolderImage:
    """One image file: ``file_name`` relative to the folder (``/``-separated), its size as the model
    sees it (after EXIF rotation), its size on disk, and why it cannot be used (None when it can)."""

    file_name: str
    path: Path
    width: int = 0
    height: int = 0
    file_size: int = 0
    error: str | None = None


def _header(path: Path) -> tuple[int, int]:
    """(width, height) of an image as :func:`read_image` returns it, from its header only."""
    from PIL import Image

    with Image.open(path) as im:
        width, height = im.size
        if im.getexif().get(0x0112, 1) in _SWAPPED:
            width, height = height, width
    return int(width), int(height)


class ImageFolder:
    """The image files under ``root`` (sorted by name), each with its size or its error.

    Args:
        root: the folder; every file with an image suffix (``.jpg``, ``.png``, ...) below it counts,
            except hidden files and folders (names starting with ``.``).
        progress: a progress bar while the headers are read (folders of more than 500 images).
    """

    def __init__(self, root: str | os.PathLike, *, progress: bool = True) -> None:
        from tqdm.auto import tqdm

        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"images folder {str(self.root)!r} is not a folder; give the folder holding the images")
        files = sorted(
            p
            for p in self.root.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(self.root).parts)
            and p.is_file()
        )
        if not files:
            raise DataError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {str(self.root)!r}")
        self._images: dict[str, FolderImage] = {}
        for p in tqdm(files, desc="reading image sizes", unit="img", disable=not progress or len(files) <= 500):
            image = FolderImage(p.relative_to(self.root).as_posix(), p)
            try:
                image.file_size = p.stat().st_size
                image.width, image.height = _header(p)
            except Exception as e:  # any failure of PIL on a bad file means "unreadable"
                image.error = f"{type(e).__name__}: {e}"
            self._images[image.file_name] = image

    # ------------------------------------------------------------------ listing
    @property
    def names(self) -> list[str]:
        """Every file name, readable or not, in sorted order."""
        return list(self._images)

    @property
    def readable(self) -> list[str]:
        """The file names that can be annotated, in order."""
        return [n for n, im in self._images.items() if im.error is None]

    @property
    def unreadable(self) -> dict[str, str]:
        """file name -> why it cannot be read."""
        return {n: im.error for n, im in self._images.items() if im.error is not None}

    def __len__(self) -> int:
        return len(self._images)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._images

    def __getitem__(self, name: str) -> FolderImage:
        """The image of a client's file name; :class:`UnknownImageError` for any name that is not one
        of the listed files (so ``../secret`` or an absolute path never reaches the file system)."""
        image = self._images.get(name) if isinstance(name, str) else None
        if image is None:
            raise UnknownImageError(f"no image named {str(name)[:200]!r} in the images folder")
        return image

    def next_readable(self, name: str, step: int = 1) -> str | None:
        """The readable image after (``step`` 1) or before (-1) ``name``, or None at the end."""
        names = self.readable
        if name not in names:
            return None
        k = names.index(name) + step
        return names[k] if 0 <= k < len(names) else None

    # ------------------------------------------------------------------ reading
    def read(self, name: str) -> np.ndarray:
        """The image as RGB uint8 (H, W, 3) (:func:`read_image`). A file that fails to decode, or whose
        size is no longer the one listed, is marked unreadable and :class:`DataError` is raised."""
        image = self[name]
        if image.error is not None:
            raise DataError(f"image {name!r} is unreadable: {image.error}")
        try:
            array = read_image(image.path)
        except DataError as e:
            image.error = str(e)
            raise
        if array.shape[:2] != (image.height, image.width):
            image.error = (
                f"its size changed while the page was open: {image.width}x{image.height} when listed, "
                f"{array.shape[1]}x{array.shape[0]} now (restart the command)"
            )
            raise DataError(f"image {name!r}: {image.error}")
        return array

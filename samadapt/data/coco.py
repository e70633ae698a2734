"""COCO instance-segmentation files as a dataset of images with instance masks.

:class:`CocoInstances` reads any COCO instance-segmentation file (TACO, ZeroWaste, TrashCan, COCO
itself, labelme2coco output) and survives the quirks of the real waste datasets (validated by
:mod:`samadapt.data.coco_file`; every skipped or repaired annotation is counted by reason in
:attr:`CocoInstances.skips`, see :mod:`samadapt.data.skips`, and logged once):

- EXIF-rotated images are read in the frame the annotations use, and their size is checked;
- nothing is read or rasterised until asked for: indexing and counting a dataset needs only the
  JSON file; :meth:`CocoInstances.decode_masks` rasterises just the annotations it is given and
  :meth:`CocoInstances.instance_masks` hands them out lazily, as RLEs decoded on indexing
  (TACO has 6000x5312 images with 90 objects: 2.9 GB of bool masks; see :mod:`samadapt.data.masks`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from .coco_file import ParsedFile, ignore_predicate, load_coco_json
from .images import read_image, resolve_image_path
from .masks import InstanceMasks, rle_area, segmentation_to_rle
from .skips import IssueLog

__all__ = ["CocoInstances"]

MISSING_IMAGES = ("error", "skip")
EMPTY_IMAGES = ("keep", "skip")


class CocoInstances(Dataset):
    """Images of a COCO instance-segmentation file, each with its instance masks.

    Args:
        images_root: folder the images' ``file_name`` entries are relative to, or several folders
            tried in order (presets use this to accept both ``split/data/x.png`` layouts).
        annotation_file: the COCO JSON file.
        strict: raise :class:`DataError` on the first annotation that would be skipped or repaired
            (crowd regions and ignored categories are not errors).
        missing_images: ``"error"``: a missing image file raises when the image is loaded (the index
            is built from the JSON alone); ``"skip"``: image files are looked up now and images
            without one are left out (counted as ``missing_image``).
        empty_images: ``"keep"`` images without a valid instance (they yield zero instances) or
            ``"skip"`` them.
        image_ids: keep only these image ids (in file order); for splits. See also :meth:`subset`.
        ignore_categories: category names (or a predicate on the name) that are not instance classes.
        name: label used in logs and summaries (default: the annotation file's name).

    Every item (``dataset[i]``) is a dict:
        ``image``: uint8 (H, W, 3) RGB; ``masks``: bool (N, H, W); ``boxes``: float32 (N, 4) XYXY,
        tight around each mask in inclusive pixel indices (as
        ``segment_anything.utils.amg.batched_mask_to_box``); ``category_ids``: int64 (N,);
        ``annotation_ids``: int64 (N,) as written in the file (-1 where absent; not unique in TACO);
        ``image_id``: int; ``file_name``: str; ``original_size``: (H, W).

    Annotation problems are counted in :attr:`skips`; see :data:`samadapt.data.skips.REASONS`.
    """

    def __init__(
        self,
        images_root: str | os.PathLike | Sequence[str | os.PathLike],
        annotation_file: str | os.PathLike,
        *,
        strict: bool = False,
        missing_images: str = "error",
        empty_images: str = "keep",
        image_ids: Iterable[int] | None = None,
        ignore_categories: Iterable[str] | Callable[[str], bool] | None = ("_background_",),
        name: str | None = None,
    ) -> None:
        if missing_images not in MISSING_IMAGES:
            raise ConfigError(f"missing_images={missing_images!r}; choose one of {MISSING_IMAGES}")
        if empty_images not in EMPTY_IMAGES:
            raise ConfigError(f"empty_images={empty_images!r}; choose one of {EMPTY_IMAGES}")
        roots = [images_root] if isinstance(images_root, (str, os.PathLike)) else list(images_root)
        if not roots:
            raise ConfigError(
                "images_root is an empty list; give the folder the images' file_name entries are relative to"
            )
        self.images_roots: tuple[Path, ...] = tuple(Path(r) for r in roots)
        self.images_root = self.images_roots[0]
        self.annotation_file = Path(annotation_file)
        self.name = name or self.annotation_file.name
        self.missing_images = missing_images
        self.empty_images = empty_images
        ignore = ignore_predicate(ignore_categories)
        data = load_coco_json(self.annotation_file)
        issues = IssueLog(str(self.annotation_file), strict=strict)
        self._file = ParsedFile(data, str(self.annotation_file), ignore, issues)
        del data
        self._paths: dict[int, Path] = {}
        self._select(image_ids)
        issues.log_summary()

    # -- selection ------------------------------------------------------------------------------

    def _select(self, image_ids: Iterable[int] | None) -> None:
        """Set the images of this view: ``image_ids`` (or all), minus missing / empty ones per options."""
        f = self._file
        if image_ids is None:
            ids = list(f.images)
            self._scope: set[int] | None = None
        else:
            wanted = list(image_ids)
            unknown = [i for i in wanted if i not in f.images]
            if unknown:
                raise DataError(
                    f"{self.name}: image ids {unknown[:10]} are not in {str(self.annotation_file)!r}"
                    f"{' (and more)' if len(unknown) > 10 else ''}"
                )
            wanted_set = set(wanted)
            ids = [i for i in f.images if i in wanted_set]
            self._scope = wanted_set
        if self.missing_images == "skip":
            kept = []
            for i in ids:
                path = self._paths.get(i) or self._resolve(f.images[i]["file_name"])
                if path is None:
                    f.issues.add(
                        "missing_image",
                        image_id=i,
                        annotation_id=None,
                        key=("missing_image", i),
                        detail=f"{f.images[i]['file_name']!r} not under {self._roots_text()}",
                    )
                else:
                    self._paths[i] = path
                    kept.append(i)
            ids = kept
        if self.empty_images == "skip":
            ids = [i for i in ids if f.instances[i]]
        self._ids: list[int] = ids
        self._index_of = {i: k for k, i in enumerate(ids)}

    def subset(self, image_ids: Iterable[int], name: str | None = None) -> CocoInstances:
        """A view on the given image ids (file order), sharing the parsed file and its skip counts."""
        view = copy.copy(self)
        view._paths = dict(self._paths)
        view.name = name or self.name
        view._select(image_ids)
        return view

    # -- index ------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def image_ids(self) -> list[int]:
        """Image ids of this view, in dataset order."""
        return list(self._ids)

    @property
    def file_image_ids(self) -> list[int]:
        """Ids of every image in the annotation file (for splits that must not depend on which image
        files are present)."""
        return list(self._file.images)

    def file_image_info(self, image_id: int) -> dict:
        """The file's entry for any image id, in this view or not."""
        return self._file.images[image_id]

    def index_of(self, image_id: int) -> int:
        """Dataset index of an image id."""
        try:
            return self._index_of[image_id]
        except KeyError:
            raise DataError(f"{self.name}: image id {image_id} is not in this dataset") from None

    @property
    def categories(self) -> dict[int, str]:
        """{category id: name} of the instance classes (ignored categories left out)."""
        return dict(self._file.categories)

    @property
    def coco(self):
        """pycocotools ``COCO`` index of the cleaned file: renumbered annotation ids, degenerate polygon
        parts dropped, invalid annotations left out (crowd regions kept, with ``iscrowd=1``)."""
        return self._file.coco()

    @property
    def num_file_annotations(self) -> int:
        """Number of entries in the file's ``annotations`` list (valid or not)."""
        return self._file.num_file_annotations

    @property
    def num_instances(self) -> int:
        """Valid, non-crowd annotations of this view's images (empty masks are found only when decoded)."""
        return sum(len(self._file.instances[i]) for i in self._ids)

    @property
    def issues(self) -> IssueLog:
        """The shared issue log of the annotation file."""
        return self._file.issues

    @property
    def skips(self) -> dict[str, int]:
        """{reason: count} of the annotations skipped or repaired in this view's images (plus those with
        no valid image, for a view on the whole file). Reasons: :data:`samadapt.data.skips.REASONS`."""
        return self._file.issues.counts(self._scope)

    def skip_examples(self, n: int = 3) -> dict[str, list]:
        """{reason: first ``n`` :class:`~samadapt.data.skips.Issue`} for this view."""
        return self._file.issues.examples(n, self._scope)

    def image_info(self, idx: int) -> dict:
        """The image's entry in the file (``id``, ``file_name``, ``height``, ``width``, ...)."""
        return self._file.images[self._ids[idx]]

    def original_size(self, idx: int) -> tuple[int, int]:
        """(H, W) of the image as the annotation file gives it."""
        info = self.image_info(idx)
        return int(info["height"]), int(info["width"])

    def _resolve(self, file_name: str) -> Path | None:
        for root in self.images_roots:
            path = resolve_image_path(root, file_name)
            if path is not None:
                return path
        return None

    def _roots_text(self) -> str:
        return " or ".join(repr(str(r)) for r in self.images_roots)

    def image_path(self, idx: int) -> Path:
        """Path of the image file; raises :class:`DataError` if it does not exist."""
        image_id = self._ids[idx]
        path = self._paths.get(image_id)
        if path is None:
            file_name = self._file.images[image_id]["file_name"]
            path = self._resolve(file_name)
            if path is None:
                raise DataError(
                    f"{self.name}: image file {file_name!r} (image id {image_id}) not found under "
                    f"{self._roots_text()}. Check images_root, or pass missing_images='skip' to "
                    "leave out images whose file is missing"
                )
            self._paths[image_id] = path
        return path

    def load_image(self, idx: int) -> np.ndarray:
        """RGB uint8 (H, W, 3), EXIF orientation applied; its size is checked against the file."""
        path = self.image_path(idx)
        image = read_image(path)
        h, w = self.original_size(idx)
        if image.shape[:2] != (h, w):
            hint = (
                " The swapped size matches: the annotation file and the image disagree about EXIF "
                "orientation (the annotations must be in the frame of the EXIF-rotated image)."
                if image.shape[:2] == (w, h)
                else ""
            )
            raise DataError(
                f"{self.name}: image {self._ids[idx]} ({str(path)!r}) is {image.shape[0]}x{image.shape[1]} "
                f"(HxW, after EXIF rotation) but the annotation file says {h}x{w}.{hint}"
            )
        return image

    def instance_annotations(self, idx: int) -> list[dict]:
        """Valid, non-crowd annotations of the image (cleaned copies; do not modify them). Each has the
        renumbered ``id``, the file's ``orig_id``, ``image_id``, ``category_id`` and ``segmentation``."""
        return list(self._file.instances[self._ids[idx]])

    def crowd_annotations(self, idx: int) -> list[dict]:
        """The image's ``iscrowd=1`` regions (not instances; never prompted)."""
        return list(self._file.crowds[self._ids[idx]])

    def annotation_rles(self, idx: int, annotations: Sequence[dict]) -> list[dict]:
        """The given annotations of image ``idx`` as compressed RLEs (what :meth:`decode_masks`
        decodes), in the given order; a mask with no pixel is counted once as ``empty_mask``."""
        h, w = self.original_size(idx)
        image_id = self._ids[idx]
        rles = []
        for ann in annotations:
            if ann["image_id"] != image_id:
                raise DataError(
                    f"{self.name}: annotation {ann.get('orig_id')} belongs to image {ann['image_id']}, "
                    f"not to image {image_id} (index {idx})"
                )
            rle = segmentation_to_rle(ann["segmentation"], h, w)
            if not ann.get("iscrowd") and rle_area(rle) == 0:
                self._file.issues.add(
                    "empty_mask",
                    image_id=image_id,
                    annotation_id=ann.get("orig_id"),
                    key=("empty_mask", ann["id"]),
                    detail="no pixel after rasterising",
                )
            rles.append(rle)
        return rles

    def decode_masks(self, idx: int, annotations: Sequence[dict]) -> np.ndarray:
        """Rasterise the given annotations of image ``idx`` -> bool (N, H, W), in the given order.

        Only these annotations are rasterised, one at a time into the result. A mask with no pixel
        is returned as all False and counted once as ``empty_mask`` (however often it is decoded).
        """
        return np.asarray(self.instance_masks(idx, annotations))

    def instance_masks(self, idx: int, annotations: Sequence[dict] | None = None) -> InstanceMasks:
        """The given annotations (default: the image's instances) as a lazy bool (N, H, W)
        :class:`~samadapt.data.masks.InstanceMasks`: held as RLEs, decoded only where indexed."""
        anns = self.instance_annotations(idx) if annotations is None else annotations
        return InstanceMasks(self.annotation_rles(idx, anns), self.original_size(idx))

    def crowd_masks(self, idx: int) -> np.ndarray:
        """The image's crowd regions -> bool (K, H, W) (K = 0 if none). Not instances; use their union
        to ignore those pixels in a loss or a metric, as COCO's evaluation does."""
        return self.decode_masks(idx, self.crowd_annotations(idx))

    def __getitem__(self, idx: int) -> dict:
        return self.item(idx)

    def item(self, idx: int, *, lazy_masks: bool = False) -> dict:
        """``dataset[idx]``; with ``lazy_masks`` its ``masks`` are an
        :class:`~samadapt.data.masks.InstanceMasks` (decoded where indexed: an evaluation can score a
        90-object 6000x5312 image a few masks at a time instead of holding 2.9 GB)."""
        if not -len(self) <= idx < len(self):
            raise IndexError(f"index {idx} out of range for {self.name} with {len(self)} images")
        idx = idx % len(self)
        info = self.image_info(idx)
        image = self.load_image(idx)
        anns = self.instance_annotations(idx)
        lazy = self.instance_masks(idx, anns)
        keep = [k for k, rle in enumerate(lazy.rles) if rle_area(rle) > 0]  # empty masks are not instances
        lazy = InstanceMasks([lazy.rles[k] for k in keep], lazy.size)
        anns = [anns[k] for k in keep]
        return {
            "image": image,
            "masks": lazy if lazy_masks else np.asarray(lazy),
            "boxes": lazy.boxes(),
            "category_ids": np.asarray([a["category_id"] for a in anns], dtype=np.int64),
            "annotation_ids": np.asarray(
                [a["orig_id"] if isinstance(a["orig_id"], int) else -1 for a in anns], dtype=np.int64
            ),
            "image_id": int(info["id"]),
            "file_name": info["file_name"],
            "original_size": self.original_size(idx),
        }

    def missing_image_files(self) -> list[str]:
        """The ``file_name`` of every image whose file is not found (looked up now, not read)."""
        missing = []
        for idx in range(len(self)):
            try:
                self.image_path(idx)
            except DataError:
                missing.append(self.image_info(idx)["file_name"])
        return missing

    def verify_images(self) -> None:
        """Look up every image file now; raise one :class:`DataError` listing the missing ones."""
        missing = self.missing_image_files()
        if missing:
            raise DataError(
                f"{self.name}: {len(missing)} of {len(self)} image files not found under "
                f"{self._roots_text()}, e.g. {missing[:5]}"
            )

    def __repr__(self) -> str:
        return (
            f"CocoInstances(name={self.name!r}, images={len(self)}, instances={self.num_instances}, "
            f"categories={len(self._file.categories)})"
        )

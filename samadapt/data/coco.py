"""COCO instance-segmentation files as a dataset of images with instance masks.

:class:`CocoInstances` reads any COCO instance-segmentation file (TACO, ZeroWaste, TrashCan, COCO
itself, labelme2coco output) and survives the quirks of the real waste datasets:

- non-standard JSON (``Infinity`` in TACO's unofficial file) and duplicate annotation ids (TACO:
  pycocotools' index would hand image 93 the annotation of image 101): annotations are validated
  and renumbered before anything is indexed;
- masks of polygons reaching beyond the image (TACO's -1 coordinates) are clipped to it, degenerate
  polygon parts dropped, crowd regions
  and ignored categories (``_background_``) kept out of the instances; every such case is counted
  by reason in :attr:`CocoInstances.skips` (see :mod:`samadapt.data.skips`) and logged once;
- EXIF-rotated images are read in the frame the annotations use, and their size is checked;
- nothing is read or rasterised until asked for: indexing and counting a dataset needs only the
  JSON file, and :meth:`CocoInstances.decode_masks` rasterises just the annotations it is given
  (TACO has 6000x5312 images with 90 objects).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import numbers
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from .images import read_image, resolve_image_path
from .prompts import boxes_from_masks
from .skips import IssueLog

__all__ = ["CocoInstances", "load_coco_json", "annotation_area", "segmentation_to_rle"]

MISSING_IMAGES = ("error", "skip")
EMPTY_IMAGES = ("keep", "skip")


def load_coco_json(path: str | os.PathLike) -> dict:
    """Read a COCO annotation file and check its top-level structure.

    Non-finite numbers (``Infinity``, ``NaN``, which Python's json accepts although they are not
    JSON) are parsed as floats; :class:`CocoInstances` then skips the annotations holding them
    (reason ``non_finite``).

    Raises:
        DataError: the file is missing, is not JSON (message gives line and column), or lacks the
            ``images`` / ``annotations`` / ``categories`` lists.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"annotation file {str(path)!r} does not exist")
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise DataError(f"annotation file {str(path)!r} is not UTF-8 text ({e}); is it really a COCO JSON file?") from e
    except json.JSONDecodeError as e:
        raise DataError(f"annotation file {str(path)!r} is not valid JSON: {e.msg} at line {e.lineno}, "
                        f"column {e.colno}. The file may be truncated; download it again") from e
    if not isinstance(data, dict):
        raise DataError(f"annotation file {str(path)!r} holds a JSON {type(data).__name__}, expected a COCO object "
                        "with 'images', 'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DataError(f"annotation file {str(path)!r} has no {key!r} key (it has {sorted(data)}); a COCO "
                            "instance-segmentation file needs 'images', 'annotations' and 'categories'")
        if not isinstance(data[key], list):
            raise DataError(f"annotation file {str(path)!r}: {key!r} is a {type(data[key]).__name__}, expected a list")
    return data


# ---------------------------------------------------------------------------------------------
# Geometry helpers (no rasterising)


def _is_number(x: Any) -> bool:
    if type(x) in (int, float):  # fast path: json gives int and float
        return True
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _has_non_finite(value: Any) -> bool:
    """True if a number or a (nested) list of numbers holds NaN or +-Infinity."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(_has_non_finite(v) for v in value)
    return False


def _as_parts(seg: list) -> list[np.ndarray] | None:
    """Polygon parts as float64 arrays; None if a part is not a flat list of numbers."""
    parts = []
    for part in seg:
        if not isinstance(part, (list, tuple)) or not all(_is_number(v) for v in part):
            return None
        parts.append(np.asarray(part, dtype=np.float64))
    return parts


def _polygon_area(xs: np.ndarray, ys: np.ndarray) -> float:
    """Shoelace area of one polygon, in pixels^2."""
    cross = np.dot(xs[:-1], ys[1:]) - np.dot(xs[1:], ys[:-1]) + xs[-1] * ys[0] - xs[0] * ys[-1]
    return 0.5 * abs(float(cross))


def annotation_area(ann: dict) -> float:
    """Area of a (validated) annotation in pixels^2 without rasterising it.

    Polygons: the sum of the parts' shoelace areas (overlapping parts are counted twice; pycocotools'
    pixel count differs by about the perimeter / 2). RLE: the exact pixel count.
    """
    seg = ann["segmentation"]
    if isinstance(seg, list):
        return sum(_polygon_area(np.asarray(p[0::2], float), np.asarray(p[1::2], float)) for p in seg)
    h, w = seg["size"]
    rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg
    return float(mask_utils.area(rle))


def segmentation_to_rle(segmentation: list | dict, height: int, width: int) -> dict:
    """COCO segmentation (polygons, compressed or uncompressed RLE) -> one compressed RLE."""
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


@dataclass
class _Polygons:
    """Result of cleaning one annotation's polygon list."""

    parts: list[list[float]] = field(default_factory=list)
    clipped: bool = False
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (reason, detail) per dropped part


def _degenerate_detail(k: int, xs: np.ndarray, ys: np.ndarray) -> str:
    n_distinct = len(set(zip(xs.tolist(), ys.tolist())))
    return f"part {k} has {n_distinct} distinct point(s) and zero area"


def _clean_polygons(parts: list[np.ndarray], height: int, width: int) -> _Polygons:
    """Drop degenerate polygon parts (flat x, y arrays) and parts outside the image; flag parts that
    reach beyond it (their masks are clipped to the image when rasterised)."""
    out = _Polygons()
    for k, part in enumerate(parts):
        if len(part) < 6 or len(part) % 2:
            out.dropped.append(("degenerate_polygon", f"part {k} has {len(part)} coordinates"))
            continue
        xs, ys = part[0::2], part[1::2]
        # Fewer than 3 distinct points implies zero area, so the area test covers both.
        if _polygon_area(xs, ys) == 0.0:
            out.dropped.append(("degenerate_polygon", _degenerate_detail(k, xs, ys)))
            continue
        if xs.max() <= 0 or ys.max() <= 0 or xs.min() >= width or ys.min() >= height:
            out.dropped.append(("outside_image", f"part {k} spans x {xs.min():g}..{xs.max():g}, "
                                                 f"y {ys.min():g}..{ys.max():g} in a {width}x{height} (WxH) image"))
            continue
        if xs.min() < 0 or ys.min() < 0 or xs.max() > width or ys.max() > height:
            # The vertices are kept: moving them would move the polygon's edges inside the image too
            # (changing pixels far from the border), while the rasteriser cuts the mask exactly at the
            # image border, which is the intersection of the polygon with the image.
            out.clipped = True
        out.parts.append(part.tolist())
    return out


def _hashable_id(ann: dict) -> int | str | None:
    """The annotation's ``id`` if it is an int or str (anything else is treated as absent)."""
    v = ann.get("id")
    return v if isinstance(v, (int, str)) and not isinstance(v, bool) else None


def _check_rle(seg: dict, height: int, width: int) -> tuple[str, str] | None:
    """(reason, detail) if an RLE segmentation is unusable, else None."""
    size, counts = seg.get("size"), seg.get("counts")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_number(v) for v in size)):
        return "bad_segmentation", f"RLE size {size!r} is not [height, width]"
    if [int(size[0]), int(size[1])] != [height, width]:
        return "rle_size_mismatch", f"RLE size {list(size)} but the image is {height}x{width} (HxW)"
    if isinstance(counts, list):
        if not all(_is_number(v) and v >= 0 for v in counts) or sum(counts) != height * width:
            return "bad_segmentation", f"uncompressed RLE counts do not sum to {height}*{width}"
    elif not isinstance(counts, (str, bytes)):
        return "bad_segmentation", f"RLE counts is a {type(counts).__name__}"
    return None


# ---------------------------------------------------------------------------------------------
# The parsed file, shared by a dataset and its subsets


def _ignore_predicate(ignore: Iterable[str] | Callable[[str], bool] | None) -> Callable[[str], bool]:
    if ignore is None:
        return lambda name: False
    if callable(ignore):
        return ignore
    if isinstance(ignore, str):
        raise ConfigError(f"ignore_categories={ignore!r} is a string; pass a tuple of names, e.g. ({ignore!r},)")
    names = set(ignore)
    return lambda name: name in names


class _ParsedFile:
    """Validated images, categories and annotations of one COCO file (built once, shared)."""

    def __init__(self, data: dict, source: str, ignore: Callable[[str], bool], issues: IssueLog) -> None:
        self.source = source
        self.issues = issues
        self.images: dict[int, dict] = {}
        for k, img in enumerate(data["images"]):
            self._check_image(k, img)
            if img["id"] in self.images:
                first = self.images[img["id"]]["file_name"]
                raise DataError(f"{source}: image id {img['id']} appears twice in 'images' ({first!r} and "
                                f"{img['file_name']!r}); image ids must be unique")
            self.images[img["id"]] = img
        self.all_categories: dict[int, str] = {}
        for k, cat in enumerate(data["categories"]):
            if not isinstance(cat, dict) or not _is_number(cat.get("id")) or not isinstance(cat.get("name"), str):
                raise DataError(f"{source}: categories[{k}] = {cat!r} needs an integer 'id' and a string 'name'")
            if cat["id"] in self.all_categories:
                raise DataError(f"{source}: category id {cat['id']} appears twice in 'categories'")
            self.all_categories[int(cat["id"])] = cat["name"]
        self.categories = {i: n for i, n in self.all_categories.items() if not ignore(n)}
        self.category_info = list(data["categories"])
        self.num_file_annotations = len(data["annotations"])
        self.instances: dict[int, list[dict]] = {i: [] for i in self.images}
        self.crowds: dict[int, list[dict]] = {i: [] for i in self.images}
        self._parse_annotations(data["annotations"])
        self._coco = None

    def _check_image(self, k: int, img: Any) -> None:
        if not isinstance(img, dict):
            raise DataError(f"{self.source}: images[{k}] is a {type(img).__name__}, expected an object")
        for key in ("id", "file_name", "height", "width"):
            if key not in img:
                raise DataError(f"{self.source}: images[{k}] (id {img.get('id')!r}) has no {key!r}; every image needs "
                                "'id', 'file_name', 'height' and 'width'")
        if not isinstance(img["id"], int) or isinstance(img["id"], bool):
            raise DataError(f"{self.source}: images[{k}] has id {img['id']!r}; image ids must be integers")
        if not isinstance(img["file_name"], str) or not img["file_name"]:
            raise DataError(f"{self.source}: image {img['id']} has file_name {img['file_name']!r}")
        for key in ("height", "width"):
            v = img[key]
            if not _is_number(v) or v != int(v) or v <= 0:
                raise DataError(f"{self.source}: image {img['id']} ({img['file_name']!r}) has {key} {v!r}; "
                                "expected a positive integer")

    def _parse_annotations(self, annotations: list) -> None:
        id_counts = Counter(_hashable_id(a) for a in annotations if isinstance(a, dict))
        seen_ids: set = set()
        for uid, ann in enumerate(annotations):
            if not isinstance(ann, dict):
                self.issues.add("malformed", image_id=None, annotation_id=None,
                                detail=f"annotations[{uid}] is a {type(ann).__name__}")
                continue
            orig_id, image_id = _hashable_id(ann), ann.get("image_id")
            img = self.images.get(image_id) if isinstance(image_id, int) else None
            if orig_id is not None and id_counts[orig_id] > 1:
                if orig_id in seen_ids:
                    self.issues.add("duplicate_id", image_id=image_id if img else None, annotation_id=orig_id,
                                    detail=f"annotations[{uid}] reuses it")
                seen_ids.add(orig_id)
            cleaned = self._clean(uid, ann, img)
            if cleaned is not None:
                (self.crowds if cleaned["iscrowd"] else self.instances)[image_id].append(cleaned)

    def _clean(self, uid: int, ann: dict, img: dict | None) -> dict | None:
        """Validated copy of an annotation (renumbered ``id``, original in ``orig_id``), or None."""
        orig_id, image_id, cat = _hashable_id(ann), ann.get("image_id"), ann.get("category_id")

        def skip(reason: str, detail: str = "") -> None:
            self.issues.add(reason, image_id=image_id if img is not None else None, annotation_id=orig_id,
                            detail=detail)

        if not isinstance(image_id, int) or not _is_number(cat) or "segmentation" not in ann:
            return skip("malformed", f"image_id={image_id!r}, category_id={cat!r}, "
                                     f"segmentation {'present' if 'segmentation' in ann else 'missing'}")
        if img is None:
            return skip("unknown_image", f"image_id {image_id} is not in 'images'")
        if cat not in self.all_categories:
            return skip("unknown_category", f"category_id {cat} is not in 'categories'")
        if cat not in self.categories:
            return skip("ignored_category", f"category {self.all_categories[cat]!r}")
        h, w = int(img["height"]), int(img["width"])
        seg, bbox = ann["segmentation"], ann.get("bbox")
        iscrowd = bool(ann.get("iscrowd", 0))
        out = {"id": uid, "orig_id": orig_id, "image_id": image_id, "category_id": int(cat), "iscrowd": int(iscrowd)}
        if iscrowd:
            skip("crowd")
            if isinstance(seg, dict) and _check_rle(seg, h, w) is None:
                return {**out, "segmentation": seg}
            if isinstance(seg, list):
                parts = _as_parts([seg] if seg and all(_is_number(v) for v in seg) else seg)
                if parts is not None and all(np.isfinite(p).all() for p in parts):
                    polys = _clean_polygons(parts, h, w)
                    if polys.parts:
                        return {**out, "segmentation": polys.parts}
            return None  # unusable crowd region: counted as crowd already
        if _has_non_finite(bbox):
            return skip("non_finite", f"bbox {bbox!r}")
        if isinstance(seg, dict):
            problem = _check_rle(seg, h, w)
            if problem:
                return skip(*problem)
            return {**out, "segmentation": seg}
        if not isinstance(seg, list):
            return skip("bad_segmentation", f"segmentation is a {type(seg).__name__}")
        if not seg:
            return skip("empty_segmentation", "segmentation is []")
        if _is_number(seg[0]):  # a single polygon written without the outer list
            seg = [seg]
        parts = _as_parts(seg)
        if parts is None:
            return skip("bad_segmentation", "polygons must be lists of numbers [x1, y1, x2, y2, ...]")
        if not all(np.isfinite(p).all() for p in parts):
            return skip("non_finite", "polygon coordinates hold NaN or Infinity")
        polys = _clean_polygons(parts, h, w)
        for reason, detail in polys.dropped:
            skip(reason, detail)
        if not polys.parts:
            return skip("empty_segmentation", f"all {len(seg)} polygon part(s) dropped")
        if polys.clipped:
            skip("clipped", f"coordinates beyond the {w}x{h} (WxH) image; the mask is cut at the border")
        return {**out, "segmentation": polys.parts}

    def coco(self):
        """A pycocotools ``COCO`` index of the cleaned annotations (renumbered ids), built on first use."""
        if self._coco is None:
            from pycocotools.coco import COCO

            anns = []
            for per_image in (self.instances, self.crowds):
                for lst in per_image.values():
                    for a in lst:
                        a2 = {k: v for k, v in a.items() if k != "orig_id"}
                        a2["area"] = annotation_area(a)
                        anns.append(a2)
            anns.sort(key=lambda a: a["id"])
            coco = COCO()
            coco.dataset = {"images": list(self.images.values()), "annotations": anns,
                            "categories": self.category_info}
            with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
                coco.createIndex()
            self._coco = coco
        return self._coco


# ---------------------------------------------------------------------------------------------
# The dataset


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
            raise ConfigError("images_root is an empty list; give the folder the images' file_name entries are "
                              "relative to")
        self.images_roots: tuple[Path, ...] = tuple(Path(r) for r in roots)
        self.images_root = self.images_roots[0]
        self.annotation_file = Path(annotation_file)
        self.name = name or self.annotation_file.name
        self.missing_images = missing_images
        self.empty_images = empty_images
        ignore = _ignore_predicate(ignore_categories)
        data = load_coco_json(self.annotation_file)
        issues = IssueLog(str(self.annotation_file), strict=strict)
        self._file = _ParsedFile(data, str(self.annotation_file), ignore, issues)
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
                raise DataError(f"{self.name}: image ids {unknown[:10]} are not in {str(self.annotation_file)!r}"
                                f"{' (and more)' if len(unknown) > 10 else ''}")
            wanted_set = set(wanted)
            ids = [i for i in f.images if i in wanted_set]
            self._scope = wanted_set
        if self.missing_images == "skip":
            kept = []
            for i in ids:
                path = self._paths.get(i) or self._resolve(f.images[i]["file_name"])
                if path is None:
                    f.issues.add("missing_image", image_id=i, annotation_id=None, key=("missing_image", i),
                                 detail=f"{f.images[i]['file_name']!r} not under {self._roots_text()}")
                else:
                    self._paths[i] = path
                    kept.append(i)
            ids = kept
        if self.empty_images == "skip":
            ids = [i for i in ids if f.instances[i]]
        self._ids: list[int] = ids
        self._index_of = {i: k for k, i in enumerate(ids)}

    def subset(self, image_ids: Iterable[int], name: str | None = None) -> "CocoInstances":
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
                raise DataError(f"{self.name}: image file {file_name!r} (image id {image_id}) not found under "
                                f"{self._roots_text()}. Check images_root, or pass missing_images='skip' to "
                                "leave out images whose file is missing")
            self._paths[image_id] = path
        return path

    def load_image(self, idx: int) -> np.ndarray:
        """RGB uint8 (H, W, 3), EXIF orientation applied; its size is checked against the file."""
        path = self.image_path(idx)
        image = read_image(path)
        h, w = self.original_size(idx)
        if image.shape[:2] != (h, w):
            hint = (" The swapped size matches: the annotation file and the image disagree about EXIF "
                    "orientation (the annotations must be in the frame of the EXIF-rotated image)."
                    if image.shape[:2] == (w, h) else "")
            raise DataError(f"{self.name}: image {self._ids[idx]} ({str(path)!r}) is {image.shape[0]}x{image.shape[1]} "
                            f"(HxW, after EXIF rotation) but the annotation file says {h}x{w}.{hint}")
        return image

    def instance_annotations(self, idx: int) -> list[dict]:
        """Valid, non-crowd annotations of the image (cleaned copies; do not modify them). Each has the
        renumbered ``id``, the file's ``orig_id``, ``image_id``, ``category_id`` and ``segmentation``."""
        return list(self._file.instances[self._ids[idx]])

    def crowd_annotations(self, idx: int) -> list[dict]:
        """The image's ``iscrowd=1`` regions (not instances; never prompted)."""
        return list(self._file.crowds[self._ids[idx]])

    def decode_masks(self, idx: int, annotations: Sequence[dict]) -> np.ndarray:
        """Rasterise the given annotations of image ``idx`` -> bool (N, H, W), in the given order.

        Only these annotations are rasterised. A mask with no pixel is returned as all False and
        counted once as ``empty_mask`` (however often it is decoded).
        """
        h, w = self.original_size(idx)
        image_id = self._ids[idx]
        masks = np.zeros((len(annotations), h, w), dtype=bool)
        for k, ann in enumerate(annotations):
            if ann["image_id"] != image_id:
                raise DataError(f"{self.name}: annotation {ann.get('orig_id')} belongs to image {ann['image_id']}, "
                                f"not to image {image_id} (index {idx})")
            masks[k] = mask_utils.decode(segmentation_to_rle(ann["segmentation"], h, w)).astype(bool)
            if not ann.get("iscrowd") and not masks[k].any():
                self._file.issues.add("empty_mask", image_id=image_id, annotation_id=ann.get("orig_id"),
                                      key=("empty_mask", ann["id"]), detail="no pixel after rasterising")
        return masks

    def crowd_masks(self, idx: int) -> np.ndarray:
        """The image's crowd regions -> bool (K, H, W) (K = 0 if none). Not instances; use their union
        to ignore those pixels in a loss or a metric, as COCO's evaluation does."""
        return self.decode_masks(idx, self.crowd_annotations(idx))

    def __getitem__(self, idx: int) -> dict:
        if not -len(self) <= idx < len(self):
            raise IndexError(f"index {idx} out of range for {self.name} with {len(self)} images")
        idx = idx % len(self)
        info = self.image_info(idx)
        image = self.load_image(idx)
        anns = self.instance_annotations(idx)
        masks = self.decode_masks(idx, anns)
        keep = masks.reshape(len(anns), -1).any(axis=1) if anns else np.zeros(0, dtype=bool)
        masks = masks[keep]
        anns = [a for a, k in zip(anns, keep) if k]
        return {
            "image": image,
            "masks": masks,
            "boxes": boxes_from_masks(masks),
            "category_ids": np.asarray([a["category_id"] for a in anns], dtype=np.int64),
            "annotation_ids": np.asarray([a["orig_id"] if isinstance(a["orig_id"], int) else -1 for a in anns],
                                         dtype=np.int64),
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
            raise DataError(f"{self.name}: {len(missing)} of {len(self)} image files not found under "
                            f"{self._roots_text()}, e.g. {missing[:5]}")

    def __repr__(self) -> str:
        return (f"CocoInstances(name={self.name!r}, images={len(self)}, instances={self.num_instances}, "
                f"categories={len(self._file.categories)})")

"""Reading and validating a COCO instance-segmentation file (no image is read, nothing rasterised).

:func:`load_coco_json` reads the JSON and checks its structure; :class:`ParsedFile` validates and
renumbers its images, categories and annotations once (shared by a dataset and its subsets), counting
every skipped or repaired annotation by reason (:mod:`samadapt.data.skips`):

- non-standard JSON (``Infinity`` in TACO's unofficial file) and duplicate annotation ids (TACO:
  pycocotools' index would hand image 93 the annotation of image 101): annotations are validated
  and renumbered before anything is indexed;
- masks of polygons reaching beyond the image (TACO's -1 coordinates) are clipped to it, degenerate
  polygon parts dropped, crowd regions and ignored categories (``_background_``) kept out of the
  instances.

:class:`~samadapt.data.coco.CocoInstances` is the dataset built on it.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import numbers
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ..errors import ConfigError, DataError, json_error_at
from .skips import IssueLog

__all__ = ["ParsedFile", "annotation_area", "ignore_predicate", "load_coco_json"]


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
        raise DataError(
            f"annotation file {str(path)!r} is not valid JSON: {json_error_at(e)}. The file may be "
            "truncated; download it again"
        ) from e
    if not isinstance(data, dict):
        raise DataError(
            f"annotation file {str(path)!r} holds a JSON {type(data).__name__}, expected a COCO object "
            "with 'images', 'annotations' and 'categories'"
        )
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DataError(
                f"annotation file {str(path)!r} has no {key!r} key (it has {sorted(data)}); a COCO "
                "instance-segmentation file needs 'images', 'annotations' and 'categories'"
            )
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
            out.dropped.append(
                (
                    "outside_image",
                    f"part {k} spans x {xs.min():g}..{xs.max():g}, "
                    f"y {ys.min():g}..{ys.max():g} in a {width}x{height} (WxH) image",
                )
            )
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


def ignore_predicate(ignore: Iterable[str] | Callable[[str], bool] | None) -> Callable[[str], bool]:
    if ignore is None:
        return lambda name: False
    if callable(ignore):
        return ignore
    if isinstance(ignore, str):
        raise ConfigError(f"ignore_categories={ignore!r} is a string; pass a tuple of names, e.g. ({ignore!r},)")
    names = set(ignore)
    return lambda name: name in names


class ParsedFile:
    """Validated images, categories and annotations of one COCO file (built once, shared by a dataset
    and its subsets)."""

    def __init__(self, data: dict, source: str, ignore: Callable[[str], bool], issues: IssueLog) -> None:
        self.source = source
        self.issues = issues
        self.images: dict[int, dict] = {}
        for k, img in enumerate(data["images"]):
            self._check_image(k, img)
            if img["id"] in self.images:
                first = self.images[img["id"]]["file_name"]
                raise DataError(
                    f"{source}: image id {img['id']} appears twice in 'images' ({first!r} and "
                    f"{img['file_name']!r}); image ids must be unique"
                )
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
                raise DataError(
                    f"{self.source}: images[{k}] (id {img.get('id')!r}) has no {key!r}; every image needs "
                    "'id', 'file_name', 'height' and 'width'"
                )
        if not isinstance(img["id"], int) or isinstance(img["id"], bool):
            raise DataError(f"{self.source}: images[{k}] has id {img['id']!r}; image ids must be integers")
        if not isinstance(img["file_name"], str) or not img["file_name"]:
            raise DataError(f"{self.source}: image {img['id']} has file_name {img['file_name']!r}")
        for key in ("height", "width"):
            v = img[key]
            if not _is_number(v) or v != int(v) or v <= 0:
                raise DataError(
                    f"{self.source}: image {img['id']} ({img['file_name']!r}) has {key} {v!r}; "
                    "expected a positive integer"
                )

    def _parse_annotations(self, annotations: list) -> None:
        id_counts = Counter(_hashable_id(a) for a in annotations if isinstance(a, dict))
        seen_ids: set = set()
        for uid, ann in enumerate(annotations):
            if not isinstance(ann, dict):
                self.issues.add(
                    "malformed",
                    image_id=None,
                    annotation_id=None,
                    detail=f"annotations[{uid}] is a {type(ann).__name__}",
                )
                continue
            orig_id, image_id = _hashable_id(ann), ann.get("image_id")
            img = self.images.get(image_id) if isinstance(image_id, int) else None
            if orig_id is not None and id_counts[orig_id] > 1:
                if orig_id in seen_ids:
                    self.issues.add(
                        "duplicate_id",
                        image_id=image_id if img else None,
                        annotation_id=orig_id,
                        detail=f"annotations[{uid}] reuses it",
                    )
                seen_ids.add(orig_id)
            cleaned = self._clean(uid, ann, img)
            if cleaned is not None:
                (self.crowds if cleaned["iscrowd"] else self.instances)[image_id].append(cleaned)

    def _clean(self, uid: int, ann: dict, img: dict | None) -> dict | None:
        """Validated copy of an annotation (renumbered ``id``, original in ``orig_id``), or None."""
        orig_id, image_id, cat = _hashable_id(ann), ann.get("image_id"), ann.get("category_id")

        def skip(reason: str, detail: str = "") -> None:
            self.issues.add(
                reason, image_id=image_id if img is not None else None, annotation_id=orig_id, detail=detail
            )

        if not isinstance(image_id, int) or not _is_number(cat) or "segmentation" not in ann:
            return skip(
                "malformed",
                f"image_id={image_id!r}, category_id={cat!r}, "
                f"segmentation {'present' if 'segmentation' in ann else 'missing'}",
            )
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
            coco.dataset = {"images": list(self.images.values()), "annotations": anns, "categories": self.category_info}
            with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
                coco.createIndex()
            self._coco = coco
        return self._coco


# ---------------------------------------------------------------------------------------------
# The dataset

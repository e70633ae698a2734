"""Reading Supervise.ly annotations: bitmaps and polygons to masks, parts joined into instances.

A Supervise.ly annotation file (``<image file>.json``; TrashCan's ``original_data/annotations/`` or
a project export's ``<dataset>/ann/``) holds the image ``size`` and a list of ``objects``. A
``bitmap`` object stores a base64 string of a zlib-compressed PNG covering the object's box (the
object is where alpha > 0, as in the Supervisely SDK) and its ``origin`` [x, y], the image position
of the PNG's top-left pixel; a ``polygon`` object stores ``points.exterior`` and
``points.interior`` (holes) as [x, y] pixel lists. The class is ``classTitle``; ``tags`` add
material, kind or species. Objects split into parts (an occluded ROV) share an ``instance`` value.

:func:`frame_instances` turns one file's objects into (category, mask) instances: every part
decoded, the parts of one object joined by OR, each object given a category by a caller's
function. Whatever is left out is counted by reason in an :class:`ImportReport`, with the frames
and objects named.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import os
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from ...errors import DataError

__all__ = [
    "ImportReport",
    "Instance",
    "decode_bitmap",
    "frame_instances",
    "load_frame",
    "object_mask",
    "read_annotation",
]

#: (object) -> (category name, None) or (None, why it has no category)
CategoryOf = Callable[[dict], "tuple[str | None, str | None]"]

#: how many frames / objects each reason names in the report
NAMED_PER_REASON = 5


# ---------------------------------------------------------------------------- geometry
def decode_bitmap(data: str) -> np.ndarray:
    """Supervise.ly bitmap string -> bool (h, w): base64 -> zlib -> PNG; True where alpha > 0 (RGBA /
    LA PNGs) or where the value is > 0 (single-channel PNGs).

    Raises:
        DataError: the string is not base64 of a zlib-compressed PNG.
    """
    try:
        png = zlib.decompress(base64.b64decode(data, validate=True))
        with Image.open(io.BytesIO(png)) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA"):
                return np.asarray(im.getchannel("A")) > 0
            if im.mode in ("1", "L", "P", "I", "I;16"):
                return np.asarray(im) > 0
            return np.asarray(im.convert("L")) > 0
    except (binascii.Error, zlib.error, OSError, ValueError, TypeError) as e:
        raise DataError(f"not a Supervise.ly bitmap (base64 zlib PNG): {e}") from e


def _paste(small: np.ndarray, x0: int, y0: int, height: int, width: int) -> np.ndarray:
    """bool (h, w) placed with its top-left pixel at (x0, y0) of a (height, width) canvas; the parts
    outside the image are cut."""
    mask = np.zeros((height, width), dtype=bool)
    h, w = small.shape
    ys, xs = slice(max(y0, 0), min(y0 + h, height)), slice(max(x0, 0), min(x0 + w, width))
    if ys.start < ys.stop and xs.start < xs.stop:
        mask[ys, xs] = small[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    return mask


def _polygon_mask(points: dict, height: int, width: int) -> np.ndarray:
    """Supervise.ly ``points`` (``exterior`` [[x, y], ...] and ``interior`` holes) -> bool (height,
    width); a pixel belongs to the polygon when its centre (integer coordinates, as in the SDK's
    rasteriser) is inside or on the outline."""
    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    exterior = [tuple(float(v) for v in p) for p in points["exterior"]]
    if len(exterior) < 3:
        raise DataError(f"polygon with {len(exterior)} exterior point(s); a polygon needs at least 3")
    draw.polygon(exterior, fill=1, outline=1)
    for hole in points.get("interior") or []:
        if len(hole) >= 3:
            draw.polygon([tuple(float(v) for v in p) for p in hole], fill=0, outline=0)
    return np.asarray(canvas, dtype=bool)


def object_mask(obj: dict, height: int, width: int) -> np.ndarray:
    """One Supervise.ly ``bitmap`` or ``polygon`` object -> bool (height, width) image mask (parts
    outside the image cut).

    Raises:
        DataError: another geometry type (``rectangle``, ``point``, ... carry no mask), or unreadable
            geometry data.
    """
    kind = obj.get("geometryType")
    try:
        if kind == "bitmap":
            bitmap = obj["bitmap"]
            # a few TrashCan origins are fractional: the PNG starts at the whole pixel, as in the
            # official conversion (int(origin + 1) on a canvas padded by one pixel)
            x0, y0 = (int(math.floor(float(v))) for v in bitmap["origin"])
            return _paste(decode_bitmap(bitmap["data"]), x0, y0, height, width)
        if kind == "polygon":
            return _polygon_mask(obj["points"], height, width)
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"object {obj.get('id')}: malformed {kind} geometry ({type(e).__name__}: {e})") from e
    raise DataError(
        f"object {obj.get('id')} has geometryType {kind!r}, which carries no mask; only 'bitmap' and "
        "'polygon' objects can be imported"
    )


# ---------------------------------------------------------------------------- report
@dataclass
class ImportReport:
    """What an import kept and left out, by reason, with the first frames / objects of each named.

    ``skipped_frames`` and ``skipped_objects``: reason -> count; ``named``: reason -> up to
    :data:`NAMED_PER_REASON` entries ("frame" or "frame: object id"); ``notes``: reason -> count of
    things kept but worth knowing (frames absent from a split list, parts of one object with
    different classes).
    """

    skipped_frames: Counter = field(default_factory=Counter)
    skipped_objects: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    named: dict[str, list[str]] = field(default_factory=dict)

    def _name(self, reason: str, what: str) -> None:
        names = self.named.setdefault(reason, [])
        if len(names) < NAMED_PER_REASON:
            names.append(what)

    def skip_frame(self, reason: str, frame: str) -> None:
        self.skipped_frames[reason] += 1
        self._name(reason, frame)

    def skip_object(self, reason: str, frame: str, obj: dict) -> None:
        self.skipped_objects[reason] += 1
        self._name(reason, f"{frame}: object {obj.get('id')}")

    def note(self, reason: str, what: str, n: int = 1) -> None:
        self.notes[reason] += n
        self._name(reason, what)

    def to_dict(self) -> dict:
        return {
            "skipped_frames": dict(self.skipped_frames),
            "skipped_objects": dict(self.skipped_objects),
            "notes": dict(self.notes),
            "named": self.named,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ImportReport":
        return cls(
            Counter(d.get("skipped_frames", {})),
            Counter(d.get("skipped_objects", {})),
            Counter(d.get("notes", {})),
            {k: list(v) for k, v in d.get("named", {}).items()},
        )

    def format(self, indent: str = "  ") -> str:
        """Readable lines: one per reason with its count and the names."""
        lines = []
        for title, counts in (
            ("frames left out", self.skipped_frames),
            ("objects left out", self.skipped_objects),
            ("notes", self.notes),
        ):
            for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
                names = self.named.get(reason, [])
                more = f", ... ({n - len(names)} more)" if n > len(names) else ""
                lines.append(f"{indent}{title}: {n} x {reason}: {', '.join(names)}{more}")
        return "\n".join(lines) if lines else f"{indent}nothing left out"


# ---------------------------------------------------------------------------- frames
def read_annotation(path: str | os.PathLike) -> dict:
    """A Supervise.ly annotation file -> its dict, with ``size.height`` / ``size.width`` checked.

    Raises:
        DataError: not JSON, or no positive integer image size.
    """
    path = Path(path)
    try:
        ann = json.loads(path.read_text(encoding="utf-8"))
        h, w = int(ann["size"]["height"]), int(ann["size"]["width"])
        objects = ann.get("objects", [])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise DataError(
            f"{path.name} is not a Supervise.ly annotation (needs size.height, size.width and an objects "
            f"list): {type(e).__name__}: {e}"
        ) from e
    if h <= 0 or w <= 0 or not isinstance(objects, list):
        raise DataError(
            f"{path.name}: image size {h}x{w} / objects {type(objects).__name__}; expected a positive size and a list"
        )
    return ann


def load_frame(annotation: Path, image: Path, frame: str, report: ImportReport) -> dict | None:
    """The annotation of one frame, or None (the frame counted and named in ``report``) when the
    annotation or the image cannot be read or their sizes differ. Reads only the image header."""
    try:
        ann = read_annotation(annotation)
    except DataError:
        report.skip_frame("unreadable annotation file", frame)
        return None
    try:
        with Image.open(image) as im:
            size = im.size
    except OSError:
        report.skip_frame("unreadable image file", frame)
        return None
    h, w = int(ann["size"]["height"]), int(ann["size"]["width"])
    if size != (w, h):
        report.skip_frame(
            "image size differs from the annotation's", f"{frame} ({size[0]}x{size[1]}, annotation {w}x{h})"
        )
        return None
    return ann


@dataclass
class Instance:
    """One object of a frame: its category, its mask (bool (H, W), the union of its parts) and the
    Supervise.ly ids of its parts."""

    category: str
    mask: np.ndarray
    object_ids: list


def frame_instances(
    ann: dict, frame: str, category_ofs: dict[str, CategoryOf], reports: dict[str, ImportReport]
) -> dict[str, list[Instance]]:
    """The instances of one annotation, under several category mappings at once (each part is
    decoded once).

    Parts sharing an ``instance`` value become one instance, their masks joined by OR. Its category
    is the first part's (in file order) that has one; parts of one object mapping to different
    categories are noted. An object is left out, counted in ``reports[key]`` under its reason, when
    its geometry is unreadable (``unreadable bitmap``), carries no mask (``geometry 'rectangle' has
    no mask``), its mask is empty (``empty mask``), or the mapping gives it no category (the
    mapping's reason).

    Args:
        ann: :func:`read_annotation`'s dict.
        frame: the image file name, for the report.
        category_ofs: key (e.g. ``"instance"``, ``"material"``) -> object -> (name, None) or (None,
            reason).
        reports: key -> the report to count in.

    Returns:
        key -> instances in the order of their first part.
    """
    h, w = int(ann["size"]["height"]), int(ann["size"]["width"])
    groups: dict[str, list[tuple[dict, np.ndarray]]] = {}
    for obj in ann.get("objects", []):
        try:
            mask = object_mask(obj, h, w)
        except DataError:
            kind = obj.get("geometryType")
            reason = f"unreadable {kind}" if kind in ("bitmap", "polygon") else f"geometry {kind!r} has no mask"
            for report in reports.values():
                report.skip_object(reason, frame, obj)
            continue
        group = obj.get("instance")
        key = f"instance:{group}" if group not in (None, "") else f"object:{obj.get('id')}:{len(groups)}"
        groups.setdefault(key, []).append((obj, mask))
    out: dict[str, list[Instance]] = {}
    for key, category_of in category_ofs.items():
        report, instances = reports[key], []
        for parts in groups.values():
            named = [(category_of(obj), obj) for obj, _ in parts]
            classes = [c for (c, _), _ in named if c is not None]
            if not classes:
                for (_, reason), obj in named:
                    report.skip_object(reason or "no category", frame, obj)
                continue
            if len(set(classes)) > 1:
                report.note(
                    "parts of one object with other categories",
                    f"{frame}: object {parts[0][0].get('id')} "
                    f"({' / '.join(dict.fromkeys(classes))}; kept as {classes[0]})",
                )
            mask = np.logical_or.reduce([m for _, m in parts])
            if not mask.any():
                report.skip_object("empty mask", frame, parts[0][0])
                continue
            instances.append(Instance(classes[0], mask, [obj.get("id") for obj, _ in parts]))
        out[key] = instances
    return out

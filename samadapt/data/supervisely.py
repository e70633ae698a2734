"""Supervise.ly per-image annotations (TrashCan's ``original_data/``) converted to COCO.

TrashCan 1.0 was labelled in Supervise.ly; its ``original_data/annotations/<image>.json`` files hold,
per object, a **bitmap**: a base64 string of a zlib-compressed PNG (RGBA; the object is where
alpha > 0, as in the Supervisely SDK) covering the object's bounding box, plus its ``origin``
[x, y], the image position of the PNG's top-left pixel. Objects split into several parts (an
occluded ROV) share an ``instance`` value (the id of one of them). The class is in ``classTitle``
(``trash``, ``rov``, ``bio``) and the material / instance / species in ``tags``.

:func:`supervisely_to_coco` turns a folder of such files into a COCO dict with compressed-RLE
segmentations that :class:`~samadapt.data.coco.CocoInstances` reads.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import zlib
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ..errors import ConfigError, DataError

__all__ = ["decode_bitmap", "object_mask", "supervisely_to_coco", "trashcan_category"]


def decode_bitmap(data: str) -> np.ndarray:
    """Supervise.ly bitmap string -> bool (h, w): base64 -> zlib -> PNG; True where alpha > 0 (RGBA /
    LA PNGs) or where the value is > 0 (single-channel PNGs)."""
    try:
        png = zlib.decompress(base64.b64decode(data))
        with Image.open(io.BytesIO(png)) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA"):
                return np.asarray(im.getchannel("A")) > 0
            if im.mode in ("1", "L", "P", "I", "I;16"):
                return np.asarray(im) > 0
            return np.asarray(im.convert("L")) > 0
    except (binascii.Error, zlib.error, OSError, ValueError) as e:
        raise DataError(f"not a Supervise.ly bitmap (base64 zlib PNG): {e}") from e


def object_mask(obj: dict, height: int, width: int) -> np.ndarray:
    """One Supervise.ly bitmap object -> bool (height, width) image mask (parts outside the image cut)."""
    bitmap = obj.get("bitmap")
    if obj.get("geometryType") != "bitmap" or not isinstance(bitmap, dict):
        raise DataError(f"object {obj.get('id')} has geometryType {obj.get('geometryType')!r}; only 'bitmap' "
                        "is supported")
    small = decode_bitmap(bitmap["data"])
    x0, y0 = (int(v) for v in bitmap["origin"])
    mask = np.zeros((height, width), dtype=bool)
    h, w = small.shape
    ys, xs = slice(max(y0, 0), min(y0 + h, height)), slice(max(x0, 0), min(x0 + w, width))
    if ys.start < ys.stop and xs.start < xs.stop:
        mask[ys, xs] = small[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
    return mask


def _tag(obj: dict, name: str) -> str | None:
    for t in obj.get("tags", []):
        if t.get("name") == name:
            return t.get("value") or t.get("name")
    return None


_TRASHCAN_ANIMALS = ("crab", "eel", "fish", "shells", "starfish")


def trashcan_category(obj: dict, version: str = "instance") -> str | None:
    """TrashCan class name of a Supervise.ly object (best effort; see the note).

    ``rov`` -> ``rov``; ``bio`` with tag ``plant`` -> ``plant``, with tag ``animal: X`` ->
    ``animal_X`` for crab, eel, fish, shells, starfish and ``animal_etc`` otherwise; ``trash`` ->
    ``trash_<material>`` (material version) or ``trash_<instance>`` / ``trash_unknown_instance``
    (instance version). Note: inferred from the tags and the class tables of TrashCan's READMEs,
    not from the official conversion script (which is not included here); check the names against
    the official COCO files before relying on them.
    """
    if version not in ("instance", "material"):
        raise ConfigError(f"version={version!r}; choose 'instance' or 'material'")
    cls = obj.get("classTitle")
    if cls == "rov":
        return "rov"
    if cls == "bio":
        if _tag(obj, "plant") is not None:
            return "plant"
        animal = _tag(obj, "animal")
        if animal is not None:
            animal = animal.lower().replace(" ", "_")
            return f"animal_{animal}" if animal in _TRASHCAN_ANIMALS else "animal_etc"
        return None
    if cls == "trash":
        key = "material" if version == "material" else "instance"
        value = _tag(obj, key)
        if value is None:
            return "trash_etc" if version == "material" else "trash_unknown_instance"
        return "trash_" + value.lower().replace(" ", "_")
    return None


def supervisely_to_coco(annotation_dir: str | os.PathLike, *,
                        category_of: Callable[[dict], str | None] | None = None,
                        merge_instances: bool = True) -> dict:
    """Convert a folder of Supervise.ly ``<image file>.json`` annotations to a COCO dict.

    Args:
        annotation_dir: folder of ``<image file name>.json`` files (``file_name`` is the json name
            without ``.json``).
        category_of: object -> category name, or None to drop the object; default ``classTitle``.
            For TrashCan use ``lambda o: trashcan_category(o, "material")``.
        merge_instances: objects sharing an ``instance`` value become one annotation (their union).

    Returns:
        COCO dict (``images``, ``annotations`` with compressed RLE, ``categories`` numbered from 1 in
        name order); ``info.skipped_objects`` counts objects left out, by reason.
    """
    annotation_dir = Path(annotation_dir)
    files = sorted(annotation_dir.glob("*.json"))
    if not files:
        raise DataError(f"no Supervise.ly annotation files (*.json) in {str(annotation_dir)!r}")
    category_of = category_of or (lambda o: o.get("classTitle"))
    images, pending, skipped = [], [], Counter()
    for image_id, path in enumerate(files):
        try:
            ann = json.loads(path.read_text(encoding="utf-8"))
            h, w = int(ann["size"]["height"]), int(ann["size"]["width"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise DataError(f"{str(path)!r} is not a Supervise.ly annotation (needs size.height and "
                            f"size.width): {e}") from e
        images.append({"id": image_id, "file_name": path.name[: -len(".json")], "height": h, "width": w})
        groups: dict[str, tuple[str, np.ndarray]] = {}
        for obj in ann.get("objects", []):
            name = category_of(obj)
            if name is None:
                skipped["no_category"] += 1
                continue
            if obj.get("geometryType") != "bitmap":
                skipped[f"geometry_{obj.get('geometryType')}"] += 1
                continue
            mask = object_mask(obj, h, w)
            key = str(obj.get("instance") or obj.get("id")) if merge_instances else str(obj.get("id"))
            if key in groups:
                groups[key] = (groups[key][0], groups[key][1] | mask)
            else:
                groups[key] = (name, mask)
        for name, mask in groups.values():
            if not mask.any():
                skipped["empty_mask"] += 1
                continue
            pending.append((image_id, name, mask))
    names = sorted({name for _, name, _ in pending})
    cat_ids = {n: k + 1 for k, n in enumerate(names)}
    annotations = []
    for ann_id, (image_id, name, mask) in enumerate(pending, start=1):
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        annotations.append({
            "id": ann_id, "image_id": image_id, "category_id": cat_ids[name], "iscrowd": 0,
            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
            "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        })
    return {
        "info": {"description": f"converted from Supervise.ly annotations in {annotation_dir}",
                 "skipped_objects": dict(skipped)},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n, "supercategory": n.split("_")[0]} for n, i in cat_ids.items()],
    }

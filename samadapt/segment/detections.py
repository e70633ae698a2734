"""Detections in: the images to segment and a detector's boxes, as COCO detection results.

A detections file (DETS) is what detectors write for COCO: a JSON list of
``{"image_id" or "file_name", "bbox": [x, y, w, h], "score", "category_id"}``; ``score`` may be left
out (1.0) and so may ``category_id`` (the class head labels those boxes). ``image_id`` needs an
annotation file that maps ids to files; ``file_name`` is relative to the images folder (with an
annotation file it may also be a name the file lists).

Checked before any image is read: a malformed entry raises :class:`~samadapt.errors.DataError`
naming its position and content. Entries for images that are not there (an id the annotation
file lacks, a file not under the images folder) are counted and listed, and the rest are used.
Boxes are clipped to their image when the image is read (:func:`clip_boxes`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import DataError, json_error_at

__all__ = ["IMAGE_SUFFIXES", "DetectionSet", "ImageRef", "ImageSet", "clip_boxes", "list_images", "read_detections"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: how many missing images a report names
MAX_LISTED = 10


@dataclass(frozen=True)
class ImageRef:
    """One image to segment: its COCO ``image_id``, ``file_name`` and file."""

    image_id: int
    file_name: str
    path: Path


@dataclass
class ImageSet:
    """The images of a run: from an annotation file (``instances``, ids as it gives them) or a folder
    (ids 1, 2, ... in sorted file-name order). ``missing``: file names the annotation file lists
    whose file is not under the images folder (left out, counted)."""

    images: list[ImageRef]
    instances: Any = None  # samadapt.data.CocoInstances when read from an annotation file
    missing: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.by_id = {im.image_id: im for im in self.images}
        self.by_name = {im.file_name: im for im in self.images}

    def __len__(self) -> int:
        return len(self.images)


def list_images(images_dir: str | os.PathLike, annotation_file: str | os.PathLike | None = None) -> ImageSet:
    """The images to segment: every image the annotation file lists (whose file is under
    ``images_dir``), or without one every image file under ``images_dir`` (sub-folders included)."""
    root = Path(images_dir)
    if not root.is_dir():
        raise DataError(f"--images {str(root)!r} is not a folder; give the folder holding the images")
    if annotation_file is not None:
        from ..data.coco import CocoInstances

        instances = CocoInstances(root, annotation_file)  # the index comes from the JSON alone
        refs, missing = [], []
        for idx in range(len(instances)):
            info = instances.image_info(idx)
            try:
                refs.append(ImageRef(int(info["id"]), str(info["file_name"]), instances.image_path(idx)))
            except DataError:
                missing.append(str(info["file_name"]))
        return ImageSet(refs, instances, missing)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under --images {str(root)!r}")
    return ImageSet([ImageRef(k + 1, p.relative_to(root).as_posix(), p) for k, p in enumerate(files)])


@dataclass
class DetectionSet:
    """Detections grouped by image, in file order.

    boxes: image_id -> (N, 4) float32 XYXY pixels (not yet clipped); scores: -> (N,) float32;
    category_ids: -> list of N ints or None (None: the detector gave no class).
    entries: detections read; missing_entries / missing_images: those whose image is not there,
    and the names of those images (all of them; reports show the first few).
    """

    boxes: dict[int, np.ndarray]
    scores: dict[int, np.ndarray]
    category_ids: dict[int, list[int | None]]
    entries: int = 0
    missing_entries: int = 0
    missing_images: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return sum(len(s) for s in self.scores.values())

    def report(self) -> dict[str, Any]:
        return {
            "detections": self.entries,
            "used": len(self),
            "for_missing_images": self.missing_entries,
            "missing_images": len(self.missing_images),
            "missing_images_listed": self.missing_images[:MAX_LISTED],
        }


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _problem(entry: Any, has_annotations: bool) -> str | None:
    """What is wrong with one detection entry, or None."""
    if not isinstance(entry, dict):
        return f"is a {type(entry).__name__}, not an object"
    if "image_id" not in entry and "file_name" not in entry:
        return "has neither image_id nor file_name"
    if "image_id" in entry and "file_name" not in entry:
        if isinstance(entry["image_id"], bool) or not isinstance(entry["image_id"], int):
            return f"image_id {entry['image_id']!r} is not an integer"
        if not has_annotations:
            return "gives an image_id, but no --annotation-file maps image ids to files (give it, or file_name)"
    if "file_name" in entry and not isinstance(entry["file_name"], str):
        return f"file_name {entry['file_name']!r} is not a string"
    bbox = entry.get("bbox")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_number(v) for v in bbox):
        return f"bbox {bbox!r} is not 4 finite numbers [x, y, width, height]"
    if bbox[2] < 0 or bbox[3] < 0:
        return f"bbox {list(bbox)} has a negative width or height"
    if "score" in entry and not _number(entry["score"]):
        return f"score {entry['score']!r} is not a finite number"
    cat = entry.get("category_id")
    if cat is not None and (isinstance(cat, bool) or not isinstance(cat, int)):
        return f"category_id {cat!r} is not an integer"
    return None


def read_detections(source: str | os.PathLike | Sequence[dict], images: ImageSet) -> DetectionSet:
    """Read and check a detections file (or list), grouped by the images of ``images``.

    Raises:
        DataError: the file is missing or not JSON, is not a list, or an entry is malformed (the
            message names the entry's position and shows it).
    """
    where = "detections"
    if isinstance(source, (str, os.PathLike)):
        where = f"detections file {str(source)!r}"
        try:
            entries = json.loads(Path(source).read_text())
        except FileNotFoundError:
            raise DataError(f"{where} does not exist") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{where} is not valid JSON: {json_error_at(e)}") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise DataError(f"{where} is not valid JSON ({e})") from None
    else:
        entries = source
    if not isinstance(entries, list):
        hint = (
            " (it looks like a COCO ground-truth file; detections are a list of results)"
            if isinstance(entries, dict) and "annotations" in entries
            else ""
        )
        raise DataError(
            f"{where} must hold a JSON list of COCO results {{image_id or file_name, bbox [x, y, w, h], "
            f"score, category_id}}; it holds a {type(entries).__name__}{hint}"
        )
    has_annotations = images.instances is not None
    grouped: dict[int, list[tuple[list[float], float, int | None]]] = {}
    missing: dict[str, None] = {}
    missing_entries = 0
    for k, entry in enumerate(entries):
        problem = _problem(entry, has_annotations)
        if problem is not None:
            raise DataError(
                f"{where}: entry {k} ({json.dumps(entry, default=str)[:160]}) {problem}; each entry needs "
                f"image_id (with --annotation-file) or file_name, bbox [x, y, width, height] in pixels, "
                f"and optionally score and category_id"
            )
        ref = images.by_name.get(entry["file_name"]) if "file_name" in entry else images.by_id.get(entry["image_id"])
        if ref is None:
            missing_entries += 1
            missing[str(entry.get("file_name", f"image_id {entry.get('image_id')}"))] = None
            continue
        grouped.setdefault(ref.image_id, []).append(
            (entry["bbox"], float(entry.get("score", 1.0)), entry.get("category_id"))
        )
    boxes, scores, cats = {}, {}, {}
    for image_id, dets in grouped.items():
        xywh = np.asarray([d[0] for d in dets], dtype=np.float64).reshape(-1, 4)
        boxes[image_id] = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1).astype(np.float32)
        scores[image_id] = np.asarray([d[1] for d in dets], dtype=np.float32)
        cats[image_id] = [d[2] for d in dets]
    return DetectionSet(
        boxes, scores, cats, entries=len(entries), missing_entries=missing_entries, missing_images=list(missing)
    )


def clip_boxes(boxes: np.ndarray, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, int]:
    """Clip XYXY boxes (N, 4) to an (H, W) image.

    Returns:
        the clipped boxes, a (N,) bool of those that keep an area inside the image (the others lie
        outside it or are empty and get no mask), and how many were changed by clipping.
    """
    h, w = image_size
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, w)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, h)
    inside = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    changed = int(np.any(clipped != boxes, axis=1)[inside].sum())
    return clipped, inside, changed

"""The annotation file of ``samadapt annotate``: a COCO instance file, rewritten after every change.

The file (``--out``) is the only state that matters: every accept, delete or category change
rewrites it whole through :func:`samadapt.files.atomic_write` (a temporary file, ``fsync``, rename,
then ``fsync`` of the folder) before the page is answered, so an answered accept survives a crash
or ``kill -9`` and the file is never half-written. Running the command again on the same file
continues it.

What the file holds (standard COCO, read by pycocotools as it is):

- ``images``: one record per readable image of the folder: ``id``, ``file_name`` (relative to the
  folder), ``width``, ``height``, plus ``file_size`` (bytes, to notice a file that changed later);
- ``annotations``: ``segmentation`` as compressed RLE, ``area``, ``bbox`` ([x, y, w, h]),
  ``category_id``, ``iscrowd`` 0, plus the keys pycocotools ignores: ``model`` (the model that
  proposed the mask), ``effort`` (``{"clicks", "seconds"}``) and ``prompts`` (the prompts that made
  the mask, in order, in image pixels: ``{"box": [x0, y0, x1, y1]}`` or ``{"point": [x, y],
  "positive": bool}``);
- ``categories``: from ``--categories``, ``--annotation-file`` or the file itself.

Images of the file that are no longer in the folder keep their records and annotations. An image
whose file changed since it was annotated is flagged (its size on disk differs); one whose pixel
size changed is also closed to new annotations, since its masks no longer fit it.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from .._version import __version__
from ..data.coco_file import load_coco_json
from ..data.masks import rle_counts, segmentation_to_rle
from ..errors import ConfigError, DataError
from ..files import atomic_write
from .folder import ImageFolder

__all__ = ["DEFAULT_CATEGORIES", "AnnotationStore", "StoreReport", "UnknownAnnotationError", "read_categories"]

#: the categories of a new file when neither --categories nor --annotation-file gives any
DEFAULT_CATEGORIES = [{"id": 1, "name": "object", "supercategory": "object"}]


class UnknownAnnotationError(DataError, KeyError):
    """An annotation id that the file does not hold (the page answers 404)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# ---------------------------------------------------------------------------- categories
def check_categories(categories: Any, source: str) -> list[dict]:
    """COCO category records, validated: a list of ``{"id": int, "name": str, ...}`` with unique ids
    and names; or a list of names (ids 1, 2, ... in order). Raises :class:`ConfigError` naming
    ``source`` and the bad entry."""
    if not isinstance(categories, list) or not categories:
        raise ConfigError(
            f'{source}: categories must be a non-empty JSON list of names ("bottle") or of COCO category '
            f'records ({{"id": 1, "name": "bottle"}}), got {json.dumps(categories)[:80]}'
        )
    if all(isinstance(c, str) for c in categories):
        categories = [{"id": k + 1, "name": name} for k, name in enumerate(categories)]
    out, ids, names = [], set(), set()
    for k, c in enumerate(categories):
        ok = (
            isinstance(c, dict)
            and isinstance(c.get("id"), int)
            and not isinstance(c.get("id"), bool)
            and isinstance(c.get("name"), str)
            and c["name"].strip()
        )
        if not ok:
            raise ConfigError(
                f"{source}: category {k} is {json.dumps(c)[:80]}; each must be a name or a record with an "
                'integer "id" and a non-empty "name"'
            )
        if c["id"] in ids or c["name"] in names:
            raise ConfigError(f"{source}: category {k} {json.dumps(c)[:80]} repeats an id or a name of an earlier one")
        ids.add(c["id"])
        names.add(c["name"])
        out.append(dict(c))
    return out


def read_categories(path: str | os.PathLike) -> list[dict]:
    """``--categories FILE``: a JSON list of names or of COCO category records (a whole COCO file
    gives its ``categories``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(f"--categories {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"--categories {str(path)!r} is not a readable JSON file: {e}") from None
    if isinstance(data, dict) and "categories" in data:
        data = data["categories"]
    return check_categories(data, f"--categories {str(path)!r}")


def _same_categories(a: list[dict], b: list[dict]) -> bool:
    return [(c["id"], c["name"]) for c in a] == [(c["id"], c["name"]) for c in b]


# ---------------------------------------------------------------------------- the store
@dataclass
class StoreReport:
    """What opening the file found: annotations continued, imported, skipped (by reason), images of
    the file no longer in the folder, and flagged images (file name -> why)."""

    continued: int = 0
    imported: int = 0
    skipped: Counter = field(default_factory=Counter)
    not_in_folder: list[str] = field(default_factory=list)
    flagged: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = []
        if self.continued:
            out.append(f"{self.continued} annotations already in the file (continuing it)")
        if self.imported:
            out.append(f"{self.imported} annotations imported from --annotation-file as accepted")
        if self.skipped:
            out.append("not imported: " + ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())))
        if self.not_in_folder:
            shown = ", ".join(self.not_in_folder[:5]) + (" ..." if len(self.not_in_folder) > 5 else "")
            out.append(f"{len(self.not_in_folder)} images of the file are not in the folder (kept): {shown}")
        for name, why in list(self.flagged.items())[:10]:
            out.append(f"flagged {name}: {why}")
        return out


def _is_segmentation(seg: Any) -> bool:
    if isinstance(seg, list):
        return bool(seg) and all(isinstance(p, list) and len(p) >= 6 for p in seg)
    return isinstance(seg, dict) and "counts" in seg and "size" in seg


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a power cut after the answer keeps the new file)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AnnotationStore:
    """The COCO file being written (module docstring); thread-safe.

    Build it with :meth:`open`. ``categories`` keep the file's order (keys 1-9 of the page follow it).
    """

    def __init__(self, path: Path, data: dict, folder: ImageFolder, report: StoreReport, blocked: set[str]) -> None:
        self.path = path
        self.extra = {k: v for k, v in data.items() if k not in ("images", "annotations", "categories")}
        self.categories: list[dict] = data["categories"]
        self.images: dict[str, dict] = {im["file_name"]: im for im in data["images"]}
        self.annotations: list[dict] = data["annotations"]
        self.folder = folder
        self.report = report
        self.blocked = blocked  # images whose pixel size changed since they were annotated
        self._by_image_id = {im["id"]: name for name, im in self.images.items()}
        self._next_id = 1 + max((a["id"] for a in self.annotations if isinstance(a.get("id"), int)), default=0)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        folder: ImageFolder,
        *,
        categories: list[dict] | None = None,
        annotation_file: str | os.PathLike | None = None,
    ) -> "AnnotationStore":
        """The store of ``path``: continued when it exists, else new.

        Args:
            folder: the images being annotated.
            categories: from ``--categories`` (checked against an existing file's).
            annotation_file: ``--annotation-file``: its categories, and its annotations of the folder's
                images imported as accepted when ``path`` is new (when it exists they were imported
                by the first run).

        Raises:
            DataError: ``path`` exists but is not a COCO file (it is left untouched).
            ConfigError: the categories given differ from an existing file's.
        """
        path = Path(path)
        report = StoreReport()
        source = load_coco_json(annotation_file) if annotation_file is not None else None
        if source is not None:
            from_file = check_categories(source["categories"], f"--annotation-file {str(annotation_file)!r}")
            if categories is not None and not _same_categories(categories, from_file):
                raise ConfigError("give either --categories or --annotation-file: they list different categories")
            categories = from_file
        if path.is_dir():
            raise ConfigError(f"--out {str(path)!r} is a folder; give the path of a .json file")
        if path.exists():
            data = load_coco_json(path)
            data["categories"] = check_categories(data["categories"], f"--out {str(path)!r}")
            if categories is not None and not _same_categories(categories, data["categories"]):
                raise ConfigError(
                    f"--out {str(path)!r} already has the categories {[c['name'] for c in data['categories']]}; "
                    f"the ones given are {[c['name'] for c in categories]}. Leave them out to continue the "
                    "file, or write to a new --out"
                )
            report.continued = len(data["annotations"])
        else:
            data = {
                "info": {"description": "written by samadapt annotate", "samadapt_version": __version__},
                "images": [],
                "annotations": [],
                "categories": categories or [dict(c) for c in DEFAULT_CATEGORIES],
            }
        blocked = _sync_images(data, folder, report)
        if source is not None and not path.exists():
            _import_annotations(data, source, report)
        return cls(path, data, folder, report, blocked)

    # ------------------------------------------------------------------ reading
    def category_ids(self) -> list[int]:
        return [c["id"] for c in self.categories]

    def annotations_of(self, file_name: str) -> list[dict]:
        image = self.images.get(file_name)
        if image is None:
            return []
        with self._lock:
            return [a for a in self.annotations if a.get("image_id") == image["id"]]

    def counts_by_image(self) -> dict[int, int]:
        """image id -> number of annotations."""
        with self._lock:
            return dict(Counter(a.get("image_id") for a in self.annotations))

    def done_names(self) -> set[str]:
        """File names of the images with at least one annotation."""
        with self._lock:
            ids = {a.get("image_id") for a in self.annotations}
        return {self._by_image_id[i] for i in ids if i in self._by_image_id}

    def runs(self, annotation: dict) -> list[int]:
        """The annotation's mask as uncompressed RLE run lengths (column-major, background first), what
        the page draws."""
        image = self.images[self._by_image_id[annotation["image_id"]]]
        return rle_counts(segmentation_to_rle(annotation["segmentation"], image["height"], image["width"])).tolist()

    # ------------------------------------------------------------------ changing (each change is written)
    def add(self, file_name: str, mask: np.ndarray, category_id: int, extra: dict[str, Any]) -> dict:
        """Append an annotation of ``mask`` (H, W) bool on ``file_name`` and write the file; returns the
        record. On a failed write the annotation is taken back and the error raised."""
        image = self.images.get(file_name)
        if image is None or file_name in self.blocked:
            raise DataError(f"image {file_name!r} cannot take annotations ({self.report.flagged.get(file_name)})")
        if category_id not in self.category_ids():
            raise ConfigError(f"category_id {category_id!r} is not one of {self.category_ids()}")
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (image["height"], image["width"]):
            raise DataError(f"mask of shape {mask.shape} for image {file_name!r} of {image['width']}x{image['height']}")
        if not mask.any():
            raise DataError("the mask is empty; add a prompt on the object first")
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        record = {
            "image_id": image["id"],
            "category_id": int(category_id),
            "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "area": int(mask_utils.area(rle)),
            "bbox": [float(v) for v in mask_utils.toBbox(rle)],
            "iscrowd": 0,
            **extra,
        }
        with self._lock:
            record = {"id": self._next_id, **record}
            self.annotations.append(record)
            try:
                self._write()
            except BaseException:
                self.annotations.pop()
                raise
            self._next_id += 1
        return record

    def delete(self, annotation_id: int) -> dict:
        """Remove an annotation and write the file; returns the removed record."""
        with self._lock:
            k = self._index(annotation_id)
            record = self.annotations.pop(k)
            try:
                self._write()
            except BaseException:
                self.annotations.insert(k, record)
                raise
        return record

    def set_category(self, annotation_id: int, category_id: int) -> dict:
        """Change an annotation's category and write the file; returns the record."""
        if category_id not in self.category_ids():
            raise ConfigError(f"category_id {category_id!r} is not one of {self.category_ids()}")
        with self._lock:
            record = self.annotations[self._index(annotation_id)]
            old = record["category_id"]
            record["category_id"] = int(category_id)
            try:
                self._write()
            except BaseException:
                record["category_id"] = old
                raise
        return record

    def write(self) -> None:
        """Write the file now (also done by every change)."""
        with self._lock:
            self._write()

    # ------------------------------------------------------------------ internals
    def _index(self, annotation_id: int) -> int:
        for k, a in enumerate(self.annotations):
            if a.get("id") == annotation_id:
                return k
        raise UnknownAnnotationError(f"no annotation with id {annotation_id!r} in {str(self.path)!r}")

    def _write(self) -> None:
        data = {
            **self.extra,
            "images": list(self.images.values()),
            "annotations": self.annotations,
            "categories": self.categories,
        }
        text = json.dumps(data, separators=(",", ":"))
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        _fsync_folder(self.path.parent)


def _sync_images(data: dict, folder: ImageFolder, report: StoreReport) -> set[str]:
    """Give every readable folder image a record in ``data`` (new ids after the file's), keep the
    file's records of images no longer there, and flag annotated images whose file changed. Returns
    the images closed to new annotations (pixel size changed)."""
    records = {im["file_name"]: im for im in data["images"] if isinstance(im, dict) and "file_name" in im}
    annotated = {a.get("image_id") for a in data["annotations"] if isinstance(a, dict)}
    next_id = 1 + max((im["id"] for im in records.values() if isinstance(im.get("id"), int)), default=0)
    blocked: set[str] = set()
    for name in folder.readable:
        image = folder[name]
        record = records.get(name)
        if record is None:
            records[name] = {
                "id": next_id,
                "file_name": name,
                "width": image.width,
                "height": image.height,
                "file_size": image.file_size,
            }
            next_id += 1
            continue
        has_annotations = record.get("id") in annotated
        same_pixels = (record.get("width"), record.get("height")) == (image.width, image.height)
        if not has_annotations:  # nothing depends on the old file: take the new one as it is
            record.update(width=image.width, height=image.height, file_size=image.file_size)
        elif not same_pixels:
            report.flagged[name] = (
                f"its pixel size changed since it was annotated ({record.get('width')}x{record.get('height')} "
                f"then, {image.width}x{image.height} now); its annotations are kept, no new ones are taken"
            )
            blocked.add(name)
        elif record.get("file_size") != image.file_size:
            report.flagged[name] = (
                f"the file changed since it was annotated ({record.get('file_size')} bytes then, "
                f"{image.file_size} now); check its annotations"
            )
    report.not_in_folder = [n for n in records if n not in folder]
    data["images"] = list(records.values())
    return blocked


def _import_annotations(data: dict, source: dict, report: StoreReport) -> None:
    """Copy the annotations of ``source`` (--annotation-file) whose image is in the folder (matched by
    ``file_name``, same pixel size) into ``data``, under the image ids of ``data``."""
    ours = {im["file_name"]: im for im in data["images"]}
    theirs = {im.get("id"): im for im in source["images"] if isinstance(im, dict)}
    category_ids = {c["id"] for c in data["categories"]}
    used_ids = {a["id"] for a in data["annotations"]}
    next_id = 1 + max(used_ids, default=0)
    for ann in source["annotations"]:
        image = theirs.get(ann.get("image_id")) if isinstance(ann, dict) else None
        if image is None:
            report.skipped["with an image id the file does not list"] += 1
            continue
        mine = ours.get(image.get("file_name"))
        if mine is None:
            continue  # an image of another folder: not ours to import
        if (image.get("width"), image.get("height")) != (mine["width"], mine["height"]):
            report.skipped["on an image whose size differs from the file's"] += 1
            continue
        if ann.get("category_id") not in category_ids or not _is_segmentation(ann.get("segmentation")):
            report.skipped["without a mask or a known category"] += 1
            continue
        record = {**ann, "image_id": mine["id"]}
        if not isinstance(ann.get("id"), int) or ann["id"] in used_ids:
            record["id"] = next_id
        used_ids.add(record["id"])
        next_id = max(next_id, record["id"]) + 1
        data["annotations"].append(record)
        report.imported += 1

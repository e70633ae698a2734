"""Writing an import: COCO files with compressed-RLE masks, image folders (linked or copied), and the
manifest that makes a re-run a no-op.

An import builds each top-level folder of its output (``instance_version/``, ``train/``, ...) under a
temporary name beside it and renames it into place when complete, then writes
``samadapt_import.json`` (the manifest: source, options, counts, report) last, each file through
:func:`~samadapt.files.atomic_write`. So an interrupted import leaves no half-written folder
under its final name, and a folder with a manifest is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from ...errors import ConfigError, DataError
from ...files import atomic_write

__all__ = ["IMAGE_MODES", "MANIFEST", "CocoSplit", "OutputFolder", "annotation_record", "place_image"]

MANIFEST = "samadapt_import.json"
#: how image files reach the output: symbolic links to the source (default), hard links, copies
IMAGE_MODES = ("symlink", "hardlink", "copy")


def annotation_record(mask: np.ndarray, *, annotation_id: int, image_id: int, category_id: int) -> dict:
    """A COCO annotation of one bool (H, W) mask: compressed RLE, exact area and box [x, y, w, h]."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": category_id,
        "iscrowd": 0,
        "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "area": float(mask_utils.area(rle)),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
    }


def place_image(src: Path, dst: Path, mode: str) -> None:
    """Put the image ``src`` at ``dst`` as a symlink (absolute target), hard link or copy."""
    if mode == "symlink":
        dst.symlink_to(src.resolve())
    elif mode == "hardlink":
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


class CocoSplit:
    """The images and instances of one output split, collected frame by frame, then written.

    Args:
        categories: category names in id order (ids from 1).
    """

    def __init__(self, categories: Sequence[str]) -> None:
        self.categories = list(categories)
        self.cat_ids = {c: k + 1 for k, c in enumerate(self.categories)}
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self.sources: dict[str, Path] = {}

    def add(self, image_id: int, file_name: str, source: Path, height: int, width: int, instances) -> None:
        """One frame: its image file ``source`` and its instances (``.category``, ``.mask`` (H, W))."""
        self.images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        self.sources[file_name] = source
        for inst in instances:
            self.annotations.append(
                annotation_record(
                    inst.mask,
                    annotation_id=len(self.annotations) + 1,
                    image_id=image_id,
                    category_id=self.cat_ids[inst.category],
                )
            )

    def counts(self) -> dict:
        per_cat = Counter(self.categories[a["category_id"] - 1] for a in self.annotations)
        return {
            "images": len(self.images),
            "annotations": len(self.annotations),
            "categories": dict(sorted(per_cat.items())),
        }

    def write(self, json_path: Path, images_dir: Path, mode: str, info: dict) -> dict:
        """Place the images in ``images_dir`` (created) and write the COCO file; returns
        :meth:`counts`. Categories carry supercategory = name, as TrashCan's official files."""
        images_dir.mkdir(parents=True, exist_ok=True)
        for im in self.images:
            place_image(self.sources[im["file_name"]], images_dir / im["file_name"], mode)
        write_json(
            json_path,
            {
                "info": info,
                "licenses": [],
                "categories": [{"id": i, "name": n, "supercategory": n} for n, i in self.cat_ids.items()],
                "images": self.images,
                "annotations": self.annotations,
            },
        )
        return self.counts()


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data), encoding="utf-8"))


class OutputFolder:
    """The output folder of one import, and its re-run rules.

    Args:
        root: the output folder (created).
        parts: the top-level entries the import writes (e.g. ``["instance_version",
            "material_version"]``).
        settings: what identifies this import (source, options); a re-run with equal settings is a
            no-op, with other settings an error, unless ``overwrite``.
        overwrite: replace what an earlier import wrote (only ``parts`` and the manifest are removed;
            anything else in ``root`` stays).
    """

    def __init__(self, root: str | os.PathLike, parts: Sequence[str], settings: dict, *, overwrite: bool) -> None:
        self.root = Path(root).expanduser()
        self.parts = list(parts)
        self.settings = settings
        self.overwrite = overwrite
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"output {str(self.root)!r} exists and is not a folder; give a folder")

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def existing(self) -> dict | None:
        """The manifest of a complete earlier import with the same settings (then the import is a
        no-op), or None when the import should run.

        Raises:
            ConfigError: without ``overwrite``, the folder holds an import with other settings, or
                one of ``parts`` without a manifest (an interrupted or foreign folder).
        """
        if self.overwrite:
            return None
        present = [p for p in self.parts if (self.root / p).exists()]
        if self.manifest_path.is_file():
            try:
                manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ConfigError(
                    f"{str(self.manifest_path)!r} is not valid JSON ({e.msg}); pass --overwrite to import again"
                ) from None
            old = manifest.get("settings", {})
            changed = sorted(k for k in set(old) | set(self.settings) if old.get(k) != self.settings.get(k))
            if changed:
                what = "; ".join(f"{k}: {old.get(k)!r} -> {self.settings.get(k)!r}" for k in changed)
                raise ConfigError(
                    f"{str(self.root)!r} holds an import with other settings ({what}); pass --overwrite "
                    "to replace it, or choose another output folder"
                )
            missing = [p for p in self.parts if not (self.root / p).exists()]
            if missing:
                raise ConfigError(
                    f"{str(self.root)!r}: the manifest lists an import but {missing} are missing; pass "
                    "--overwrite to import again"
                )
            return manifest
        if present:
            raise ConfigError(
                f"{str(self.root / present[0])!r} exists but no {MANIFEST} says an import finished there "
                "(an interrupted import, or other files); pass --overwrite to replace it"
            )
        return None

    def begin(self) -> None:
        """Start writing. With ``overwrite``, the old manifest goes first (an import interrupted from
        here on is never taken for a complete one), and the folders it lists that this import does
        not write go too."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self.overwrite and self.manifest_path.is_file():
            try:
                old_parts = json.loads(self.manifest_path.read_text(encoding="utf-8")).get("parts", [])
            except json.JSONDecodeError:
                old_parts = []
            self.manifest_path.unlink()
            for part in old_parts:  # what the earlier import wrote and this one will not replace
                path = self.root / str(part)
                if part not in self.parts and Path(part).name == part and path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)

    def staging(self, part: str) -> Path:
        """A fresh temporary folder beside ``part`` to build it in."""
        if part not in self.parts:
            raise ConfigError(f"{part!r} is not one of this import's parts {self.parts}")
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{part}.importing-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        return tmp

    def commit(self, part: str, staged: Path) -> None:
        """Move the complete ``staged`` folder to ``part``, replacing an earlier one (overwrite)."""
        final = self.root / part
        old = None
        if final.exists() or final.is_symlink():
            if not self.overwrite:
                raise ConfigError(f"{str(final)!r} appeared during the import; pass --overwrite to replace it")
            old = self.root / f".{part}.old-{uuid.uuid4().hex[:8]}"
            final.rename(old)
        staged.rename(final)
        if old is not None:
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()

    def finish(self, manifest: dict) -> None:
        """Write the manifest (last: its presence says the import is complete)."""
        write_json(self.manifest_path, {"settings": self.settings, "parts": self.parts, **manifest})

    def cleanup(self, staged: Iterable[Path]) -> None:
        """Remove staging folders left by a failed import."""
        for p in staged:
            if p.exists():
                shutil.rmtree(p, ignore_errors=True)


def check_image_mode(mode: str) -> None:
    if mode not in IMAGE_MODES:
        raise ConfigError(f"images={mode!r}; choose one of {list(IMAGE_MODES)}")


def check_source_dir(path: Path, what: str, layout: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DataError(f"{what} {str(path)!r} is not a folder. Expected layout: {layout}")
    return path

"""Any Supervise.ly project export to COCO, with a user-given class mapping.

Project layout (Supervise.ly's "export project" format)::

    PROJECT/meta.json                   classes: [{"title": "trash", "shape": "bitmap", ...}, ...]
    PROJECT/<dataset>/ann/<image>.json  one annotation per image
    PROJECT/<dataset>/img/<image>

Output, one split per dataset (what ``--dataset coco --images-root OUT/<dataset>/images
--annotation-file OUT/<dataset>/annotations.json`` reads)::

    OUT/<dataset>/annotations.json      compressed-RLE masks, parts of one object joined
    OUT/<dataset>/images/<image>        linked or copied
    OUT/samadapt_import.json            manifest: settings, counts, report

The mapping (a JSON or YAML file) gives each ``classTitle`` its category name, or null to leave
the class out (counted). Without a mapping every class keeps its title. A class the mapping lacks
is an error naming it, before anything is written, unless ``skip_unmapped`` (its objects are then
counted and named).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ...errors import ConfigError, DataError
from .output import CocoSplit, OutputFolder, check_image_mode, check_source_dir
from .supervisely import ImportReport, frame_instances, load_frame

__all__ = ["ProjectImport", "import_supervisely", "read_mapping"]

LAYOUT = "PROJECT/meta.json and PROJECT/<dataset>/{ann/<image>.json, img/<image>}"


def read_mapping(path: str | Path) -> dict[str, str | None]:
    """A class mapping file (JSON or YAML): ``{classTitle: category name or null}``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"class mapping {str(path)!r} cannot be read: {e}") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # json / yaml parse errors
        raise ConfigError(
            f"class mapping {str(path)!r} is not valid {path.suffix.lstrip('.').upper() or 'JSON'}: {e}"
        ) from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and (v is None or isinstance(v, str) and v) for k, v in data.items()
    ):
        raise ConfigError(
            f"class mapping {str(path)!r} must map each classTitle to a category name or null, e.g. "
            '{"trash": "litter", "rov": null}'
        )
    return data


@dataclass
class ProjectImport:
    """What :func:`import_supervisely` did (as :class:`~samadapt.data.importers.trashcan.ImportResult`)."""

    out: Path
    noop: bool
    counts: dict
    report: dict

    def format(self) -> str:
        head = "already imported (nothing written; pass --overwrite to import again)" if self.noop else "imported"
        lines = [f"{head} into {self.out}"]
        lines += [f"  {d}: {c['images']} images, {c['annotations']} instances" for d, c in self.counts.items()]
        return "\n".join(lines + [ImportReport.from_dict(self.report).format()])


def _meta_classes(project: Path) -> list[str]:
    meta = project / "meta.json"
    if not meta.is_file():
        raise DataError(f"{str(meta)!r} not found: not a Supervise.ly project export. Expected layout: {LAYOUT}")
    try:
        classes = [str(c["title"]) for c in json.loads(meta.read_text(encoding="utf-8")).get("classes", [])]
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise DataError(
            f"{str(meta)!r}: needs a 'classes' list of objects with a 'title' ({type(e).__name__}: {e})"
        ) from None
    return classes


def _unmapped_error(missing: Counter, mapping_path) -> ConfigError:
    listed = ", ".join(f"{c!r} ({n} objects)" if n else repr(c) for c, n in missing.most_common())
    if mapping_path is None:
        return ConfigError(
            f"objects use {len(missing)} class(es) that meta.json does not list: {listed}. Give a class "
            "mapping (--mapping) that names them, or pass --skip-unmapped to leave them out (counted)"
        )
    return ConfigError(
        f"the class mapping {str(mapping_path)!r} lacks {len(missing)} class(es) of the project: {listed}. "
        "Add each to the mapping (a category name, or null to leave it out), or pass --skip-unmapped "
        "to leave their objects out (counted)"
    )


def import_supervisely(
    project: str | Path,
    out: str | Path,
    *,
    mapping: str | Path | None = None,
    skip_unmapped: bool = False,
    images: str = "symlink",
    overwrite: bool = False,
    progress: bool = True,
) -> ProjectImport:
    """Import a Supervise.ly project export (see the module docstring).

    Args:
        project: the export folder (``meta.json`` and one folder per dataset).
        out: output folder; a re-run with the same settings is a no-op.
        mapping: class mapping file; None keeps every class title as its category.
        skip_unmapped: leave out (and count) objects whose class the mapping lacks, instead of
            raising.
        images: ``symlink``, ``hardlink`` or ``copy``.
        overwrite: replace an earlier import in ``out``.
        progress: tqdm bar over the images.

    Raises:
        DataError: not a project export. ConfigError: a class the mapping lacks (without
        ``skip_unmapped``; nothing written), bad options, or ``out`` holds another import.
    """
    check_image_mode(images)
    project = check_source_dir(Path(project), "Supervise.ly project", LAYOUT).resolve()
    classes = _meta_classes(project)
    table = read_mapping(mapping) if mapping is not None else {c: c for c in classes}
    datasets = _datasets(project)
    missing = Counter({c: 0 for c in classes if c not in table})
    if missing and not skip_unmapped:
        raise _unmapped_error(missing, mapping)
    settings = {
        "format": "supervisely",
        "source": str(project),
        "mapping": table,
        "skip_unmapped": skip_unmapped,
        "images": images,
    }
    folder = OutputFolder(out, datasets, settings, overwrite=overwrite)
    previous = folder.existing()
    if previous is not None:
        return ProjectImport(folder.root, True, previous.get("counts", {}), previous.get("report", {}))

    categories = list(dict.fromkeys(v for v in [table.get(c) for c in classes] + list(table.values()) if v))
    report = ImportReport()
    splits = _convert(project, datasets, categories, _category_of(table, missing), report, progress)
    if any(missing.values()) and not skip_unmapped:
        raise _unmapped_error(+missing, mapping)  # classes used by objects but absent from meta.json
    counts = _write_datasets(folder, project, datasets, splits, images)
    folder.finish(
        {
            "counts": counts,
            "report": report.to_dict(),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        }
    )
    return ProjectImport(folder.root, False, counts, report.to_dict())


def _datasets(project: Path) -> list[str]:
    """The project's dataset folders (those with an ``ann/`` folder), sorted."""
    datasets = sorted(d.name for d in project.iterdir() if (d / "ann").is_dir())
    if not datasets:
        raise DataError(f"{str(project)!r} holds no dataset folder with an ann/ folder. Expected layout: {LAYOUT}")
    return datasets


def _category_of(table: dict[str, str | None], missing: Counter) -> Callable[[dict], tuple[str | None, str | None]]:
    """An object's category by the mapping ``table``: ``(name, None)`` or ``(None, reason)``; classes
    the mapping lacks are counted in ``missing``."""

    def category_of(obj: dict) -> tuple[str | None, str | None]:
        title = str(obj.get("classTitle"))
        if title not in table:
            missing[title] += 1
            return None, f"class {title!r} is not in the mapping"
        if table[title] is None:
            return None, f"class {title!r} mapped to null"
        return table[title], None

    return category_of


def _convert(
    project: Path,
    datasets: list[str],
    categories: list[str],
    category_of: Callable,
    report: ImportReport,
    progress: bool,
) -> dict[str, CocoSplit]:
    """Dataset -> its images' objects with their categories (image ids from 1 across datasets)."""
    from tqdm.auto import tqdm

    splits = {d: CocoSplit(categories) for d in datasets}
    frames = [(d, p) for d in datasets for p in sorted((project / d / "ann").glob("*.json"))]
    for image_id, (d, ann_path) in enumerate(
        tqdm(frames, desc="Supervise.ly images", unit="img", disable=not progress), start=1
    ):
        name = ann_path.name[: -len(".json")]
        picture = project / d / "img" / name
        if not picture.is_file():
            report.skip_frame("no image file", f"{d}/{name}")
            continue
        ann = load_frame(ann_path, picture, f"{d}/{name}", report)
        if ann is None:
            continue
        found = frame_instances(ann, f"{d}/{name}", {"": category_of}, {"": report})[""]
        splits[d].add(image_id, name, picture, int(ann["size"]["height"]), int(ann["size"]["width"]), found)
    return splits


def _write_datasets(
    folder: OutputFolder, project: Path, datasets: list[str], splits: dict[str, CocoSplit], images: str
) -> dict:
    """Write each dataset's folder (staged, then moved in place; the staged ones are removed on an
    error); returns dataset -> counts."""
    folder.begin()
    staged: list[Path] = []
    counts = {}
    try:
        for d in datasets:
            tmp = folder.staging(d)
            staged.append(tmp)
            info = {"description": f"Supervise.ly project {project.name}, dataset {d}, imported by samadapt"}
            counts[d] = splits[d].write(tmp / "annotations.json", tmp / "images", images, info)
            folder.commit(d, tmp)
    except BaseException:
        folder.cleanup(staged)
        raise
    return counts

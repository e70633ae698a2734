"""TrashCan 1.0's raw Supervise.ly frames to the official COCO layout the ``trashcan`` preset reads.

Source layout (TrashCan's ``dataset/`` folder, or a part of it)::

    SOURCE/original_data/images/<frame>.jpg
    SOURCE/original_data/annotations/<frame>.jpg.json      (Supervise.ly, one file per frame)
    SOURCE/splits/{instance,material}_{train,val}.txt       (frame file names, one a line)
      or SOURCE/{instance,material}_version/{train,val}/    (the official image folders, listed)

Output (what :func:`samadapt.data.presets.trashcan` reads)::

    OUT/{instance,material}_version/instances_{train,val}_trashcan.json
    OUT/{instance,material}_version/{train,val}/<frame>.jpg  (linked or copied)
    OUT/samadapt_import.json                                 (manifest: settings, counts, report)

Each split is the official list restricted to the frames present. Masks are the decoded bitmaps
(compressed RLE, exact; the official files hold polygons simplified from them), the parts of one
object joined. Classes follow the dataset's own conversion script (``scripts/trash_can_coco.py``
of TrashCan 1.0): :func:`trashcan_category` makes its choices, including its explicit spellings,
its numeric tags (``int(value) + 1`` into its lists) and its drops, and reports why an object gets
no class. Category ids are the script's (1 ``rov`` ... 22 ``trash_net``; 1 ``rov`` ... 16
``trash_wood``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Sequence

from ...errors import ConfigError, DataError
from .output import CocoSplit, OutputFolder, check_image_mode, check_source_dir
from .supervisely import ImportReport, frame_instances, load_frame

__all__ = ["CATEGORIES", "VERSIONS", "ImportResult", "import_trashcan", "trashcan_category"]

VERSIONS = ("instance", "material")
SPLITS = ("train", "val")

#: the official classes in the official id order (ids from 1), as in the script and the READMEs
CATEGORIES: dict[str, tuple[str, ...]] = {
    "instance": (
        "rov",
        "plant",
        "animal_fish",
        "animal_starfish",
        "animal_shells",
        "animal_crab",
        "animal_eel",
        "animal_etc",
        "trash_clothing",
        "trash_pipe",
        "trash_bottle",
        "trash_bag",
        "trash_snack_wrapper",
        "trash_can",
        "trash_cup",
        "trash_container",
        "trash_unknown_instance",
        "trash_branch",
        "trash_wreckage",
        "trash_tarp",
        "trash_rope",
        "trash_net",
    ),
    "material": (
        "rov",
        "plant",
        "animal_fish",
        "animal_starfish",
        "animal_shells",
        "animal_crab",
        "animal_eel",
        "animal_etc",
        "trash_etc",
        "trash_fabric",
        "trash_fishing_gear",
        "trash_metal",
        "trash_paper",
        "trash_plastic",
        "trash_rubber",
        "trash_wood",
    ),
}

# The script's lists. A numeric tag value v stands for entry v + 1 (the annotation tool numbered
# from -1); unknown spellings of "unknown" and rare kinds fold into the catch-all classes.
_TRASH_UNKNOWN_AKAS = frozenset(
    {
        "unkonwn_instance",
        "cage",
        "uknwon_instance",
        "unknwon_instance",
        "unknown",
        "unkown_instance",
        "etc",
        "unknown_instances",
        "unkonwn_instances",
        "eel",
        "hay",
        "tire",
        "hose",
        "wire",
        "glove",
        "box",
        "bucket",
        "paper",
    }
)
_BIO_ETC_AKAS = frozenset(
    {"turtle", "squid", "lobster", "unknown", "jellyfish", "b", "stingray", "shrimp", "crawfish", "octopus", "shark"}
)
_TRASH_NUMBERED = (
    "clothing",
    "pipe",
    "bottle",
    "bag",
    "snack_wrapper",
    "glove",
    "tire",
    "can",
    "cup",
    "container",
    "unknown_instance",
    "branch",
    "wreakage",
    "tarp",
    "box",
    "hose",
    "rope",
    "hay",
    "net",
    "paper",
    "bucket",
    "wire",
)
_BIO_NUMBERED = (
    "fish",
    "crab",
    "eel",
    "shark",
    "squid",
    "starfish",
    "unknown",
    "shell",
    "shrimp",
    "stingray",
    "jellyfish",
    "lobster",
    "crawfish",
    "octopus",
)
_ANIMAL_SPELLINGS = {
    "satrfish": "animal_starfish",
    "shell": "animal_shells",
    "ee;": "animal_eel",
    " crab": "animal_crab",
}
_TRASH_SPELLINGS = {
    "wreakage": "trash_wreckage",
    "trap": "trash_tarp",
    "bags": "trash_bag",
    "cab": "trash_can",
    "network": "trash_net",
    "8\\": "trash_can",
}


def _numbered(value: str, names: tuple[str, ...], what: str) -> tuple[str | None, str | None]:
    k = int(value) + 1
    if k >= len(names):
        return None, f"{what} tag {value!r} is past the script's numbered list"
    return names[k], None


def trashcan_category(obj: dict, version: str = "instance") -> tuple[str | None, str | None]:
    """The official class of one Supervise.ly object of TrashCan: ``(name, None)``, or ``(None,
    reason)`` when the official conversion gives it none.

    As ``get_category_id_string`` of ``trash_can_coco.py``: only bitmaps; ``rov`` -> ``rov``;
    ``unknown`` -> ``trash_unknown_instance`` / ``trash_etc``; ``bio`` -> ``plant`` or
    ``animal_<kind>`` from its last ``plant`` / ``animal`` tag (rare animals -> ``animal_etc``),
    none without such a tag; ``trash`` -> ``trash_<material>`` from its ``material`` tag
    (``glass`` and no tag -> ``trash_etc``) or ``trash_<kind>`` from its ``instance`` tag (other tags
    only -> ``trash_unknown_instance``; no tags at all -> none: the script's test for a missing tag
    sits inside its loop over the tags). A name outside the official table is no class either
    (the script would stop with a KeyError).
    """
    if version not in VERSIONS:
        raise ConfigError(f"version={version!r}; choose one of {list(VERSIONS)}")
    if obj.get("geometryType") != "bitmap":
        return None, f"geometry {obj.get('geometryType')!r} (the official script reads bitmaps only)"
    title = str(obj.get("classTitle"))
    tags = [t for t in obj.get("tags") or [] if isinstance(t, dict)]
    name = None
    if title == "rov":
        name = "rov"
    elif title == "unknown":
        name = "trash_etc" if version == "material" else "trash_unknown_instance"
    elif title == "bio":
        for tag in tags:
            if tag.get("name") == "plant":
                name = "plant"
            elif tag.get("name") == "animal":
                value = str(tag.get("value"))
                if value.isdigit():
                    value, why = _numbered(value, _BIO_NUMBERED, "animal")
                    if value is None:
                        return None, why
                name = "animal_etc" if value in _BIO_ETC_AKAS else _ANIMAL_SPELLINGS.get(value, f"animal_{value}")
        if name is None:
            return None, "bio object without a plant or animal tag (the official script drops it)"
    elif title == "trash" and version == "material":
        name = "trash_etc"
        for tag in tags:
            if tag.get("name") == "material":
                name = "trash_etc" if tag.get("value") == "glass" else f"trash_{tag.get('value')}"
    elif title == "trash":
        found = False
        for tag in tags:
            if tag.get("name") == "instance":
                value = str(tag.get("value"))
                if value.isdigit():
                    value, why = _numbered(value, _TRASH_NUMBERED, "instance")
                    if value is None:
                        return None, why
                if value in _TRASH_SPELLINGS:
                    name = _TRASH_SPELLINGS[value]
                elif value in _TRASH_UNKNOWN_AKAS:
                    name = "trash_unknown_instance"
                else:
                    name = f"trash_{value}"
                found = True
            if not found:
                name = "trash_unknown_instance"
        if name is None:
            return None, "trash object without tags (the official instance-version script drops it)"
    else:
        return None, f"classTitle {title!r} (the official script knows rov, unknown, bio and trash)"
    if name not in CATEGORIES[version]:
        return None, f"{name!r} is not an official {version}-version class"
    return name, None


# ---------------------------------------------------------------------------- source
LAYOUT = (
    "SOURCE/original_data/{images,annotations}/ with SOURCE/splits/{instance,material}_{train,val}.txt "
    "(or the official SOURCE/<version>_version/{train,val}/ image folders)"
)


def _split_lists(source: Path, version: str) -> dict[str, list[str]]:
    """Official split membership: frame file names of train and val."""
    lists = {}
    for split in SPLITS:
        txt = source / "splits" / f"{version}_{split}.txt"
        folder = source / f"{version}_version" / split
        if txt.is_file():
            lists[split] = [ln.strip() for ln in txt.read_text(encoding="utf-8").splitlines() if ln.strip()]
        elif folder.is_dir():
            lists[split] = sorted(p.name for p in folder.iterdir() if p.suffix.lower() == ".jpg")
        else:
            raise DataError(
                f"no {version}-version {split} list: neither {str(txt)!r} nor {str(folder)!r} exists. "
                f"Expected layout: {LAYOUT}"
            )
    both = sorted(set(lists["train"]) & set(lists["val"]))
    if both:
        raise DataError(
            f"{len(both)} frames are in both the {version} train and val lists, e.g. {both[:3]}; the "
            "official splits are disjoint"
        )
    return lists


@dataclass
class ImportResult:
    """What :func:`import_trashcan` did. ``noop``: an earlier import with the same settings was
    found and nothing was written. ``counts``: version -> split -> {"images", "annotations",
    "categories": name -> instances}. ``reports``: ``"frames"`` and each version -> report dict."""

    out: Path
    noop: bool
    counts: dict
    reports: dict
    manifest: dict = field(default_factory=dict)

    def format(self) -> str:
        lines = [
            f"{'already imported (nothing written; pass --overwrite to import again)' if self.noop else 'imported'}"
            f" into {self.out}"
        ]
        for version, splits in self.counts.items():
            for split, c in splits.items():
                lines.append(f"  {version}/{split}: {c['images']} frames, {c['annotations']} instances")
        for key, report in self.reports.items():
            lines.append(f"{key}:\n{ImportReport.from_dict(report).format('    ')}")
        return "\n".join(lines)


def _only(frames: Collection[str], annotated: dict, pictures: dict) -> tuple[dict, dict]:
    """``annotated`` and ``pictures`` cut to ``frames``, each of which must have both."""
    frames = set(frames)
    missing = sorted(f for f in frames if f not in annotated or f not in pictures)
    if missing:
        raise ConfigError(
            f"frames {missing[:3]} ({len(missing)} in all) have no image or no annotation file in the TrashCan source"
        )
    return {f: annotated[f] for f in frames}, {f: pictures[f] for f in frames}


def import_trashcan(
    source: str | Path,
    out: str | Path,
    *,
    versions: Sequence[str] = VERSIONS,
    images: str = "symlink",
    frames: Collection[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ImportResult:
    """Import TrashCan's raw frames into the official COCO layout (see the module docstring).

    Args:
        source: the folder holding ``original_data/`` and ``splits/``.
        out: output folder; a re-run with the same settings is a no-op.
        versions: which of ``instance``, ``material`` to write.
        images: ``symlink`` (default), ``hardlink`` or ``copy``.
        frames: only these frames (file names such as ``vid_000002_frame0000013.jpg``; a few for a
            test, a demo or a benchmark), each in the split its official list puts it in.
        overwrite: replace an earlier import in ``out``.
        progress: tqdm bar over the frames.

    Returns:
        :class:`ImportResult` (counts and what was left out, by reason, with names).

    Raises:
        DataError: the source layout is wrong. ConfigError: bad options, or ``out`` holds another import
        (without ``overwrite``).
    """
    versions = list(dict.fromkeys(versions))
    chosen = None if frames is None else set(frames)
    bad = [v for v in versions if v not in VERSIONS]
    if bad or not versions:
        raise ConfigError(f"versions={versions!r}; choose from {list(VERSIONS)}")
    check_image_mode(images)
    src = _check_source(Path(source), versions)
    folder = _output_folder(out, src, versions, images, chosen, overwrite)
    previous = folder.existing()
    if previous is not None:
        return ImportResult(folder.root, True, previous.get("counts", {}), previous.get("reports", {}), previous)

    found = _find_frames(src, chosen)
    split_of = {v: {name: s for s in SPLITS for name in src.lists[v][s]} for v in versions}
    reports = _version_reports(src, found, versions, split_of, chosen)
    splits = _convert(found, versions, split_of, reports, progress)
    counts = _write_versions(folder, versions, splits, images)
    all_reports = {"frames": found.report.to_dict(), **{v: r.to_dict() for v, r in reports.items()}}
    folder.finish(
        {
            "counts": counts,
            "reports": all_reports,
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        }
    )
    return ImportResult(folder.root, False, counts, all_reports)


@dataclass
class _Source:
    """A TrashCan source folder, checked: its annotation and image folders and, per version, its
    official split lists (split -> frame names)."""

    root: Path
    annotations: Path
    images: Path
    lists: dict[str, dict[str, list[str]]]


def _check_source(source: Path, versions: Sequence[str]) -> _Source:
    root = check_source_dir(source, "TrashCan source", LAYOUT).resolve()
    ann_dir = check_source_dir(root / "original_data" / "annotations", "TrashCan annotations folder", LAYOUT)
    img_dir = check_source_dir(root / "original_data" / "images", "TrashCan images folder", LAYOUT)
    return _Source(root, ann_dir, img_dir, {v: _split_lists(root, v) for v in versions})


def _output_folder(
    out: str | Path, src: _Source, versions: list[str], images: str, chosen: set[str] | None, overwrite: bool
) -> OutputFolder:
    """The output folder of an import with these settings (a re-run with the same ones is a no-op)."""
    settings = {
        "format": "trashcan",
        "source": str(src.root),
        "versions": versions,
        "images": images,
        **({"frames": sorted(chosen)} if chosen is not None else {}),
    }
    return OutputFolder(out, [f"{v}_version" for v in versions], settings, overwrite=overwrite)


@dataclass
class _Frames:
    """The frames of the source: annotation files and images by frame name, the frames that have
    both (``names``, sorted) and the report of those left out."""

    annotated: dict[str, Path]
    pictures: dict[str, Path]
    names: list[str]
    report: ImportReport


def _find_frames(src: _Source, chosen: set[str] | None) -> _Frames:
    annotated = {p.name[: -len(".json")]: p for p in src.annotations.glob("*.json")}
    pictures = {p.name: p for p in src.images.iterdir() if p.is_file()}
    if chosen is not None:
        annotated, pictures = _only(chosen, annotated, pictures)
    report = ImportReport()
    for name in sorted(set(pictures) - set(annotated)):
        report.skip_frame("image without annotation file", name)
    names = []
    for name in sorted(annotated):
        if name in pictures:
            names.append(name)
        else:
            report.skip_frame("no image file", name)
    return _Frames(annotated, pictures, names, report)


def _version_reports(
    src: _Source, found: _Frames, versions: list[str], split_of: dict, chosen: set[str] | None
) -> dict[str, ImportReport]:
    """Per version, a report noting the frames of its lists missing from the source and leaving out
    the frames in neither of its lists (the conversion adds the objects left out)."""
    reports = {v: ImportReport() for v in versions}
    for v in versions:
        for s in SPLITS:
            absent = [n for n in src.lists[v][s] if n not in found.annotated]
            if absent and chosen is None:  # frames chosen: the others are absent on purpose
                reports[v].note(f"{s} frames of the official list not in SOURCE", absent[0], len(absent))
        for name in found.names:
            if name not in split_of[v]:
                reports[v].skip_frame(f"in neither {v}-version split list", name)
    return reports


def _convert(
    found: _Frames, versions: list[str], split_of: dict, reports: dict[str, ImportReport], progress: bool
) -> dict[str, dict[str, CocoSplit]]:
    """Version -> split -> the frames' objects with their official classes."""
    from tqdm.auto import tqdm

    image_ids = {name: k + 1 for k, name in enumerate(found.names)}  # the same id in both versions
    mappings = {v: (lambda obj, v=v: trashcan_category(obj, v)) for v in versions}
    splits = {v: {s: CocoSplit(CATEGORIES[v]) for s in SPLITS} for v in versions}
    for name in tqdm(found.names, desc="TrashCan frames", unit="frame", disable=not progress):
        ann = load_frame(found.annotated[name], found.pictures[name], name, found.report)
        if ann is None:
            continue
        todo = [v for v in versions if name in split_of[v]]
        instances = frame_instances(ann, name, {v: mappings[v] for v in todo}, {v: reports[v] for v in todo})
        height, width = int(ann["size"]["height"]), int(ann["size"]["width"])
        for v in todo:
            splits[v][split_of[v][name]].add(image_ids[name], name, found.pictures[name], height, width, instances[v])
    return splits


def _write_versions(folder: OutputFolder, versions: list[str], splits: dict, images: str) -> dict:
    """Write each version's folder (staged, then moved in place; the staged ones are removed on an
    error); returns version -> split -> counts."""
    folder.begin()
    staged: list[Path] = []
    counts: dict = {}
    try:
        for v in versions:
            tmp = folder.staging(f"{v}_version")
            staged.append(tmp)
            info = {
                "description": f"TrashCan 1.0 {v} version, imported by samadapt from the Supervise.ly bitmaps "
                "(masks exact, compressed RLE)",
                "version": "1.0",
            }
            counts[v] = {
                s: splits[v][s].write(tmp / f"instances_{s}_trashcan.json", tmp / s, images, info) for s in SPLITS
            }
            folder.commit(f"{v}_version", tmp)
    except BaseException:
        folder.cleanup(staged)
        raise
    return counts

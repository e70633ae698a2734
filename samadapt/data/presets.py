"""Named datasets: where each waste dataset keeps its files, and its train/test split.

Each preset takes the folder the dataset was unpacked to and returns a
:class:`~samadapt.data.coco.CocoInstances`; extra keyword arguments (``strict``, ``missing_images``,
``empty_images``, ...) are passed on to it. ``get_dataset("taco", root=...)`` looks presets up by
name. Layouts (details and sources in docs/data.md)::

    taco       root/annotations.json, root/batch_1/000006.jpg ...   (root = TACO's data/ folder,
               or the TACO repository holding data/); no official split: seeded 80/20 by image
    zerowaste  root/{train,val,test}/labels.json, root/<split>/data/*.PNG
               (root = zerowaste-f-final/ holding splits_final_deblurred/, or that folder itself)
    trashcan   root/{instance,material}_version/instances_{train,val}_trashcan.json,
               root/<version>_version/{train,val}/*.jpg; no test split: test = val
    coco       any COCO file: coco(images_root, annotation_file)
    demo       root/{train,val}/annotations.json, root/<split>/images/*.jpg (samadapt.data.synthetic)
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from ..errors import ConfigError, DataError, UnknownNameError, json_error_at
from .coco import CocoInstances
from .coco_file import ignore_predicate as _ignore_predicate

__all__ = [
    "DATASETS",
    "DATASET_CARDS",
    "DatasetCard",
    "get_dataset",
    "get_dataset_card",
    "taco",
    "zerowaste",
    "trashcan",
    "coco",
    "demo",
    "seeded_split",
    "read_split_file",
]


def _root(root: str | os.PathLike, dataset: str, layout: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{dataset} root {str(root)!r} is not a folder. Expected layout: {layout}")
    return root


def _check_choice(value: str, name: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r}; choose one of {list(choices)}")


# ---------------------------------------------------------------------------------------------
# Splits


def seeded_split(
    images: Iterable[tuple[int, str]], *, seed: int = 0, test_fraction: float = 0.2
) -> tuple[list[int], list[int]]:
    """Split images into (train ids, test ids), deterministically and disjointly.

    Each image is ranked by ``sha1(f"{seed}/{file_name}")`` and the first ``round(test_fraction * n)``
    go to test. The split depends only on the seed and the file names: it is the same on every
    machine and numpy version, and adding images to the file does not move the others.

    Args:
        images: (image id, file name) pairs.
        seed: split seed.
        test_fraction: share of test images, strictly between 0 and 1.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be strictly between 0 and 1, got {test_fraction!r}")
    images = list(images)
    ranked = sorted(images, key=lambda im: (hashlib.sha1(f"{seed}/{im[1]}".encode()).hexdigest(), im[0]))
    n_test = int(round(test_fraction * len(images)))
    test = {i for i, _ in ranked[:n_test]}
    order = [i for i, _ in images]
    return [i for i in order if i not in test], [i for i in order if i in test]


def read_split_file(path: str | os.PathLike, split: str, images: dict[int, dict]) -> list[int]:
    """Image ids of ``split`` from a user split file.

    Formats: a JSON object ``{"train": [...], "test": [...]}`` (when it lists only ``"test"``, train is
    every other image), a JSON list, or a text file with one entry per line (blank lines and
    ``#`` comments ignored); lists and text files name the images of the requested split. An entry
    is a ``file_name`` as in the annotation file, the same without extension (ZeroWaste's split
    lists), or an image id.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    entries: list | None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"split file {str(path)!r} is not valid JSON: {json_error_at(e)}") from e
        if isinstance(data, dict):
            if split in data:
                entries = data[split]
            elif split == "train" and "test" in data:
                test = set(_match_entries(data["test"], images, path))
                return [i for i in images if i not in test]
            else:
                raise DataError(f"split file {str(path)!r} has no {split!r} list (it has {sorted(data)})")
        else:
            entries = data
        if not isinstance(entries, list):
            raise DataError(f"split file {str(path)!r}: the {split!r} entry must be a list")
    else:
        entries = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return _match_entries(entries, images, path)


def _match_entries(entries: list, images: dict[int, dict], path: Path) -> list[int]:
    by_name: dict[str, int] = {}
    for i, img in images.items():
        name = img["file_name"]
        by_name[name] = i
        by_name.setdefault(os.path.splitext(name)[0], i)
    ids, unknown = [], []
    for e in entries:
        if isinstance(e, int) and not isinstance(e, bool):
            (ids if e in images else unknown).append(e)
        elif isinstance(e, str) and e in by_name:
            ids.append(by_name[e])
        elif isinstance(e, str) and e.isdigit() and int(e) in images:
            ids.append(int(e))
        else:
            unknown.append(e)
    if unknown:
        raise DataError(
            f"split file {str(path)!r} names {len(unknown)} images not in the annotation file, e.g. "
            f"{unknown[:5]}; entries are file_names, file_names without extension, or image ids"
        )
    return list(dict.fromkeys(ids))


# ---------------------------------------------------------------------------------------------
# Presets

TACO_LAYOUT = (
    "root/annotations.json with images root/batch_1/000006.jpg ... (root = TACO's data/ folder), "
    "or root/data/annotations.json (root = the TACO repository)"
)


def _taco_annotations(
    root: str | os.PathLike,
    split: str = "train",
    *,
    annotation_name: str = "annotations.json",
    split_file: str | os.PathLike | None = None,
    **_: object,
) -> Path:
    root = _root(root, "TACO", TACO_LAYOUT)
    if split_file is not None and not Path(split_file).is_file():
        raise DataError(f"split file {str(split_file)!r} does not exist")
    for folder in (root, root / "data"):
        if (folder / annotation_name).is_file():
            return folder / annotation_name
    raise DataError(
        f"TACO annotations not found: neither {str(root / annotation_name)!r} nor "
        f"{str(root / 'data' / annotation_name)!r} exists. Expected layout: {TACO_LAYOUT}"
    )


def taco(
    root: str | os.PathLike,
    split: str = "train",
    *,
    split_file: str | os.PathLike | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    annotation_name: str = "annotations.json",
    **kw,
) -> CocoInstances:
    """TACO (Proença & Simões 2020). No official split: ``"train"`` / ``"test"`` are a seeded 80/20
    split by image (:func:`seeded_split`), or come from ``split_file`` (:func:`read_split_file`);
    ``"all"`` is every image.

    Args:
        root: TACO's ``data/`` folder (or the repository holding it).
        split: ``"train"``, ``"test"`` or ``"all"``.
        split_file: optional user split; overrides the seeded split.
        seed, test_fraction: of the seeded split.
        annotation_name: ``"annotations.json"`` (official) or ``"annotations_unofficial.json"``.
        **kw: passed to :class:`CocoInstances`.
    """
    _check_choice(split, "split", ("train", "test", "all"))
    folder = _taco_annotations(root, split, annotation_name=annotation_name).parent
    kw.setdefault("name", f"taco/{split}")
    ds = CocoInstances(folder, folder / annotation_name, **kw)
    if split == "all":
        return ds
    images = {i: ds.file_image_info(i) for i in ds.file_image_ids}
    if split_file is not None:
        ids = read_split_file(split_file, split, images)
    else:
        train, test = seeded_split(
            ((i, img["file_name"]) for i, img in images.items()), seed=seed, test_fraction=test_fraction
        )
        ids = train if split == "train" else test
    return ds.subset(ids, name=kw["name"])


ZEROWASTE_LAYOUT = (
    "root/{train,val,test}/labels.json with frames root/<split>/data/*.PNG (root = "
    "splits_final_deblurred/ of zerowaste-f-final.zip, or the folder holding it)"
)


def _zerowaste_annotations(root: str | os.PathLike, split: str = "train", **_: object) -> Path:
    root = _root(root, "ZeroWaste", ZEROWASTE_LAYOUT)
    for base in (root, root / "splits_final_deblurred"):
        if (base / split / "labels.json").is_file():
            return base / split / "labels.json"
    raise DataError(
        f"ZeroWaste {split} annotations not found: neither {str(root / split / 'labels.json')!r} nor "
        f"{str(root / 'splits_final_deblurred' / split / 'labels.json')!r} exists. "
        f"Expected layout: {ZEROWASTE_LAYOUT}"
    )


def zerowaste(root: str | os.PathLike, split: str = "train", **kw) -> CocoInstances:
    """ZeroWaste-f final release (Bashkirova et al. 2022), official train / val / test split."""
    _check_choice(split, "split", ("train", "val", "test"))
    base = _zerowaste_annotations(root, split).parents[1]
    kw.setdefault("name", f"zerowaste/{split}")
    return CocoInstances([base / split / "data", base / split], base / split / "labels.json", **kw)


TRASHCAN_LAYOUT = (
    "root/{instance,material}_version/instances_{train,val}_trashcan.json with images "
    "root/<version>_version/{train,val}/*.jpg (root = TrashCan's dataset/ folder)"
)


def _trashcan_annotations(
    root: str | os.PathLike, split: str = "train", *, version: str = "instance", **_: object
) -> Path:
    _check_choice(version, "version", ("instance", "material"))
    root = _root(root, "TrashCan", TRASHCAN_LAYOUT)
    file_split = "val" if split == "test" else split
    vdir = root / f"{version}_version"
    if not vdir.is_dir() and (root / f"instances_{file_split}_trashcan.json").is_file():
        vdir = root  # root is the version folder itself
    ann = vdir / f"instances_{file_split}_trashcan.json"
    if not ann.is_file():
        raise DataError(
            f"TrashCan {version} {file_split} annotations not found at {str(ann)!r}. "
            f"Expected layout: {TRASHCAN_LAYOUT}. `samadapt data import-trashcan` writes this layout "
            f"from TrashCan's original Supervise.ly data"
        )
    return ann


def trashcan(
    root: str | os.PathLike, split: str = "train", *, version: str = "instance", trash_only: bool = False, **kw
) -> CocoInstances:
    """TrashCan 1.0 (Hong et al. 2020). No test split: ``"test"`` is the val split, as in the paper.

    Args:
        version: ``"instance"`` (22 classes) or ``"material"`` (16 classes).
        trash_only: keep only categories named ``trash_*``; ``rov``, ``plant`` and ``animal_*`` are
            then not instances (counted as ``ignored_category``).
    """
    _check_choice(split, "split", ("train", "val", "test"))
    ann = _trashcan_annotations(root, split, version=version)
    vdir, file_split = ann.parent, "val" if split == "test" else split
    if trash_only:
        user_ignore = _ignore_predicate(kw.pop("ignore_categories", ("_background_",)))
        kw["ignore_categories"] = lambda name: user_ignore(name) or not name.startswith("trash")
    kw.setdefault("name", f"trashcan-{version}/{split}")
    ds = CocoInstances([vdir / file_split, vdir], ann, **kw)
    if trash_only and not ds.categories:
        raise DataError(
            f"{str(ann)!r}: trash_only=True but no category name starts with 'trash' (categories: "
            f"{sorted(ds._file.all_categories.values())})"
        )
    return ds


def coco(images_root: str | os.PathLike, annotation_file: str | os.PathLike, **kw) -> CocoInstances:
    """Any COCO instance-segmentation file (alias of :class:`CocoInstances`)."""
    return CocoInstances(images_root, annotation_file, **kw)


DEMO_LAYOUT = (
    "root/{train,val}/annotations.json with images root/<split>/images/*.jpg; create it with "
    "samadapt.data.make_demo_dataset(root)"
)


def _demo_annotations(root: str | os.PathLike, split: str = "train", **_: object) -> Path:
    root = _root(root, "demo", DEMO_LAYOUT)
    file_split = "val" if split == "test" else split
    ann = root / file_split / "annotations.json"
    if not ann.is_file():
        raise DataError(f"demo {file_split} annotations not found at {str(ann)!r}. Expected layout: {DEMO_LAYOUT}")
    return ann


#: images the demo preset generates when nothing else is asked (training's and evaluation's default)
DEMO_TRAIN_IMAGES = 160
DEMO_VAL_IMAGES = 40


def _generate_demo(
    root: str | os.PathLike, *, n_train: int = DEMO_TRAIN_IMAGES, n_val: int = DEMO_VAL_IMAGES, progress: bool = True
) -> Path:
    """The demo data at ``root``, generated as training generates it (waste domain, seed 0); a folder
    holding the same already is kept (:func:`samadapt.data.make_demo_dataset`)."""
    from .synthetic import make_demo_dataset

    return make_demo_dataset(root, domain="waste", n_train=n_train, n_val=n_val, seed=0, progress=progress)


def demo(root: str | os.PathLike, split: str = "train", **kw) -> CocoInstances:
    """Generated demo data (:func:`samadapt.data.synthetic.make_demo_dataset`); ``"test"`` is ``"val"``."""
    _check_choice(split, "split", ("train", "val", "test"))
    ann = _demo_annotations(root, split)
    root, file_split = ann.parents[1], ann.parent.name
    kw.setdefault("name", f"demo/{split}")
    return CocoInstances([root / file_split / "images", root / file_split], ann, **kw)


def _coco_annotations(
    images_root: str | os.PathLike, annotation_file: str | os.PathLike, split: str = "train", **_: object
) -> Path:
    if not Path(images_root).expanduser().is_dir():
        raise DataError(
            f"images folder {str(images_root)!r} is not a folder (--images-root: the folder the "
            f"file_name entries of the annotation file are relative to)"
        )
    if not Path(annotation_file).expanduser().is_file():
        raise DataError(f"annotation file {str(annotation_file)!r} does not exist")
    return Path(annotation_file)


@dataclass(frozen=True)
class DatasetCard:
    """What samadapt knows of a dataset: its loader, splits and layout. Training, evaluation, the
    summary and the command line read the list of datasets and their splits from :data:`DATASET_CARDS`.

    name: the preset's name (``--dataset``); loader: builds a :class:`CocoInstances` of one split;
    layout: the expected files, named in errors; splits: the splits the loader takes; train_split,
    val_split: the default training and held-out split; sources: the options that name its files
    (``data_root``, or ``images_root`` + ``annotation_file``); locate: (sources, split, options) ->
    the annotation file, raising :class:`DataError` when it is missing, without reading it.

    What is particular to a dataset lives here, never in a branch on its name elsewhere:
    default_root: its folder under ``SAMADAPT_HOME`` when no ``data_root`` is given (a dataset
    samadapt makes itself); generate: makes it there (``generate(root, n_train=, n_val=,
    progress=)``), with ``generated(root)`` saying whether it is made; held_out_file: its held-out
    images are another file, given as ``val_annotation_file`` (a split of one file is not held
    out); tag_option: the option that names its version in run and adapter names (``trashcan`` ->
    ``trashcan_material``).
    """

    name: str
    loader: Callable[..., CocoInstances]
    description: str
    layout: str
    splits: tuple[str, ...]
    train_split: str
    val_split: str
    sources: tuple[str, ...]
    locate: Callable[..., Path]
    summary_splits: tuple[str, ...] = ()  # the distinct splits, as `samadapt data summary` lists them
    default_root: str | None = None
    generate: Callable[..., object] | None = None
    generated: Callable[[Path], bool] | None = None
    held_out_file: bool = False
    tag_option: tuple[str, str] | None = None  # (option, its default)

    def root(self, data_root: str | os.PathLike | None) -> Path | None:
        """``data_root``, or the card's default folder under ``SAMADAPT_HOME`` (None without either)."""
        if data_root:
            return Path(data_root)
        if self.default_root is None:
            return None
        from ..paths import samadapt_home

        return samadapt_home() / self.default_root

    def tag(self, options: dict | None = None) -> str:
        """The dataset's name in run and adapter names: its name, plus its version where it has one."""
        if self.tag_option is None:
            return self.name
        option, default = self.tag_option
        return f"{self.name}_{(options or {}).get(option, default)}"

    @property
    def options(self) -> tuple[str, ...]:
        """Keyword options of the loader (``dataset_options``), besides :class:`CocoInstances`' own."""
        params = inspect.signature(self.loader).parameters.values()
        own = tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY)
        return own + COCO_OPTIONS

    def check_split(self, split: str, what: str = "split") -> None:
        if split not in self.splits:
            raise ConfigError(
                f"{what} {split!r} is not a split of {self.name}; choose one of {list(self.splits)} "
                f"(its held-out split is {self.val_split!r})"
            )

    def check_options(self, options: dict, what: str = "") -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ConfigError(
                f"{what}dataset {self.name!r} has no option(s) {unknown}; its options: {sorted(self.options)}"
            )

    def check(self, split: str, what: str = "split", *, options: dict | None = None, **sources) -> Path:
        """Check a split name, the options and that the files exist, reading no data; returns the
        annotation file."""
        self.check_split(split, what)
        options = dict(options or {})
        self.check_options(options)
        missing = [s for s in self.sources if not sources.get(s)]
        if missing:
            flags = " and ".join("--" + m.replace("_", "-") for m in missing)
            raise ConfigError(f"dataset {self.name!r} needs {flags} ({self.layout})")
        return self.locate(*(sources[s] for s in self.sources), split, **options)

    def open(self, split: str, *, options: dict | None = None, **sources) -> CocoInstances:
        """The dataset of ``split`` from ``sources`` (``data_root=...``, or ``images_root=...,
        annotation_file=...``)."""
        self.check(split, options=options, **sources)
        args = [sources[s] for s in self.sources]
        if self.sources == ("data_root",):
            return self.loader(*args, split=split, **(options or {}))
        return self.loader(*args, **(options or {}))


#: keyword options every preset passes on to :class:`CocoInstances`
COCO_OPTIONS = ("strict", "missing_images", "empty_images", "ignore_categories", "name")

DATASET_CARDS: dict[str, DatasetCard] = {
    c.name: c
    for c in (
        DatasetCard(
            "taco",
            taco,
            "TACO litter in the wild (no official split: seeded 80/20 by image)",
            TACO_LAYOUT,
            ("train", "test", "all"),
            "train",
            "test",
            ("data_root",),
            _taco_annotations,
            ("train", "test"),
        ),
        DatasetCard(
            "zerowaste",
            zerowaste,
            "ZeroWaste-f conveyor-belt recycling, official train/val/test",
            ZEROWASTE_LAYOUT,
            ("train", "val", "test"),
            "train",
            "val",
            ("data_root",),
            _zerowaste_annotations,
            ("train", "val", "test"),
        ),
        DatasetCard(
            "trashcan",
            trashcan,
            "TrashCan 1.0 underwater debris, instance or material version (val = test)",
            TRASHCAN_LAYOUT,
            ("train", "val", "test"),
            "train",
            "val",
            ("data_root",),
            _trashcan_annotations,
            ("train", "val"),
            tag_option=("version", "instance"),
        ),
        DatasetCard(
            "coco",
            coco,
            "any COCO instance-segmentation file (give the validation file separately)",
            "--images-root IMAGES --annotation-file FILE.json",
            ("train", "val"),
            "train",
            "val",
            ("images_root", "annotation_file"),
            _coco_annotations,
            ("train",),
            held_out_file=True,
        ),
        DatasetCard(
            "demo",
            demo,
            "generated waste-domain demo scenes (samadapt.data.synthetic)",
            DEMO_LAYOUT,
            ("train", "val", "test"),
            "train",
            "val",
            ("data_root",),
            _demo_annotations,
            ("train", "val"),
            default_root="data/demo-waste",
            generate=_generate_demo,
            generated=lambda root: (Path(root) / "dataset.json").is_file(),
        ),
    )
}

#: name -> loader, for ``get_dataset``
DATASETS: dict[str, Callable[..., CocoInstances]] = {name: c.loader for name, c in DATASET_CARDS.items()}


def get_dataset_card(name: str) -> DatasetCard:
    """The card of a dataset preset; :class:`UnknownNameError` names the valid ones."""
    try:
        return DATASET_CARDS[name]
    except (KeyError, TypeError):
        raise UnknownNameError(f"unknown dataset {name!r}; choose one of {sorted(DATASET_CARDS)}") from None


def get_dataset(name: str, **kw) -> CocoInstances:
    """Build the named preset: ``get_dataset("taco", root="TACO/data", split="test")``."""
    return get_dataset_card(name).loader(**kw)

"""`samadapt data import-trashcan` and `import-supervisely` on the real TrashCan frames of
../shared/realdata/trashcan (3,247 frames with their Supervise.ly bitmaps; see its SOURCES.md).

The whole folder is imported once per session (about 15 s); the bad-input cases run on a few real
frames copied to a temporary SOURCE and altered there.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from samadapt.cli import main as cli_main
from samadapt.data import presets
from samadapt.data.importers import import_supervisely, import_trashcan, trashcan_category
from samadapt.data.importers import output as output_mod
from samadapt.data.importers.output import MANIFEST
from samadapt.data.importers.trashcan import CATEGORIES
from samadapt.errors import ConfigError, DataError

REALDATA = Path(__file__).resolve().parents[2].parent / "shared" / "realdata"
TRASHCAN = REALDATA / "trashcan"
ANNOTATIONS = TRASHCAN / "original_data" / "annotations"
pytestmark = pytest.mark.skipif(
    not (TRASHCAN / "original_data").is_dir(), reason=f"TrashCan frames not found at {TRASHCAN}"
)

FRAMES = ["vid_000035_frame0000087.jpg", "vid_000089_frame0000010.jpg", "vid_000108_frame0000022.jpg"]


def _readme_classes(version: str) -> list[str]:
    text = (TRASHCAN / f"{version}_version_README.txt").read_text()
    return re.findall(r"^\|\s*([a-z_]+)\s+\|\s*\d", text, flags=re.M)


def _split(name: str) -> list[str]:
    return [ln.strip() for ln in (TRASHCAN / "splits" / f"{name}.txt").read_text().splitlines() if ln.strip()]


@pytest.fixture(scope="session")
def imported(tmp_path_factory):
    out = tmp_path_factory.mktemp("trashcan_import") / "out"
    return import_trashcan(TRASHCAN, out, progress=False)


# ---------------------------------------------------------------------------- the whole folder
def test_counts_follow_the_official_splits(imported):
    present = {p.name[: -len(".json")] for p in ANNOTATIONS.glob("*.json")}
    assert len(present) == 3247
    c = imported.counts
    assert (c["instance"]["train"]["images"], c["instance"]["val"]["images"]) == (2400, 847)
    material = {s: len(present & set(_split(f"material_{s}"))) for s in ("train", "val")}
    assert (c["material"]["train"]["images"], c["material"]["val"]["images"]) == (material["train"], material["val"])
    assert material["train"] + material["val"] == 3247
    for version in ("instance", "material"):
        for split in ("train", "val"):
            ds = presets.trashcan(imported.out, split, version=version)  # the preset reads the layout
            assert len(ds) == c[version][split]["images"] and ds.num_instances == c[version][split]["annotations"]
            assert ds.skips == {}
            names = {Path(f).name for f in (imported.out / f"{version}_version" / split).iterdir()}
            assert names == set(_split(f"{version}_{split}")) & present
    # the frames of the official lists that are not here are reported, not invented
    assert imported.reports["instance"]["notes"] == {
        "train frames of the official list not in SOURCE": 6065 - 2400,
        "val frames of the official list not in SOURCE": 1147 - 847,
    }
    assert imported.reports["frames"]["skipped_frames"] == {}


def test_only_official_category_names_in_the_official_order(imported):
    for version, n in (("instance", 22), ("material", 16)):
        assert sorted(CATEGORIES[version]) == sorted(_readme_classes(version)) and len(CATEGORIES[version]) == n
        for split in ("train", "val"):
            data = json.loads((imported.out / f"{version}_version" / f"instances_{split}_trashcan.json").read_text())
            assert [(c["id"], c["name"]) for c in data["categories"]] == list(enumerate(CATEGORIES[version], 1))
            used = {a["category_id"] for a in data["annotations"]}
            assert used <= set(range(1, n + 1))
    # every class of the tables occurs in the frames (the mapping reaches them all)
    found = Counter()
    for split in ("train", "val"):
        found.update(imported.counts["instance"][split]["categories"])
    assert set(found) == set(CATEGORIES["instance"])


def _decode(data: str) -> np.ndarray:
    """Independent of the importer: base64 -> zlib -> PNG -> alpha > 0."""
    with Image.open(io.BytesIO(zlib.decompress(base64.b64decode(data)))) as im:
        return np.asarray(im.convert("RGBA"))[:, :, 3] > 0


def _bitmap_unions(ann: dict) -> list[np.ndarray]:
    """Each object's mask: the union of its parts (shared `instance`) pasted at their origins."""
    h, w = ann["size"]["height"], ann["size"]["width"]
    groups: dict[str, np.ndarray] = {}
    for obj in ann["objects"]:
        small = _decode(obj["bitmap"]["data"])
        # 10 origins are fractional: whole pixels, as the official script's int(origin + 1) on its
        # canvas padded by one pixel
        x, y = (int(v) for v in obj["bitmap"]["origin"])
        full = np.zeros((h + small.shape[0], w + small.shape[1]), bool)
        full[y : y + small.shape[0], x : x + small.shape[1]] = small
        key = str(obj.get("instance") or f"id{obj['id']}")
        groups[key] = groups.get(key, np.zeros((h, w), bool)) | full[:h, :w]
    return list(groups.values())


@pytest.mark.parametrize("version", ["instance", "material"])
def test_every_mask_equals_the_decoded_bitmap_union(imported, version):
    dropped = imported.reports[version]["skipped_objects"]
    n_checked = 0
    for split in ("train", "val"):
        data = json.loads((imported.out / f"{version}_version" / f"instances_{split}_trashcan.json").read_text())
        by_image = defaultdict(list)
        for a in data["annotations"]:
            by_image[a["image_id"]].append(a)
        for im in data["images"]:
            ann = json.loads((ANNOTATIONS / f"{im['file_name']}.json").read_text())
            expected = Counter(m.tobytes() for m in _bitmap_unions(ann))  # a few objects share one bitmap
            got = Counter()
            for a in by_image[im["id"]]:
                mask = mask_utils.decode(a["segmentation"]).astype(bool)
                assert mask.shape == (im["height"], im["width"])
                assert mask.tobytes() in expected, f"{im['file_name']}: annotation {a['id']} is no bitmap union"
                got[mask.tobytes()] += 1
                assert a["area"] == mask.sum() and a["iscrowd"] == 0
                x, y, w, h = a["bbox"]
                ys, xs = np.nonzero(mask)
                assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
                n_checked += 1
            assert not got - expected, f"{im['file_name']}: more annotations than objects"
    # every object is either an annotation or counted under a reason
    all_objects = sum(len(json.loads(p.read_text())["objects"]) for p in ANNOTATIONS.glob("*.json"))
    groups = sum(
        len({str(o.get("instance") or f"id{o['id']}") for o in json.loads(p.read_text())["objects"]})
        for p in ANNOTATIONS.glob("*.json")
    )
    assert all_objects == 5783 and n_checked + sum(dropped.values()) == groups


def test_the_untagged_trash_of_the_instance_version_is_reported(imported):
    """The official script assigns trash objects without any tag no instance class (its test for a
    missing tag sits inside the loop over the tags); they are counted and named, and kept in the
    material version as trash_etc."""
    reason = "trash object without tags (the official instance-version script drops it)"
    assert imported.reports["instance"]["skipped_objects"] == {reason: 86}
    assert len(imported.reports["instance"]["named"][reason]) == 5
    assert imported.reports["material"]["skipped_objects"] == {}
    frame, obj = imported.reports["instance"]["named"][reason][0].split(": object ")
    ann = json.loads((ANNOTATIONS / f"{frame}.json").read_text())
    [o] = [o for o in ann["objects"] if str(o["id"]) == obj]
    assert o["classTitle"] == "trash" and o["tags"] == []
    assert trashcan_category(o, "material") == ("trash_etc", None)


# ---------------------------------------------------------------------------- the mapping
def _obj(title: str, *tags: tuple[str, object]) -> dict:
    return {"id": 1, "geometryType": "bitmap", "classTitle": title, "tags": [{"name": n, "value": v} for n, v in tags]}


@pytest.mark.parametrize(
    "obj, version, expected",
    [
        (_obj("rov", ("material", "plastic")), "instance", "rov"),
        (_obj("unknown"), "instance", "trash_unknown_instance"),
        (_obj("unknown"), "material", "trash_etc"),
        (_obj("bio", ("plant", None)), "instance", "plant"),
        (_obj("bio", ("animal", "1")), "instance", "animal_eel"),  # numeric tags index from -1: 1 -> [2]
        (_obj("bio", ("animal", "shell")), "material", "animal_shells"),
        (_obj("bio", ("animal", "stingray")), "instance", "animal_etc"),
        (_obj("bio", ("overgrown", None), ("animal", "crab")), "instance", "animal_crab"),
        (_obj("trash", ("instance", "8")), "instance", "trash_container"),
        (_obj("trash", ("instance", "4")), "instance", "trash_unknown_instance"),  # glove
        (_obj("trash", ("instance", "8\\")), "instance", "trash_can"),
        (_obj("trash", ("instance", "wreakage")), "instance", "trash_wreckage"),
        (_obj("trash", ("instance", "network")), "instance", "trash_net"),
        (_obj("trash", ("instance", "unkonwn_instance")), "instance", "trash_unknown_instance"),
        (_obj("trash", ("decay", None)), "instance", "trash_unknown_instance"),
        (_obj("trash", ("material", "glass")), "material", "trash_etc"),
        (_obj("trash", ("material", "metal")), "material", "trash_metal"),
        (_obj("trash", ("overgrown", None)), "material", "trash_etc"),
    ],
)
def test_official_assignment(obj, version, expected):
    assert trashcan_category(obj, version) == (expected, None)


@pytest.mark.parametrize(
    "obj, reason",
    [
        (_obj("trash"), "trash object without tags (the official instance-version script drops it)"),
        (_obj("bio", ("overgrown", None)), "bio object without a plant or animal tag (the official script drops it)"),
        (_obj("diver"), "classTitle 'diver' (the official script knows rov, unknown, bio and trash)"),
        (_obj("trash", ("instance", "glass jar")), "'trash_glass jar' is not an official instance-version class"),
        (_obj("trash", ("instance", "30")), "instance tag '30' is past the script's numbered list"),
        ({**_obj("rov"), "geometryType": "polygon"}, "geometry 'polygon' (the official script reads bitmaps only)"),
    ],
)
def test_objects_without_an_official_class_say_why(obj, reason):
    assert trashcan_category(obj, "instance") == (None, reason)


def test_unknown_version_is_refused():
    with pytest.raises(ConfigError, match=r"version='materials'; choose one of \['instance', 'material'\]"):
        trashcan_category(_obj("rov"), "materials")


# ---------------------------------------------------------------------------- bad input, re-runs
@pytest.fixture
def small_source(tmp_path) -> Path:
    """A SOURCE of the three known frames (the real split lists), to alter."""
    src = tmp_path / "src"
    (src / "original_data" / "annotations").mkdir(parents=True)
    (src / "original_data" / "images").mkdir()
    shutil.copytree(TRASHCAN / "splits", src / "splits")
    for f in FRAMES:
        shutil.copy(ANNOTATIONS / f"{f}.json", src / "original_data" / "annotations")
        shutil.copy(TRASHCAN / "original_data" / "images" / f, src / "original_data" / "images")
    return src


def test_unreadable_bitmap_missing_image_and_unknown_class_are_counted_and_named(small_source, tmp_path):
    ann_dir = small_source / "original_data" / "annotations"
    first = json.loads((ann_dir / f"{FRAMES[0]}.json").read_text())
    first["objects"][0]["bitmap"]["data"] = "bm90IGEgcG5n"  # base64 of "not a png"
    first["objects"][1]["classTitle"] = "diver"
    (ann_dir / f"{FRAMES[0]}.json").write_text(json.dumps(first))
    (small_source / "original_data" / "images" / FRAMES[1]).unlink()
    (small_source / "original_data" / "images" / "vid_000999_frame0000001.jpg").write_bytes(b"")  # no annotation
    result = import_trashcan(small_source, tmp_path / "out", versions=["instance"], progress=False)

    frames = result.reports["frames"]
    assert frames["skipped_frames"] == {"no image file": 1, "image without annotation file": 1}
    assert frames["named"]["no image file"] == [FRAMES[1]]
    assert frames["named"]["image without annotation file"] == ["vid_000999_frame0000001.jpg"]
    objects = result.reports["instance"]
    bad, diver = first["objects"][0]["id"], first["objects"][1]["id"]
    reason = "classTitle 'diver' (the official script knows rov, unknown, bio and trash)"
    assert objects["skipped_objects"] == {"unreadable bitmap": 1, reason: 1}
    assert objects["named"]["unreadable bitmap"] == [f"{FRAMES[0]}: object {bad}"]
    assert objects["named"][reason] == [f"{FRAMES[0]}: object {diver}"]
    assert sum(c["annotations"] for c in result.counts["instance"].values()) == 19 - 2 + 3
    text = result.format()
    assert f"1 x unreadable bitmap: {FRAMES[0]}: object {bad}" in text and f"1 x no image file: {FRAMES[1]}" in text


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.lstat().st_mtime_ns for p in sorted(root.rglob("*"))}


def test_rerun_is_a_noop_other_settings_refused_overwrite_replaces(small_source, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["data", "import-trashcan", str(small_source), str(out), "--no-progress"]
    assert cli_main(args) == 0
    assert "imported into" in capsys.readouterr().out
    before = _files(out)
    assert cli_main(args) == 0
    assert capsys.readouterr().out.startswith("already imported (nothing written; pass --overwrite to import again)")
    assert _files(out) == before

    assert cli_main(args + ["--version", "material"]) == 2
    err = capsys.readouterr().err
    assert "holds an import with other settings (versions: ['instance', 'material'] -> ['material'])" in err
    assert "pass --overwrite" in err and "Traceback" not in err
    assert _files(out) == before

    assert cli_main(args + ["--version", "material", "--overwrite", "--images", "copy"]) == 0
    assert not (out / "instance_version").exists()  # what the earlier import wrote is replaced
    assert not (out / "material_version" / "val" / FRAMES[0]).is_symlink()
    assert json.loads((out / MANIFEST).read_text())["settings"]["versions"] == ["material"]


def test_an_interrupted_import_leaves_nothing_under_the_final_names(small_source, tmp_path, monkeypatch):
    out = tmp_path / "out"
    calls = []

    def failing(src, dst, mode):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk full")
        dst.symlink_to(src)

    monkeypatch.setattr(output_mod, "place_image", failing)
    with pytest.raises(OSError, match="disk full"):
        import_trashcan(small_source, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == []  # no version folder, no staging folder, no manifest
    monkeypatch.undo()
    # a folder in the way that no import finished is not taken for one
    (out / "instance_version").mkdir()
    with pytest.raises(
        ConfigError,
        match=r"instance_version' exists but no samadapt_import.json says an import "
        r"finished there .* pass --overwrite",
    ):
        import_trashcan(small_source, out, progress=False)
    counts = import_trashcan(small_source, out, progress=False, overwrite=True).counts["instance"]
    assert counts["train"]["images"] + counts["val"]["images"] == 3


def test_bad_source_is_a_clear_error(tmp_path, capsys):
    assert cli_main(["data", "import-trashcan", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "TrashCan source" in err and "is not a folder. Expected layout: SOURCE/original_data" in err
    (tmp_path / "src" / "original_data" / "annotations").mkdir(parents=True)
    (tmp_path / "src" / "original_data" / "images").mkdir()
    with pytest.raises(DataError, match=r"no instance-version train list: neither .*instance_train.txt"):
        import_trashcan(tmp_path / "src", tmp_path / "out")


# ---------------------------------------------------------------------------- any Supervise.ly project
@pytest.fixture
def project(tmp_path) -> Path:
    """A Supervise.ly project export of the three frames (dataset "ds1"), plus a polygon and a
    rectangle object added to the first frame."""
    root = tmp_path / "project"
    (root / "ds1" / "ann").mkdir(parents=True)
    (root / "ds1" / "img").mkdir()
    meta = {"classes": [{"title": t, "shape": "bitmap"} for t in ("trash", "rov", "bio", "unknown")], "tags": []}
    (root / "meta.json").write_text(json.dumps(meta))
    for f in FRAMES:
        ann = json.loads((ANNOTATIONS / f"{f}.json").read_text())
        if f == FRAMES[0]:
            ann["objects"].append(
                {
                    "id": 7,
                    "classTitle": "trash",
                    "geometryType": "polygon",
                    "tags": [],
                    "points": {"exterior": [[10, 10], [20, 10], [20, 15], [10, 15]], "interior": []},
                }
            )
            ann["objects"].append(
                {
                    "id": 8,
                    "classTitle": "trash",
                    "geometryType": "rectangle",
                    "tags": [],
                    "points": {"exterior": [[1, 1], [5, 5]], "interior": []},
                }
            )
        (root / "ds1" / "ann" / f"{f}.json").write_text(json.dumps(ann))
        shutil.copy(TRASHCAN / "original_data" / "images" / f, root / "ds1" / "img" / f)
    return root


def test_project_with_a_class_the_mapping_lacks_is_reported(project, tmp_path, capsys):
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"trash": "litter", "rov": None, "unknown": "litter"}))
    out = tmp_path / "out"
    args = ["data", "import-supervisely", str(project), str(out), "--mapping", str(mapping), "--no-progress"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert f"the class mapping {str(mapping)!r} lacks 1 class(es) of the project: 'bio'" in err
    assert "a category name, or null to leave it out" in err and "--skip-unmapped" in err
    assert not out.exists()  # refused before anything is written

    assert cli_main(args + ["--skip-unmapped"]) == 0
    printed = capsys.readouterr().out
    bio = sum(
        o["classTitle"] == "bio" for f in FRAMES for o in json.loads((ANNOTATIONS / f"{f}.json").read_text())["objects"]
    )
    rov = sum(
        o["classTitle"] == "rov" for f in FRAMES for o in json.loads((ANNOTATIONS / f"{f}.json").read_text())["objects"]
    )
    report = json.loads((out / MANIFEST).read_text())["report"]
    assert report["skipped_objects"] == {
        "class 'bio' is not in the mapping": bio,
        "class 'rov' mapped to null": rov,
        "geometry 'rectangle' has no mask": 1,
    }
    assert f"{bio} x class 'bio' is not in the mapping" in printed
    ds = presets.coco(out / "ds1" / "images", out / "ds1" / "annotations.json")
    assert ds.categories == {1: "litter"} and len(ds) == 3


def test_project_masks_equal_the_trashcan_import(project, tmp_path):
    out = tmp_path / "out"
    result = import_supervisely(project, out, progress=False)
    assert result.counts["ds1"]["images"] == 3
    ds = presets.coco(out / "ds1" / "images", out / "ds1" / "annotations.json")
    assert ds.categories == {1: "trash", 2: "rov", 3: "bio", 4: "unknown"}  # meta.json's classes, in its order
    k = [ds.image_info(i)["file_name"] for i in range(len(ds))].index(FRAMES[0])
    sample = ds[k]
    polygon = np.zeros((sample["masks"].shape[1:]), bool)
    polygon[10:16, 10:21] = True  # pixel centres inside or on the outline
    got = [m for m in sample["masks"] if np.array_equal(m, polygon)]
    assert len(got) == 1
    expected = {m.tobytes() for m in _bitmap_unions(json.loads((ANNOTATIONS / f"{FRAMES[0]}.json").read_text()))}
    bitmaps = [m for m in sample["masks"] if not np.array_equal(m, polygon)]
    assert len(bitmaps) == 19 and all(m.tobytes() in expected for m in bitmaps)
    assert import_supervisely(project, out, progress=False).noop


def test_not_a_project_is_a_clear_error(tmp_path):
    (tmp_path / "p").mkdir()
    with pytest.raises(DataError, match=r"meta.json' not found: not a Supervise.ly project export"):
        import_supervisely(tmp_path / "p", tmp_path / "out")
    bad = tmp_path / "bad.json"
    bad.write_text('{"trash": 3}')
    (tmp_path / "p" / "meta.json").write_text('{"classes": [{"title": "trash"}]}')
    with pytest.raises(ConfigError, match="must map each classTitle to a category name or null"):
        import_supervisely(tmp_path / "p", tmp_path / "out", mapping=bad)


def test_frames_imports_only_those_each_in_its_official_split(tmp_path):
    picked = FRAMES[:2]
    result = import_trashcan(TRASHCAN, tmp_path / "out", versions=["instance"], frames=picked, progress=False)
    names = {}
    for split in ("train", "val"):
        data = json.loads((result.out / "instance_version" / f"instances_{split}_trashcan.json").read_text())
        names[split] = [im["file_name"] for im in data["images"]]
    assert sorted(names["train"] + names["val"]) == sorted(picked)
    for split, files in names.items():
        assert all(f in _split(f"instance_{split}") for f in files)
    again = import_trashcan(TRASHCAN, tmp_path / "out", versions=["instance"], frames=picked, progress=False)
    assert again.noop  # the same frames: the same import
    with pytest.raises(ConfigError, match="other settings"):
        import_trashcan(TRASHCAN, tmp_path / "out", versions=["instance"], frames=FRAMES, progress=False)
    with pytest.raises(ConfigError, match=r"frames \['no_such_frame.jpg'\].*no image or no annotation file"):
        import_trashcan(TRASHCAN, tmp_path / "other", frames=["no_such_frame.jpg"], progress=False)

"""The loaders on the real annotation files in ../shared/realdata (see its SOURCES.md).

No TACO or ZeroWaste images are public in git, so indexing and counting run on the JSON alone, and
the few images a test needs are generated at the size the file gives. The labelme sample and the
TrashCan frames come with their real images.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from samadapt.data import presets
from samadapt.data.coco import CocoInstances
from samadapt.data.importers import decode_bitmap, import_trashcan, object_mask
from samadapt.data.prompts import PromptConfig
from samadapt.data.sam_dataset import SamPromptDataset, check_dataset
from samadapt.data.summary import format_summary, summarize, summarize_preset
from samadapt.transforms import SamTransform

REALDATA = Path(__file__).resolve().parents[2].parent / "shared" / "realdata"
pytestmark = pytest.mark.skipif(not REALDATA.is_dir(), reason=f"real annotation files not found at {REALDATA}")

TACO = REALDATA / "taco" / "annotations.json"
ZEROWASTE = REALDATA / "zerowaste" / "labels_v1_train.json"
LABELME = REALDATA / "labelme_instance_segmentation" / "data_dataset_coco"
TRASHCAN = REALDATA / "trashcan"


def _quiet_coco(path: Path) -> COCO:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


# --- TACO ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def taco_root(tmp_path_factory):
    """TACO's data/ folder: the real annotations.json, and one generated image (id 93)."""
    root = tmp_path_factory.mktemp("taco_data")
    (root / "annotations.json").symlink_to(TACO)
    # Image 93 is batch_1/000120.JPG, 2448x3264. Written as a PNG with alpha under a lower-case .jpg
    # name: TACO has both quirks (PNG originals under .jpg names, .jpg vs .JPG).
    (root / "batch_1").mkdir()
    Image.new("RGBA", (2448, 3264), (60, 120, 180, 255)).save(root / "batch_1" / "000120.jpg", format="PNG")
    return root


@pytest.fixture(scope="module")
def taco_all(taco_root):
    return presets.taco(taco_root, "all")


def test_taco_counts_from_the_index_alone(taco_all):
    assert len(taco_all) == 1500
    assert taco_all.num_file_annotations == 4784 and taco_all.num_instances == 4784
    assert len(taco_all.categories) == 60 and taco_all.categories[0] == "Aluminium foil"  # id 0 is a class
    # the six -1 coordinates are clipped; ids 309 and 4040 are used twice
    assert taco_all.skips == {"clipped": 6, "duplicate_id": 2}
    assert {i.annotation_id for i in taco_all.issues.issues() if i.reason == "duplicate_id"} == {309, 4040}


def test_taco_duplicate_ids_go_to_their_own_images(taco_all):
    raw = json.loads(TACO.read_text())
    for image_id in (93, 101, 1281, 1300):
        expected = sorted((a["id"], a["category_id"]) for a in raw["annotations"] if a["image_id"] == image_id)
        got = taco_all.instance_annotations(taco_all.index_of(image_id))
        assert all(a["image_id"] == image_id for a in got)
        assert sorted((a["orig_id"], a["category_id"]) for a in got) == expected
        ours = taco_all.coco
        assert {a["image_id"] for a in ours.loadAnns(ours.getAnnIds(imgIds=[image_id]))} == {image_id}
    # pycocotools on the raw file gets this wrong (why ids are renumbered): the id lookup of image 93
    # returns image 101's annotation 309
    raw = _quiet_coco(TACO)
    assert {a["image_id"] for a in raw.loadAnns(raw.getAnnIds(imgIds=[93]))} == {93, 101}


def test_taco_image_93_loads_with_its_masks(taco_all):
    idx = taco_all.index_of(93)
    s = taco_all[idx]
    assert s["image"].shape == (3264, 2448, 3) and s["image"][0, 0].tolist() == [60, 120, 180]
    assert s["annotation_ids"].tolist() == [245, 309] and s["category_ids"].tolist() == [36, 59]
    # the box recomputed from the mask agrees with the file's bbox [1822, 1026, 34, 44] of annotation 309
    x1, y1, x2, y2 = s["boxes"][1]
    assert abs(x1 - 1822) <= 1 and abs(y1 - 1026) <= 1 and abs(x2 - 1856) <= 2 and abs(y2 - 1070) <= 2
    sam = SamPromptDataset(taco_all, SamTransform(256), PromptConfig(), seed=0)
    sample = sam[idx]
    assert sample["image"].shape == (3, 256, 256) and sample["gt_masks"].shape == (2, 64, 64)


@pytest.fixture(scope="module")
def taco_splits(taco_root):
    return {"train": presets.taco(taco_root, "train"), "test": presets.taco(taco_root, "test")}


def test_taco_split_is_seeded_disjoint_and_complete(taco_splits, taco_all):
    train, test = taco_splits["train"], taco_splits["test"]
    assert len(train) == 1200 and len(test) == 300
    assert set(train.image_ids).isdisjoint(test.image_ids)
    assert set(train.image_ids) | set(test.image_ids) == set(range(1500))
    names = [(i, taco_all.file_image_info(i)["file_name"]) for i in taco_all.file_image_ids]
    assert presets.seeded_split(names, seed=0) == (train.image_ids, test.image_ids)  # the same on every run
    assert presets.seeded_split(names, seed=1)[1] != test.image_ids
    assert train.num_instances + test.num_instances == 4784
    # skips are counted per split
    assert train.skips["clipped"] + test.skips.get("clipped", 0) == 6


def test_taco_unofficial_infinity_and_outside_polygons(tmp_path):
    ds = CocoInstances(tmp_path, REALDATA / "taco" / "annotations_unofficial.json")
    assert len(ds) == 3831 and ds.num_file_annotations == 8334
    skips = ds.skips
    assert skips["non_finite"] == 15  # segmentation [], bbox [Infinity, Infinity, -Infinity, -Infinity]
    assert skips["outside_image"] == 8 and skips["empty_segmentation"] == 8
    assert ds.num_instances == 8334 - 15 - 8


def test_taco_summary(taco_splits):
    s = summarize(taco_splits)
    assert s["images"] == 1500 and s["instances"] == 4784
    train = s["splits"]["train"]
    assert sum(train["areas"].values()) == train["instances"] and train["instances_per_image"]["max"] <= 90
    assert train["image_sizes"]["width"][1] <= 6000
    text = format_summary(s)
    assert "[test]" in text and "Aluminium foil" in text and "clipped" in text


# --- ZeroWaste ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zerowaste_root(tmp_path_factory):
    """The final-release layout around the real v1 train labels (no frames)."""
    root = tmp_path_factory.mktemp("zerowaste")
    (root / "train").mkdir()
    (root / "train" / "labels.json").symlink_to(ZEROWASTE)
    return root


@pytest.fixture(scope="module")
def zerowaste_train(zerowaste_root):
    return presets.zerowaste(zerowaste_root, "train")


def test_zerowaste_counts_degenerate_and_empty_images(zerowaste_root, zerowaste_train):
    keep = zerowaste_train
    assert len(keep) == 1245 and keep.num_file_annotations == 6162 and keep.name == "zerowaste/train"
    assert keep.categories == {1: "rigid_plastic", 2: "cardboard", 3: "metal", 4: "soft_plastic"}
    # 23 polygon parts of 3 points with the first repeated (zero area) in 20 annotations; no annotation
    # is made only of them, so all 6162 stay
    assert keep.skips == {"degenerate_polygon": 23}
    assert keep.num_instances == 6162
    assert sum(1 for i in range(len(keep)) if not keep.instance_annotations(i)) == 37
    skip = presets.zerowaste(zerowaste_root, "train", empty_images="skip")
    assert len(skip) == 1208


def test_zerowaste_masks_equal_pycocotools(zerowaste_train):
    ds = zerowaste_train
    ref = _quiet_coco(ZEROWASTE)
    with_degenerate = sorted({i.annotation_id for i in ds.issues.issues() if i.reason == "degenerate_polygon"})
    assert len(with_degenerate) == 20
    for ann_id in with_degenerate[:6]:  # dropping the zero-area parts changes no pixel
        a = ref.anns[ann_id]
        idx = ds.index_of(a["image_id"])
        [ours] = [x for x in ds.instance_annotations(idx) if x["orig_id"] == ann_id]
        np.testing.assert_array_equal(ds.decode_masks(idx, [ours])[0], ref.annToMask(a).astype(bool))


def test_zerowaste_split_list_and_summary(zerowaste_root, zerowaste_train):
    ds = zerowaste_train
    ids = presets.read_split_file(
        REALDATA / "zerowaste" / "split_v1_train.txt", "train", {i: ds.file_image_info(i) for i in ds.file_image_ids}
    )
    assert sorted(ids) == sorted(ds.image_ids)  # the v1 split lists frame stems
    s = summarize_preset("zerowaste", data_root=zerowaste_root, splits=("train",))["splits"]["train"]
    assert s["images"] == 1245 and s["instances"] == 6162
    assert s["images_without_instances"] == 37 and s["skips"] == {"degenerate_polygon": 23}
    assert s["image_sizes"]["most_common"] == [[1080, 1920, 1245]]
    assert sum(s["categories"].values()) == 6162


# --- labelme sample (real images and polygons) ----------------------------------------------------


def test_labelme_masks_equal_coco_ann_to_mask():
    ds = presets.coco(LABELME, LABELME / "annotations.json")
    ref = _quiet_coco(LABELME / "annotations.json")
    assert "_background_" not in ds.categories.values() and len(ds.categories) == 20
    assert len(ds) == 3
    total = 0
    for i in range(len(ds)):
        s = ds[i]
        info = ds.image_info(i)
        assert s["image"].shape == (info["height"], info["width"], 3)
        for m, aid in zip(s["masks"], s["annotation_ids"]):
            np.testing.assert_array_equal(m, ref.annToMask(ref.anns[int(aid)]).astype(bool))
            total += 1
    # annotation 9 reaches 0.38 px below the image: the rasteriser cuts its mask exactly as annToMask does
    assert total == 12 and ds.skips == {"clipped": 1}


def test_labelme_through_sam_dataset():
    ds = SamPromptDataset(
        presets.coco(LABELME, LABELME / "annotations.json"),
        SamTransform(256),
        PromptConfig(num_points=1, num_negative_points=1),
        max_instances=4,
    )
    check_dataset(ds, n=3)
    s = ds[0]
    assert s["image"].shape == (3, 256, 256) and s["points"].shape[1:] == (2, 2)


# --- TrashCan: Supervise.ly bitmaps ----------------------------------------------------------------
# (the whole folder's import, its counts and masks: tests/data/test_import_trashcan.py)


def _readme_classes(name: str) -> set[str]:
    text = (TRASHCAN / name).read_text()
    return set(re.findall(r"^\|\s*([a-z_]+)\s+\|", text, flags=re.M)) - {"Class"}


def test_supervisely_bitmap_decodes():
    ann = json.loads((TRASHCAN / "original_data" / "annotations" / "vid_000089_frame0000010.jpg.json").read_text())
    obj = ann["objects"][0]
    small = decode_bitmap(obj["bitmap"]["data"])
    assert small.dtype == np.bool_ and small.shape == (50, 60) and small.any()
    full = object_mask(obj, ann["size"]["height"], ann["size"]["width"])
    x0, y0 = obj["bitmap"]["origin"]
    assert full.shape == (270, 480) and full.sum() == small.sum()
    assert full[y0 : y0 + 50, x0 : x0 + 60].sum() == small.sum()


@pytest.mark.parametrize("version", ["instance", "material"])
def test_trashcan_raw_frames_to_coco(tmp_path, version):
    # three known frames of the 3,247 in the shared folder, with the official split lists
    frames = ["vid_000035_frame0000087.jpg", "vid_000089_frame0000010.jpg", "vid_000108_frame0000022.jpg"]
    src = tmp_path / "src"
    for sub in ("annotations", "images"):
        (src / "original_data" / sub).mkdir(parents=True)
    (src / "splits").symlink_to(TRASHCAN / "splits")
    for f in frames:
        (src / "original_data" / "annotations" / f"{f}.json").symlink_to(
            TRASHCAN / "original_data" / "annotations" / f"{f}.json"
        )
        (src / "original_data" / "images" / f).symlink_to(TRASHCAN / "original_data" / "images" / f)
    result = import_trashcan(src, tmp_path / "out", versions=[version], progress=False)
    splits = {s: presets.trashcan(tmp_path / "out", s, version=version) for s in ("train", "val")}
    per_image = {
        ds.image_info(k)["file_name"]: len(ds.instance_annotations(k)) for ds in splits.values() for k in range(len(ds))
    }
    assert per_image == dict(zip(frames, [19, 2, 3]))  # the four parts of the ROV in vid_000089 are one instance
    assert set(splits["val"].categories.values()) == _readme_classes(f"{version}_version_README.txt")
    assert result.reports["frames"]["skipped_frames"] == {} and result.reports[version]["skipped_objects"] == {}
    [(ds, k)] = [
        (ds, k) for ds in splits.values() for k in range(len(ds)) if ds.image_info(k)["file_name"] == frames[2]
    ]
    s = ds[k]
    assert s["image"].shape == (360, 480, 3) and s["masks"].shape == (3, 360, 480)
    assert ds.skips == {}
    names = {ds.categories[c] for c in s["category_ids"].tolist()}
    assert names == (
        {"rov", "animal_etc", "trash_can"} if version == "instance" else {"rov", "animal_etc", "trash_metal"}
    )

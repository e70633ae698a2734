"""CocoInstances and the presets on small generated COCO files: every bad input has a test."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from segment_anything.utils.amg import batched_mask_to_box

from samadapt.data import presets
from samadapt.data.coco import CocoInstances
from samadapt.data.coco_file import annotation_area, load_coco_json
from samadapt.data.skips import REASONS
from samadapt.errors import ConfigError, DataError, UnknownNameError

H, W = 48, 64
CATS = [{"id": 0, "name": "_background_"}, {"id": 1, "name": "bottle"}, {"id": 2, "name": "can"}]


def square(x0, y0, x1, y1):
    """Polygon of an axis-aligned rectangle in continuous coordinates."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def write_image(path: Path, h: int = H, w: int = W, value: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)


def write_coco(
    root: Path,
    annotations: list,
    images: list | None = None,
    categories: list | None = None,
    write_images: bool = True,
    name: str = "ann.json",
) -> Path:
    images = (
        images
        if images is not None
        else [
            {"id": 1, "file_name": "a.png", "height": H, "width": W},
            {"id": 2, "file_name": "sub/b.png", "height": H, "width": W},
        ]
    )
    if write_images:
        for img in images:
            write_image(root / img["file_name"], img["height"], img["width"])
    path = root / name
    path.write_text(
        json.dumps(
            {"images": images, "annotations": annotations, "categories": categories if categories is not None else CATS}
        )
    )
    return path


def ann(id, image_id, seg, cat=1, **kw):
    return {"id": id, "image_id": image_id, "category_id": cat, "segmentation": seg, "iscrowd": 0, **kw}


@pytest.fixture
def good(tmp_path):
    """Two images: polygons, a two-part polygon, compressed and uncompressed RLE."""
    m = np.zeros((H, W), np.uint8, order="F")
    m[30:40, 5:20] = 1
    rle = mask_utils.encode(m)
    rle = {"size": rle["size"], "counts": rle["counts"].decode()}
    m2 = np.zeros((H, W), np.uint8, order="F")
    m2[2:6, 50:60] = 1
    unc = {"size": [H, W], "counts": _uncompressed(m2)}
    anns = [
        ann(10, 1, [square(10, 10, 20, 30)]),
        ann(11, 1, [square(30, 5, 40, 15), square(50, 20, 60, 25)], cat=2),
        ann(12, 2, rle),
        ann(13, 2, unc, cat=2),
    ]
    path = write_coco(tmp_path, anns)
    return tmp_path, path


def _uncompressed(m: np.ndarray) -> list[int]:
    flat = m.flatten(order="F")
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    return counts


def test_items_shapes_and_masks_match_pycocotools(good):
    root, path = good
    ds = CocoInstances(root, path)
    assert len(ds) == 2 and ds.image_ids == [1, 2]
    assert ds.categories == {1: "bottle", 2: "can"}  # _background_ is not a class
    from pycocotools.coco import COCO

    ref = COCO(str(path))
    for i in range(len(ds)):
        s = ds[i]
        n = len(s["category_ids"])
        assert s["image"].dtype == np.uint8 and s["image"].shape == (H, W, 3)
        assert s["masks"].dtype == np.bool_ and s["masks"].shape == (n, H, W)
        assert s["boxes"].dtype == np.float32 and s["boxes"].shape == (n, 4)
        assert s["category_ids"].dtype == np.int64
        assert s["original_size"] == (H, W)
        for m, aid in zip(s["masks"], s["annotation_ids"]):
            np.testing.assert_array_equal(m, ref.annToMask(ref.anns[int(aid)]).astype(bool))
        expected = batched_mask_to_box(torch.from_numpy(s["masks"])).numpy()
        np.testing.assert_array_equal(s["boxes"], expected)
    assert ds[0]["boxes"][0].tolist() == [10, 10, 19, 29]  # inclusive pixel indices


def test_lazy_decode_only_what_is_asked(good):
    root, path = good
    ds = CocoInstances(root, path)
    anns = ds.instance_annotations(0)
    assert [a["orig_id"] for a in anns] == [10, 11]
    masks = ds.decode_masks(0, anns[1:])
    assert masks.shape == (1, H, W) and masks[0, 5:15, 30:40].all() and masks[0, 20:25, 50:60].all()
    assert ds.num_instances == 4 and ds.num_file_annotations == 4


def test_missing_file_and_broken_json(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        CocoInstances(tmp_path, tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [],\n "annotations": [\n  {"id": 1,,}]}')
    with pytest.raises(DataError, match=r"bad\.json.*line 3, column 12"):
        CocoInstances(tmp_path, bad)
    arr = tmp_path / "list.json"
    arr.write_text("[]")
    with pytest.raises(DataError, match="expected a COCO object"):
        load_coco_json(arr)


def test_truncated_json_says_where_in_plain_words(tmp_path):
    """A file cut inside a string: the decoder's "Unterminated string starting at" gets the line and
    column without a second "at" (it read "starting at at line 1")."""
    cut = tmp_path / "cut.json"
    cut.write_text('{"images": [{"file_name": "a.jp')
    with pytest.raises(DataError) as e:
        load_coco_json(cut)
    assert "is not valid JSON: Unterminated string starting at line 1, column 27. The file may be truncated" in str(
        e.value
    )
    assert "at at" not in str(e.value)
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(
        DataError, match=r"is not valid JSON: Expecting property name enclosed in double quotes at line 1, column 2\."
    ):
        load_coco_json(bad)


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_missing_top_level_key(tmp_path, key):
    d = {"images": [], "annotations": [], "categories": []}
    del d[key]
    p = tmp_path / "a.json"
    p.write_text(json.dumps(d))
    with pytest.raises(DataError, match=f"no '{key}' key"):
        CocoInstances(tmp_path, p)


def test_bad_image_entries(tmp_path):
    p = write_coco(tmp_path, [], images=[{"id": 1, "file_name": "a.png", "width": W}], write_images=False)
    with pytest.raises(DataError, match="has no 'height'"):
        CocoInstances(tmp_path, p)
    p = write_coco(
        tmp_path, [], images=[{"id": 1, "file_name": "a.png", "height": H, "width": W}] * 2, write_images=False
    )
    with pytest.raises(DataError, match="image id 1 appears twice"):
        CocoInstances(tmp_path, p)


def test_infinity_is_a_counted_skip(tmp_path):
    # TACO's annotations_unofficial.json: bbox [Infinity, ...] is not JSON, but Python parses it.
    inf = float("inf")
    anns = [
        ann(1, 1, [square(1, 1, 9, 9)]),
        ann(2, 1, [], bbox=[inf, inf, -inf, -inf]),
        ann(3, 1, [[1.0, 1.0, float("nan"), 9.0, 9.0, 9.0]]),
    ]
    p = write_coco(tmp_path, anns)
    assert "Infinity" in p.read_text() and "NaN" in p.read_text()
    ds = CocoInstances(tmp_path, p)
    assert ds.skips == {"non_finite": 2}
    assert ds.num_instances == 1


def test_missing_image_error_and_skip(tmp_path):
    p = write_coco(tmp_path, [ann(1, 1, [square(1, 1, 9, 9)]), ann(2, 2, [square(1, 1, 9, 9)])])
    (tmp_path / "sub" / "b.png").unlink()
    ds = CocoInstances(tmp_path, p)  # the index needs no image file
    assert len(ds) == 2
    ds[0]
    with pytest.raises(DataError, match=r"'sub/b\.png' \(image id 2\) not found.*missing_images='skip'"):
        ds[1]
    with pytest.raises(DataError, match="1 of 2 image files not found"):
        ds.verify_images()
    ds = CocoInstances(tmp_path, p, missing_images="skip")
    assert ds.image_ids == [1] and ds.skips == {"missing_image": 1}


def test_unreadable_and_truncated_images(tmp_path):
    p = write_coco(tmp_path, [ann(1, 1, [square(1, 1, 9, 9)]), ann(2, 2, [square(1, 1, 9, 9)])])
    (tmp_path / "a.png").write_bytes(b"this is not an image")
    ds = CocoInstances(tmp_path, p)
    with pytest.raises(DataError, match=r"cannot read image file .*a\.png"):
        ds[0]
    data = (tmp_path / "sub" / "b.png").read_bytes()
    (tmp_path / "sub" / "b.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"b\.png"):
        ds[1]


def test_size_mismatch_names_both_sizes(tmp_path):
    images = [{"id": 7, "file_name": "a.png", "height": H, "width": W}]
    p = write_coco(tmp_path, [ann(1, 7, [square(1, 1, 9, 9)])], images=images, write_images=False)
    write_image(tmp_path / "a.png", H + 2, W)
    with pytest.raises(DataError, match=rf"image 7 .* is {H + 2}x{W} .* says {H}x{W}"):
        CocoInstances(tmp_path, p)[0]
    write_image(tmp_path / "a.png", W, H)
    with pytest.raises(DataError, match="EXIF orientation"):
        CocoInstances(tmp_path, p)[0]


def test_degenerate_polygons(tmp_path):
    anns = [
        ann(1, 1, [square(5, 5, 20, 20), [30.0, 30.0, 31.0, 31.0, 30.0, 30.0]]),  # 2nd part: 2 distinct points
        ann(2, 1, [[1, 1, 5, 5]]),  # < 6 numbers: nothing left
        ann(3, 1, [[1, 1, 5, 5, 9, 9]]),  # collinear: zero area
        ann(4, 1, []),
    ]
    ds = CocoInstances(tmp_path, write_coco(tmp_path, anns))
    assert ds.skips == {"empty_segmentation": 3, "degenerate_polygon": 3}
    [kept] = ds.instance_annotations(0)
    assert kept["orig_id"] == 1 and len(kept["segmentation"]) == 1


def test_empty_mask_counted_once(tmp_path):
    tiny = [[10.1, 10.1, 10.3, 10.1, 10.2, 10.3]]  # non-zero area, but covers no pixel centre
    ds = CocoInstances(tmp_path, write_coco(tmp_path, [ann(1, 1, tiny), ann(2, 1, [square(1, 1, 9, 9)])]))
    assert ds.skips == {}
    for _ in range(2):
        s = ds[0]
        assert list(s["annotation_ids"]) == [2]
    assert ds.skips == {"empty_mask": 1}


def test_out_of_image_coordinates_are_clipped(tmp_path):
    anns = [
        ann(1, 1, [[-1, -1, 20, -1, 20, 10, -1, 10]]),
        ann(2, 1, [square(50, 40, 70, 60)]),  # beyond the bottom-right corner
        ann(3, 1, [square(100, 100, 120, 120)]),
    ]  # entirely outside
    ds = CocoInstances(tmp_path, write_coco(tmp_path, anns))
    assert ds.skips == {"outside_image": 1, "empty_segmentation": 1, "clipped": 2}
    s = ds[0]
    assert s["boxes"].tolist() == [[0, 0, 19, 9], [50, 40, W - 1, H - 1]]


def test_duplicate_ids_are_renumbered(tmp_path):
    # TACO: ids 309 and 4040 appear twice; pycocotools' index would mix up the images.
    anns = [ann(309, 1, [square(1, 1, 9, 9)], cat=1), ann(309, 2, [square(20, 20, 40, 30)], cat=2)]
    ds = CocoInstances(tmp_path, write_coco(tmp_path, anns))
    assert ds.skips == {"duplicate_id": 1}
    assert [a["image_id"] for a in ds.instance_annotations(0)] == [1]
    assert [a["image_id"] for a in ds.instance_annotations(1)] == [2]
    assert ds[1]["category_ids"].tolist() == [2] and ds[1]["annotation_ids"].tolist() == [309]
    assert sorted(ds.coco.anns) == [0, 1]
    assert [a["image_id"] for a in ds.coco.imgToAnns[2]] == [2]


def test_crowd_unknown_and_ignored(tmp_path):
    crowd = ann(1, 1, [square(0, 0, 30, 30)], iscrowd=1)
    anns = [
        crowd,
        ann(2, 1, [square(1, 1, 9, 9)], cat=99),
        ann(3, 99, [square(1, 1, 9, 9)]),
        ann(4, 1, [square(1, 1, 9, 9)], cat=0),
        {"id": 5, "image_id": 1},
        ann(6, 1, [square(40, 40, 50, 45)]),
    ]
    ds = CocoInstances(tmp_path, write_coco(tmp_path, anns))
    assert ds.skips == {"malformed": 1, "unknown_image": 1, "unknown_category": 1, "crowd": 1, "ignored_category": 1}
    assert [a["orig_id"] for a in ds.instance_annotations(0)] == [6]
    assert ds.crowd_masks(0).shape == (1, H, W) and ds.crowd_masks(0)[0, :30, :30].all()
    assert ds.crowd_masks(1).shape == (0, H, W)
    assert ds.coco.anns[0]["iscrowd"] == 1
    # _background_ becomes a class when not ignored
    ds2 = CocoInstances(tmp_path, tmp_path / "ann.json", ignore_categories=())
    assert 0 in ds2.categories and "ignored_category" not in ds2.skips


def test_malformed_segmentations(tmp_path):
    anns = [
        ann(1, 1, [["1", 1, 2, 3, 4, 5]]),
        ann(2, 1, "polygon"),
        ann(3, 1, {"size": [10, 10], "counts": "PP"}),
        ann(4, 1, {"size": [H, W], "counts": [1, 2, 3]}),
        ann(5, 1, [1, 1, 20, 1, 20, 9]),
    ]  # flat polygon: ok
    ds = CocoInstances(tmp_path, write_coco(tmp_path, anns))
    assert ds.skips == {"bad_segmentation": 3, "rle_size_mismatch": 1}
    assert [a["orig_id"] for a in ds.instance_annotations(0)] == [5]


def test_strict_raises_on_first_problem(tmp_path):
    anns = [ann(1, 1, [square(1, 1, 9, 9)], iscrowd=1), ann(8, 1, [[-1, 0, 10, 0, 10, 10]])]
    p = write_coco(tmp_path, anns)
    with pytest.raises(DataError, match=r"annotation 8 of image 1: clipped .*strict=False"):
        CocoInstances(tmp_path, p, strict=True)
    p = write_coco(tmp_path, [ann(1, 1, [square(1, 1, 9, 9)], iscrowd=1)])
    assert CocoInstances(tmp_path, p, strict=True).skips == {"crowd": 1}  # crowd is not an error


def test_empty_images_keep_or_skip(tmp_path):
    p = write_coco(tmp_path, [ann(1, 1, [square(1, 1, 9, 9)])])
    keep = CocoInstances(tmp_path, p)
    assert len(keep) == 2
    s = keep[1]
    assert s["masks"].shape == (0, H, W) and s["boxes"].shape == (0, 4) and s["category_ids"].shape == (0,)
    assert len(CocoInstances(tmp_path, p, empty_images="skip")) == 1


def test_subset_and_image_ids(tmp_path):
    p = write_coco(tmp_path, [ann(1, 1, [[-1, 0, 10, 0, 10, 10]]), ann(2, 2, [square(1, 1, 9, 9)])])
    ds = CocoInstances(tmp_path, p)
    assert ds.skips == {"clipped": 1}
    sub = ds.subset([2])
    assert sub.image_ids == [2] and len(sub) == 1 and sub.skips == {}
    assert CocoInstances(tmp_path, p, image_ids=[2, 1]).image_ids == [1, 2]  # file order
    with pytest.raises(DataError, match=r"image ids \[5\] are not in"):
        ds.subset([5])


def test_skips_logged_once(tmp_path, caplog):
    anns = [ann(k, 1, [[-1, 0, 10, 0, 10, 10]]) for k in range(5)]
    p = write_coco(tmp_path, anns)
    with caplog.at_level(logging.WARNING, logger="samadapt.data"):
        ds = CocoInstances(tmp_path, p)
        for _ in range(3):
            ds[0]
        ds.subset([1])
    records = [r for r in caplog.records if r.name == "samadapt.data"]
    assert len(records) == 1
    msg = records[0].getMessage()
    assert "clipped=5" in msg and msg.count("annotation ") == 3


def test_options_are_validated(good):
    root, path = good
    with pytest.raises(ConfigError, match="missing_images='maybe'"):
        CocoInstances(root, path, missing_images="maybe")
    with pytest.raises(ConfigError, match="empty_images"):
        CocoInstances(root, path, empty_images="drop")
    with pytest.raises(ConfigError, match="is a string"):
        CocoInstances(root, path, ignore_categories="_background_")


def test_extension_case_and_png_named_jpg(tmp_path):
    images = [{"id": 1, "file_name": "batch_1/000006.jpg", "height": H, "width": W}]
    p = write_coco(tmp_path, [ann(1, 1, [square(1, 1, 9, 9)])], images=images, write_images=False)
    (tmp_path / "batch_1").mkdir()
    # PNG with alpha saved under a .JPG name, file_name says .jpg
    Image.fromarray(np.full((H, W, 4), 200, np.uint8)).save(tmp_path / "batch_1" / "000006.JPG", format="PNG")
    ds = CocoInstances(tmp_path, p)
    assert ds.image_path(0).name == "000006.JPG"
    assert ds[0]["image"].shape == (H, W, 3)


def test_annotation_area_without_rasterising(good):
    root, path = good
    ds = CocoInstances(root, path)
    assert annotation_area(ds.instance_annotations(0)[0]) == 200.0
    assert annotation_area(ds.instance_annotations(1)[0]) == 150.0  # RLE: exact pixel count


def test_reason_table_is_complete():
    assert all(kind in ("dropped", "repaired", "filtered") for kind, _ in REASONS.values())


# --- presets on generated layouts ------------------------------------------------------------


def test_taco_preset_layouts_and_split(tmp_path):
    images = [{"id": i, "file_name": f"batch_{i % 3}/{i:06d}.jpg", "height": H, "width": W} for i in range(50)]
    data = tmp_path / "TACO" / "data"
    data.mkdir(parents=True)
    write_coco(
        data,
        [ann(i, i, [square(1, 1, 9, 9)]) for i in range(50)],
        images=images,
        write_images=False,
        name="annotations.json",
    )
    for root in (tmp_path / "TACO", data):  # the repository or its data/ folder
        train, test = presets.taco(root, "train"), presets.taco(root, "test")
        assert len(train) == 40 and len(test) == 10
        assert set(train.image_ids).isdisjoint(test.image_ids)
        assert len(presets.taco(root, "all")) == 50
    assert presets.taco(data, "test", seed=1).image_ids != test.image_ids
    split = tmp_path / "test.txt"
    split.write_text("# my test images\nbatch_1/000001.jpg\nbatch_2/000002\n3\n")
    assert presets.taco(data, "test", split_file=split).image_ids == [1, 2, 3]
    split_json = tmp_path / "split.json"
    split_json.write_text(json.dumps({"test": [1, 2]}))
    assert len(presets.taco(data, "train", split_file=split_json)) == 48
    split.write_text("batch_1/999999.jpg\n")
    with pytest.raises(DataError, match="not in the annotation file"):
        presets.taco(data, "test", split_file=split)
    with pytest.raises(DataError, match=r"TACO annotations not found.*Expected layout"):
        presets.taco(tmp_path, "train")
    with pytest.raises(DataError, match="is not a folder"):
        presets.taco(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="split='val'"):
        presets.taco(data, "val")
    with pytest.raises(ConfigError, match="test_fraction"):
        presets.taco(data, "test", test_fraction=1.0)


def test_zerowaste_trashcan_demo_presets(tmp_path):
    img = [{"id": 1, "file_name": "f.PNG", "height": H, "width": W}]
    zw = tmp_path / "zerowaste-f-final" / "splits_final_deblurred" / "val"
    write_coco(zw / "data", [ann(1, 1, [square(1, 1, 9, 9)])], images=img)
    (zw / "data" / "ann.json").rename(zw / "labels.json")
    for root in (tmp_path / "zerowaste-f-final", tmp_path / "zerowaste-f-final" / "splits_final_deblurred"):
        ds = presets.zerowaste(root, "val")
        assert ds.name == "zerowaste/val" and ds[0]["masks"].shape == (1, H, W)
    with pytest.raises(DataError, match=r"ZeroWaste test annotations not found.*labels\.json"):
        presets.zerowaste(tmp_path / "zerowaste-f-final", "test")

    tc = tmp_path / "trashcan" / "material_version"
    cats = [
        {"id": 1, "name": "rov"},
        {"id": 2, "name": "plant"},
        {"id": 3, "name": "animal_fish"},
        {"id": 4, "name": "trash_metal"},
    ]
    anns = [ann(k, 1, [square(1 + k, 1, 9 + k, 9)], cat=k) for k in (1, 2, 3, 4)]
    write_coco(tc / "val", anns, images=[{"id": 1, "file_name": "v.jpg", "height": H, "width": W}], categories=cats)
    (tc / "val" / "ann.json").rename(tc / "instances_val_trashcan.json")
    ds = presets.trashcan(tmp_path / "trashcan", "test", version="material")  # test = val
    assert ds.num_instances == 4 and len(ds.categories) == 4
    trash = presets.trashcan(tmp_path / "trashcan", "val", version="material", trash_only=True)
    assert trash.categories == {4: "trash_metal"} and trash[0]["category_ids"].tolist() == [4]
    assert trash.skips == {"ignored_category": 3}
    with pytest.raises(DataError, match=r"instance_version.*instances_val_trashcan\.json"):
        presets.trashcan(tmp_path / "trashcan", "val")
    with pytest.raises(ConfigError, match="version='materials'"):
        presets.trashcan(tmp_path / "trashcan", "val", version="materials")

    dm = tmp_path / "demo" / "train"
    write_coco(
        dm / "images",
        [ann(1, 1, [square(1, 1, 9, 9)])],
        images=[{"id": 1, "file_name": "000000.jpg", "height": H, "width": W}],
    )
    (dm / "images" / "ann.json").rename(dm / "annotations.json")
    assert len(presets.get_dataset("demo", root=tmp_path / "demo", split="train")) == 1
    with pytest.raises(DataError, match="make_demo_dataset"):
        presets.demo(tmp_path / "demo", "val")
    with pytest.raises(UnknownNameError, match=r"unknown dataset 'tacoo'.*'taco'"):
        presets.get_dataset("tacoo")
    assert set(presets.DATASETS) == {"taco", "zerowaste", "trashcan", "coco", "demo"}


def test_demo_preset_on_generated_data(tmp_path):
    from samadapt.data import make_demo_dataset
    from samadapt.data.prompts import PromptConfig
    from samadapt.data.sam_dataset import SamPromptDataset, check_dataset
    from samadapt.transforms import SamTransform

    root = make_demo_dataset(tmp_path / "demo", n_train=2, n_val=1, image_size=(64, 80), progress=False)
    for split in ("train", "val"):
        ds = presets.demo(root, split, strict=True)  # the generator writes clean COCO
        check_dataset(SamPromptDataset(ds, SamTransform(64), PromptConfig()), n=len(ds))
        assert ds.skips == {}

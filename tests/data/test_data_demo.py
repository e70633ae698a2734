"""Generated demo datasets: valid COCO, exact visible-region masks, determinism, caching, the gap."""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from samadapt.data.synthetic import (
    CATEGORIES,
    DEMO_VERSION,
    MIN_VISIBLE_AREA,
    SCENES,
    make_demo_dataset,
    render_demo_image,
)
from samadapt.errors import ConfigError, DataError

# pycocotools 2.0 + numpy 2 warn on every decode; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# the module whose make_demo_dataset looks render_demo_image up (patched to simulate a crash)
demo_mod = importlib.import_module("samadapt.data.synthetic.dataset")
SMALL = dict(n_train=6, n_val=3, seed=0, progress=False)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    """One small dataset per domain, shared by the read-only tests."""
    base = tmp_path_factory.mktemp("demo")
    return {d: make_demo_dataset(base / d, domain=d, **SMALL) for d in ("generic", "waste")}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("domain", ["generic", "waste"])
def test_layout_and_manifest(datasets, domain):
    root = datasets[domain]
    manifest = json.loads((root / "dataset.json").read_text())
    assert manifest["version"] == DEMO_VERSION
    assert manifest["params"] == {"domain": domain, "n_train": 6, "n_val": 3, "seed": 0, "image_size": [240, 320]}
    for split, n in (("train", 6), ("val", 3)):
        assert sorted(p.name for p in (root / split / "images").iterdir()) == [f"{i:06d}.jpg" for i in range(n)]
        coco = json.loads((root / split / "annotations.json").read_text())
        assert {"images", "annotations", "categories"} <= set(coco)
        assert coco["categories"] == [dict(c) for c in CATEGORIES[domain]]
        assert manifest["counts"][split] == {"images": n, "annotations": len(coco["annotations"])}


@pytest.mark.parametrize("domain", ["generic", "waste"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_valid_coco_with_exact_visible_masks(datasets, domain, split):
    """Every annotation decodes (with pycocotools) to a non-empty mask inside its tight bbox, with
    ``area`` equal to its pixel count; masks of one image never overlap; polygons only for objects
    seen whole; image files match their entries."""
    root = datasets[domain] / split
    coco = COCO(str(root / "annotations.json"))
    kinds = set()
    for img in coco.loadImgs(coco.getImgIds()):
        h, w = img["height"], img["width"]
        with Image.open(root / "images" / img["file_name"]) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (w, h)
        assert 0.9 * 240 - 1 <= h <= 1.1 * 240 + 1 and 0.9 * 320 - 1 <= w <= 1.1 * 320 + 1 and max(h, w) <= 360
        assert img["scene"] in SCENES[domain]
        cover = np.zeros((h, w), np.int32)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
            m = coco.annToMask(ann).astype(bool)
            assert m.shape == (h, w)
            assert m.sum() >= MIN_VISIBLE_AREA
            assert ann["area"] == m.sum()
            assert ann["iscrowd"] == 0
            x, y, bw, bh = ann["bbox"]
            ys, xs = np.nonzero(m)
            assert (x, y, bw, bh) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            cover += m
            if isinstance(ann["segmentation"], list):
                kinds.add("polygon")
                assert len(ann["segmentation"]) == 1 and len(ann["segmentation"][0]) >= 6
                assert not ann["attributes"]["occluded"] and not ann["attributes"]["truncated"]
            else:
                kinds.add("rle")
                assert isinstance(ann["segmentation"]["counts"], str) and ann["segmentation"]["size"] == [h, w]
        assert cover.max() <= 1, "instance masks of one image overlap"
    assert "polygon" in kinds


@pytest.mark.parametrize("domain", ["generic", "waste"])
def test_annotations_equal_rendered_visible_regions(datasets, domain):
    """The stored masks are exactly what the renderer composited as each object's visible part."""
    root = datasets[domain] / "val"
    coco = COCO(str(root / "annotations.json"))
    occluded = 0
    for index, img in enumerate(coco.loadImgs(coco.getImgIds())):
        sample = render_demo_image(domain, seed=0, split="val", index=index)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        assert len(anns) == len(sample.masks)
        for ann, mask, cat in zip(anns, sample.masks, sample.category_ids):
            assert ann["category_id"] == cat
            np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), mask)
            occluded += ann["attributes"]["occluded"]
        decoded = np.asarray(Image.open(root / "images" / img["file_name"]), np.float32)
        assert np.abs(decoded - sample.image).mean() < 8  # the JPEG (q95, busy textures) is this image
    assert occluded > 0, "no occlusion in the sample: the visible-region check proved nothing"


def test_waste_has_its_hard_cases(datasets):
    coco = COCO(str(datasets["waste"] / "train" / "annotations.json"))
    attrs = [a["attributes"] for a in coco.loadAnns(coco.getAnnIds())]
    assert any(a["transparent"] for a in attrs) and any(a["occluded"] for a in attrs)
    assert any(a["truncated"] for a in attrs)
    per_image = [len(coco.getAnnIds(imgIds=i)) for i in coco.getImgIds()]
    assert np.mean(per_image) > 4


def test_deterministic_bytes(tmp_path):
    kw = dict(domain="waste", n_train=2, n_val=1, progress=False)
    a = _files(make_demo_dataset(tmp_path / "a", seed=7, **kw))
    b = _files(make_demo_dataset(tmp_path / "b", seed=7, **kw))
    c = _files(make_demo_dataset(tmp_path / "c", seed=8, **kw))
    assert a == b
    assert a.keys() == c.keys()
    assert a["train/annotations.json"] != c["train/annotations.json"]
    assert a["train/images/000000.jpg"] != c["train/images/000000.jpg"]


def test_cached_then_regenerated(tmp_path):
    root = tmp_path / "ds"
    kw = dict(domain="generic", n_train=2, n_val=1, seed=0, progress=False)
    make_demo_dataset(root, **kw)
    ann = root / "train" / "annotations.json"
    stamp = ann.stat().st_mtime_ns
    assert make_demo_dataset(root, **kw) == root
    assert ann.stat().st_mtime_ns == stamp, "same parameters must not rewrite the dataset"

    make_demo_dataset(root, **{**kw, "n_val": 2})
    manifest = json.loads((root / "dataset.json").read_text())
    assert manifest["params"]["n_val"] == 2 and manifest["counts"]["val"]["images"] == 2
    assert len(list((root / "val" / "images").iterdir())) == 2

    make_demo_dataset(root, **{**kw, "n_val": 2, "domain": "waste"})
    assert json.loads((root / "dataset.json").read_text())["params"]["domain"] == "waste"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"], "temporary directories left behind"


def test_incomplete_cache_is_regenerated(tmp_path):
    root = make_demo_dataset(tmp_path / "ds", domain="generic", n_train=2, n_val=1, progress=False)
    (root / "train" / "images" / "000001.jpg").unlink()
    make_demo_dataset(root, domain="generic", n_train=2, n_val=1, progress=False)
    assert (root / "train" / "images" / "000001.jpg").is_file()


def test_crash_leaves_old_dataset_and_no_partial_one(tmp_path, monkeypatch):
    root = make_demo_dataset(tmp_path / "ds", domain="generic", n_train=2, n_val=1, progress=False)
    before = _files(root)
    real = demo_mod.render_demo_image

    def failing(domain, *, index, **kw):
        if index == 1:
            raise RuntimeError("simulated crash")
        return real(domain, index=index, **kw)

    monkeypatch.setattr(demo_mod, "render_demo_image", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        make_demo_dataset(root, domain="generic", n_train=3, n_val=1, progress=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        make_demo_dataset(tmp_path / "new", domain="generic", n_train=3, n_val=1, progress=False)
    assert _files(root) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_refuses_to_replace_other_data(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a demo dataset"):
        make_demo_dataset(tmp_path / "mine", n_train=1, n_val=0, progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "kw, bad",
    [
        ({"domain": "trash"}, "'trash'"),
        ({"n_train": -1}, "-1"),
        ({"n_val": 1.5}, "1.5"),
        ({"n_train": 0, "n_val": 0}, "nothing to generate"),
        ({"seed": -3}, "-3"),
        ({"image_size": (10, 320)}, "(10, 320)"),
    ],
)
def test_bad_arguments_name_the_value(tmp_path, kw, bad):
    with pytest.raises(ConfigError, match=bad.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        make_demo_dataset(tmp_path / "x", progress=False, **kw)
    assert not (tmp_path / "x").exists()


def test_non_learned_baseline_sees_the_gap(tmp_path):
    """The border-colour baseline of benchmarks/demo_data_baseline.py: easy on generic scenes,
    much worse on waste scenes (the gap comes from the data, before any model is trained)."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "demo_data_baseline.py"
    spec = importlib.util.spec_from_file_location("demo_data_baseline", path)
    baseline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(baseline)
    miou = {}
    for domain in ("generic", "waste"):
        root = make_demo_dataset(tmp_path / domain, domain=domain, n_train=0, n_val=8, seed=1, progress=False)
        miou[domain] = baseline.evaluate(root / "val", thresholds=(40.0,))["miou"][0]
    assert miou["generic"] > 0.75
    assert miou["generic"] - miou["waste"] > 0.15, miou

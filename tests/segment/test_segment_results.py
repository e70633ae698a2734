"""``samadapt segment`` from a detector's boxes: COCO results that pycocotools reads, their mask AP,
and what happens on bad input (docs/segment.md)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from samadapt import cli
from samadapt.errors import ConfigError, DataError
from samadapt.segment import segment
from samadapt.segment.detections import clip_boxes, list_images, read_detections


def _val(root: Path) -> tuple[Path, Path]:
    return root / "val" / "images", root / "val" / "annotations.json"


def _gt_detections(
    annotation_file: Path, *, jitter: float = 0.0, seed: int = 0, by: str = "image_id", with_category: bool = True
) -> list[dict]:
    """One detection per ground-truth instance: its box (jittered by ``jitter`` x its side), score 1."""
    gt = json.loads(annotation_file.read_text())
    names = {im["id"]: im["file_name"] for im in gt["images"]}
    rng = np.random.default_rng(seed)
    dets = []
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        if jitter:
            x, y = x + rng.normal(0, jitter * w), y + rng.normal(0, jitter * h)
            w, h = w * np.exp(rng.normal(0, jitter)), h * np.exp(rng.normal(0, jitter))
        d = {"bbox": [float(x), float(y), float(w), float(h)], "score": float(rng.uniform(0.5, 1.0))}
        d.update({"image_id": a["image_id"]} if by == "image_id" else {"file_name": names[a["image_id"]]})
        if with_category:
            d["category_id"] = a["category_id"]
        dets.append(d)
    return dets


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["segment", *map(str, argv), "--no-progress"])
    return code, out.getvalue(), err.getvalue()


def _independent_ap(annotation_file: Path, res_file: Path, *, agnostic: bool = False) -> float:
    """pycocotools on the files alone: COCO(ann).loadRes(RES), COCOeval segm."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotation_file))
        dt = gt.loadRes(str(res_file))
        ev = COCOeval(gt, dt, iouType="segm")
        ev.params.useCats = 0 if agnostic else 1
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def test_results_load_with_loadres_and_their_ap_is_cocoevals(tmp_path, demo_data_root):
    images, ann = _val(demo_data_root)
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps(_gt_detections(ann)))
    res = tmp_path / "res.json"
    code, out, err = _run("--images", images, "--detections", dets, "--annotation-file", ann, "--out", res)
    assert code == 0, err
    results = json.loads(res.read_text())
    n_gt = len(json.loads(ann.read_text())["annotations"])
    assert len(results) == n_gt
    for r in results:
        assert set(r) == {"image_id", "category_id", "segmentation", "bbox", "score"}
        assert isinstance(r["segmentation"]["counts"], str)  # compressed RLE, JSON-ready
    # the bbox is the mask's box
    from pycocotools import mask as mask_utils

    r = results[0]
    np.testing.assert_allclose(r["bbox"], mask_utils.toBbox(r["segmentation"]), atol=0.01)
    metrics = json.loads(res.with_name("res.metrics.json").read_text())["metrics"]
    ap = _independent_ap(ann, res)
    assert metrics["class_aware"]["AP"] == pytest.approx(ap, abs=1e-12)
    assert metrics["class_agnostic"]["AP"] == pytest.approx(_independent_ap(ann, res, agnostic=True), abs=1e-12)
    assert 0.05 < ap < 1.0  # the pretrained mini finds the demo objects from their boxes, not perfectly
    assert f"mask AP (class-aware) {100 * ap:.2f}" in out


def test_jittered_ground_truth_boxes_give_nearly_the_ground_truth_box_ap(tmp_path, demo_data_root):
    """The SAM paper's Table 5 protocol: a good detector's boxes give about the AP of exact boxes; boxes
    that miss their objects do not (so the comparison can fail)."""
    images, ann = _val(demo_data_root)
    aps = {}
    for name, kw in {"gt": {}, "jitter": {"jitter": 0.05}, "wrong": {"jitter": 0.6}}.items():
        dets, res = tmp_path / f"{name}.json", tmp_path / f"res_{name}.json"
        dets.write_text(json.dumps(_gt_detections(ann, by="file_name", **kw)))
        assert _run("--images", images, "--detections", dets, "--annotation-file", ann, "--out", res)[0] == 0
        aps[name] = _independent_ap(ann, res)
    assert abs(aps["jitter"] - aps["gt"]) < 0.08, aps
    assert aps["wrong"] < aps["gt"] - 0.1, aps


def test_missing_images_are_counted_and_listed_and_the_rest_segmented(tmp_path, demo_data_root):
    images, ann = _val(demo_data_root)
    entries = _gt_detections(ann, by="file_name")
    entries += [
        {"file_name": "not_there.jpg", "bbox": [1, 1, 5, 5], "score": 0.9},
        {"file_name": "not_there.jpg", "bbox": [2, 2, 5, 5], "score": 0.8},
        {"file_name": "gone/x.png", "bbox": [2, 2, 5, 5], "score": 0.8},
    ]
    dets, res = tmp_path / "dets.json", tmp_path / "res.json"
    dets.write_text(json.dumps(entries))
    code, out, _ = _run("--images", images, "--detections", dets, "--out", res)
    assert code == 0
    assert "3 detection(s) for 2 image(s) that are not there, left out: ['not_there.jpg', 'gone/x.png']" in out
    results = json.loads(res.read_text())
    assert len(results) == len(entries) - 3
    assert {r["file_name"] for r in results} <= {p.name for p in images.iterdir()}  # no annotation file: names kept


def test_boxes_outside_the_image_are_clipped():
    boxes = np.array([[-10, -5, 50, 40], [10, 10, 20, 20], [300, 300, 400, 400], [90, 5, 130, 60]], np.float32)
    clipped, inside, changed = clip_boxes(boxes, (100, 120))
    np.testing.assert_array_equal(clipped[0], [0, 0, 50, 40])
    np.testing.assert_array_equal(clipped[3], [90, 5, 120, 60])
    assert inside.tolist() == [True, True, False, True] and changed == 2


def test_clipped_boxes_end_to_end(tmp_path, demo_data_root, pretrained_mini):
    from pycocotools import mask as mask_utils

    from samadapt.data import read_image

    images, ann = _val(demo_data_root)
    first = json.loads(ann.read_text())["images"][0]
    w = first["width"]
    entries = [
        {"image_id": first["id"], "bbox": [-30, -30, 80, 80], "score": 1.0},  # corner: clipped
        {"image_id": first["id"], "bbox": [w + 10, 5, 20, 20], "score": 1.0},
    ]  # right of the image: no mask
    dets, res = tmp_path / "dets.json", tmp_path / "res.json"
    dets.write_text(json.dumps(entries))
    code, out, _ = _run("--images", images, "--detections", dets, "--annotation-file", ann, "--out", res)
    assert code == 0 and "1 box(es) clipped to their image, 1 outside it (no mask)" in out
    (r,) = json.loads(res.read_text())
    # the mask is the one of the clipped box [0, 0, 50, 50]
    (mask,), _ = pretrained_mini.predict(read_image(images / first["file_name"]), boxes=np.array([[0, 0, 50, 50]]))
    np.testing.assert_array_equal(mask_utils.decode(r["segmentation"]).astype(bool), mask)


def test_empty_detections_give_empty_results_and_exit_0(tmp_path, demo_data_root):
    images, ann = _val(demo_data_root)
    dets, res = tmp_path / "dets.json", tmp_path / "res.json"
    dets.write_text("[]")
    code, out, err = _run("--images", images, "--detections", dets, "--annotation-file", ann, "--out", res)
    assert code == 0, err
    assert json.loads(res.read_text()) == []
    assert "0 masks on 0 of 3 images" in out
    assert json.loads(res.with_name("res.metrics.json").read_text())["metrics"]["class_agnostic"]["AP"] == 0.0


@pytest.mark.parametrize(
    "entry, problem",
    [
        (
            {"image_id": 1, "bbox": [1, 2, 3], "score": 0.5},
            "bbox [1, 2, 3] is not 4 finite numbers [x, y, width, height]",
        ),
        ({"image_id": 1, "bbox": [1, 2, -3, 4]}, "bbox [1, 2, -3, 4] has a negative width or height"),
        ({"bbox": [1, 2, 3, 4]}, "has neither image_id nor file_name"),
        ({"image_id": 1, "bbox": [1, 2, 3, 4], "score": "high"}, "score 'high' is not a finite number"),
        ({"image_id": 1, "bbox": [1, 2, 3, 4], "category_id": 1.5}, "category_id 1.5 is not an integer"),
        ("box", "is a str, not an object"),
    ],
)
def test_a_malformed_detection_is_an_error_naming_the_entry(tmp_path, demo_data_root, entry, problem):
    images, ann = _val(demo_data_root)
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": 1, "bbox": [0, 0, 5, 5], "score": 1.0}, entry]))
    code, _, err = _run(
        "--images", images, "--detections", dets, "--annotation-file", ann, "--out", tmp_path / "r.json"
    )
    assert code == 2
    assert f"detections file {str(dets)!r}: entry 1 ({json.dumps(entry)}) {problem}; each entry needs" in err
    assert not (tmp_path / "r.json").exists()


def test_detections_file_problems(tmp_path, demo_data_root):
    images, ann = _val(demo_data_root)
    index = list_images(images, ann)
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(DataError, match="is not valid JSON"):
        read_detections(bad, index)
    with pytest.raises(DataError, match="looks like a COCO ground-truth file"):
        read_detections(ann, index)
    with pytest.raises(DataError, match="no --annotation-file maps image ids to files"):
        read_detections([{"image_id": 1, "bbox": [0, 0, 1, 1]}], list_images(images))
    dets = read_detections([{"image_id": 1, "bbox": [0, 0, 4, 2]}, {"image_id": 99, "bbox": [0, 0, 1, 1]}], index)
    assert dets.boxes[1].tolist() == [[0, 0, 4, 2]] and dets.scores[1].tolist() == [1.0]  # XYWH -> XYXY, score 1
    assert dets.category_ids[1] == [None] and dets.missing_images == ["image_id 99"]


def test_labels_from_an_adapter_without_a_class_head_is_an_error(tmp_path, demo_data_root, pretrained_mini):
    import samadapt

    images, ann = _val(demo_data_root)
    adapter = samadapt.save_adapter(pretrained_mini, tmp_path / "plain.safetensors")
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps(_gt_detections(ann, with_category=False)))
    code, _, err = _run(
        "--adapter",
        adapter,
        "--images",
        images,
        "--detections",
        dets,
        "--out",
        tmp_path / "r.json",
        "--annotation-file",
        ann,
        "--classify",
    )
    assert code == 2
    assert "labels were asked for, but this model has no class head: train the adapter with --classify" in err
    image = np.zeros((40, 50, 3), np.uint8)
    with pytest.raises(ConfigError, match="train the adapter with --classify"):
        segment(pretrained_mini, image, classify=True)


def test_segment_from_python_matches_predict(pretrained_mini, demo_data_root):
    """``segment(model, image, boxes=...)`` gives ``predict``'s masks, as COCO records with the detector's scores."""
    from pycocotools import mask as mask_utils

    from samadapt.data import demo

    sample = demo(demo_data_root, "val")[0]
    boxes = sample["boxes"][:3]
    records = segment(pretrained_mini, sample["image"], boxes=boxes, scores=[0.9, 0.8, 0.7], category_ids=[1, None, 3])
    masks, ious = pretrained_mini.predict(sample["image"], boxes=boxes)
    assert [r["score"] for r in records] == pytest.approx([0.9, 0.8, 0.7])
    assert [r["category_id"] for r in records] == [1, None, 3]
    for r, m, iou in zip(records, masks, ious):
        np.testing.assert_array_equal(mask_utils.decode(r["segmentation"]).astype(bool), m)
        assert r["predicted_iou"] == pytest.approx(float(iou), abs=1e-6)
        assert r["area"] == int(m.sum())


def test_masks_without_a_class_never_claim_one_and_are_scored_with_usecats_0(tmp_path, demo_data_root):
    """Class-less masks are written with category_id -1, which no dataset uses (TrashCan's 1 is ``rov``,
    TACO's 0 is "Aluminium foil"); the class-agnostic AP is COCOeval's useCats=0 AP, which equals the AP of
    an independent scoring with every object and every result merged into one category."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from samadapt.segment.results import AGNOSTIC_CATEGORY, coco_results, evaluate_results

    images, ann = _val(demo_data_root)
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps(_gt_detections(ann, jitter=0.1, with_category=False)))
    res = tmp_path / "res.json"
    code, _, err = _run("--images", images, "--detections", dets, "--annotation-file", ann, "--out", res)
    assert code == 0, err
    results = json.loads(res.read_text())
    gt = json.loads(ann.read_text())
    real_ids = {c["id"] for c in gt["categories"]}
    assert AGNOSTIC_CATEGORY == -1 and {r["category_id"] for r in results} == {-1} and -1 not in real_ids
    assert (
        coco_results(7, [{"segmentation": results[0]["segmentation"], "bbox": [0, 0, 1, 1], "score": 0.5}])[0][
            "category_id"
        ]
        == -1
    )  # a record without category_id
    taco = Path(__file__).resolve().parents[2].parent / "shared" / "realdata" / "taco" / "annotations.json"
    if taco.is_file():  # TACO has a real category 0: -1 is safe there too
        taco_ids = {c["id"] for c in json.loads(taco.read_text())["categories"]}
        assert 0 in taco_ids and AGNOSTIC_CATEGORY not in taco_ids

    agnostic = evaluate_results(gt, results, class_agnostic=True)
    merged = {**gt, "categories": [{"id": 1, "name": "object"}]}
    merged["annotations"] = [{**a, "category_id": 1} for a in gt["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = merged
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes([{**r, "category_id": 1} for r in results]), iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert agnostic["AP"] == pytest.approx(float(ev.stats[0]), abs=1e-12) and agnostic["AP"] > 0.05
    assert agnostic["AR100"] == pytest.approx(float(ev.stats[8]), abs=1e-12)
    # class-aware scoring: masks that name no category match no object
    assert evaluate_results(gt, results)["AP"] == 0.0
    # a ground truth that uses -1 itself is refused rather than scored wrongly
    with pytest.raises(DataError, match="a category with id -1"):
        evaluate_results({**gt, "categories": [*gt["categories"], {"id": -1, "name": "x"}]}, results)

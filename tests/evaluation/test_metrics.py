"""The paper's per-instance metrics, their summaries, and COCO mask AP, on hand-computed cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from samadapt.errors import ConfigError
from samadapt.evaluation import metrics as M
from samadapt.evaluation.evaluate import EvalRecords
from samadapt.evaluation.metrics import coco_mask_ap, instance_metrics, summarize


def block(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def one(pred, gt):
    out = instance_metrics(np.asarray(pred)[None], np.asarray(gt)[None])
    return {k: float(out[k][0]) for k in M.METRIC_NAMES}


# ---------------------------------------------------------------------------- per instance
def test_perfect_prediction():
    g = block(8, 8, 2, 6, 2, 6)
    assert one(g, g) == {"iou": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0}


def test_half_overlap():
    # GT: 4x4 block; prediction shifted by 2 columns: |P∩G| = 8, |P∪G| = 24
    gt = block(8, 10, 2, 6, 0, 4)
    pred = block(8, 10, 2, 6, 2, 6)
    r = one(pred, gt)
    assert r["iou"] == pytest.approx(1 / 3)
    assert r["precision"] == pytest.approx(0.5)
    assert r["recall"] == pytest.approx(0.5)
    assert r["f1"] == pytest.approx(0.5)


def test_prediction_inside_gt():
    gt = block(8, 8, 0, 4, 0, 4)  # 16 px
    pred = block(8, 8, 0, 2, 0, 4)  # 8 px inside
    r = one(pred, gt)
    assert r == pytest.approx({"iou": 0.5, "precision": 1.0, "recall": 0.5, "f1": 2 / 3})


def test_empty_prediction_scores_zero():
    r = one(np.zeros((5, 5), bool), block(5, 5, 1, 3, 1, 3))
    assert r == {"iou": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_empty_gt_cases():
    empty = np.zeros((5, 5), bool)
    assert one(empty, empty) == {"iou": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert one(block(5, 5, 0, 2, 0, 2), empty) == {"iou": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_disjoint():
    assert one(block(6, 6, 0, 2, 0, 2), block(6, 6, 3, 5, 3, 5))["f1"] == 0.0


def test_torch_inputs_and_areas():
    gt = torch.from_numpy(np.stack([block(8, 10, 2, 6, 0, 4), block(8, 10, 0, 1, 0, 1)]))
    pred = torch.from_numpy(np.stack([block(8, 10, 2, 6, 2, 6), np.zeros((8, 10), bool)]))
    out = instance_metrics(pred, gt)
    assert out["intersection"].tolist() == [8, 0]
    assert out["pred_area"].tolist() == [16, 0]
    assert out["gt_area"].tolist() == [16, 1]
    assert out["iou"].tolist() == pytest.approx([1 / 3, 0.0])


def test_chunking_gives_the_same_numbers(monkeypatch):
    rng = np.random.default_rng(0)
    pred = rng.random((7, 20, 30)) > 0.5
    gt = rng.random((7, 20, 30)) > 0.5
    whole = instance_metrics(pred, gt)
    monkeypatch.setattr(M, "_CHUNK_PIXELS", 2 * 20 * 30)  # two masks per chunk
    chunked = instance_metrics(pred, gt)
    for k in whole:
        np.testing.assert_array_equal(whole[k], chunked[k])
    inter = (pred & gt).sum(axis=(1, 2))
    np.testing.assert_allclose(whole["iou"], inter / (pred | gt).sum(axis=(1, 2)))


def test_shape_mismatch():
    with pytest.raises(ConfigError, match="same shape"):
        instance_metrics(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 5), bool))


# ---------------------------------------------------------------------------- averaging and splits
def test_mean_is_per_instance_not_pixel_pooled():
    # A: 10x10 GT predicted perfectly (IoU 1); B: 2x2 GT, empty prediction (IoU 0)
    gt = np.stack([block(20, 20, 0, 10, 0, 10), block(20, 20, 15, 17, 15, 17)])
    pred = np.stack([gt[0], np.zeros((20, 20), bool)])
    s = _summary(_eval_records(pred, gt, [1, 1]), {1: "bottle"})
    assert s["mean_iou"] == pytest.approx(0.5)  # pixel-pooled would be 100 / 104
    assert s["mean_precision"] == pytest.approx(0.5)
    assert s["mean_f1"] == pytest.approx(0.5)
    assert s["mean_recall"] == pytest.approx(0.5)
    assert s["num_instances"] == 2
    assert s["mean_iou"] != pytest.approx(100 / 104)


def test_per_category_and_per_size():
    # sizes: 31x31 = 961 small; 32x32 = 1024 medium (COCO boundary); 96x96 = 9216 large
    iou = np.array([1.0, 0.5, 0.0, 0.25])
    prec = np.array([1.0, 0.5, 0.0, 1.0])
    rec = np.array([1.0, 1.0, 0.0, 0.25])
    f1 = np.array([1.0, 2 / 3, 0.0, 0.4])
    cats = np.array([1, 1, 2, 7])
    areas = np.array([961, 1024, 9216, 5000])
    s = summarize(iou, prec, rec, f1, cats, areas, {1: "bottle", 2: "can", 3: "unused"})
    assert s["mean_iou"] == pytest.approx(1.75 / 4)
    assert set(s["per_category"]) == {"bottle", "can", "7"}  # unknown id shown by number, absent ones left out
    assert s["per_category"]["bottle"]["mean_iou"] == pytest.approx(0.75)
    assert s["per_category"]["bottle"]["num_instances"] == 2
    assert s["per_category"]["can"]["mean_precision"] == 0.0
    assert s["per_size"]["small"]["num_instances"] == 1 and s["per_size"]["small"]["mean_iou"] == 1.0
    assert s["per_size"]["medium"]["num_instances"] == 2
    assert s["per_size"]["medium"]["mean_iou"] == pytest.approx(0.375)
    assert s["per_size"]["large"]["num_instances"] == 1 and s["per_size"]["large"]["mean_iou"] == 0.0


def test_duplicate_category_names_stay_apart():
    s = summarize([1, 0], [1, 0], [1, 0], [1, 0], [1, 2], [10, 10], {1: "plastic", 2: "plastic"})
    assert set(s["per_category"]) == {"plastic (1)", "plastic (2)"}


def test_empty_summary_is_nan():
    s = summarize([], [], [], [], [], [], {})
    assert s["num_instances"] == 0 and math.isnan(s["mean_iou"])
    assert s["per_size"]["small"]["num_instances"] == 0


def _eval_records(pred, gt, cats, image_id=0):
    """The per-instance store of these instances (as evaluate_records fills it)."""
    m = instance_metrics(pred, gt)
    return EvalRecords(
        iou=m["iou"],
        precision=m["precision"],
        recall=m["recall"],
        f1=m["f1"],
        category_ids=np.asarray(cats, dtype=np.int64),
        areas=m["gt_area"].astype(np.float64),
        image_ids=np.full(len(cats), image_id, dtype=np.int64),
        images=[{"id": image_id, "num_instances": len(cats)}],
    )


def _summary(rec, categories):
    return summarize(rec.iou, rec.precision, rec.recall, rec.f1, rec.category_ids, rec.areas, categories)


def test_records_areas_and_merge():
    gt = np.stack([block(128, 128, 0, 100, 0, 100), block(128, 128, 0, 4, 120, 124)])
    pred = np.stack([block(128, 128, 0, 100, 0, 50), block(128, 128, 0, 4, 120, 124)])
    a, b = _eval_records(pred[:1], gt[:1], [1], 1), _eval_records(pred[1:], gt[1:], [1], 2)
    whole = _eval_records(pred, gt, [1, 1])
    merged = EvalRecords.merge([a, b])
    assert json.dumps(_summary(merged, {1: "a"})) == json.dumps(_summary(whole, {1: "a"}))  # (nan: empty medium)
    s = _summary(whole, {1: "a"})
    assert s["per_size"]["large"]["mean_iou"] == pytest.approx(0.5)  # 10000 px GT
    assert s["per_size"]["small"]["mean_iou"] == 1.0  # 16 px GT
    assert merged.num_instances == 2 and merged.image_ids.tolist() == [1, 2]
    assert merged.areas.tolist() == [10000, 16] and merged.category_ids.dtype == np.int64
    with pytest.raises(ConfigError, match="differ in length"):
        summarize(whole.iou, whole.precision, whole.recall, whole.f1, [1], whole.areas)


# ---------------------------------------------------------------------------- COCO mask AP
def _records():
    """Two images, one GT each: A (10x10 = 100 px) and B (10x10), category 1; all small."""
    ga = block(32, 32, 2, 12, 2, 12)
    gb = block(32, 32, 5, 15, 5, 15)
    recs = [
        {"image_id": 1, "height": 32, "width": 32, "masks": ga[None], "category_ids": [1]},
        {"image_id": 2, "height": 32, "width": 32, "masks": gb[None], "category_ids": [1]},
    ]
    return recs, ga, gb


def test_coco_ap_perfect_predictions():
    recs, ga, gb = _records()
    ap = coco_mask_ap(recs, {1: [(ga, 0.9, 1)], 2: [(gb, 0.8, 1)]}, {1: "bottle"})
    assert ap["AP"] == pytest.approx(1.0) and ap["AP50"] == pytest.approx(1.0) and ap["AP75"] == pytest.approx(1.0)
    assert ap["APs"] == pytest.approx(1.0)
    assert math.isnan(ap["APm"]) and math.isnan(ap["APl"])  # no medium or large GT: COCOeval's -1


def test_coco_ap_with_one_partial_mask_is_known():
    # B's prediction is an 8x8 block inside its 10x10 GT: IoU 64/100 = 0.64, a match at IoU thresholds
    # 0.50, 0.55, 0.60 and a miss at 0.65..0.95. Where it misses, the ranked list is A (TP, score 0.9),
    # B (FP, 0.8): precision 1 up to recall 0.5 -> 51 of COCO's 101 recall points -> AP 51/101.
    recs, ga, gb = _records()
    pb = block(32, 32, 5, 13, 5, 13)
    ap = coco_mask_ap(recs, {1: [(ga, 0.9, 1)], 2: [(pb, 0.8, 1)]})
    assert ap["AP50"] == pytest.approx(1.0)
    assert ap["AP75"] == pytest.approx(51 / 101)
    assert ap["AP"] == pytest.approx((3 * 1.0 + 7 * 51 / 101) / 10)
    # the scores rank the detections: with the partial one ranked first, the precision is 0.5 where it misses
    ap2 = coco_mask_ap(recs, {1: [(ga, 0.5, 1)], 2: [(pb, 0.8, 1)]})
    assert ap2["AP75"] == pytest.approx(0.5 * 51 / 101)


def test_coco_ap_accepts_coco_dicts_and_wrong_category_misses():
    recs, ga, gb = _records()
    gt = M.build_coco_gt(recs, {1: "bottle", 2: "can"})
    assert [a["area"] for a in gt["annotations"]] == [100.0, 100.0]
    assert gt["annotations"][0]["bbox"] == [2.0, 2.0, 10.0, 10.0]
    dets = [
        {"image_id": 1, "category_id": 1, "segmentation": M.encode_mask(ga), "score": 0.9},
        {"image_id": 2, "category_id": 2, "segmentation": M.encode_mask(gb), "score": 0.8},
    ]
    ap = coco_mask_ap(gt, dets)
    # category 1: one of its two GTs found (recall 0.5, precision 1) -> 51/101; category 2 has no GT -> ignored
    assert ap["AP"] == pytest.approx(51 / 101)


def test_coco_ap_without_predictions_or_gt():
    recs, _, _ = _records()
    ap = coco_mask_ap(recs, [])
    assert ap["AP"] == 0.0 and math.isnan(ap["APm"])
    assert all(math.isnan(v) for v in coco_mask_ap([], []).values())


def test_coco_ap_is_silent(capsys):
    recs, ga, gb = _records()
    coco_mask_ap(recs, {1: [(ga, 0.9, 1)], 2: [(gb, 0.8, 1)]})
    assert capsys.readouterr().out == ""

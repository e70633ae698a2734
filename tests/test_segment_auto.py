"""Automatic masks on an adapted SAM: upstream's procedure, thresholds calibrated per model."""

from __future__ import annotations

import contextlib
import io
import json
import logging

import numpy as np
import pytest

import samadapt
from samadapt import cli
from samadapt.data import demo
from samadapt.errors import ConfigError
from samadapt.segment.automatic import (
    SAM_DEFAULTS,
    AutoConfig,
    encode_images,
    propose_masks,
)
from samadapt.segment.calibration import Calibration, calibrate, isotonic_knots
from samadapt.segment.results import coco_results, evaluate_results


def test_automatic_masks_equal_upstreams_generator(pretrained_mini, demo_data_root):
    from pycocotools import mask as mask_utils
    from segment_anything import SamAutomaticMaskGenerator

    image = demo(demo_data_root, "val").load_image(0)
    cfg = AutoConfig(points_per_side=8, pred_iou_thresh=0.3, stability_score_thresh=0.5, max_masks=None)
    ours = propose_masks(pretrained_mini, encode_images(pretrained_mini, [image])[0], image.shape[:2], cfg)
    upstream = SamAutomaticMaskGenerator(
        pretrained_mini.sam, points_per_side=8, pred_iou_thresh=0.3, stability_score_thresh=0.5, output_mode="coco_rle"
    ).generate(image)
    assert len(ours) == len(upstream) > 5
    ious = np.asarray(mask_utils.iou(ours.rles, [u["segmentation"] for u in upstream], [0] * len(upstream)))
    assert ious.diagonal().min() > 0.99  # same masks in the same order (batched decoding: float rounding only)
    np.testing.assert_allclose(ours.predicted_iou, [u["predicted_iou"] for u in upstream], atol=1e-4)
    np.testing.assert_allclose(ours.stability_score, [u["stability_score"] for u in upstream], atol=1e-3)
    np.testing.assert_allclose(ours.points, [u["point_coords"][0] for u in upstream], atol=1e-4)


def test_one_decoding_pass_serves_every_threshold(pretrained_mini, demo_data_root):
    from samadapt.segment.automatic import filter_candidates

    image = demo(demo_data_root, "val").load_image(1)
    emb = encode_images(pretrained_mini, [image])[0]
    base = AutoConfig(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    cands = propose_masks(pretrained_mini, emb, image.shape[:2], base, keep_all=True)
    for cfg in (base, base.replace(pred_iou_thresh=0.5, stability_score_thresh=0.7), base.replace(max_masks=3)):
        direct = propose_masks(pretrained_mini, emb, image.shape[:2], cfg)
        reused = filter_candidates(cands, cfg)
        assert reused.rles == direct.rles and len(direct) > 0
        np.testing.assert_array_equal(reused.predicted_iou, direct.predicted_iou)
    assert len(filter_candidates(cands, base)) == len(propose_masks(pretrained_mini, emb, image.shape[:2], base))


def test_at_sams_fixed_thresholds_mini_keeps_no_mask(pretrained_mini, demo_data_root):
    """Why SamAutomaticMaskGenerator(model.sam) returns nothing: mini's predicted IoU stays below 0.88."""
    image = demo(demo_data_root, "val").load_image(0)
    emb = encode_images(pretrained_mini, [image])[0]
    all_masks = propose_masks(
        pretrained_mini,
        emb,
        image.shape[:2],
        SAM_DEFAULTS.replace(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0),
        keep_all=True,
    )
    assert float(all_masks["iou_preds"].max()) < SAM_DEFAULTS.pred_iou_thresh
    assert len(propose_masks(pretrained_mini, emb, image.shape[:2], SAM_DEFAULTS.replace(points_per_side=8))) == 0


def _auto_scores(model, dataset, calibration, indices) -> dict:
    results = []
    for i in indices:
        recs = model.segment(dataset.load_image(i), calibration=calibration)
        results += coco_results(dataset.image_info(i)["id"], recs)
    ids = [dataset.image_info(i)["id"] for i in indices]
    return {"masks": len(results), **evaluate_results(dataset.coco, results, image_ids=ids, class_agnostic=True)}


def test_automatic_mode_finds_the_objects_zero_shot_and_adapted(pretrained_mini, classify_adapter, demo_data_root):
    val = demo(demo_data_root, "val")
    adapted = samadapt.load(classify_adapter)
    for model in (pretrained_mini, adapted):
        cal = calibrate(model, val, max_images=1, points_per_side=8, progress=False)  # image 0; scored: 1 and 2
        assert 0 < cal.pred_iou_thresh < SAM_DEFAULTS.pred_iou_thresh and cal.f1 > cal.sam_defaults_f1
        scores = _auto_scores(model, val, cal, [1, 2])
        assert scores["masks"] > 0 and scores["AR100"] > 0.1, scores  # found objects at IoU >= 0.5
        assert scores["AP"] > 0.0


def test_calibration_scores_are_on_the_real_iou_scale(pretrained_mini, demo_data_root):
    cal = calibrate(pretrained_mini, demo(demo_data_root, "val"), max_images=1, points_per_side=8, progress=False)
    knots = np.asarray(cal.real_iou_knots)
    assert np.all(np.diff(knots) >= 0) and np.all(np.diff(cal.iou_knots) > 0)
    assert cal.quality([0.0])[0] == pytest.approx(knots[0]) and cal.quality([1.0])[0] == pytest.approx(knots[-1])
    assert Calibration.from_dict(json.loads(json.dumps(cal.to_dict()))) == cal
    with pytest.raises(ConfigError, match="not a samadapt automatic-mask calibration"):
        Calibration.from_dict({"threshold": 1})


def test_isotonic_knots_pool_violators():
    x = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    y = np.array([0.0, 0.5, 0.1, 0.6, 0.7, 0.65])
    kx, ky = isotonic_knots(x, y, bins=6)
    assert ky == pytest.approx((0.0, 0.3, 0.6, 0.675))  # (0.5, 0.1) and (0.7, 0.65) pooled
    assert kx == pytest.approx((0.1, 0.25, 0.4, 0.55))


def test_calibration_is_saved_in_the_adapter_and_used_next_time(tmp_path, classify_adapter, demo_data_root):
    import shutil

    adapter = shutil.copy(classify_adapter, tmp_path / "a.safetensors")
    images, ann = demo_data_root / "val" / "images", demo_data_root / "val" / "annotations.json"
    common = [
        "segment",
        "--adapter",
        str(adapter),
        "--images",
        str(images),
        "--auto",
        "--annotation-file",
        str(ann),
        "--points-per-side",
        "4",
        "--no-progress",
    ]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert (
            cli.main(
                [
                    *common,
                    "--out",
                    str(tmp_path / "r1.json"),
                    "--calibrate-annotation-file",
                    str(ann),
                    "--calibrate-images",
                    str(images),
                    "--calibrate-max-images",
                    "1",
                    "--save-calibration",
                ]
            )
            == 0
        )
    assert f"stored the calibration in {adapter}" in out.getvalue()
    model = samadapt.load(adapter)
    assert model.auto_calibration is not None and model.auto_calibration.images == 1
    assert model.sam.class_head.category_ids == [1, 2, 3, 4, 5]  # the rest of the adapter is intact
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main([*common, "--out", str(tmp_path / "r2.json")]) == 0
    assert "calibration (1 images of annotations.json" in out.getvalue() and "no calibration" not in out.getvalue()
    assert json.loads((tmp_path / "r1.json").read_text()) == json.loads((tmp_path / "r2.json").read_text())
    metrics = json.loads((tmp_path / "r2.metrics.json").read_text())
    assert Calibration.from_dict(metrics["calibration"]) == model.auto_calibration
    assert metrics["report"]["auto"]["source"] == "calibrated on 1 images of annotations.json"


def test_uncalibrated_automatic_masks_use_sams_thresholds_and_warn(pretrained_mini, caplog):
    from samadapt.segment.api import resolve_auto_config

    with caplog.at_level(logging.WARNING, logger="samadapt.segment"):
        assert resolve_auto_config(pretrained_mini) == SAM_DEFAULTS
    assert "this model is not calibrated, and a small or fine-tuned model may keep no mask" in caplog.text
    cal = Calibration(0.5, 0.7, 8, 0.5, (0.0, 1.0), (0.0, 1.0), 1, 10, 2, 0.5, 0.5, 0.5, 2.0, 0.0, 0.0, "x")
    pretrained_mini.auto_calibration = cal
    assert resolve_auto_config(pretrained_mini) == cal.auto_config()
    assert resolve_auto_config(pretrained_mini, AutoConfig(points_per_side=2)).points_per_side == 2


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"points_per_side": 0}, "`points_per_side` should be a positive integer, got 0"),
        ({"pred_iou_thresh": 1.5}, "`pred_iou_thresh` should be a number in [0, 1], got 1.5"),
        ({"max_masks": 0}, "`max_masks` should be a positive integer or None, got 0"),
    ],
)
def test_auto_config_is_checked(kw, message):
    with pytest.raises(ConfigError) as e:
        AutoConfig(**kw)
    assert str(e.value) == message


def test_auto_needs_no_detections_and_save_calibration_needs_an_adapter(tmp_path, demo_data_root, capsys):
    images, ann = demo_data_root / "val" / "images", demo_data_root / "val" / "annotations.json"
    code = cli.main(
        [
            "segment",
            "--images",
            str(images),
            "--auto",
            "--out",
            str(tmp_path / "r.json"),
            "--calibrate-annotation-file",
            str(ann),
            "--calibrate-images",
            str(images),
            "--save-calibration",
        ]
    )
    assert code == 2
    assert (
        "--save-calibration stores a new calibration in the adapter file: it needs --adapter" in capsys.readouterr().err
    )
    assert cli.main(["segment", "--images", str(images), "--auto", "--detections", "d.json", "--out", "r.json"]) == 2
    assert "argument --detections: not allowed with argument --auto" in capsys.readouterr().err

"""The click-by-click protocol (samadapt.evaluation.clicks) and extreme-point prompts.

Click positions are checked on hand-made masks whose distance-transform maxima are known; the
protocol's loop is checked on a stand-in model whose masks follow the clicks it is given (so the
clicks it receives, and the IoU after each, are known exactly); the real ``mini`` runs it once.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import samadapt
from samadapt.adapted import SamOutput
from samadapt.data.prompts import boxes_from_masks, extreme_points
from samadapt.errors import ConfigError
from samadapt.evaluation.clicks import (
    ClickRecords,
    click_summary,
    evaluate_clicks,
    first_click,
    next_click,
    number_of_clicks,
)
from samadapt.evaluation.report import format_click_table
from samadapt.transforms import SamTransform


def _rect(shape, r0, r1, c0, c1):
    """(H, W) bool with rows r0..r1 and columns c0..c1 (inclusive) set."""
    m = np.zeros(shape, dtype=bool)
    m[r0 : r1 + 1, c0 : c1 + 1] = True
    return m


# ============================================================================ where the clicks go
def test_first_click_is_the_distance_transform_maximum():
    # a 5x5 square: its centre is 3 px from the outside, every other pixel less
    assert first_click(_rect((12, 14), 2, 6, 3, 7)) == (4, 5)
    # a 9x9 square with a long thin arm: the click is the square's centre (5 px from the outside),
    # not the shape's centroid (pulled into the arm)
    m = _rect((20, 20), 1, 9, 1, 9) | _rect((20, 20), 4, 5, 10, 18)
    assert first_click(m) == (5, 5)
    assert first_click(np.zeros((5, 5), bool)) is None


def test_the_image_border_counts_as_boundary():
    # a 5x5 square in the image's top-left corner: with the border as boundary its centre (2, 2) is
    # the farthest point; were the border not boundary, the corner pixel (0, 0) would be
    assert first_click(_rect((9, 10), 0, 4, 0, 4)) == (2, 2)


def test_next_click_goes_to_the_centre_of_the_largest_error_region():
    gt = _rect((18, 18), 2, 10, 2, 10)
    pred = gt.copy()
    pred[2:5, 2:5] = False  # 9 missed object pixels (rows 2..4, cols 2..4)
    pred[13:15, 0:2] = True  # 4 false-foreground pixels
    assert next_click(gt, pred) == (3, 3, True)

    pred[12:17, 12:17] = True  # 25 false-foreground pixels (rows 12..16, cols 12..16)
    assert next_click(gt, pred) == (14, 14, False)

    # two missed regions: the larger one (rows 7..10, cols 7..10 is 16 px; the corner is 9 px)
    pred = gt.copy()
    pred[2:5, 2:5] = False
    pred[7:11, 7:11] = False
    r, c, positive = next_click(gt, pred)
    assert positive and 7 <= r <= 10 and 7 <= c <= 10 and (r, c) == (8, 8)  # first of the 4 centre pixels


def test_next_click_ties_prefer_the_missed_region_and_no_error_means_no_click():
    gt = _rect((12, 12), 0, 2, 0, 2)
    pred = _rect((12, 12), 9, 11, 9, 11)  # 9 px missed, 9 px false: equal areas
    assert next_click(gt, pred) == (1, 1, True)
    assert next_click(gt, gt.copy()) is None
    with pytest.raises(ConfigError, match=r"two \(H, W\) masks of one shape"):
        next_click(gt, gt[:5])


# ============================================================================ NoC arithmetic
def test_number_of_clicks_and_summary():
    iou = np.array([[0.50, 0.86, 0.95], [0.90, 0.90, 0.90], [0.10, 0.20, 0.30]])
    assert number_of_clicks(iou, 0.85).tolist() == [2, 1, 3]
    assert number_of_clicks(iou, 0.90).tolist() == [3, 1, 3]  # never reached: counted as the maximum, 3
    s = click_summary(iou)
    assert s["miou_at"] == pytest.approx([0.5, 1.96 / 3, 2.15 / 3])
    assert s["noc85"] == pytest.approx(2.0) and s["noc90"] == pytest.approx(7 / 3)
    assert s["max_clicks"] == 3 and s["num_instances"] == 3
    assert number_of_clicks(iou[:, :1], 0.85).tolist() == [1, 1, 1]  # capped at K = 1
    with pytest.raises(ConfigError, match="at least one click"):
        number_of_clicks(np.zeros((2, 0)), 0.85)


def test_click_records_merge_and_metrics():
    a = ClickRecords(
        np.array([[0.2, 0.9]]),
        np.array([1]),
        np.array([3]),
        [{"id": 1, "num_instances": 1}, {"id": 5, "num_instances": 0}],
    )
    b = ClickRecords(
        np.array([[0.86, 0.88], [0.1, 0.1]]), np.array([2, 2]), np.array([1, 1]), [{"id": 2, "num_instances": 2}]
    )
    merged = ClickRecords.merge([a, b])
    m = merged.metrics()
    assert m["prompt"] == "clicks" and m["num_images"] == 3 and m["num_instances"] == 3
    assert m["clicks"]["noc85"] == pytest.approx((2 + 1 + 2) / 3)
    assert m["clicks"]["noc90"] == pytest.approx((2 + 2 + 2) / 3)
    # one click's IoUs as evaluation records (for the bootstrap intervals of samadapt.evaluation.uncertainty)
    first = merged.after(1)
    assert first.iou.tolist() == [0.2, 0.86, 0.1] and [im["id"] for im in first.images] == [1, 5, 2]
    with pytest.raises(ConfigError, match=r"clicks must be in 1..2, got 3"):
        merged.after(3)
    with pytest.raises(ConfigError, match="same number of clicks"):
        ClickRecords.merge([a, ClickRecords(np.zeros((1, 3)))])


# ============================================================================ the protocol's loop
class NearestTransform(SamTransform):
    """Upsamples low-res logits by repeating pixels, so a painted low-res pixel is exactly a 4x4 block."""

    def postprocess_masks(self, low_res_logits, original_size, threshold=0.0, **kw):
        up = low_res_logits.repeat_interleave(4, -1).repeat_interleave(4, -2)
        return up[..., : original_size[0], : original_size[1]] > threshold


class ClickFollower(nn.Module):
    """A stand-in for ``AdaptedSam`` on 64x64 images (input 64, low-res 16): each positive click
    paints the 4x4 input pixels around it as object, each negative one as background, so the
    prediction is known. Records the prompts of every ``decode`` call."""

    mask_threshold = 0.0
    dtype = torch.float32

    def __init__(self):
        super().__init__()
        self.calls: list[dict] = []

    @property
    def transform(self):
        return NearestTransform(64)

    @property
    def device(self):
        return torch.device("cpu")

    def encode(self, images):
        return torch.zeros(images.shape[0], 8, 4, 4)

    def decode(self, emb, boxes, points, labels, *, multimask=False, mask_inputs=None):
        pts, lab = points[0], labels[0]
        self.calls.append(
            {
                "points": pts.clone(),
                "labels": lab.clone(),
                "multimask": multimask,
                "mask_inputs": None if mask_inputs is None else mask_inputs[0].clone(),
            }
        )
        n = pts.shape[0]
        logits = torch.full((n, 16, 16), -1.0)
        for i in range(n):
            for (x, y), v in zip(pts[i].tolist(), lab[i].tolist()):
                if v >= 0:  # a click covers its low-res pixel
                    logits[i, int(y) // 4, int(x) // 4] = 1.0 if v == 1 else -1.0
        m = 3 if multimask else 1
        return SamOutput(
            logits[:, None].expand(n, m, 16, 16).clone(),
            torch.arange(m).float().expand(n, m).clone(),
            torch.zeros(n, dtype=torch.long),
        )


class OneImage:
    def __init__(self, masks):
        self.masks = np.asarray(masks, dtype=bool)

    def __len__(self):
        return 1

    def __getitem__(self, i):
        return {
            "image": np.zeros((64, 64, 3), np.uint8),
            "masks": self.masks,
            "category_ids": np.arange(len(self.masks)),
            "image_id": 7,
        }


def test_protocol_clicks_where_the_errors_are_and_miou_rises():
    # an object of two 4x4 blocks (low-res pixels (1, 1) and (1, 3)): the follower paints one block
    # per positive click, so click 1 gives IoU 0.5, click 2 gives 1
    gt = np.zeros((1, 64, 64), bool)
    gt[0, 4:8, 4:8] = gt[0, 4:8, 12:16] = True
    model = ClickFollower()
    rec = evaluate_clicks(model, OneImage(gt), max_clicks=3, progress=False)
    assert rec.iou.tolist() == [[0.5, 1.0, 1.0]]
    first, second = model.calls[:2]
    # click 1: the first pixel in raster order at the largest distance (2 px) of the mask's transform
    assert first["points"].tolist() == [[[5.5, 5.5]]] and first["labels"].tolist() == [[1]] and first["multimask"]
    assert first["mask_inputs"] is None
    # click 2: the centre of the missed block, positive; the previous logits are the mask prompt
    assert second["points"][0, 1].tolist() == [13.5, 5.5] and second["labels"].tolist() == [[1, 1]]
    assert not second["multimask"] and second["mask_inputs"].shape == (1, 1, 16, 16)
    assert (second["mask_inputs"][0, 0] > 0).nonzero().tolist() == [[1, 1]]
    # click 3: no error left, so the instance gets a padding click and keeps its prediction
    assert model.calls[2]["labels"].tolist() == [[1, 1, -1]]
    m = rec.metrics()
    assert m["clicks"]["miou_at"] == [0.5, 1.0, 1.0] and m["clicks"]["noc85"] == 2 and m["clicks"]["noc90"] == 2


def test_protocol_places_negative_clicks_and_most_confident_first_mask():
    class Greedy(ClickFollower):
        """Takes a whole 8x8 block (4 low-res pixels) as object around the first click."""

        def decode(self, emb, boxes, points, labels, *, multimask=False, mask_inputs=None):
            out = super().decode(emb, boxes, points, labels, multimask=multimask, mask_inputs=mask_inputs)
            if multimask:  # mask 2 (the most confident: scores 0, 1, 2) is the greedy one
                out.low_res_logits[:, 2, 0:2, 0:2] = 1.0
            return out

    gt = np.zeros((1, 64, 64), bool)
    gt[0, 0:4, 0:4] = True  # low-res pixel (0, 0) only
    model = Greedy()
    rec = evaluate_clicks(model, OneImage(gt), max_clicks=2, progress=False)
    assert rec.iou[0, 0] == pytest.approx(16 / 64)  # the greedy mask was kept
    # the false foreground is an L of 48 px; its pixel farthest from its boundary is (5, 5)
    assert model.calls[1]["points"][0, 1].tolist() == [5.5, 5.5] and model.calls[1]["labels"].tolist() == [[1, 0]]
    with pytest.raises(ConfigError, match="max_clicks"):
        evaluate_clicks(model, OneImage(gt), max_clicks=0)


def test_protocol_on_mini_runs_with_cached_embeddings(mini_checkpoint, rgb_image):
    """The real decoder with the mask prompt: shapes, and the embeddings path equals encoding."""
    model = samadapt.adapt(samadapt.build_sam("mini", mini_checkpoint), "decoder").eval()
    masks = np.zeros((2, 90, 120), bool)
    masks[0, 20:60, 15:55] = True
    masks[1, 50:85, 70:110] = True

    class Data(OneImage):
        def __getitem__(self, i):
            return {"image": rgb_image, "masks": self.masks, "category_ids": np.array([1, 2]), "image_id": 3}

    rec = evaluate_clicks(model, Data(masks), max_clicks=3, progress=False)
    assert rec.iou.shape == (2, 3) and np.isfinite(rec.iou).all() and rec.image_ids.tolist() == [3, 3]
    emb = model.encode(model.transform.preprocess_image(rgb_image)[None])[0]
    cached = evaluate_clicks(model, Data(masks), max_clicks=3, progress=False, embeddings=lambda i: emb)
    np.testing.assert_allclose(cached.iou, rec.iou, atol=1e-6)
    # one instance at a time (the memory bound) gives the same numbers
    one = evaluate_clicks(model, Data(masks), max_clicks=3, progress=False, max_mask_pixels=90 * 120)
    np.testing.assert_allclose(one.iou, rec.iou, atol=1e-5)
    table = format_click_table({"mini": rec.metrics()})
    assert "mIoU@3" in table and "NoC@90" in table and "mIoU@5" not in table


# ============================================================================ extreme points
def test_extreme_points_on_a_hand_made_mask():
    m = _rect((10, 12), 2, 6, 3, 8)
    m[7, 5] = True  # a one-pixel foot: the bottom extreme
    coords, labels = extreme_points(m[None])
    # left and right edges: the middle of rows 2..6; top edge: the lower middle of columns 3..8
    assert coords[0].tolist() == [[3.5, 4.5], [8.5, 4.5], [5.5, 2.5], [5.5, 7.5]]
    assert labels.tolist() == [[1, 1, 1, 1]]
    box = boxes_from_masks(m[None])[0]
    c = coords[0] - 0.5
    assert [c[0, 0], c[2, 1], c[1, 0], c[3, 1]] == box.tolist()  # the box they span is the tight box
    coords, labels = extreme_points(np.zeros((1, 4, 4), bool))
    assert labels.tolist() == [[-1, -1, -1, -1]]


def test_extreme_prompt_is_the_box_plus_four_clicks(mini_checkpoint, rgb_image):
    from samadapt.evaluation.evaluate import evaluate

    model = samadapt.adapt(samadapt.build_sam("mini", mini_checkpoint), "decoder").eval()
    masks = np.zeros((2, 90, 120), bool)
    masks[0, 20:60, 15:55] = True
    masks[1, 50:85, 70:110] = True
    data = [{"image": rgb_image, "masks": masks, "category_ids": np.array([1, 2]), "image_id": 3}]
    res = evaluate(model, data, prompt="extreme", progress=False, coco=False, return_examples=1)
    coords, labels = extreme_points(masks)
    pred, _ = model.predict(rgb_image, boxes=boxes_from_masks(masks), points=coords, labels=labels)
    inter = (pred & masks).sum((1, 2))
    union = (pred | masks).sum((1, 2))
    np.testing.assert_allclose(res.records.iou, inter / union)
    assert res.metrics["prompt"] == "extreme"
    assert res.examples[0]["points"].shape == (2, 4, 2) and res.examples[0]["boxes"].shape == (2, 4)


# ============================================================================ report and command line
def test_eval_command_writes_click_metrics_and_figure(tmp_path, demo_data_root, mini_checkpoint, capsys):
    from samadapt.cli import main

    out = tmp_path / "eval"
    rc = main(
        [
            "eval",
            "--dataset",
            "demo",
            "--data-root",
            str(demo_data_root),
            "--split",
            "val",
            "--checkpoint",
            str(mini_checkpoint),
            "--prompt",
            "clicks",
            "--max-clicks",
            "3",
            "--max-images",
            "2",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0, printed
    metrics = json.loads((out / "metrics.json").read_text())["models"]["zero-shot"]
    clicks = metrics["clicks"]
    assert len(clicks["miou_at"]) == 3 and 1 <= clicks["noc85"] <= 3 and clicks["noc85"] <= clicks["noc90"] <= 3
    assert metrics["prompt"] == "clicks" and metrics["num_instances"] > 0
    assert (out / "clicks.png").stat().st_size > 0
    assert "NoC@85" in (out / "metrics.md").read_text() and "mIoU@3" in printed
    rc = main(
        [
            "eval",
            "--dataset",
            "demo",
            "--data-root",
            str(demo_data_root),
            "--checkpoint",
            str(mini_checkpoint),
            "--prompt",
            "clicks",
            "--max-clicks",
            "0",
            "--out",
            str(out),
        ]
    )
    assert rc == 2 and "--max-clicks must be >= 1, got 0" in capsys.readouterr().err

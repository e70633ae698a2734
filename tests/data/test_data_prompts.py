"""Prompts from masks (boxes, noise, points), PromptConfig, and the model-ready SamPromptDataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from samadapt.data.coco import CocoInstances
from samadapt.data.prompts import (
    PromptConfig,
    boxes_from_masks,
    jitter_boxes,
    loosen_boxes,
    sample_points,
)
from samadapt.data.sam_dataset import SamPromptDataset, check_dataset, collate_sam, file_sha1
from samadapt.errors import ConfigError, DataError
from samadapt.transforms import SamTransform

# --- boxes ------------------------------------------------------------------------------------


def test_boxes_from_masks_inclusive_and_empty():
    m = np.zeros((3, 10, 12), bool)
    m[0, 2:5, 3:9] = True
    m[1, 9, 11] = True
    boxes = boxes_from_masks(m)
    assert boxes.dtype == np.float32
    assert boxes.tolist() == [[3, 2, 8, 4], [11, 9, 11, 9], [0, 0, 0, 0]]
    assert boxes_from_masks(np.zeros((0, 5, 5), bool)).shape == (0, 4)


def test_jitter_statistics_and_cap():
    rng = np.random.default_rng(0)
    n = 20000
    small = np.tile([[400.0, 400.0, 500.0, 450.0]], (n, 1))  # 100 x 50: std 10 px in x, 5 px in y
    out = jitter_boxes(small, rng, std_ratio=0.1, max_px=20.0, image_hw=(2000, 2000))
    d = out - small
    assert abs(d[:, 0].std() - 10.0) < 0.3 and abs(d[:, 2].std() - 10.0) < 0.3
    assert abs(d[:, 1].std() - 5.0) < 0.15 and abs(d[:, 3].std() - 5.0) < 0.15
    assert abs(d.mean()) < 0.1
    big = np.tile([[100.0, 100.0, 1100.0, 1100.0]], (n, 1))  # 10% would be 100 px: capped at 20
    d = jitter_boxes(big, rng, std_ratio=0.1, max_px=20.0, image_hw=(2000, 2000)) - big
    assert abs(d.std() - 20.0) < 0.5
    zero = jitter_boxes(small[:5], rng, std_ratio=0.0, image_hw=(2000, 2000))
    np.testing.assert_array_equal(zero, small[:5])


def test_jitter_stays_valid_and_inside_the_image():
    rng = np.random.default_rng(1)
    boxes = np.array([[0, 0, 3, 3], [95, 45, 99, 49], [10, 10, 11, 11]], np.float32).repeat(500, axis=0)
    out = jitter_boxes(boxes, rng, std_ratio=2.0, max_px=50, image_hw=(50, 100))
    assert (out[:, 0] <= out[:, 2]).all() and (out[:, 1] <= out[:, 3]).all()
    assert out.min() >= 0 and out[:, 0::2].max() <= 99 and out[:, 1::2].max() <= 49


def test_jitter_is_deterministic_for_a_seed():
    b = np.array([[10, 10, 50, 60]], np.float32)
    a1 = jitter_boxes(b, np.random.default_rng(7), image_hw=(100, 100))
    a2 = jitter_boxes(b, np.random.default_rng(7), image_hw=(100, 100))
    a3 = jitter_boxes(b, np.random.default_rng(8), image_hw=(100, 100))
    np.testing.assert_array_equal(a1, a2)
    assert not np.array_equal(a1, a3)


def test_loosen_boxes():
    b = np.array([[10, 20, 110, 70], [0, 0, 10, 10]], np.float32)
    out = loosen_boxes(b, 0.1, (100, 200))
    assert out.tolist() == [[0, 15, 120, 75], [0, 0, 11, 11]]
    with pytest.raises(ConfigError):
        loosen_boxes(b, -0.1, (100, 200))


# --- points -----------------------------------------------------------------------------------


def test_points_inside_and_outside():
    m = np.zeros((2, 60, 80), bool)
    m[0, 20:40, 30:50] = True
    m[1, 5:10, 5:8] = True
    coords, labels = sample_points(m, 3, 2, np.random.default_rng(0))
    assert coords.shape == (2, 5, 2) and coords.dtype == np.float32
    assert labels.dtype == np.int64 and labels.tolist() == [[1, 1, 1, 0, 0]] * 2
    for i in range(2):
        cols = (coords[i, :, 0] - 0.5).astype(int)
        rows = (coords[i, :, 1] - 0.5).astype(int)
        assert m[i, rows[:3], cols[:3]].all()  # positives inside
        assert not m[i, rows[3:], cols[3:]].any()  # negatives outside ...
    # ... and near the object: inside its box grown by 10% (2 px on a 20 px side)
    assert (coords[0, 3:, 0] >= 28).all() and (coords[0, 3:, 0] <= 52).all()
    c2, _ = sample_points(m, 3, 2, np.random.default_rng(0))
    np.testing.assert_array_equal(coords, c2)


def test_points_fallbacks_and_padding():
    full = np.ones((1, 10, 10), bool)  # nothing outside: negatives are padding
    empty = np.zeros((1, 10, 10), bool)  # nothing inside: positives are padding
    tight = np.zeros((1, 10, 10), bool)
    tight[0, :5, :] = True  # its grown box (cut by the image, 0.5 px taller) holds no outside pixel:
    # negatives come from anywhere outside the mask
    _, lab = sample_points(full, 2, 2, 0)
    assert lab.tolist() == [[1, 1, -1, -1]]
    _, lab = sample_points(empty, 2, 1, 0)
    assert lab.tolist() == [[-1, -1, 0]]
    c, lab = sample_points(tight, 0, 4, 0)
    assert lab.tolist() == [[0] * 4]
    assert not tight[0, (c[0, :, 1] - 0.5).astype(int), (c[0, :, 0] - 0.5).astype(int)].any()
    few = np.zeros((1, 10, 10), bool)
    few[0, 3, 3] = True  # fewer pixels than points: drawn with replacement
    c, lab = sample_points(few, 3, 0, 0)
    assert (c == 3.5).all() and (lab == 1).all()


# --- PromptConfig ------------------------------------------------------------------------------


def test_prompt_config_validation_and_eval():
    assert PromptConfig().box_noise == 0.1 and PromptConfig().box_noise_max_px == 20.0
    ev = PromptConfig(box_noise=0.0)  # exact boxes, as evaluation's "box" prompts
    assert ev.box_noise == 0.0 and ev.loose_margin == 0.0 and ev.use_boxes and ev.points == "sampled"
    cfg = PromptConfig(box_noise=0.2, loose_margin=0.1, num_points=2)
    assert PromptConfig.from_dict(cfg.to_dict()) == cfg
    for bad, match in [
        ({"box_noise": -0.1}, "box_noise must be a finite number >= 0, got -0.1"),
        ({"box_noise_max_px": float("inf")}, "box_noise_max_px"),
        ({"num_points": 1.5}, "num_points must be an integer >= 0, got 1.5"),
        ({"num_negative_points": -1}, "num_negative_points"),
        ({"use_boxes": False}, "no prompt"),
        ({"use_boxes": "yes"}, "use_boxes"),
    ]:
        with pytest.raises(ConfigError, match=match):
            PromptConfig(**bad)
    with pytest.raises(ConfigError, match="unknown PromptConfig keys"):
        PromptConfig.from_dict({"noise": 1})


# --- SamPromptDataset --------------------------------------------------------------------------

H, W = 50, 70


@pytest.fixture(scope="module")
def instances(tmp_path_factory):
    """Image 1: 20 small squares; image 2: none; image 3: one object and one empty-after-decode."""
    root = tmp_path_factory.mktemp("sam_ds")
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / name)
    anns = []
    for k in range(20):
        x, y = 3 * k + 1, 2 * k + 1
        anns.append(
            {
                "id": k,
                "image_id": 1,
                "category_id": 1 + k % 2,
                "iscrowd": 0,
                "segmentation": [[x, y, x + 6, y, x + 6, y + 5, x, y + 5]],
            }
        )
    anns.append(
        {"id": 100, "image_id": 3, "category_id": 1, "iscrowd": 0, "segmentation": [[10, 10, 40, 10, 40, 30, 10, 30]]}
    )
    anns.append(
        {
            "id": 101,
            "image_id": 3,
            "category_id": 1,
            "iscrowd": 0,
            "segmentation": [[50.1, 40.1, 50.3, 40.1, 50.2, 40.3]],
        }
    )
    (root / "ann.json").write_text(
        json.dumps(
            {
                "images": [
                    {"id": i, "file_name": n, "height": H, "width": W}
                    for i, n in ((1, "a.png"), (2, "b.png"), (3, "c.png"))
                ],
                "annotations": anns,
                "categories": [{"id": 1, "name": "can"}, {"id": 2, "name": "bottle"}],
            }
        )
    )
    return CocoInstances(root, root / "ann.json")


def test_sample_shapes(instances):
    tf = SamTransform(64)
    ds = SamPromptDataset(
        instances, tf, PromptConfig(num_points=2, num_negative_points=1), max_instances=8, image_keys=True
    )
    s = ds[0]
    assert s["image"].shape == (3, 64, 64) and s["image"].dtype == torch.float32
    assert s["boxes"].shape == (8, 4) and s["boxes"].dtype == torch.float32
    assert s["points"].shape == (8, 3, 2) and s["point_labels"].shape == (8, 3)
    assert s["point_labels"].dtype == torch.int64
    assert s["gt_masks"].shape == (8, 16, 16) and set(s["gt_masks"].unique().tolist()) <= {0.0, 1.0}
    assert s["category_ids"].shape == (8,) and s["image_id"] == 1 and s["index"] == 0
    assert s["original_size"].tolist() == [H, W] and s["input_size"].tolist() == [46, 64]
    assert s["image_key"] == file_sha1(instances.image_path(0))
    # boxes and points are in the input frame (scale 64/70)
    assert s["boxes"].max() <= 64 and s["points"].max() <= 64


def test_exact_boxes_for_eval(instances):
    tf = SamTransform(64)
    ds = SamPromptDataset(instances, tf, PromptConfig(box_noise=0.0), max_instances=None)
    s = ds[2]
    assert s["boxes"].shape == (1, 4)  # the empty-after-decode annotation is dropped
    expected = tf.apply_boxes(np.array([[10, 10, 39, 29]], np.float32), (H, W))
    assert torch.equal(s["boxes"], expected)
    assert s["points"] is None and s["point_labels"] is None
    assert len(ds[0]["boxes"]) == 20


def test_zero_instances_have_the_right_shapes(instances):
    ds = SamPromptDataset(instances, SamTransform(64), PromptConfig(num_points=1), load_image=False)
    s = ds[1]
    assert "image" not in s
    assert s["boxes"].shape == (0, 4) and s["points"].shape == (0, 1, 2) and s["point_labels"].shape == (0, 1)
    assert s["gt_masks"].shape == (0, 16, 16) and s["category_ids"].shape == (0,)


def test_determinism_across_instances_and_epochs(instances):
    def make():
        return SamPromptDataset(
            instances, SamTransform(64), PromptConfig(num_points=1), max_instances=5, seed=3, load_image=False
        )

    a, b = make(), make()
    s1, s2 = a[0], b[0]
    assert torch.equal(s1["boxes"], s2["boxes"]) and torch.equal(s1["points"], s2["points"])
    assert torch.equal(s1["category_ids"], s2["category_ids"])
    b.set_epoch(1)
    s3 = b[0]
    assert not torch.equal(s1["boxes"], s3["boxes"])
    b.set_epoch(0)
    assert torch.equal(b[0]["boxes"], s1["boxes"])  # resume: epoch 0 again gives the same sample
    chosen = {tuple(a.choose_annotations(0, a.rng(0))[k]["id"] for k in range(5)) for _ in range(3)}
    assert len(chosen) == 1


def test_collate_and_dataloader(instances):
    ds = SamPromptDataset(instances, SamTransform(64), PromptConfig(), max_instances=4, image_keys=True)
    batch = collate_sam([ds[0], ds[1], ds[2]])
    assert batch["images"].shape == (3, 3, 64, 64)
    assert batch["image_id"].tolist() == [1, 2, 3] and batch["index"].tolist() == [0, 1, 2]
    assert batch["original_size"].shape == (3, 2) and batch["input_size"].shape == (3, 2)
    assert [len(b) for b in batch["boxes"]] == [4, 0, 1]
    assert isinstance(batch["image_key"], list) and len(batch["gt_masks"]) == 3
    loader = DataLoader(ds, batch_size=2, collate_fn=collate_sam)
    assert [len(b["index"]) for b in loader] == [2, 1]
    with pytest.raises(DataError):
        collate_sam([])


def test_check_dataset(instances, tmp_path):
    check_dataset(SamPromptDataset(instances, SamTransform(64), PromptConfig()), n=3)
    (tmp_path / "ann.json").write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "gone.png", "height": 10, "width": 10}],
                "annotations": [],
                "categories": [],
            }
        )
    )
    broken = SamPromptDataset(CocoInstances(tmp_path, tmp_path / "ann.json"), SamTransform(64), PromptConfig())
    with pytest.raises(DataError, match=r"dataset check failed on .*sample 0 \(image 1, 'gone.png'\).*not found"):
        check_dataset(broken)
    empty = SamPromptDataset(instances.subset([]), SamTransform(64), PromptConfig())
    with pytest.raises(DataError, match="has no images"):
        check_dataset(empty)
    with pytest.raises(ConfigError, match="max_instances"):
        SamPromptDataset(instances, SamTransform(64), PromptConfig(), max_instances=0)

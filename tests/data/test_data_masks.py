"""Masks as RLEs: exact decoding, lazy stacks, and training targets without a full-resolution copy
that equal the full-resolution float32 resize bit for bit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from samadapt.data.coco import CocoInstances
from samadapt.data.masks import (
    InstanceMasks,
    decode_rle,
    rle_box,
    rle_counts,
    rle_sampler,
    segmentation_to_rle,
)
from samadapt.data.prompts import PromptConfig, boxes_from_masks
from samadapt.data.sam_dataset import SamPromptDataset
from samadapt.data.synthetic import make_demo_dataset
from samadapt.transforms import SamTransform

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _blobs(rng, h, w, n=3):
    yy, xx = np.ogrid[:h, :w]
    m = np.zeros((h, w), bool)
    for _ in range(n):
        y, x = rng.integers(0, h), rng.integers(0, w)
        ry, rx = rng.integers(1, max(2, h // 3)), rng.integers(1, max(2, w // 3))
        m |= ((yy - y) / ry) ** 2 + ((xx - x) / rx) ** 2 < 1
    return m


@pytest.mark.parametrize("hw", [(1, 1), (7, 5), (70, 50), (333, 777)])
def test_rle_counts_sampler_and_box_match_pycocotools(hw):
    rng = np.random.default_rng(hw[0])
    for m in (_blobs(rng, *hw), rng.random(hw) < 0.5, np.zeros(hw, bool), np.ones(hw, bool)):
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        assert rle_counts(rle).sum() == m.size
        np.testing.assert_array_equal(decode_rle(rle), m)
        rows, cols = np.sort(rng.choice(hw[0], 3)), np.sort(rng.choice(hw[1], 4))
        np.testing.assert_array_equal(rle_sampler(rle)(rows, cols), m[np.ix_(rows, cols)])
        np.testing.assert_array_equal(rle_box(rle), boxes_from_masks(m[None])[0])


def test_instance_masks_index_like_an_array():
    rng = np.random.default_rng(0)
    ms = np.stack([_blobs(rng, 40, 30) for _ in range(5)])
    lazy = InstanceMasks([mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in ms], (40, 30))
    assert lazy.shape == ms.shape and len(lazy) == 5 and lazy.ndim == 3
    np.testing.assert_array_equal(np.asarray(lazy), ms)
    np.testing.assert_array_equal(np.asarray(lazy, dtype=bool), ms)
    np.testing.assert_array_equal(lazy[2], ms[2])
    np.testing.assert_array_equal(lazy[-1], ms[-1])
    np.testing.assert_array_equal(lazy[1:4], ms[1:4])
    np.testing.assert_array_equal(lazy[:, ::3, ::2], ms[:, ::3, ::2])
    np.testing.assert_array_equal(lazy[np.array([True, False, True, False, True])], ms[[0, 2, 4]])
    np.testing.assert_array_equal(lazy[5:], ms[5:])
    np.testing.assert_array_equal(lazy.boxes(), boxes_from_masks(ms))
    assert [m.sum() for m in lazy] == list(ms.sum(axis=(1, 2)))
    with pytest.raises(IndexError):
        lazy[5]


@pytest.mark.parametrize("image_size", [64, 256, 1024])
@pytest.mark.parametrize("hw", [(70, 50), (50, 70), (360, 480), (333, 777), (2049, 1023), (6000, 5312)])
def test_low_res_targets_equal_the_full_resolution_resize(image_size, hw):
    tf = SamTransform(image_size)
    rng = np.random.default_rng(sum(hw) + image_size)
    masks = [_blobs(rng, *hw, n=2), rng.random(hw) < 0.3] if max(hw) < 3000 else [_blobs(rng, *hw, n=2)]
    for m in masks:
        ref = tf.masks_to_low_res_reference(m[None], hw)
        assert torch.equal(tf.masks_to_low_res(m[None], hw), ref)
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        box = tuple(int(v) for v in rle_box(rle))
        assert torch.equal(tf.sampled_to_low_res(rle_sampler(rle), box, hw), ref)
    empty = np.zeros(hw, bool)
    assert torch.equal(
        tf.sampled_to_low_res(rle_sampler(mask_utils.encode(np.asfortranarray(empty.astype(np.uint8)))), None, hw),
        tf.masks_to_low_res_reference(empty[None], hw),
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = make_demo_dataset(
        tmp_path_factory.mktemp("demo") / "waste", domain="waste", n_train=4, n_val=1, seed=0, progress=False
    )
    return CocoInstances(root / "train" / "images", root / "train" / "annotations.json")


@pytest.mark.parametrize("image_size", [64, 1024])
def test_training_targets_and_boxes_are_the_old_ones(demo, image_size):
    """The old path: every instance decoded at full resolution, box from the mask, float32 resize."""
    tf = SamTransform(image_size)
    ds = SamPromptDataset(demo, tf, PromptConfig(num_points=1), max_instances=None, load_image=False, seed=3)
    for i in range(len(demo)):
        s = ds[i]
        anns = demo.instance_annotations(i)
        hw = demo.original_size(i)
        m = demo.decode_masks(i, anns)
        m = m[m.reshape(len(anns), -1).any(axis=1)]
        assert torch.equal(s["gt_masks"], tf.masks_to_low_res_reference(m, hw))
        rng = ds.rng(i)
        ds.choose_annotations(i, rng)
        from samadapt.data.prompts import jitter_boxes, sample_points

        boxes, points = [], []
        for mk in m:
            boxes.append(
                jitter_boxes(
                    boxes_from_masks(mk[None]),
                    rng,
                    std_ratio=ds.prompts.box_noise,
                    max_px=ds.prompts.box_noise_max_px,
                    image_hw=hw,
                )
            )
            points.append(sample_points(mk[None], 1, 0, rng)[0])
        assert torch.equal(s["boxes"], tf.apply_boxes(np.concatenate(boxes), hw))
        assert torch.equal(s["points"], tf.apply_points(np.concatenate(points), hw).reshape(-1, 1, 2))


def test_items_and_lazy_items_agree(demo):
    for i in range(len(demo)):
        eager, lazy = demo[i], demo.item(i, lazy_masks=True)
        assert isinstance(lazy["masks"], InstanceMasks) and isinstance(eager["masks"], np.ndarray)
        np.testing.assert_array_equal(np.asarray(lazy["masks"]), eager["masks"])
        np.testing.assert_array_equal(lazy["boxes"], eager["boxes"])
        np.testing.assert_array_equal(eager["boxes"], boxes_from_masks(eager["masks"]))
        for key in ("category_ids", "annotation_ids"):
            np.testing.assert_array_equal(lazy[key], eager[key])


def test_image_files_are_hashed_only_for_the_embedding_cache(demo, monkeypatch):
    import samadapt.data.sam_dataset as sd

    calls = []
    monkeypatch.setattr(sd, "file_sha1", lambda p: calls.append(p) or "k")
    with_images = SamPromptDataset(demo, SamTransform(64), PromptConfig())
    assert "image_key" not in with_images[0] and calls == []
    cached = SamPromptDataset(demo, SamTransform(64), PromptConfig(), load_image=False)
    assert cached[0]["image_key"] == "k" and len(calls) == 1


def test_empty_masks_are_dropped_and_counted_once(tmp_path):
    Image.new("RGB", (20, 10)).save(tmp_path / "a.png")
    seg_empty = {"size": [10, 20], "counts": [200]}
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "height": 10, "width": 20}],
        "categories": [{"id": 1, "name": "x"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": seg_empty, "bbox": [0, 0, 1, 1]},
            {
                "id": 2,
                "image_id": 1,
                "category_id": 1,
                "segmentation": [[2, 2, 8, 2, 8, 6, 2, 6]],
                "bbox": [2, 2, 6, 4],
            },
        ],
    }
    (tmp_path / "c.json").write_text(json.dumps(coco))
    ds = CocoInstances(tmp_path, tmp_path / "c.json")
    for _ in range(2):
        s = ds.item(0, lazy_masks=True)
        assert s["masks"].shape == (1, 10, 20) and s["annotation_ids"].tolist() == [2]
    assert ds.skips.get("empty_mask") == 1
    rle = segmentation_to_rle(coco["annotations"][1]["segmentation"], 10, 20)
    np.testing.assert_array_equal(ds[0]["masks"][0], decode_rle(rle))

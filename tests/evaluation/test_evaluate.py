"""evaluate / evaluate_records / summarize_records / write_report on the tiny random ``mini`` SAM."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import samadapt
from samadapt.errors import ConfigError
from samadapt.evaluation import (
    EvalRecords,
    evaluate,
    evaluate_records,
    plot_bars,
    plot_training_curves,
    summarize_records,
    write_report,
)


def _mask(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


class FakeDataset:
    """Three images (the last without instances), shaped like ``CocoInstances`` items."""

    categories = {1: "bottle", 2: "can"}

    def __init__(self):
        rng = np.random.default_rng(0)
        self.items = []
        specs = [
            (10, (48, 64), [((4, 20, 6, 30), 1), ((25, 45, 30, 60), 2), ((2, 10, 40, 50), 1)]),
            (20, (40, 40), [((5, 35, 5, 25), 2), ((30, 38, 28, 38), 2)]),
            (30, (32, 48), []),
        ]
        for image_id, (h, w), insts in specs:
            masks = np.stack([_mask(h, w, *box) for box, _ in insts]) if insts else np.zeros((0, h, w), bool)
            boxes = np.array([[x0, y0, x1 - 1, y1 - 1] for (y0, y1, x0, x1), _ in insts], np.float32).reshape(-1, 4)
            self.items.append(
                {
                    "image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
                    "masks": masks,
                    "boxes": boxes,
                    "category_ids": np.array([c for _, c in insts], np.int64),
                    "image_id": image_id,
                    "file_name": f"img{image_id}.png",
                    "original_size": (h, w),
                }
            )

    def __len__(self):
        return len(self.items)

    def __getitem__(self, idx):
        return self.items[idx]


@pytest.fixture(scope="module")
def model():
    return samadapt.adapt(samadapt.build_sam("mini", pretrained=False), "decoder")


@pytest.fixture(scope="module")
def data():
    return FakeDataset()


@pytest.fixture(scope="module")
def box_result(model, data):
    return evaluate(model, data, progress=False, return_examples=2)


def _dump(metrics):
    return json.dumps(metrics, sort_keys=True)


def test_box_evaluation_runs_and_is_bounded(box_result, model):
    m = box_result.metrics
    assert m["num_instances"] == 5 and m["num_images"] == 3 and m["num_images_without_instances"] == 1
    assert m["prompt"] == "box" and m["seed"] == 0
    for k in ("mean_iou", "mean_precision", "mean_recall", "mean_f1"):
        assert 0.0 <= m[k] <= 1.0
    assert set(m["per_category"]) == {"bottle", "can"}
    assert m["per_category"]["bottle"]["num_instances"] == 2
    assert sum(s["num_instances"] for s in m["per_size"].values()) == 5
    assert set(m["coco"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert 0.0 <= m["coco"]["AP"] <= 1.0
    rec = box_result.records
    assert isinstance(rec, EvalRecords) and rec.num_instances == 5
    assert rec.image_ids.tolist() == [10, 10, 10, 20, 20]
    assert np.isclose(rec.iou.mean(), m["mean_iou"])
    assert [r["num_instances"] for r in box_result.per_image] == [3, 2, 0]


def test_examples_hold_the_prompts_and_masks(box_result, data):
    ex = box_result.examples
    assert [e["image_id"] for e in ex] == [10, 20]
    e = ex[0]
    assert e["image"].shape == (48, 64, 3) and e["gt"].shape == e["pred"].shape == (3, 48, 64)
    assert e["pred"].dtype == bool
    np.testing.assert_array_equal(e["boxes"], data[0]["boxes"])


def test_same_model_twice_gives_identical_metrics(box_result, model, data):
    again = evaluate(model, data, progress=False)
    assert _dump(again.metrics) == _dump(box_result.metrics)


def test_metrics_match_predict(model, data):
    # one image per predict_batch call runs exactly what model.predict runs: identical numbers
    one = evaluate(model, data, batch_size=1, progress=False)
    s = data[1]
    masks, scores = model.predict(s["image"], boxes=s["boxes"])
    inter = (masks & s["masks"]).sum(axis=(1, 2))
    union = (masks | s["masks"]).sum(axis=(1, 2))
    expected = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    np.testing.assert_array_equal(one.records.iou[3:], expected)
    np.testing.assert_array_equal(one.records.scores[3:], scores)


def test_batched_evaluation_agrees_with_one_image_at_a_time(model, data, box_result):
    # batching the encoder changes float rounding (~1e-8), nothing more: a mask pixel may flip only
    # where its logit is within noise of 0, which moves an IoU by far less than 1e-2 here
    one = evaluate(model, data, batch_size=1, progress=False, return_examples=2)
    np.testing.assert_allclose(box_result.records.scores, one.records.scores, rtol=0, atol=1e-5)
    np.testing.assert_allclose(box_result.records.iou, one.records.iou, rtol=0, atol=1e-2)
    for a, b in zip(box_result.examples, one.examples):
        assert (a["pred"] != b["pred"]).mean() < 1e-3


def test_jitter_is_seeded_and_differs_from_box(model, data, box_result):
    j0 = evaluate(model, data, prompt="jitter", seed=0, progress=False, return_examples=1)
    j0b = evaluate(model, data, prompt="jitter", seed=0, progress=False, return_examples=1)
    j1 = evaluate(model, data, prompt="jitter", seed=1, progress=False, return_examples=1)
    assert _dump(j0.metrics) == _dump(j0b.metrics)
    np.testing.assert_array_equal(j0.examples[0]["boxes"], j0b.examples[0]["boxes"])
    assert not np.array_equal(j0.examples[0]["boxes"], data[0]["boxes"])
    assert not np.array_equal(j0.examples[0]["boxes"], j1.examples[0]["boxes"])
    assert not np.allclose(j0.records.scores, box_result.records.scores)
    assert j0.metrics["prompt"] == "jitter"


def test_loose_boxes_grow(model, data):
    r = evaluate(model, data, prompt="loose", loose_margin=0.2, progress=False, return_examples=1)
    b, g = r.examples[0]["boxes"], data[0]["boxes"]
    assert np.all(b[:, :2] <= g[:, :2]) and np.all(b[:, 2:] >= g[:, 2:]) and not np.array_equal(b, g)


def test_points_prompt(model, data):
    r = evaluate(model, data, prompt="points", num_points=1, num_negative_points=1, progress=False, return_examples=1)
    assert r.metrics["num_instances"] == 5
    e = r.examples[0]
    assert e["boxes"] is None and e["points"].shape == (3, 2, 2)
    assert e["point_labels"][:, 0].tolist() == [1, 1, 1]
    for (x, y), m in zip(e["points"][:, 0], data[0]["masks"]):  # the positive click lies in its object
        assert m[int(y), int(x)]


def test_sharded_records_merge_to_the_whole(model, data):
    # prompts depend on (seed, image id) only, so shards see the prompts of a single-process run
    whole = evaluate(model, data, prompt="jitter", seed=3, progress=False)
    parts = [
        evaluate_records(model, data, [2, 1], prompt="jitter", seed=3, progress=False),
        evaluate_records(model, data, [0], prompt="jitter", seed=3, progress=False),
    ]
    merged = summarize_records([parts], data.categories, prompt="jitter")  # nested lists as gather_object gives
    assert merged["num_instances"] == whole.metrics["num_instances"] == 5
    for k in ("mean_iou", "mean_precision", "mean_f1"):
        assert merged[k] == pytest.approx(whole.metrics[k], abs=1e-3)
    assert merged["coco"]["AP"] == pytest.approx(whole.metrics["coco"]["AP"], abs=1e-2)
    assert merged["num_images"] == 3


def test_chunked_prompts_give_the_same_result(model, data, box_result):
    small = evaluate_records(
        model, data, [0, 1], progress=False, max_mask_pixels=48 * 64, batch_size=2, return_examples=1
    )
    # other decoder batch sizes round differently (~1e-8): equal up to pixels whose logit is ~0
    np.testing.assert_allclose(small.iou, box_result.records.iou, rtol=0, atol=1e-2)
    np.testing.assert_allclose(small.scores, box_result.records.scores, rtol=0, atol=1e-5)
    assert (small.examples[0]["pred"] != box_result.examples[0]["pred"]).mean() < 1e-3


def test_training_mode_is_restored(model, data):
    model.train()
    try:
        evaluate_records(model, data, [1], progress=False)
        assert model.training
    finally:
        model.eval()


def test_max_images_is_a_seeded_subset_and_subset_is_kept(model, data):
    """``max_images`` picks its images by the seed, not the first N: the same seed the same ones."""
    picked = {}
    for seed in range(4):
        r = evaluate(model, data, max_images=1, seed=seed, progress=False, coco=False)
        assert r.metrics["num_images"] == 1 and "coco" not in r.metrics
        picked[seed] = r.per_image[0]["image_id"]
    assert len(set(picked.values())) > 1  # the first image is not always the one
    again = evaluate(model, data, max_images=1, seed=2, progress=False, coco=False)
    assert again.per_image[0]["image_id"] == picked[2]
    two = evaluate(model, data, max_images=2, seed=2, progress=False, coco=False)  # nested: grows the same subset
    assert picked[2] in [row["image_id"] for row in two.per_image] and two.metrics["num_images"] == 2
    r = evaluate(model, data, subset=[1], progress=False)
    assert r.metrics["num_instances"] == 2 and r.per_image[0]["image_id"] == 20


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"prompt": "mask"}, "'mask'"),
        ({"loose_margin": -0.1}, "-0.1"),
        ({"prompt": "points", "num_points": 0}, "num_points"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_options_are_named(model, data, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        evaluate(model, data, progress=False, **kwargs)


def test_write_report(tmp_path, model, data, box_result):
    jit = evaluate(model, data, prompt="jitter", progress=False, return_examples=2)
    paths = write_report({"zero-shot": box_result, "jittered": jit}, tmp_path / "report", dataset_name="fake")
    for name in ("metrics.json", "metrics.md", "examples.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    assert paths["examples"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "report" / "metrics.md").read_text()
    assert "| model | mean IoU | mean precision | mean F1 | AP | AP50 | instances |" in md
    iou = box_result.metrics["mean_iou"]
    assert f"| zero-shot | {100 * iou:.2f} |" in md
    assert "## Per category" in md and "| bottle | 2 |" in md and "## Per size" in md

    def no_nan(s):
        raise AssertionError(f"non-JSON constant {s} in metrics.json")

    doc = json.loads((tmp_path / "report" / "metrics.json").read_text(), parse_constant=no_nan)
    assert doc["dataset"] == "fake" and set(doc["models"]) == {"zero-shot", "jittered"}
    assert doc["models"]["zero-shot"]["mean_iou"] == pytest.approx(iou)


def test_write_report_from_metric_dicts(tmp_path, box_result):
    # the trainer passes metrics dicts and the examples separately
    paths = write_report(
        {"fine-tuned": box_result.metrics}, tmp_path, dataset_name="fake", examples={"fine-tuned": box_result.examples}
    )
    assert set(paths) == {"json", "markdown", "examples"}
    assert not list(tmp_path.glob(".*tmp*"))  # temporary files renamed into place


def test_plots(tmp_path):
    history = [
        {"epoch": 1, "step": 10, "train_loss": 0.9, "val_mean_iou": 0.5},
        {"epoch": 2, "step": 20, "train_loss": 0.7, "val_mean_iou": 0.6},
        {"epoch": 3, "step": 30, "train_loss": float("nan"), "val_mean_iou": 0.58},
    ]
    assert plot_training_curves(history, tmp_path / "curves.png").stat().st_size > 0
    table = {"decoder": {"mean_iou": 0.7, "mean_f1": 0.8}, "lora": {"mean_iou": 0.75, "mean_f1": math.nan}}
    assert plot_bars(table, ["mean_iou", "mean_f1"], tmp_path / "bars.png", scale=100).stat().st_size > 0


def test_through_coco_instances(tmp_path, model):
    """One run through the data engineer's real loader, from a COCO file written here."""
    coco_mod = pytest.importorskip("samadapt.data.coco")
    from PIL import Image

    rng = np.random.default_rng(1)
    images, anns = [], []
    for i, (h, w) in enumerate([(40, 56), (36, 36)], start=1):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "height": h, "width": w})
        x0, y0 = 4 * i, 3 * i
        poly = [x0, y0, x0 + 20, y0, x0 + 20, y0 + 15, x0, y0 + 15]
        anns.append(
            {
                "id": i,
                "image_id": i,
                "category_id": 1 + i % 2,
                "segmentation": [poly],
                "area": 300.0,
                "bbox": [x0, y0, 20, 15],
                "iscrowd": 0,
            }
        )
    (tmp_path / "ann.json").write_text(
        json.dumps(
            {
                "images": images,
                "annotations": anns,
                "categories": [{"id": 1, "name": "bottle"}, {"id": 2, "name": "can"}],
            }
        )
    )
    ds = coco_mod.CocoInstances(tmp_path, tmp_path / "ann.json")
    r = evaluate(model, ds, progress=False)
    assert r.metrics["num_instances"] == 2 and r.metrics["num_images"] == 2
    assert set(r.metrics["per_category"]) == {"bottle", "can"}
    assert 0.0 <= r.metrics["mean_iou"] <= 1.0


@pytest.mark.gpu
def test_cuda_evaluation_and_bf16_loss(data):
    import torch

    from samadapt.training import SamLoss

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    m = samadapt.adapt(samadapt.build_sam("mini", pretrained=False), "decoder").cuda()
    r = evaluate(m, data, progress=False)
    assert r.metrics["num_instances"] == 5 and 0.0 <= r.metrics["mean_iou"] <= 1.0
    out = m(
        images=torch.zeros(1, 3, 256, 256, device="cuda"),
        boxes=[torch.tensor([[10.0, 10.0, 90.0, 90.0]], device="cuda")],
        multimask=True,
    )
    with torch.autocast("cuda", dtype=torch.bfloat16):
        lo = SamLoss()(out.low_res_logits, out.iou_predictions, torch.zeros(1, 64, 64, device="cuda"))
    assert lo.loss.dtype == torch.float32
    lo.loss.backward()

"""The class head: trained beside the mask loss (``--classify``), saved in the adapter file, labels masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from training_helpers import tiny_config, train_here

import samadapt
from samadapt.config import TrainConfig
from samadapt.data import demo
from samadapt.errors import AdapterMismatchError, ConfigError, TrainingError
from samadapt.models.parts.class_head import (
    ClassHead,
    MaskTokenCapture,
    attach_class_head,
    class_head_of,
    classify_boxes,
    loss_with_class_head,
)
from samadapt.segment import segment
from samadapt.segment.automatic import encode_images

CATEGORIES = {1: "rigid_plastic", 2: "cardboard", 3: "metal", 4: "soft_plastic", 5: "paper"}


def _with_head(seed: int = 0):
    model = samadapt.adapt(samadapt.build_sam("mini"), "decoder").eval()
    head = attach_class_head(model, CATEGORIES)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def test_the_head_is_a_trainable_tensor_of_the_adapter_and_round_trips(tmp_path, rgb_image):
    model = _with_head()
    names = [n for n, _ in model.trainable_named_parameters() if n.startswith("class_head.")]
    assert names == [
        "class_head.mlp.layers.0.weight",
        "class_head.mlp.layers.0.bias",
        "class_head.mlp.layers.1.weight",
        "class_head.mlp.layers.1.bias",
    ]
    path = samadapt.save_adapter(model, tmp_path / "a.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert set(names) <= set(f.keys())
        seg = json.loads(f.metadata()["segment"])
    assert seg["class_head"]["categories"][2] == {"id": 3, "name": "metal"}
    loaded = samadapt.load_adapter(path, samadapt.build_sam("mini")).eval()
    assert class_head_of(loaded).categories == CATEGORIES
    emb = encode_images(model, [rgb_image])[0]
    boxes = [model.transform.apply_boxes(np.array([[10, 15, 60, 70], [60, 40, 115, 88]]), rgb_image.shape[:2])]
    torch.testing.assert_close(classify_boxes(loaded, emb[None], boxes)[0], classify_boxes(model, emb[None], boxes)[0])


def test_a_plain_adapter_has_no_segment_metadata(tmp_path, pretrained_mini):
    path = samadapt.save_adapter(pretrained_mini, tmp_path / "plain.safetensors")
    assert "segment" not in samadapt.read_adapter_metadata(path)
    assert class_head_of(samadapt.load_adapter(path, samadapt.build_sam("mini"))) is None


def test_an_adapter_missing_its_head_tensors_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    path = samadapt.save_adapter(_with_head(), tmp_path / "a.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = {k: v for k, v in load_file(str(path)).items() if not k.startswith("class_head.mlp.layers.1")}
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(AdapterMismatchError, match=r"missing \['class_head.mlp.layers.1.bias'"):
        samadapt.load_adapter(path, samadapt.build_sam("mini"))


def test_the_head_reads_the_token_and_the_features_pooled_under_its_mask(mini_batch):
    model = _with_head()
    images, boxes = mini_batch
    with MaskTokenCapture(model.sam) as cap:
        out = model(images, boxes=boxes)
    head = class_head_of(model)
    assert head.pool_dim == cap.src[0].shape[1] == model.sam.mask_decoder.transformer_dim
    prob = torch.sigmoid(out.low_res_logits[:, 0])  # the prompt's own single-mask output, (N, 4h, 4w)
    torch.testing.assert_close(cap.masks(), prob)
    src = torch.cat(cap.src)  # (N, C, h, w) the decoder's image tokens
    n, c, h, w = src.shape
    weight = prob.reshape(n, h, 4, w, 4).mean((2, 4)).reshape(n, 1, h * w)  # the mask on the tokens' grid
    want = (src.reshape(n, c, h * w) * weight).sum(-1) / weight.sum(-1)
    torch.testing.assert_close(cap.pooled(), want)
    torch.testing.assert_close(cap.features(head), torch.cat([cap.tokens(), want], 1))
    # a token-only head (adapter files written before the pooled features) reads the token alone
    legacy = ClassHead(head.token_dim, head.categories)
    assert legacy.pool_dim == 0 and cap.features(legacy).shape == cap.tokens().shape


def test_the_class_loss_is_cross_entropy_beside_the_mask_loss(mini_batch):
    from samadapt.training.losses import SamLoss

    model = _with_head()
    model.train()
    images, boxes = mini_batch
    gt = torch.zeros(3, 64, 64)
    gt[:, 10:40, 10:40] = 1
    batch = {"category_ids": [torch.tensor([3]), torch.tensor([1, 5])]}
    loss_fn = SamLoss()

    def step():
        out = model(images, boxes=boxes)
        return loss_fn(out.low_res_logits, out.iou_predictions, gt)

    torch.manual_seed(0)
    plain = step()
    with MaskTokenCapture(model.sam) as cap:
        model(images, boxes=boxes)
    head = class_head_of(model)
    want = torch.nn.functional.cross_entropy(head(cap.features(head)), torch.tensor([2, 0, 4]))
    lo = loss_with_class_head(model, batch, step)
    torch.testing.assert_close(lo.loss, plain.loss + want)
    lo.loss.backward()
    assert class_head_of(model).mlp.layers[1].weight.grad.abs().sum() > 0
    with pytest.raises(TrainingError, match="category id\\(s\\) \\[9\\] are not among the class head's categories"):
        loss_with_class_head(model, {"category_ids": [torch.tensor([9]), torch.tensor([1, 5])]}, step)
    with pytest.raises(TrainingError, match="the class head saw 3 decoder prompts in calls of \\[3\\] for 1 instances"):
        loss_with_class_head(model, {"category_ids": [torch.tensor([1])]}, step)


def test_the_class_loss_reads_each_instances_first_prompt_under_click_rounds(mini_batch):
    """A mixed-prompt step decodes the first round by prompt kind (``LossOutput.prompt_order``), then the
    corrective rounds: the class loss is on the first round's prompts, each against its own instance."""
    from samadapt.training.losses import LossOutput

    model = _with_head()
    model.train()
    images, boxes = mini_batch  # instances 0 (image 0), 1 and 2 (image 1)
    emb = model.encode(images)
    batch = {"category_ids": [torch.tensor([3]), torch.tensor([1, 5])]}
    zero = torch.zeros(())

    def step():  # round 0: image 1's boxes, then image 0's; round 1: all of them again
        model(image_embeddings=emb[1:], boxes=[boxes[1]])
        model(image_embeddings=emb[:1], boxes=[boxes[0]])
        out = model(image_embeddings=emb, boxes=boxes)
        return LossOutput(out.low_res_logits.sum() * 0, zero, zero, zero, zero, prompt_order=torch.tensor([1, 2, 0]))

    with MaskTokenCapture(model.sam) as cap:
        model(image_embeddings=emb[1:], boxes=[boxes[1]])
        model(image_embeddings=emb[:1], boxes=[boxes[0]])
    head = class_head_of(model)
    want = torch.nn.functional.cross_entropy(head(cap.features(head)), torch.tensor([0, 4, 2]))  # ids 1, 5, 3
    lo = loss_with_class_head(model, batch, step)
    torch.testing.assert_close(lo.loss, want)


def test_classify_trains_a_head_under_mixed_prompt_training(tmp_path, demo_data_root, monkeypatch):
    """``--classify`` with the default prompts (boxes and clicks, corrective rounds): accepted, the head
    is trained (its weights move from their initial values) and saved with its held-out check."""
    from safetensors.torch import load_file

    import samadapt.models.parts.class_head as class_head_module

    initial = {}
    attach = class_head_module.attach_class_head

    def recording_attach(model, categories, **kw):
        head = attach(model, categories, **kw)
        initial.update({f"class_head.{k}": v.detach().clone() for k, v in head.state_dict().items()})
        return head

    monkeypatch.setattr(class_head_module, "attach_class_head", recording_attach)
    cfg = tiny_config(demo_data_root, tmp_path, classify=True, epochs=1)  # the default strategy and prompts
    assert "point" in cfg.train_prompts and cfg.click_rounds > 0  # the defaults mix prompts
    path = train_here(cfg).adapter_path
    saved = {k: v for k, v in load_file(str(path)).items() if k.startswith("class_head.")}
    assert saved.keys() == initial.keys() and len(saved) == 4
    assert all(not torch.equal(saved[k], initial[k]) for k in saved)  # every head tensor was trained
    model = samadapt.load(path)
    assert class_head_of(model).validation["instances"] == demo(demo_data_root, "val").num_instances


def test_head_accuracy_against_the_majority_class():
    from samadapt.segment.head_check import head_accuracy

    truth = [[1, 1, 2], [1, 3]]
    even = head_accuracy([[1, 2, 2], [3, 3]], truth)
    assert (even["accuracy"], even["majority_category"], even["majority_accuracy"]) == (0.6, 1, 0.6)
    assert even["gain"] == 0.0 and not even["beats_majority"]
    perfect = head_accuracy(truth, truth)
    assert perfect["accuracy"] == 1.0 and perfect["gain"] == pytest.approx(0.4)
    assert perfect["gain_interval"][0] > 0 and perfect["beats_majority"]  # every resample gains
    assert perfect["balanced_accuracy"] == 1.0 and perfect["balanced_majority"] == pytest.approx(1 / 3)


def test_the_head_is_checked_against_the_majority_class_and_segment_warns(tmp_path, classify_adapter, demo_data_root):
    """Training records the head's held-out accuracy against always answering the most frequent class
    (metrics, adapter); `segment --classify` warns when it did not clearly beat it, and not otherwise."""
    from safetensors.torch import load_file, save_file

    from samadapt.models.parts import PARTS_KEY, parse_parts_metadata

    meta = samadapt.read_adapter_metadata(classify_adapter)
    check = meta["info"]["metrics"]["class_head"]
    assert check["instances"] == demo(demo_data_root, "val").num_instances and check["images"] == 3
    assert 0 <= check["accuracy"] <= 1 and check["majority_name"] in CATEGORIES.values()
    metrics = json.loads((classify_adapter.parent / "metrics.json").read_text())
    assert metrics["models"]["fine-tuned"]["class_head"] == check
    assert parse_parts_metadata(meta)["class_head"]["validation"]["accuracy"] == check["accuracy"]

    images, ann = demo_data_root / "val" / "images", demo_data_root / "val" / "annotations.json"
    gt = json.loads(ann.read_text())
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": a["image_id"], "bbox": a["bbox"]} for a in gt["annotations"]]))

    def run(adapter):
        import contextlib
        import io

        from samadapt import cli

        out, err = io.StringIO(), io.StringIO()
        args = ["segment", "--adapter", str(adapter), "--images", str(images), "--annotation-file", str(ann),
                "--detections", str(dets), "--classify", "--out", str(tmp_path / f"{adapter.stem}.json"), "--no-progress"]  # fmt: skip
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            assert cli.main(args) == 0
        return err.getvalue()

    for beats in (False, True):
        with safe_open(str(classify_adapter), framework="pt") as f:
            raw = dict(f.metadata())
        seg = json.loads(raw[PARTS_KEY])
        seg["class_head"]["validation"] = {
            **check,
            "beats_majority": beats,
            "gain_interval": [0.01 if beats else -0.2, 0.3],
        }
        path = tmp_path / f"beats_{beats}.safetensors"
        save_file(load_file(str(classify_adapter)), str(path), metadata={**raw, PARTS_KEY: json.dumps(seg)})
        err = run(path)
        if beats:
            assert "warning" not in err
        else:
            assert "samadapt: warning: class head: accuracy" in err and "does NOT clearly beat always answering" in err
            assert "no better than always answering that class" in err and "docs/segment.md" in err


def test_segment_labels_masks_without_a_category(demo_data_root):
    model = _with_head()
    sample = demo(demo_data_root, "val")[0]
    boxes = sample["boxes"][:3]
    recs = segment(
        model, sample["image"], boxes=boxes, scores=[0.9, 0.8, 0.5], category_ids=[None, 2, None], classify=True
    )
    emb = encode_images(model, [sample["image"]])[0]
    probs = classify_boxes(model, emb[None], [model.transform.apply_boxes(boxes, sample["image"].shape[:2])])[0]
    head = class_head_of(model)
    for k in (0, 2):
        j = int(probs[k].argmax())
        assert recs[k]["category_id"] == head.category_ids[j] and recs[k]["category_name"] == head.category_names[j]
        assert recs[k]["class_probability"] == pytest.approx(float(probs[k, j]), abs=1e-5)
        assert recs[k]["score"] == pytest.approx([0.9, 0.8, 0.5][k] * float(probs[k, j]), abs=1e-5)
    assert recs[1]["category_id"] == 2 and recs[1]["score"] == pytest.approx(0.8)  # the detector's label is kept


def test_automatic_masks_are_labelled_through_their_box(demo_data_root):
    from samadapt.segment.automatic import AutoConfig

    model = _with_head()
    image = demo(demo_data_root, "val").load_image(0)
    auto = AutoConfig(points_per_side=4, pred_iou_thresh=0.2, stability_score_thresh=0.0)
    recs = segment(model, image, auto=auto, classify=True)
    assert recs and all(r["category_id"] in CATEGORIES for r in recs)
    assert [r["score"] for r in recs] == sorted((r["score"] for r in recs), reverse=True)
    for r in recs:  # an automatic mask's score (predicted IoU x stability) times its class probability
        expected = r["predicted_iou"] * r["stability_score"] * r["class_probability"]
        assert r["score"] == pytest.approx(expected, abs=1e-5)


def test_class_head_checks_its_arguments():
    with pytest.raises(ConfigError, match="needs at least one category"):
        ClassHead(16, {})
    model = _with_head()
    with pytest.raises(ConfigError, match="has a class head already"):
        attach_class_head(model, CATEGORIES)


def test_training_with_classify_saves_a_head_of_the_datasets_categories(classify_adapter):
    meta = samadapt.read_adapter_metadata(classify_adapter)
    assert meta["info"]["training"]["config"]["classify"] is True
    model = samadapt.load(classify_adapter)
    assert class_head_of(model).categories == CATEGORIES


def test_resume_restores_the_class_head(tmp_path, demo_data_root):
    """``--resume`` with a head: the epoch state holds the head's tensors (a trainable tensor of ``Sam``), the
    resumed run loads that state (strictly: a missing or extra head tensor fails) and writes the same head."""
    from safetensors.torch import load_file

    cfg = tiny_config(demo_data_root, tmp_path, classify=True, epochs=1)
    first = train_here(cfg).adapter_path
    before = {k: v for k, v in load_file(str(first)).items() if k.startswith("class_head.")}
    assert (tmp_path / "run" / "checkpoints" / "epoch_0001" / "trainable_0.safetensors").is_file()
    state = load_file(str(tmp_path / "run" / "checkpoints" / "epoch_0001" / "trainable_0.safetensors"))
    assert set(before) <= set(state)  # the epoch state holds the head
    again = train_here(TrainConfig(**{**cfg.to_dict(), "resume": True})).adapter_path
    after = {k: v for k, v in load_file(str(again)).items() if k.startswith("class_head.")}
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_the_class_head_beats_the_majority_class_on_demo_data(tmp_path):
    """The committed benchmark's setting (docs/segment.md): ``full --classify`` on the 160 demo
    training images, 8 epochs; on the 40 validation images the gain over always answering the
    most frequent category must exceed its 95% bootstrap interval (images resampled)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "class_head.json"
    cmd = [sys.executable, str(repo / "benchmarks" / "class_head.py"), "--strategies", "full", "--jobs", "1",
           "--runs", str(tmp_path / "runs"), "--out", str(out), "--bootstrap", "1000"]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=repo, capture_output=True, text=True, timeout=1800)
    r = json.loads(out.read_text())["strategies"]["full"]
    assert r["instances"] == 351 and r["majority_accuracy"] < r["accuracy"]
    assert r["gain_interval"][0] > 0, r  # clearly: the interval excludes no gain
    assert r["balanced_accuracy"] > r["balanced_majority"]

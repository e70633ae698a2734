"""SAM 2.1 exports (samadapt/exporters/sam2_*.py), each read back by the runtime that reads it:
upstream ``build_sam2`` (strict) for the checkpoint, transformers' ``Sam2Model`` / ``Sam2Processor``
for the folder, onnxruntime for the ONNX pair; masks equal samadapt's (IoU >= 0.99)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sam2_helpers import (
    assert_masks_equal,
    random_sam2_checkpoint,
    require_sam2_or_skip,
    test_image,
    upstream_predictor,
)

from samadapt.models.sam2_family import Sam2Transform, build_sam2_model, predict

TEST = "sam2.1_hiera_test"
BOXES = np.array([[10, 20, 200, 250], [120, 40, 400, 290]], np.float32)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    require_sam2_or_skip()
    ckpt = random_sam2_checkpoint(tmp_path_factory.mktemp("sam2x") / "sam2_test_seed1.pt", TEST, seed=1)
    return build_sam2_model(TEST, ckpt)


@pytest.fixture(scope="module")
def image():
    return test_image(300, 420, seed=2)


def test_checkpoint_export_loads_strictly_in_upstream_build_sam2(model, image, tmp_path):
    from samadapt.exporters.sam2_checkpoint import write_sam2_checkpoint

    out = tmp_path / "exported.pt"
    write_sam2_checkpoint(model, out)
    assert set(torch.load(out, weights_only=True)) == {"model"}
    predictor = upstream_predictor(TEST, out)  # build_sam2 raises on any missing or unexpected key
    predictor.set_image(image)
    ref_masks, ref_scores, _ = predictor.predict(box=BOXES, multimask_output=True)
    masks, scores = predict(model, image, boxes=BOXES, multimask=True)
    assert_masks_equal(masks, ref_masks, 0.99)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4)
    # and samadapt's builder reads it back to the same weights
    again = build_sam2_model(TEST, out)
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_hf_export_reads_back_in_transformers(model, image, tmp_path):
    from transformers import Sam2Model, Sam2Processor

    from samadapt.exporters.sam2_hf import write_sam2_hf

    write_sam2_hf(model, tmp_path / "hf")
    hf = Sam2Model.from_pretrained(tmp_path / "hf").eval()
    processor = Sam2Processor.from_pretrained(tmp_path / "hf")
    ours_masks, ours_scores, ours_low = predict(model, image, boxes=BOXES, multimask=True, return_logits=True)

    # transformers end to end: its processor's resize, its model, its postprocessing
    inputs = processor(images=image, input_boxes=[BOXES.tolist()], return_tensors="pt")
    with torch.no_grad():
        out = hf(**inputs, multimask_output=True)
    masks = processor.post_process_masks(out.pred_masks, inputs["original_sizes"])[0].numpy()
    assert_masks_equal(masks, ours_masks, 0.99)

    # the weights alone: samadapt's pixels and prompts into Sam2Model give samadapt's logits
    tf = Sam2Transform(256)
    with torch.no_grad():
        out = hf(
            pixel_values=tf.preprocess_image(image)[None],
            input_boxes=tf.apply_boxes(BOXES, image.shape[:2])[None],
            multimask_output=True,
        )
    np.testing.assert_allclose(out.pred_masks[0].clamp(-32, 32).numpy(), ours_low, atol=1e-3)
    np.testing.assert_allclose(out.iou_scores[0].numpy(), ours_scores, atol=1e-4)


def test_onnx_export_reads_back_in_onnxruntime(model, image, tmp_path):
    import onnxruntime as ort

    from samadapt.exporters.sam2_onnx import DECODER, DECODER_INPUTS, DECODER_OUTPUTS, ENCODER, write_sam2_onnx

    write_sam2_onnx(model, tmp_path / "onnx", {"model_type": TEST})
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # the tracer's fixed shapes make ORT log a harmless shape-merge note
    encoder = ort.InferenceSession(str(tmp_path / "onnx" / ENCODER), opts)
    decoder = ort.InferenceSession(str(tmp_path / "onnx" / DECODER), opts)
    assert [i.name for i in decoder.get_inputs()] == DECODER_INPUTS
    assert [o.name for o in decoder.get_outputs()] == DECODER_OUTPUTS
    assert json.loads(decoder.get_modelmeta().custom_metadata_map["samadapt"]) == {"model_type": TEST}

    tf = Sam2Transform(256)
    size = image.shape[:2]
    high0, high1, embed = encoder.run(None, {"image": tf.preprocess_image(image)[None].numpy()})

    def run(coords, labels, mask_input=None):
        n = coords.shape[0]
        has = np.zeros(n, np.float32) if mask_input is None else np.ones(n, np.float32)
        mask_input = np.zeros((n, 1, 64, 64), np.float32) if mask_input is None else mask_input
        feeds = dict(zip(DECODER_INPUTS, [embed, high0, high1, coords, labels.astype(np.float32), mask_input, has]))
        return dict(zip(DECODER_OUTPUTS, decoder.run(None, feeds)))

    def to_image(low):  # the documented last step: one bilinear resize of the logits to (H, W)
        return F.interpolate(torch.from_numpy(low), size, mode="bilinear", align_corners=False).numpy() > 0

    # boxes: two corner points labelled 2 and 3
    box_points = tf.apply_boxes(BOXES, size).numpy().reshape(-1, 2, 2)
    out = run(box_points, np.tile([[2, 3]], (2, 1)))
    masks, scores, low = predict(model, image, boxes=BOXES, multimask=True, return_logits=True)
    assert_masks_equal(to_image(out["masks"]), masks, 0.99)
    np.testing.assert_allclose(out["iou_predictions"], scores, atol=1e-4)

    # clicks with the previous round's logits as mask prompt, single-mask output
    points = np.array([[[100.0, 120.0], [150.0, 200.0]], [[300.0, 200.0], [200.0, 100.0]]])
    labels = np.array([[1, 0], [1, 1]])
    masks, scores = predict(model, image, points=points, labels=labels, mask_input=low[:, :1])
    out = run(tf.apply_points(points, size).numpy(), labels, low[:, :1])
    assert_masks_equal(to_image(out["single_masks"])[:, 0], masks, 0.99)
    np.testing.assert_allclose(out["single_iou_predictions"][:, 0], scores, atol=1e-4)


OFFICIAL = ["sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus", "sam2.1_hiera_large"]


@pytest.mark.parametrize("model_type", [OFFICIAL[0]] + [pytest.param(t, marks=pytest.mark.slow) for t in OFFICIAL[1:]])
def test_official_architectures_map_onto_transformers(model_type):
    """Every weight of the official architecture finds its place in ``Sam2Model`` (names and shapes;
    ``sam2_hf_model`` raises otherwise) and the config describes the architecture."""
    require_sam2_or_skip()
    from samadapt.exporters.sam2_hf import sam2_hf_model

    torch.manual_seed(0)
    model = build_sam2_model(model_type)
    hf = sam2_hf_model(model)
    assert hf.config.vision_config.backbone_feature_sizes == [[256, 256], [128, 128], [64, 64]]
    trunk = model.image_encoder.trunk
    assert hf.config.vision_config.backbone_config.global_attention_blocks == list(trunk.global_att_blocks)
    assert torch.equal(hf.no_memory_embedding, model.no_mem_embed)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", OFFICIAL)
def test_official_architectures_in_transformers_give_samadapts_logits(model_type):
    """The whole 1024 px forward of the converted model (Hiera windows, position embeddings, neck)
    equals samadapt's on the same pixels and box."""
    require_sam2_or_skip()
    from samadapt.exporters.sam2_hf import sam2_hf_model

    torch.manual_seed(0)
    model = build_sam2_model(model_type)
    hf = sam2_hf_model(model)
    image = test_image(240, 320, seed=4)
    boxes = np.array([[20, 30, 200, 220], [100, 50, 300, 230]], np.float32)
    tf = Sam2Transform(1024)
    with torch.no_grad():
        out = hf(
            pixel_values=tf.preprocess_image(image)[None],
            input_boxes=tf.apply_boxes(boxes, image.shape[:2])[None],
            multimask_output=True,
        )
    _, scores, low = predict(model, image, boxes=boxes, multimask=True, return_logits=True)
    np.testing.assert_allclose(out.pred_masks[0].clamp(-32, 32).numpy(), low, atol=1e-3)
    np.testing.assert_allclose(out.iou_scores[0].numpy(), scores, atol=1e-4)

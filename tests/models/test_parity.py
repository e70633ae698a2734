"""Parity with upstream segment-anything (issue 2, point 2).

Right after ``adapt``, every strategy's ``predict`` gives the masks of upstream
``SamPredictor(sam).predict`` on the unadapted model, with logits within 1e-5; ``AdaptedSam.sam``
stays usable by upstream's ``SamPredictor`` and ``SamAutomaticMaskGenerator``. Checked on ``mini``
(boxes, multimask, points; every strategy) in seconds, and on a real ``vit_b`` (boxes) in a slow
test: one ViT-B encoder pass takes 20-40 s on a shared 2-core CPU.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from segment_anything import SamAutomaticMaskGenerator, SamPredictor

import samadapt

TOL = 1e-5
BOXES = np.array([[15, 20, 55, 60], [70, 50, 110, 85], [0, 0, 119, 89], [40, 10, 90, 70]], dtype=np.float32)
POINTS = np.array([[30, 40], [90, 70]], dtype=np.float32)
POINT_LABELS = np.array([1, 0])


def _upstream_box_predictions(predictor, boxes, multimask=False):
    """Per box: (masks, scores, low-res logits, high-res logits) from an upstream SamPredictor
    whose image is set."""
    out = []
    for box in boxes:
        masks, scores, low = predictor.predict(box=box, multimask_output=multimask)
        logits, _, _ = predictor.predict(box=box, multimask_output=multimask, return_logits=True)
        out.append((masks, scores, low, logits))
    return out


def _upstream_predictor(sam, image) -> SamPredictor:
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    return predictor


def _assert_masks_equal(ours, theirs, their_logits):
    """Equal masks; a pixel may only differ where upstream's logit is within float noise of 0."""
    differ = ours != theirs
    assert not (differ & (np.abs(their_logits) > 1e-4)).any()
    assert differ.mean() < 1e-4


def _check_box_parity(model, image, boxes, upstream, multimask=False):
    masks, scores, low = model.predict(image, boxes=boxes, multimask=multimask, return_logits=True)
    n_masks = 3 if multimask else 1
    assert low.shape == (len(boxes), n_masks, model.card.low_res_size, model.card.low_res_size)
    for i, (u_masks, u_scores, u_low, u_logits) in enumerate(upstream):
        ours_masks = masks[i] if multimask else masks[i][None]
        ours_scores = scores[i] if multimask else scores[i : i + 1]
        assert ours_masks.shape == u_masks.shape == (n_masks, *image.shape[:2])
        np.testing.assert_allclose(low[i], u_low, rtol=0, atol=TOL)
        np.testing.assert_allclose(ours_scores, u_scores, rtol=0, atol=TOL)
        _assert_masks_equal(ours_masks, u_masks, u_logits)


# ---------------------------------------------------------------------------- mini: every strategy
@pytest.mark.parametrize("strategy", sorted(samadapt.STRATEGIES))
def test_mini_predict_matches_upstream_right_after_adapt(strategy, make_mini, rgb_image):
    base = make_mini()
    predictor = _upstream_predictor(copy.deepcopy(base), rgb_image)
    upstream = _upstream_box_predictions(predictor, BOXES)
    upstream_multi = _upstream_box_predictions(predictor, BOXES[:2], multimask=True)
    u_masks, u_scores, u_low = predictor.predict(POINTS, POINT_LABELS, multimask_output=True)
    u_logits, _, _ = predictor.predict(POINTS, POINT_LABELS, multimask_output=True, return_logits=True)

    model = samadapt.adapt(base, strategy)
    _check_box_parity(model, rgb_image, BOXES, upstream)
    _check_box_parity(model, rgb_image, BOXES[:2], upstream_multi, multimask=True)
    masks, scores, low = model.predict(
        rgb_image, points=POINTS, labels=POINT_LABELS, multimask=True, return_logits=True
    )
    np.testing.assert_allclose(low[0], u_low, rtol=0, atol=TOL)
    np.testing.assert_allclose(scores[0], u_scores, rtol=0, atol=TOL)
    _assert_masks_equal(masks[0], u_masks, u_logits)


def test_batched_forward_matches_upstream_sam_forward(make_mini, mini_batch):
    """Several images with different numbers of prompts in one pass == upstream, image by image."""
    images, boxes = mini_batch
    base = make_mini()
    with torch.no_grad():
        embeddings = base.image_encoder(images)
        expected = []
        for i in range(len(images)):
            sparse, dense = base.prompt_encoder(points=None, boxes=boxes[i], masks=None)
            low, iou = base.mask_decoder(
                embeddings[i : i + 1], base.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=True
            )
            expected.append((low, iou))
        model = samadapt.adapt(base, "decoder")
        model.max_prompts_per_pass = 2  # also exercise the chunking
        out = model(images, boxes=boxes, multimask=True)
    assert out.image_index.tolist() == [0, 1, 1]
    torch.testing.assert_close(out.low_res_logits, torch.cat([e[0] for e in expected]), rtol=0, atol=TOL)
    torch.testing.assert_close(out.iou_predictions, torch.cat([e[1] for e in expected]), rtol=0, atol=TOL)


def test_predict_batch_equals_predict(make_mini, rgb_image):
    model = samadapt.adapt(make_mini(), "decoder")
    other = np.ascontiguousarray(rgb_image[::-1, :100])
    batch = model.predict_batch([rgb_image, other], [BOXES, BOXES[:1]], return_logits=True)
    for img, boxes, (masks, scores, low) in zip([rgb_image, other], [BOXES, BOXES[:1]], batch):
        m1, s1, low1 = model.predict(img, boxes=boxes, return_logits=True)
        # a batch of 2 images rounds differently from a batch of 1 (~1e-8): logits agree to TOL, and
        # a mask pixel may only flip where its logit is within that noise of 0
        np.testing.assert_allclose(low, low1, rtol=0, atol=TOL)
        np.testing.assert_allclose(scores, s1, rtol=0, atol=TOL)
        assert (masks != m1).mean() < 1e-3


def test_predict_batch_on_precomputed_embeddings(make_mini, rgb_image):
    """Embeddings from the encoder (an embedding cache) skip it and give the same predictions."""
    model = samadapt.adapt(make_mini(), "decoder")
    other = np.ascontiguousarray(rgb_image[::-1, :100])
    with torch.no_grad():
        emb = [model.encode(model.transform.preprocess_image(im)[None])[0] for im in (rgb_image, other)]
    for img, e, boxes in zip([rgb_image, other], emb, [BOXES, BOXES[:1]]):
        seen = model.encoder_images_seen
        ((masks, scores, low),) = model.predict_batch([img], [boxes], image_embeddings=[e], return_logits=True)
        assert model.encoder_images_seen == seen  # the encoder did not run
        m1, s1, low1 = model.predict(img, boxes=boxes, return_logits=True)
        np.testing.assert_array_equal(low, low1)  # the same computation otherwise: the same numbers
        np.testing.assert_array_equal(scores, s1)
        np.testing.assert_array_equal(masks, m1)
    with pytest.raises(samadapt.ConfigError, match="got 2 images but 1 image embeddings"):
        model.predict_batch([rgb_image, other], [BOXES, BOXES], image_embeddings=emb[:1])
    with pytest.raises(
        samadapt.ConfigError,
        match=r"image_embeddings\[1\] has shape \(128, 8, 8\); this 'mini' model's "
        r"encoder gives \(128, 16, 16\)",
    ):
        model.predict_batch([rgb_image, other], [BOXES, BOXES], image_embeddings=[emb[0], emb[1][:, :8, :8]])


@pytest.mark.parametrize("strategy, options", [("lora", {}), ("adapter", {"prompt_generator": True})])
def test_adapted_sam_works_with_upstream_predictor_and_generator(strategy, options, make_mini, rgb_image):
    """peft's LoRA layers and the adapter hooks live inside the upstream Sam, so upstream's tools
    run the adapted model, trained weights included."""
    model = samadapt.adapt(make_mini(), strategy, **options)
    with torch.no_grad():  # make the adaptation matter
        for _, p in model.trainable_named_parameters():
            p.add_(0.05 * torch.randn_like(p))
    predictor = SamPredictor(model.sam)
    predictor.set_image(rgb_image)
    u_masks, u_scores, u_low = predictor.predict(box=BOXES[0], multimask_output=False)
    masks, scores, low = model.predict(rgb_image, boxes=BOXES[:1], return_logits=True)
    np.testing.assert_allclose(low[0], u_low, rtol=0, atol=TOL)
    np.testing.assert_allclose(scores, u_scores, rtol=0, atol=TOL)

    generated = SamAutomaticMaskGenerator(
        model.sam, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0
    ).generate(rgb_image)
    assert isinstance(generated, list)
    for record in generated:
        assert record["segmentation"].shape == rgb_image.shape[:2]


# ---------------------------------------------------------------------------- vit_b: the real architecture
@pytest.fixture(scope="module")
def vit_b_upstream_boxes(vit_b_upstream):
    """The image and upstream's predictions for BOXES, computed once (one encoder pass)."""
    image = _vit_b_image()
    return image, _upstream_box_predictions(_upstream_predictor(vit_b_upstream, image), BOXES)


def _vit_b_image() -> np.ndarray:
    rng = np.random.default_rng(1)  # like the rgb_image fixture (function-scoped, so not usable here)
    img = rng.integers(60, 120, size=(90, 120, 3), dtype=np.uint8)
    img[20:60, 15:55] = (230, 200, 40)
    img[50:85, 70:110] = (20, 30, 160)
    return img


@pytest.mark.slow
@pytest.mark.parametrize("strategy", sorted(samadapt.STRATEGIES))
def test_vit_b_predict_matches_upstream_right_after_adapt(strategy, vit_b_base, vit_b_upstream_boxes):
    """A vit_b checkpoint in the official format, loaded by ``build_sam`` and adapted: same masks
    as upstream ``SamPredictor`` on the unadapted model, logits within 1e-5 (one encoder pass per
    strategy: slow on a CPU)."""
    image, upstream = vit_b_upstream_boxes
    model = samadapt.adapt(copy.deepcopy(vit_b_base), strategy)
    _check_box_parity(model, image, BOXES, upstream)

"""SAM 2.1 model family (samadapt/models/sam2_family): cards, checkpoint loading, preprocessing, the
differentiable forward, and parity of ``predict`` with upstream ``SAM2ImagePredictor``.

Parity: samadapt's ``predict`` and ``SAM2ImagePredictor(build_sam2(cfg, ckpt)).predict`` on the same
official-format file of a randomly initialised architecture, same image and prompts: masks IoU >=
0.999, scores to 1e-4. Most tests use the small test variant; the official tiny architecture runs
in the default suite, small / base+ / large are ``slow``.
"""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
import torch
from sam2_helpers import (
    assert_masks_equal,
    random_sam2_checkpoint,
    require_sam2_or_skip,
    test_image,
    upstream_predictor,
)
from script_helpers import run_script

from samadapt.errors import CheckpointError, ConfigError
from samadapt.models.checkpoints import file_sha256
from samadapt.models.sam2_family import (
    SAM2_MODEL_TYPES,
    Sam2Features,
    Sam2Transform,
    build_sam2_model,
    decode_prompts,
    encode_images,
    get_sam2_card,
    predict,
    predict_batch,
    require_sam2,
)

TEST = "sam2.1_hiera_test"
OFFICIAL = ["sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus", "sam2.1_hiera_large"]
BOXES = np.array([[10, 20, 200, 250], [120, 40, 400, 290], [60, 150, 180, 280]], np.float32)


# ------------------------------------------------------------------------------------------ no sam2 needed
def test_cards_name_the_official_files():
    for size, cfg in zip(("tiny", "small", "base_plus", "large"), ("t", "s", "b+", "l")):
        card = get_sam2_card(f"sam2.1_hiera_{size}")
        assert card.checkpoint == f"sam2.1_hiera_{size}.pt"
        assert card.config == f"configs/sam2.1/sam2.1_hiera_{cfg}.yaml"
        assert card.url == f"https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_{size}.pt"
        assert len(card.sha256) == 64 and int(card.sha256, 16) >= 0
        assert card.image_size == 1024 and card.feature_sizes == ((256, 256), (128, 128), (64, 64))
    test = get_sam2_card(TEST)
    assert test.checkpoint is None and test.sha256 is None and test.overrides
    assert len({c.tag for c in SAM2_MODEL_TYPES.values()}) == len(SAM2_MODEL_TYPES)


def test_missing_sam2_error_names_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "sam2.build_sam", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match="--no-build-isolation") as err:
        require_sam2()
    assert "SAM2_BUILD_CUDA=0" in str(err.value)


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def test_ckpt(tmp_path_factory):
    require_sam2_or_skip()
    return random_sam2_checkpoint(tmp_path_factory.mktemp("sam2") / "sam2_test_seed0.pt", TEST, seed=0)


@pytest.fixture(scope="module")
def model(test_ckpt):
    return build_sam2_model(TEST, test_ckpt)


@pytest.fixture(scope="module")
def reference(test_ckpt):
    return upstream_predictor(TEST, test_ckpt)


@pytest.fixture(scope="module")
def image():
    return test_image(300, 420)


def _check_parity(ours, ref, multimask: bool):
    """ours: samadapt's (masks, scores, low-res logits); ref: the predictor's (masks, scores, logits)."""
    masks, scores, low = ours
    ref_masks, ref_scores, ref_low = (np.asarray(x) for x in ref)
    if not multimask:  # the predictor keeps a size-1 mask axis
        ref_masks, ref_scores = ref_masks[:, 0], ref_scores[:, 0]
    assert_masks_equal(masks, ref_masks, 0.999)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4)
    np.testing.assert_allclose(low, ref_low, atol=1e-3)


# ------------------------------------------------------------------------------------------ building
def test_official_architectures_have_the_published_sizes():
    require_sam2_or_skip()
    from samadapt.models.sam2_family.build import _state_shapes, guess_sam2_model_type

    published = {"tiny": 389, "small": 460, "base_plus": 808, "large": 2244}  # Meta's README, 0.1M, truncated
    for size, n in published.items():
        shapes = _state_shapes(f"sam2.1_hiera_{size}")
        total = sum(int(np.prod(s)) for s in shapes.values())
        assert total // 100_000 == n, (size, total)
        assert guess_sam2_model_type({k: torch.empty(s, device="meta") for k, s in shapes.items()}) == (
            f"sam2.1_hiera_{size}"
        )


def test_checkpoint_loads_strictly_and_its_sha256_is_the_base_id(test_ckpt, tmp_path):
    m = build_sam2_model(TEST, test_ckpt)
    assert m.samadapt_base.base_id == f"sha256:{file_sha256(test_ckpt)}"
    assert not m.training
    renamed = shutil.copy(test_ckpt, tmp_path / "my_finetuned_sam21.pt")
    assert build_sam2_model(TEST, renamed).samadapt_base.base_id == m.samadapt_base.base_id
    assert build_sam2_model(TEST).samadapt_base.base_id == f"random:{TEST}"

    state = torch.load(test_ckpt, weights_only=True)["model"]
    del state["sam_mask_decoder.iou_token.weight"]
    torch.save({"model": state}, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="sam_mask_decoder.iou_token.weight"):
        build_sam2_model(TEST, tmp_path / "broken.pt")


def test_checkpoint_of_another_type_names_that_type(test_ckpt):
    with pytest.raises(CheckpointError, match=f"model_type='{TEST}'"):
        build_sam2_model("sam2.1_hiera_tiny", test_ckpt)


def test_official_file_names_are_checked(test_ckpt, tmp_path):
    fake = shutil.copy(test_ckpt, tmp_path / "sam2.1_hiera_tiny.pt")  # official name, other content
    with pytest.raises(CheckpointError, match="sha256") as err:
        build_sam2_model("sam2.1_hiera_tiny", fake)
    assert get_sam2_card("sam2.1_hiera_tiny").url in str(err.value)
    with pytest.raises(CheckpointError, match="use model_type='sam2.1_hiera_tiny'"):
        build_sam2_model("sam2.1_hiera_small", fake)


# ------------------------------------------------------------------------------------------ transforms
def test_preprocessing_is_the_predictors_and_squashes_the_aspect_ratio(reference, image):
    tf = Sam2Transform(256)
    x = tf.preprocess_image(image)
    assert x.shape == (3, 256, 256)
    assert torch.equal(x, reference._transforms(image))
    # no aspect ratio kept: x scales by S / W, y by S / H (SAM 1 would scale both by S / max(H, W))
    pts = tf.apply_points(np.array([[420.0, 300.0], [210.0, 75.0]]), (300, 420))
    torch.testing.assert_close(pts, torch.tensor([[256.0, 256.0], [128.0, 64.0]]))
    box = tf.apply_boxes(np.array([[0, 0, 420, 150]]), (300, 420))
    torch.testing.assert_close(box, torch.tensor([[0.0, 0.0, 256.0, 128.0]]))
    gt = np.zeros((300, 420), bool)
    gt[:150, :210] = True
    low = tf.masks_to_low_res(gt[None])
    assert low.shape == (1, 64, 64) and low[0, :32, :32].all() and low.sum() == 32 * 32


# ------------------------------------------------------------------------------------------ parity (test variant)
@pytest.mark.parametrize("multimask", [True, False])
def test_predict_boxes_equals_upstream_predictor(model, reference, image, multimask):
    reference.set_image(image)
    ref = reference.predict(box=BOXES, multimask_output=multimask)
    _check_parity(predict(model, image, boxes=BOXES, multimask=multimask, return_logits=True), ref, multimask)


@pytest.mark.parametrize("multimask", [True, False])
def test_predict_points_equals_upstream_predictor(model, reference, image, multimask):
    rng = np.random.default_rng(1)
    points = rng.uniform(0, 1, (4, 3, 2)) * [420, 300]
    labels = np.array([[1, 0, 1], [1, 1, 1], [0, 1, 0], [1, 1, 0]])
    reference.set_image(image)
    ref = reference.predict(point_coords=points, point_labels=labels, multimask_output=multimask)
    ours = predict(model, image, points=points, labels=labels, multimask=multimask, return_logits=True)
    _check_parity(ours, ref, multimask)


def test_predict_box_points_and_mask_input_equal_upstream_predictor(model, reference, image):
    """A corrective round: box + clicks + the previous round's low-res logits as mask prompt."""
    points = np.array([[[100.0, 120.0]], [[300.0, 200.0]], [[90.0, 230.0]]])
    labels = np.array([[0], [1], [1]])
    reference.set_image(image)
    _, _, prev = reference.predict(box=BOXES, multimask_output=False)
    ref = reference.predict(
        point_coords=points, point_labels=labels, box=BOXES, mask_input=prev, multimask_output=False
    )
    ours = predict(model, image, BOXES, points, labels, return_logits=True, mask_input=prev)
    _check_parity(ours, ref, multimask=False)


def test_predict_batch_equals_predict_per_image(model, image):
    other = test_image(200, 160, seed=3)
    boxes = [BOXES, np.array([[5, 5, 100, 150]], np.float32)]
    batch = predict_batch(model, [image, other], boxes, multimask=True, return_logits=True)
    for img, b, res in zip([image, other], boxes, batch):
        single = predict(model, img, boxes=b, multimask=True, return_logits=True)
        assert np.array_equal(res[0], single[0])
        np.testing.assert_allclose(res[1], single[1], atol=1e-5)
        np.testing.assert_allclose(res[2], single[2], atol=1e-4)


def test_predict_rejects_bad_prompts(model, image):
    with pytest.raises(ConfigError, match="boxes or points"):
        predict(model, image)
    with pytest.raises(ConfigError, match=r"\(N, P, 2\)"):
        predict(model, image, points=np.zeros((2, 3)), labels=np.zeros(2))
    with pytest.raises(ConfigError, match="RGB uint8"):
        predict(model, image.astype(np.float32), boxes=BOXES)


# ------------------------------------------------------------------------------------------ training forward
def test_forward_is_differentiable_batched_and_equals_predict(test_ckpt, image):
    """Two images with their own prompts in one pass: gradients reach the Hiera trunk, the neck, the
    prompt encoder and the decoder; in eval mode the logits are ``predict``'s."""
    model = build_sam2_model(TEST, test_ckpt)
    tf = Sam2Transform(256)
    other = test_image(200, 160, seed=3)
    images = torch.stack([tf.preprocess_image(image), tf.preprocess_image(other)])
    boxes = torch.cat([tf.apply_boxes(BOXES, (300, 420)), tf.apply_boxes([[5, 5, 100, 150]], (200, 160))])
    index = torch.tensor([0, 0, 0, 1])

    with torch.no_grad():
        low, iou = decode_prompts(model, encode_images(model, images), index, boxes=boxes, multimask=True)
    ref = predict_batch(
        model, [image, other], [BOXES, np.array([[5, 5, 100, 150]])], multimask=True, return_logits=True
    )
    torch.testing.assert_close(low[:3].clamp(-32, 32), torch.from_numpy(ref[0][2]), atol=1e-4, rtol=0)
    torch.testing.assert_close(iou[3:], torch.from_numpy(ref[1][1]), atol=1e-5, rtol=0)

    model.train()
    feats = encode_images(model, images)
    low, iou = decode_prompts(model, feats, index, boxes=boxes, multimask=False)
    assert low.shape == (4, 1, 64, 64) and iou.shape == (4, 1)
    (low.sigmoid().mean() + iou.mean()).backward()
    for name in (
        "image_encoder.trunk.blocks.0.attn.qkv.weight",
        "image_encoder.trunk.blocks.4.attn.proj.weight",
        "image_encoder.neck.convs.0.conv.weight",
        "no_mem_embed",
        "sam_prompt_encoder.point_embeddings.2.weight",
        "sam_mask_decoder.conv_s0.weight",
        "sam_mask_decoder.iou_prediction_head.layers.2.weight",
    ):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert model.get_parameter("memory_attention.layers.0.linear1.weight").grad is None  # video only


def test_cached_features_decode_as_fresh_ones(model, image):
    """What an embedding cache would hold (detached features, one image at a time, concatenated)
    decodes exactly as a batch encoded at once."""
    tf = Sam2Transform(256)
    other = test_image(200, 160, seed=3)
    x = torch.stack([tf.preprocess_image(image), tf.preprocess_image(other)])
    with torch.no_grad():
        together = encode_images(model, x)
        cached = Sam2Features.cat([encode_images(model, x[i : i + 1]) for i in range(2)])
        assert [tuple(t.shape) for t in cached.tensors] == [(2, 256, 16, 16), (2, 32, 64, 64), (2, 64, 32, 32)]
        boxes = tf.apply_boxes(BOXES, (300, 420))
        index = torch.tensor([1, 0, 1])
        a = decode_prompts(model, together, index, boxes=boxes, multimask=True)
        b = decode_prompts(model, cached, index, boxes=boxes, multimask=True)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------ official architectures
@pytest.mark.parametrize(
    "model_type",
    [pytest.param("sam2.1_hiera_tiny")] + [pytest.param(t, marks=pytest.mark.slow) for t in OFFICIAL[1:]],
)
def test_official_architecture_predict_equals_upstream_predictor(model_type, tmp_path):
    """The acceptance check on a random-init official-format file of the official architecture
    (1024 px): boxes, then points, against ``SAM2ImagePredictor(build_sam2(cfg, ckpt))``."""
    require_sam2_or_skip()
    ckpt = random_sam2_checkpoint(tmp_path / f"random_{model_type}.pt", model_type, seed=0)
    ours_model = build_sam2_model(model_type, ckpt)
    reference = upstream_predictor(model_type, ckpt)
    image = test_image(480, 640, seed=5)
    boxes = np.array([[40, 60, 300, 400], [350, 100, 620, 460]], np.float32)
    points = np.array([[[150.0, 200.0], [500.0, 300.0]], [[400.0, 250.0], [100.0, 100.0]]])
    labels = np.array([[1, 0], [1, 1]])

    reference.set_image(image)
    ref_boxes = reference.predict(box=boxes, multimask_output=True)
    ref_points = reference.predict(point_coords=points, point_labels=labels, multimask_output=False)
    # one encoder pass for both prompt kinds: predict_batch with the features predict would compute
    with torch.no_grad():
        feats = encode_images(ours_model, Sam2Transform(1024).preprocess_image(image)[None])
    ours_boxes = predict_batch(ours_model, [image], [boxes], features=feats, multimask=True, return_logits=True)[0]
    ours_points = predict_batch(ours_model, [image], [None], [points], [labels], features=feats, return_logits=True)[0]
    _check_parity(ours_boxes, ref_boxes, multimask=True)
    _check_parity(ours_points, ref_points, multimask=False)


def test_benchmark_smoke_run_checks_parity(tmp_path):
    """benchmarks/sam2_family.py --smoke: parameters of every type, the cache sizes, and the test
    variant's predict timed beside upstream's, whose masks must agree."""
    import json

    require_sam2_or_skip()
    run_script("benchmarks/sam2_family.py", "--smoke", "--out", str(tmp_path))
    data = json.loads((tmp_path / "sam2_family-cpu.json").read_text())
    assert data["checks"] and all(c["passed"] for c in data["checks"])
    params = {r["model_type"]: r for r in data["tables"][0]["rows"]}
    assert params["sam2.1_hiera_tiny"]["total"] == 38_962_498
    cache = {r["model_type"]: r for r in data["tables"][2]["rows"]}
    assert cache["sam2.1_hiera_large"]["mib_fp32"] == 16.0

"""Every registered strategy on SAM 2.1 (issue 20, phase 2; docs/sam2.md's plan, steps 1-3): what
trains, identity at initialisation, one optimizer step, adapter files, and ``AdaptedSam.predict``
equal to ``samadapt.models.sam2_family.predict`` on the same module. On the small random
``sam2.1_hiera_test`` variant; the official architectures are adapted weightless."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from sam2_helpers import random_sam2_checkpoint, require_sam2_or_skip, test_image

import samadapt
from samadapt.adapter_io import expected_tensors
from samadapt.errors import AdapterMismatchError, ConfigError
from samadapt.strategies.base import STRATEGIES

TEST = "sam2.1_hiera_test"
#: SAM2Base's modules on the image path; every other top-level module serves video only
IMAGE_PATH = ("image_encoder", "sam_prompt_encoder", "sam_mask_decoder", "no_mem_embed")
#: the decoder's projections of the high-resolution features: on the embedding cache's side
CACHE_SIDE = re.compile(r"sam_mask_decoder\.conv_s[01]\.")
DECODER = re.compile(r"sam_mask_decoder\.")
# Parameters a box-prompted forward never reads: the mask-prompt branch, the click-label
# embeddings, and the object-score head (video only).
BOX_PROMPT_UNUSED = re.compile(
    r"sam_prompt_encoder\.(mask_downscaling\.|point_embeddings\.[01]\.)|sam_mask_decoder\.pred_obj_score_head\."
)

VARIANTS = [(s, {}) for s in sorted(STRATEGIES)] + [
    ("lora", {"use_dora": True}),
    ("lora", {"targets": ("qkv", "proj", "mlp"), "train_decoder": False}),
    ("adapter", {"placement": ("mlp",), "train_decoder": False}),
    ("bitfit", {"train_decoder": False}),
]
VARIANT_IDS = [f"{s}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}" for s, o in VARIANTS]


def _intended(strategy: str, options: dict, name: str) -> bool:
    """Whether parameter ``name`` of a SAM 2.1 model should train, written from docs/sam2.md's plan
    independently of the strategies' code."""
    decoder = bool(DECODER.match(name)) and not CACHE_SIDE.match(name)
    train_decoder = options.get("train_decoder", True) and decoder
    if strategy == "decoder":
        return decoder
    if strategy == "full":
        return name.split(".")[0] in IMAGE_PATH
    if strategy == "lora":
        return ".lora_" in name or train_decoder
    if strategy == "adapter":
        return ".adapter_" in name or train_decoder
    if strategy == "bitfit":
        return (name.startswith("image_encoder.") and name.endswith(".bias")) or train_decoder
    raise AssertionError(f"strategy {strategy!r} has no SAM 2.1 test of what it trains: add it to _intended")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    require_sam2_or_skip()
    return random_sam2_checkpoint(tmp_path_factory.mktemp("sam2") / "test.pt", TEST)


@pytest.fixture(scope="module")
def base(ckpt):
    from samadapt.models.sam2_family import build_sam2_model

    return build_sam2_model(TEST, ckpt)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 256, 256, generator=g)
    boxes = [torch.tensor([[10.0, 20.0, 120.0, 140.0]]), torch.tensor([[30.0, 30.0, 200.0, 150.0], [0, 0, 60, 90]])]
    return images, boxes


def _trainable(model) -> set[str]:
    return {n for n, p in model.sam.named_parameters() if p.requires_grad}


def _loss_all_heads(model, images, boxes) -> torch.Tensor:
    features = model.encode(images)
    outs = (model.decode(features, boxes), model.decode(features, boxes, multimask=True))
    return sum(o.low_res_logits.square().mean() + o.iou_predictions.sum() for o in outs)


@pytest.mark.parametrize("strategy, options", VARIANTS, ids=VARIANT_IDS)
def test_each_strategy_trains_what_it_declares_and_never_the_video_modules(strategy, options, base):
    model = samadapt.adapt(copy.deepcopy(base), strategy, **options)
    names = [n for n, _ in model.sam.named_parameters()]
    assert _trainable(model) == {n for n in names if _intended(strategy, options, n)}
    assert not any(n.split(".")[0] not in IMAGE_PATH for n in _trainable(model))
    assert set(model.trainable_state_dict()) == _trainable(model)
    assert model.encoder_is_frozen == (not any(n.startswith("image_encoder.") for n in _trainable(model)))


@pytest.mark.parametrize("strategy, options", VARIANTS, ids=VARIANT_IDS)
def test_adapted_model_starts_identical_to_the_base(strategy, options, base, batch):
    images, boxes = batch
    with torch.no_grad():
        reference = samadapt.adapt(copy.deepcopy(base), "decoder")(images, boxes=boxes, multimask=True)
        out = samadapt.adapt(copy.deepcopy(base), strategy, **options)(images, boxes=boxes, multimask=True)
    assert torch.equal(out.low_res_logits, reference.low_res_logits)
    assert torch.equal(out.iou_predictions, reference.iou_predictions)


@pytest.mark.parametrize("strategy, options", VARIANTS, ids=VARIANT_IDS)
def test_optimizer_steps_change_exactly_the_trainable_weights(strategy, options, base, batch):
    """Two Adam steps on a loss of ``decode_prompts``' masks (through ``AdaptedSam.decode``): every
    trainable weight a box prompt reaches moves, every other tensor of the full state dict, video
    modules and buffers included, stays bit-identical."""
    model = samadapt.adapt(copy.deepcopy(base), strategy, **options)
    before = {k: v.clone() for k, v in model.sam.state_dict().items()}
    opt = torch.optim.Adam([p for p in model.sam.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    for _ in range(2):
        opt.zero_grad()
        _loss_all_heads(model, *batch).backward()
        opt.step()
    after = model.sam.state_dict()
    assert after.keys() == before.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {n for n in _trainable(model) if not BOX_PROMPT_UNUSED.match(n)}


def test_lora_short_targets_name_the_hiera_blocks(base):
    depth = len(base.image_encoder.trunk.blocks)
    model = samadapt.adapt(copy.deepcopy(base), "lora", targets=("qkv", "proj", "mlp"), train_decoder=False)
    layers = ("attn.qkv", "attn.proj", "mlp.layers.0", "mlp.layers.1")
    expected = {
        f"image_encoder.trunk.blocks.{i}.{layer}.lora_{ab}.default.weight"
        for i in range(depth)
        for layer in layers
        for ab in "AB"
    }
    assert _trainable(model) == expected
    pattern = samadapt.adapt(copy.deepcopy(base), "lora", targets=("sam_mask_decoder.transformer.*_proj",))
    assert pattern.encoder_is_frozen
    assert any(".lora_" in n for n in _trainable(pattern))


def test_adapter_widths_follow_the_hiera_stages_and_the_prompt_generator_is_refused(base):
    model = samadapt.adapt(copy.deepcopy(base), "adapter")
    for block in model.sam.image_encoder.trunk.blocks:
        assert block.adapter_attn.up.out_features == block.dim_out == block.adapter_mlp.up.out_features
    fresh = copy.deepcopy(base)
    with pytest.raises(ConfigError, match="prompt_generator"):
        samadapt.adapt(fresh, "adapter", prompt_generator=True)
    assert all(p.requires_grad for p in fresh.parameters()) and not hasattr(fresh, "samadapt_strategy")


@pytest.mark.parametrize("strategy, options", VARIANTS[: len(STRATEGIES)] + [("lora", {"use_dora": True})])
def test_adapter_file_round_trips_bound_to_the_base(strategy, options, base, ckpt, batch, tmp_path):
    from samadapt.models.sam2_family import build_sam2_model

    model = samadapt.adapt(copy.deepcopy(base), strategy, **options)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in model.trainable_named_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    path = samadapt.save_adapter(model, tmp_path / "a.safetensors")
    meta = samadapt.read_adapter_metadata(path)
    assert meta["model_type"] == TEST and meta["base_id"] == base.samadapt_base.base_id
    assert meta["base_id"].startswith("sha256:") and set(meta["tensor_names"]) == _trainable(model)
    loaded = samadapt.load_adapter(path, build_sam2_model(TEST, ckpt))
    with torch.no_grad():
        a, b = model(batch[0], boxes=batch[1], multimask=True), loaded(batch[0], boxes=batch[1], multimask=True)
    assert torch.equal(a.low_res_logits, b.low_res_logits)
    other = random_sam2_checkpoint(tmp_path / "other.pt", TEST, seed=1)
    with pytest.raises(AdapterMismatchError, match="base weights"):
        samadapt.load_adapter(path, build_sam2_model(TEST, other))


def test_adapters_do_not_cross_families(base, make_mini, tmp_path):
    sam1 = samadapt.save_adapter(samadapt.adapt(make_mini(), "decoder"), tmp_path / "sam1.safetensors")
    sam2 = samadapt.save_adapter(samadapt.adapt(copy.deepcopy(base), "decoder"), tmp_path / "sam2.safetensors")
    with pytest.raises(AdapterMismatchError, match=r"SAM 1 model type 'mini'.*SAM 2\.1.*build_sam\('mini'"):
        samadapt.load_adapter(sam1, copy.deepcopy(base))
    with pytest.raises(AdapterMismatchError, match=r"SAM 2\.1 model type .*SAM 1.*build_sam2_model"):
        samadapt.load_adapter(sam2, make_mini())


@pytest.mark.parametrize("strategy", ["lora", "adapter"])
def test_adapted_predict_equals_sam2_predict_on_the_same_module(strategy, base):
    """AdaptedSam.predict / predict_batch vs samadapt.models.sam2_family.predict (whose parity with
    SAM2ImagePredictor tests/models/test_sam2_family.py checks), after the weights moved."""
    from samadapt.models.sam2_family import predict, predict_batch

    model = samadapt.adapt(copy.deepcopy(base), strategy)
    with torch.no_grad():
        for _, p in model.trainable_named_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    images = [test_image(), test_image(200, 150, seed=1)]
    boxes = [np.array([[10, 20, 200, 250], [120, 40, 400, 290]], np.float32), np.array([[5, 5, 100, 180]], np.float32)]
    points = [np.array([[[100, 120]], [[300, 200]]], np.float32), np.array([[[50, 90]]], np.float32)]
    labels = [np.ones((2, 1), np.int64), np.ones((1, 1), np.int64)]
    for multimask in (False, True):
        ours = model.predict(images[0], boxes=boxes[0], multimask=multimask)
        ref = predict(model.sam, images[0], boxes=boxes[0], multimask=multimask)
        assert np.array_equal(ours[0], ref[0]) and np.allclose(ours[1], ref[1], atol=1e-6)
        ours_b = model.predict_batch(images, boxes, points, labels, multimask=multimask)
        ref_b = predict_batch(model.sam, images, boxes, points, labels, multimask=multimask)
        for o, r in zip(ours_b, ref_b):
            assert np.array_equal(o[0], r[0]) and np.allclose(o[1], r[1], atol=1e-6)
            assert 0.001 < o[0].mean() < 0.999  # not trivial masks
    features = model.encode(torch.stack([model.transform.preprocess_image(im) for im in images]))
    cached = model.predict_batch(images, boxes, image_embeddings=features)
    for o, r in zip(cached, model.predict_batch(images, boxes)):
        assert np.array_equal(o[0], r[0])


@pytest.mark.parametrize("model_type", ["sam2.1_hiera_tiny", "sam2.1_hiera_large"])
def test_strategies_apply_to_the_official_architectures(model_type):
    """Weightless builds: each strategy's trainable tensors; decoder and full as docs/sam2.md counts."""
    require_sam2_or_skip()
    counts = {s: sum(int(np.prod(v)) for v in expected_tensors(model_type, s, {}).values()) for s in STRATEGIES}
    assert counts["decoder"] == 4_190_437
    image_path = {"sam2.1_hiera_tiny": 31_440_721, "sam2.1_hiera_large": 216_924_865}[model_type]
    assert counts["full"] == image_path
    lora = expected_tensors(model_type, "lora", {"targets": ("qkv", "proj")})
    assert any(re.fullmatch(r"image_encoder\.trunk\.blocks\.\d+\.attn\.proj\.lora_B\.default\.weight", n) for n in lora)
    assert all(counts["decoder"] < counts[s] < counts["full"] for s in ("lora", "adapter", "bitfit"))

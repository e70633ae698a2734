"""Exports of *adapted* SAM 2.1 models (docs/sam2.md, plan step 6): ``samadapt.export`` and
``samadapt export`` dispatch on the model family, and each format is read back by the runtime that
reads it, with masks equal to ``AdaptedSam.predict`` (IoU >= 0.99):

- ``sam``: upstream ``build_sam2(config, ckpt_path=F, hydra_overrides_extra=card.overrides)`` (strict)
  with ``SAM2ImagePredictor``; the file holds the folded adaptation and nothing else changed;
- ``hf``: transformers' ``Sam2Model`` / ``Sam2Processor``;
- ``onnx``: onnxruntime on the SAM 2.1 pair (LoRA folded, adapter bottlenecks traced);
- ``peft``: ``peft.PeftModel.from_pretrained`` on an upstream ``SAM2Base``, and ``samadapt.import_peft``;
- refusals: the ``adapter`` strategy by the formats that cannot carry it, SAM 1's ONNX options.

On the small random ``sam2.1_hiera_test`` variant (256 px); every model's trainable tensors are moved
away from identity with a seeded generator (LoRA B non-zero, so the fold matters).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from sam2_helpers import (
    assert_masks_equal,
    iou,
    random_sam2_checkpoint,
    require_sam2_or_skip,
    test_image,
    upstream_predictor,
)

import samadapt
from samadapt import cli
from samadapt.errors import ConfigError
from samadapt.exporters import METADATA_FILE
from samadapt.models.sam2_family import get_sam2_card

TEST = "sam2.1_hiera_test"
BOXES = np.array([[10, 20, 200, 250], [120, 40, 400, 290]], np.float32)
FOLDING = {  # strategies whose adaptation folds into SAM 2.1's own weights
    "decoder": ("decoder", {}),
    "lora": ("lora", {}),
    "dora": ("lora", {"use_dora": True}),
    "bitfit": ("bitfit", {}),
    "full": ("full", {}),
}


def _upstream_names(model) -> set[str]:
    """The upstream tensors the trained ones fold into: LoRA's A / B and DoRA's magnitude into their
    layer's ``weight``, every other trainable tensor under its own name."""
    return {n.split(".lora_")[0] + ".weight" if ".lora_" in n else n for n in model.trainable_state_dict()}


def _predictor(model):
    """upstream ``SAM2ImagePredictor`` on a model built here (the 256 px feature sizes set, as
    ``sam2_helpers.upstream_predictor`` does)."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        predictor = SAM2ImagePredictor(model)
    predictor._bb_feat_sizes = list(get_sam2_card(TEST).feature_sizes)
    return predictor


def _assert_predicts_as_ours(predictor, image, ours_result):
    """Meta's predictor on ``image`` with ``BOXES`` gives ``ours_result``'s masks (IoU >= 0.99) and
    scores (to 1e-4). Returns our masks."""
    predictor.set_image(image)
    up_masks, up_scores, _ = predictor.predict(box=BOXES, multimask_output=False)
    masks, scores, _ = ours_result
    assert_masks_equal(up_masks[:, 0], masks, 0.99)
    np.testing.assert_allclose(up_scores[:, 0], scores, atol=1e-4)
    return masks


@pytest.fixture(scope="module")
def base_file(tmp_path_factory):
    """An official-format file of random weights under a non-official name (its sha256 is the base id)."""
    require_sam2_or_skip()
    return random_sam2_checkpoint(tmp_path_factory.mktemp("sam2adapted") / "sam2_test_base.pt", TEST, seed=1)


@pytest.fixture(scope="module")
def image():
    return test_image(300, 420, seed=2)


@pytest.fixture(scope="module")
def base(base_file):
    """The unadapted base (an upstream ``SAM2Base``)."""
    from samadapt.models.sam2_family import build_sam2_model

    return build_sam2_model(TEST, base_file)


@pytest.fixture(scope="module")
def base_masks(base, image):
    from samadapt.models.sam2_family import predict

    return predict(base, image, boxes=BOXES)[0]


@pytest.fixture(scope="module")
def adapted(base_file, perturb):
    """``adapted(name)``: the perturbed model of ``FOLDING[name]`` or ``"adapter"`` (built once each)."""
    from samadapt.models.sam2_family import build_sam2_model

    made = {}

    def make(name: str):
        if name not in made:
            strategy, options = FOLDING.get(name, (name, {}))
            model = samadapt.adapt(build_sam2_model(TEST, base_file), strategy, **options)
            made[name] = perturb(model).eval()  # conftest: moved as training would
        return made[name]

    return make


@pytest.fixture(scope="module")
def ours(adapted, image):
    """``ours(name, multimask=False)``: ``AdaptedSam.predict`` of ``adapted(name)`` for ``BOXES``
    (masks, scores, low-res logits), computed once each."""
    made = {}

    def predict(name: str, multimask: bool = False):
        if (name, multimask) not in made:
            made[name, multimask] = adapted(name).predict(image, boxes=BOXES, multimask=multimask, return_logits=True)
        return made[name, multimask]

    return predict


# ---------------------------------------------------------------------------- sam: upstream build_sam2
@pytest.mark.parametrize("name", list(FOLDING))
def test_sam_export_loads_strictly_in_upstream_build_sam2(name, adapted, ours, base_file, base_masks, image, tmp_path):
    model = adapted(name)
    out = samadapt.export(model, to="sam", out=tmp_path / "exported.pt")
    saved = torch.load(out, weights_only=True)
    assert set(saved) == {"model"}
    # the adaptation is in the file, folded where it belongs, and nothing else changed (video modules
    # included): exactly the upstream tensors the trained ones fold into differ from the base's
    base_state = torch.load(base_file, weights_only=True)["model"]
    assert set(saved["model"]) == set(base_state)
    changed = {k for k, v in saved["model"].items() if not torch.equal(v, base_state[k])}
    assert changed == _upstream_names(model)
    assert json.loads(out.with_name(out.name + ".json").read_text())["strategy"] == model.strategy

    predictor = upstream_predictor(TEST, out)  # build_sam2(cfg, ckpt_path=out, overrides): strict
    masks = _assert_predicts_as_ours(predictor, image, ours(name))
    assert min(iou(m, b) for m, b in zip(masks, base_masks)) < 0.9  # not the base's masks


# ---------------------------------------------------------------------------- hf: transformers Sam2Model
@pytest.mark.parametrize("name", list(FOLDING))
def test_hf_export_reads_back_in_transformers(name, adapted, ours, image, tmp_path):
    from transformers import Sam2Model, Sam2Processor

    model = adapted(name)
    folder = samadapt.export(model, to="hf", out=tmp_path / "hf")
    assert json.loads((folder / "config.json").read_text())["samadapt"]["strategy"] == model.strategy
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["samadapt"])["model_type"] == TEST
    assert json.loads((folder / METADATA_FILE).read_text())["exported_as"] == "hf"

    hf = Sam2Model.from_pretrained(folder).eval()
    processor = Sam2Processor.from_pretrained(folder)
    # transformers end to end: its processor's resize, its model, its postprocessing; the single mask
    # (with upstream's stability fallback, which Sam2Model applies too)
    inputs = processor(images=image, input_boxes=[BOXES.tolist()], return_tensors="pt")
    with torch.no_grad():
        out = hf(**inputs, multimask_output=False)
    theirs = processor.post_process_masks(out.pred_masks, inputs["original_sizes"])[0].numpy()
    assert_masks_equal(theirs[:, 0], ours(name)[0], 0.99)
    # the weights alone: samadapt's pixels and prompts into Sam2Model give samadapt's logits, all
    # three multimask outputs
    _, scores, low = ours(name, multimask=True)
    tf = model.transform
    with torch.no_grad():
        out = hf(
            pixel_values=tf.preprocess_image(image)[None],
            input_boxes=tf.apply_boxes(BOXES, image.shape[:2])[None],
            multimask_output=True,
        )
    np.testing.assert_allclose(out.pred_masks[0].clamp(-32, 32).numpy(), np.clip(low, -32, 32), atol=1e-3)
    np.testing.assert_allclose(out.iou_scores[0].numpy(), scores, atol=1e-4)


# ---------------------------------------------------------------------------- onnx: onnxruntime
@pytest.mark.parametrize("name", ["lora", "adapter"])
def test_onnx_pair_runs_the_adaptation_in_onnxruntime(name, adapted, ours, base, image, tmp_path):
    import onnxruntime as ort

    from samadapt.exporters.sam2_onnx import DECODER_INPUTS, DECODER_OUTPUTS
    from samadapt.models.sam2_family import encode_images

    model = adapted(name)
    folder = samadapt.export(model, to="onnx", out=tmp_path / "onnx")
    assert sorted(p.name for p in folder.iterdir()) == ["decoder.onnx", "encoder.onnx", METADATA_FILE]
    assert model.sam.training is False  # the export left the model as it was
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # the tracer's fixed shapes make ORT log a harmless shape-merge note
    encoder = ort.InferenceSession(str(folder / "encoder.onnx"), opts, providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(folder / "decoder.onnx"), opts, providers=["CPUExecutionProvider"])
    meta = json.loads(decoder.get_modelmeta().custom_metadata_map["samadapt"])
    assert (meta["strategy"], meta["exported_as"]) == (model.strategy, "onnx")

    tf = model.transform
    x = tf.preprocess_image(image)[None]
    high0, high1, embed = encoder.run(None, {"image": x.numpy()})
    with torch.no_grad():  # the encoder's adaptation is in the graph: not the base's embedding
        base_embed = encode_images(base, x).image_embed.numpy()
    assert np.abs(embed - base_embed).max() > 1e-2 * np.abs(base_embed).max()

    n = len(BOXES)
    coords = tf.apply_boxes(BOXES, image.shape[:2]).numpy().reshape(n, 2, 2)
    feeds = [embed, high0, high1, coords, np.tile([[2.0, 3.0]], (n, 1)).astype(np.float32)]
    feeds += [np.zeros((n, 1, 64, 64), np.float32), np.zeros(n, np.float32)]
    out = dict(zip(DECODER_OUTPUTS, decoder.run(None, dict(zip(DECODER_INPUTS, feeds)))))

    def to_image(low):  # one bilinear resize of the logits to (H, W), as docs/export.md says
        t = torch.nn.functional.interpolate(torch.from_numpy(low), image.shape[:2], mode="bilinear")
        return t.numpy() > 0

    masks, scores, _ = ours(name, multimask=True)
    assert_masks_equal(to_image(out["masks"]), masks, 0.99)
    np.testing.assert_allclose(out["iou_predictions"], scores, atol=1e-4)
    masks, scores, _ = ours(name)
    assert_masks_equal(to_image(out["single_masks"])[:, 0], masks, 0.99)
    np.testing.assert_allclose(out["single_iou_predictions"][:, 0], scores, atol=1e-4)


# ---------------------------------------------------------------------------- peft: peft's folder
def test_peft_export_reads_back_in_peft_and_samadapt(adapted, ours, base_file, image, tmp_path):
    import peft
    from safetensors.torch import load_file

    from samadapt.models.sam2_family import build_sam2_model

    model = adapted("lora")
    folder = samadapt.export(model, to="peft", out=tmp_path / "peft")
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "mask_decoder.safetensors",
        METADATA_FILE,
    ]
    decoder = load_file(str(folder / "mask_decoder.safetensors"))
    assert decoder and all(k.startswith("sam_mask_decoder.") for k in decoder)
    # peft on an upstream SAM2Base built by build_sam2, with the trained decoder copied in
    from sam2.build_sam import build_sam2

    card = get_sam2_card(TEST)
    upstream = build_sam2(card.config, str(base_file), device="cpu", hydra_overrides_extra=list(card.overrides))
    assert upstream.load_state_dict(decoder, strict=False).unexpected_keys == []
    upstream = peft.PeftModel.from_pretrained(upstream, str(folder)).base_model.model.eval()
    _assert_predicts_as_ours(_predictor(upstream), image, ours("lora"))
    # and samadapt reads the folder back to the same trained tensors
    back = samadapt.import_peft(folder, build_sam2_model(TEST, base_file))
    ours, theirs = model.trainable_state_dict(), back.trainable_state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


# ---------------------------------------------------------------------------- refusals
def test_adapter_blocks_refused_by_the_formats_that_cannot_carry_them(adapted, tmp_path, assert_adapter_blocks_refused):
    assert_adapter_blocks_refused(adapted("adapter"), adapted("decoder"), r"trunk\.blocks\.0", tmp_path / "exports")


# ---------------------------------------------------------------------------- the command line
def test_cli_export_of_a_sam2_adapter_file(adapted, ours, base_file, image, tmp_path, capsys):
    """``samadapt export FILE --to sam --checkpoint BASE`` loads the adapter onto its base, writes the
    folded file and prints how to load it; the printed call (upstream build_sam2) loads it."""
    import sam2.build_sam

    model = adapted("lora")
    adapter = samadapt.save_adapter(model, tmp_path / "lora.safetensors")
    out = tmp_path / "exported.pt"
    argv = ["export", str(adapter), "--to", "sam", "--out", str(out), "--checkpoint", str(base_file)]
    assert cli.main(argv) == 0
    said = capsys.readouterr().out.splitlines()[-1]
    assert said.startswith("load it with sam2.build_sam.build_sam2('configs/sam2.1/sam2.1_hiera_t.yaml'")
    call = said.removeprefix("load it with ").split("; ")[0]
    loaded = eval(call, {"sam2": sam2})  # the printed line, as a user runs it
    _assert_predicts_as_ours(_predictor(loaded), image, ours("lora"))
    meta = json.loads(Path(f"{out}.json").read_text())
    assert (meta["model_type"], meta["strategy"], meta["adapter_file"]) == (TEST, "lora", "lora.safetensors")

    # SAM 1's ONNX options are refused before the base is loaded or anything written
    for flag in ("--quantize", "--rgb-encoder"):
        argv = ["export", str(adapter), "--to", "onnx", "--out", str(tmp_path / "onnx"), flag]
        assert cli.main(argv) == cli.EXIT_ERROR
        assert "written for SAM 1 only" in capsys.readouterr().err
    assert not (tmp_path / "onnx").exists()


def test_sam1_onnx_options_refused_for_an_adapted_sam2_model(adapted, tmp_path):
    for option in ("quantize", "rgb_encoder"):
        with pytest.raises(ConfigError, match=rf"the 'onnx' export of a SAM 2.1 model takes no option \['{option}'\]"):
            samadapt.export(adapted("lora"), to="onnx", out=tmp_path / "onnx", **{option: True})
    assert not (tmp_path / "onnx").exists()

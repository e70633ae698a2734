"""DoRA end to end, as a user runs it: the ``lora`` strategy's ``use_dora`` option (``--lora-use-dora``,
peft's name) trained by the trainer, saved, loaded, exported to ``sam``, ``hf`` and ``onnx`` with the
adapted model's masks, and through peft's own folder format both ways. ``tests/exporters/test_export.py`` runs
DoRA's exports on a perturbed model too (masks of some size, IoU >= 0.99 in each runtime).

The strategy-wide checks (what trains, what an optimizer step moves, the file round trip) run DoRA as
one of their variants in ``tests/strategies/test_strategies.py`` and ``tests/adapters/test_adapter_io.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_export import (
    BOXES,
    _assert_masks_equal,
    _check_onnx_against_predict,
    _hf_masks,
    _high_res_logits,
    _image,
    _iou,
    _upstream_predictions,
)
from training_helpers import tiny_config, train_here

import samadapt

MAGNITUDE = "lora_magnitude_vector"


@pytest.fixture(scope="module")
def dora_run(demo_data_root, mini_checkpoint, tmp_path_factory):
    """A tiny DoRA run of the trainer: 3 steps at the default learning rate, no warm-up."""
    cfg = tiny_config(
        demo_data_root,
        tmp_path_factory.mktemp("dora_run"),
        mini_checkpoint,
        strategy="lora",
        strategy_options={"use_dora": True},
        epochs=1,
        warmup_steps=0,
    )
    return train_here(cfg).adapter_path


def _row_norm(w: torch.Tensor) -> torch.Tensor:
    return w.norm(p=2, dim=1)


def test_the_command_line_option_reaches_the_strategy():
    from samadapt.cli import add_train_arguments, train_config_from_args

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    assert "--lora-use-dora" in parser.format_help()
    cfg = train_config_from_args(parser.parse_args(["--strategy", "lora", "--lora-use-dora", "--lora-rank", "2"]))
    assert cfg.strategy_options == {"use_dora": True, "rank": 2}
    cfg = train_config_from_args(parser.parse_args(["--strategy", "lora", "--no-lora-use-dora"]))
    assert cfg.strategy_options == {"use_dora": False}


def test_trained_dora_adapter_holds_the_magnitudes_and_loads_back(dora_run, make_mini, mini_batch):
    """The file names the option, holds A, B and a magnitude per targeted layer (moved by training
    away from ``||W||``, its start), and loads back onto a fresh base as a DoRA model."""
    meta = samadapt.read_adapter_metadata(dora_run)
    assert meta["strategy"] == "lora" and meta["strategy_config"]["use_dora"] is True
    tensors = load_file(str(dora_run))
    base = make_mini().state_dict()
    depth = samadapt.get_model_card("mini").encoder_depth
    for i in range(depth):
        layer = f"image_encoder.blocks.{i}.attn.qkv"
        for part in ("lora_A", "lora_B", MAGNITUDE):
            assert f"{layer}.{part}.default.weight" in tensors
        assert tensors[f"{layer}.lora_B.default.weight"].abs().max() > 0
        magnitude = tensors[f"{layer}.{MAGNITUDE}.default.weight"]
        assert (magnitude - _row_norm(base[f"{layer}.weight"])).abs().max() > 1e-5  # it starts at ||W||
    loaded = samadapt.load_adapter(dora_run, make_mini())
    assert loaded.config.use_dora and loaded.strategy == "lora"
    state = loaded.trainable_state_dict()
    assert state.keys() == tensors.keys() and all(torch.equal(state[k], tensors[k]) for k in tensors)
    images, boxes = mini_batch
    again = samadapt.load_adapter(dora_run, make_mini())
    with torch.no_grad():
        assert torch.equal(loaded(images, boxes=boxes).low_res_logits, again(images, boxes=boxes).low_res_logits)
        undora = samadapt.adapt(make_mini(), "lora", use_dora=False)
        undora.load_trainable_state({k: v for k, v in tensors.items() if MAGNITUDE not in k})
        assert not torch.equal(loaded.encode(images), undora.encode(images))  # the magnitudes take part


def test_sam_export_holds_the_dora_weights_and_runs_in_upstream(dora_run, mini_checkpoint, make_mini, tmp_path):
    """The plain SAM file holds ``m * (W + s B A) / ||W + s B A||`` (the DoRA paper's formula, written
    here independently of peft) in every targeted layer, and upstream SamPredictor on it gives the
    adapted model's masks."""
    out = samadapt.export(dora_run, to="sam", out=tmp_path / "dora.pth", checkpoint=mini_checkpoint)
    state = torch.load(out, weights_only=True)
    tensors = load_file(str(dora_run))
    base = make_mini().state_dict()
    config = samadapt.read_adapter_metadata(dora_run)["strategy_config"]
    scaling = config["alpha"] / config["rank"]
    for i in range(samadapt.get_model_card("mini").encoder_depth):
        layer = f"image_encoder.blocks.{i}.attn.qkv"
        a, b = tensors[f"{layer}.lora_A.default.weight"], tensors[f"{layer}.lora_B.default.weight"]
        magnitude = tensors[f"{layer}.{MAGNITUDE}.default.weight"]
        w = base[f"{layer}.weight"] + scaling * b @ a
        dora = magnitude[:, None] * w / _row_norm(w)[:, None]
        torch.testing.assert_close(state[f"{layer}.weight"], dora)
        # the trained magnitude is in the file: the plain LoRA merge is much farther from it
        assert (state[f"{layer}.weight"] - w).abs().max() > 100 * (state[f"{layer}.weight"] - dora).abs().max()
    model = samadapt.load_adapter(dora_run, make_mini()).eval()
    image = _image()
    masks, scores, low = model.predict(image, boxes=BOXES, return_logits=True)
    card = dataclasses.asdict(model.card)
    ((up_masks, up_scores),) = _upstream_predictions([out], image, BOXES, tmp_path, card=card)
    np.testing.assert_allclose(up_scores, scores, rtol=0, atol=1e-4)
    _assert_masks_equal(masks, up_masks, _high_res_logits(model, low[:, 0], image.shape[:2]))
    assert all(_iou(ours, theirs) >= 0.99 for ours, theirs in zip(masks, up_masks) if (ours | theirs).any())


def test_hf_export_gives_the_adapted_masks_in_transformers(dora_run, mini_checkpoint, make_mini, tmp_path):
    folder = samadapt.export(dora_run, to="hf", out=tmp_path / "hf", checkpoint=mini_checkpoint)
    model = samadapt.load_adapter(dora_run, make_mini()).eval()
    image = _image()
    masks, _ = model.predict(image, boxes=BOXES)
    theirs = _hf_masks(folder, image, BOXES)
    assert theirs.shape == masks.shape and (masks != theirs).mean() < 1e-3
    assert all(_iou(ours, hf) >= 0.99 for ours, hf in zip(masks, theirs) if (ours | hf).any())


def test_onnx_export_gives_the_adapted_masks_in_onnxruntime(dora_run, mini_checkpoint, make_mini, tmp_path):
    """Embeddings within 1e-4 relative and masks equal to ``predict`` (boxes and clicks), so IoU 1."""
    folder = samadapt.export(dora_run, to="onnx", out=tmp_path / "onnx", checkpoint=mini_checkpoint)
    model = samadapt.load_adapter(dora_run, make_mini()).eval()
    _check_onnx_against_predict(model, folder, _image())


@pytest.mark.filterwarnings("ignore:Could not find a config file:UserWarning")  # peft looks for a HF config
def test_peft_folder_both_ways(dora_run, mini_checkpoint, make_mini, mini_batch, tmp_path):
    """Our peft export: peft's reader sees a DoRA config, and peft's own model holds our tensors and
    gives our embeddings; peft's own save of it imports back to the same model."""
    import peft

    model = samadapt.load_adapter(dora_run, make_mini())
    folder = samadapt.export(dora_run, to="peft", out=tmp_path / "ours", checkpoint=mini_checkpoint)
    config = peft.PeftConfig.from_pretrained(str(folder))
    assert isinstance(config, peft.LoraConfig) and config.use_dora
    assert json.loads((folder / "adapter_config.json").read_text())["use_dora"] is True
    theirs = peft.PeftModel.from_pretrained(make_mini(), str(folder))
    theirs_params = dict(theirs.named_parameters())
    for name, p in model.trainable_named_parameters():
        if not name.startswith("mask_decoder."):  # peft's folder has no place for the trained decoder
            assert torch.equal(theirs_params[f"base_model.model.{name}"], p)
    images, boxes = mini_batch
    with torch.no_grad():
        ours_emb = model.encode(images)
        torch.testing.assert_close(theirs.base_model.model.image_encoder(images), ours_emb, rtol=0, atol=1e-5)
        back = samadapt.import_peft(folder, make_mini())
        assert back.config == model.config
        assert torch.equal(back(images, boxes=boxes).low_res_logits, model(images, boxes=boxes).low_res_logits)
        theirs.save_pretrained(str(tmp_path / "theirs"))
        from_peft = samadapt.import_peft(tmp_path / "theirs", make_mini())
        assert from_peft.config.use_dora and not from_peft.config.train_decoder
        assert torch.equal(from_peft.encode(images), ours_emb)
    np.testing.assert_array_equal(
        sorted(k for k in from_peft.trainable_state_dict() if MAGNITUDE in k),
        sorted(k for k in model.trainable_state_dict() if MAGNITUDE in k),
    )

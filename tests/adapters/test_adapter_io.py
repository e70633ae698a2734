"""Adapter files: round trips, what the file holds, peft interchange, atomic saves, and every way
loading can fail (issue 2, points 4 and 5)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import samadapt
from samadapt import adapter_io
from samadapt.errors import AdapterFileError, AdapterMismatchError, SamAdaptError
from samadapt.strategies import STRATEGIES

VARIANTS = [(s, {}) for s in sorted(STRATEGIES)] + [
    ("lora", {"train_decoder": False, "rank": 2, "alpha": 8.0}),
    ("lora", {"targets": ("qkv", "proj", "mlp")}),
    ("lora", {"use_dora": True, "targets": ("qkv", "mlp")}),
    ("adapter", {"prompt_generator": True, "placement": ("mlp",)}),
]
VARIANT_IDS = [f"{s}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}" for s, o in VARIANTS]
METADATA_KEYS = {
    "format",
    "format_version",
    "samadapt_version",
    "strategy",
    "strategy_config",
    "model_type",
    "base_id",
    "info",
}


def _perturbed(model, scale: float = 0.05, seed: int = 0):
    """Move every trainable weight, as training would (zero-initialised parts included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.trainable_named_parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def _outputs(model, batch):
    images, boxes = batch
    with torch.no_grad():
        out = model(images, boxes=boxes, multimask=True)
    return out.low_res_logits, out.iou_predictions


def _snapshot(sam):
    return {k: v.clone() for k, v in sam.state_dict().items()}, [(n, type(m)) for n, m in sam.named_modules()]


def _assert_base_untouched(sam, snapshot):
    sd, modules = snapshot
    now = sam.state_dict()
    assert now.keys() == sd.keys()
    assert all(now[k].is_meta or torch.equal(now[k], sd[k]) for k in sd)  # meta tensors hold no values
    # no LoRA layers, adapters or prompt generator inserted, no module class swapped (fast paths)
    assert [(n, type(m)) for n, m in sam.named_modules()] == modules
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in sam.modules())
    assert all(p.requires_grad for p in sam.parameters())  # as build_sam leaves them
    assert getattr(sam, "samadapt_strategy", None) is None


# ---------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("strategy, options", VARIANTS, ids=VARIANT_IDS)
def test_round_trip_is_bit_identical_and_holds_only_the_trainable_tensors(
    strategy, options, make_mini, mini_batch, tmp_path
):
    model = _perturbed(samadapt.adapt(make_mini(), strategy, **options))
    info = {"dataset": "taco", "metrics": {"mean_iou": 0.61}, "training": {"epochs": 3}}
    path = samadapt.save_adapter(model, tmp_path / "a.safetensors", **info)

    loaded = samadapt.load_adapter(path, make_mini())
    for ours, theirs in zip(_outputs(model, mini_batch), _outputs(loaded, mini_batch)):
        assert torch.equal(ours, theirs)
    assert loaded.strategy == strategy and loaded.config == model.config
    assert loaded.base == model.base
    assert loaded.adapter_info == info

    tensors = load_file(str(path))
    assert set(tensors) == {n for n, _ in model.trainable_named_parameters()}
    for name, p in model.trainable_named_parameters():
        assert torch.equal(tensors[name], p.detach())

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert set(meta) == METADATA_KEYS
    assert meta["format"] == "samadapt-adapter" and meta["format_version"] == "1"
    assert meta["samadapt_version"] == samadapt.__version__
    assert meta["strategy"] == strategy and meta["model_type"] == "mini"
    assert json.loads(meta["strategy_config"]) == json.loads(model.config.to_json())
    assert meta["base_id"] == model.base.base_id and meta["base_id"].startswith("sha256:")
    assert json.loads(meta["info"]) == info

    parsed = samadapt.read_adapter_metadata(path)
    assert parsed["info"] == info and parsed["strategy_config"] == json.loads(model.config.to_json())
    assert sorted(parsed["tensor_names"]) == sorted(tensors)


def test_adapter_file_is_small(make_mini, tmp_path):
    model = samadapt.adapt(make_mini(), "lora", train_decoder=False)
    path = samadapt.save_adapter(model, tmp_path / "lora.safetensors")
    trainable_bytes = 4 * model.num_parameters(trainable_only=True)
    assert trainable_bytes < os.path.getsize(path) < trainable_bytes + 64 * 1024


# ---------------------------------------------------------------------------- peft interchange
@pytest.mark.parametrize(
    "options",
    [{}, {"train_decoder": False, "targets": ("qkv", "mlp"), "rank": 2, "alpha": 3.0}, {"use_dora": True}],
    ids=["default", "no-decoder-qkv-mlp", "dora"],
)
def test_peft_export_import_round_trip(options, make_mini, mini_batch, tmp_path):
    import peft

    model = _perturbed(samadapt.adapt(make_mini(), "lora", **options))
    folder = samadapt.export_peft(model, tmp_path / "peft")
    assert (folder / "mask_decoder.safetensors").is_file() == model.config.train_decoder

    loaded = samadapt.import_peft(folder, make_mini())
    for ours, theirs in zip(_outputs(model, mini_batch), _outputs(loaded, mini_batch)):
        assert torch.equal(ours, theirs)
    assert loaded.config == model.config

    # peft's own reader
    cfg = peft.PeftConfig.from_pretrained(str(folder))
    assert isinstance(cfg, peft.LoraConfig)
    assert cfg.r == model.config.rank and cfg.lora_alpha == model.config.alpha
    assert cfg.use_dora == model.config.use_dora
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert keys and all(k.startswith("base_model.model.") for k in keys)
    # the same keys peft writes itself for this config
    own = peft.get_peft_model(make_mini(), model.config.to_peft())
    own.save_pretrained(str(tmp_path / "peft_own"))
    with safe_open(str(tmp_path / "peft_own" / "adapter_model.safetensors"), framework="pt") as f:
        assert set(f.keys()) == keys


@pytest.mark.filterwarnings("ignore:Could not find a config file:UserWarning")  # peft looks for a HF config
def test_peft_loads_our_export_and_we_load_peft_output(make_mini, mini_batch, tmp_path):
    """Both directions with peft's own model class: the same LoRA weights and image embeddings (to
    float rounding: ``adapt`` runs the encoder attention through SDPA, peft's model upstream's)."""
    import peft

    model = _perturbed(samadapt.adapt(make_mini(), "lora", train_decoder=False))
    folder = samadapt.export_peft(model, tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(make_mini(), str(folder))
    theirs_params = dict(theirs.named_parameters())
    for name, p in model.trainable_named_parameters():
        assert torch.equal(theirs_params[f"base_model.model.{name}"], p)
    images, _ = mini_batch
    with torch.no_grad():
        ours_emb = model.encode(images)
        torch.testing.assert_close(theirs.base_model.model.image_encoder(images), ours_emb, rtol=0, atol=1e-5)
        theirs.save_pretrained(str(tmp_path / "theirs"))
        back = samadapt.import_peft(tmp_path / "theirs", make_mini())
        assert torch.equal(back.encode(images), ours_emb)
    assert not back.config.train_decoder  # peft's folder has no mask decoder


def test_peft_errors(make_mini, tmp_path):
    with pytest.raises(SamAdaptError, match="only 'lora'.*'decoder'"):
        samadapt.export_peft(samadapt.adapt(make_mini(), "decoder"), tmp_path / "x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterFileError, match="adapter_config.json"):
        samadapt.import_peft(tmp_path / "empty", make_mini())
    folder = samadapt.export_peft(samadapt.adapt(make_mini(), "lora"), tmp_path / "p")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, "target_modules": ["to_q", "to_v"]}))
    sam = make_mini()
    snapshot = _snapshot(sam)
    with pytest.raises(AdapterMismatchError, match="to_q"):
        samadapt.import_peft(folder, sam)
    _assert_base_untouched(sam, snapshot)
    for option, value in (("use_rslora", True), ("rank_pattern", {"qkv": 8}), ("bias", "all")):
        (folder / "adapter_config.json").write_text(json.dumps({**cfg, option: value}))
        with pytest.raises(AdapterMismatchError, match=f"{option}.*no samadapt equivalent"):
            samadapt.import_peft(folder, sam)
        _assert_base_untouched(sam, snapshot)
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, "peft_type": "IA3"}))
    with pytest.raises(AdapterFileError, match="'IA3' adapter has no samadapt strategy; supported: \\['LORA'\\]"):
        samadapt.import_peft(folder, sam)


# ---------------------------------------------------------------------------- saving safely
def _crash_midway(tensors, filename, metadata=None):
    with open(filename, "wb") as f:
        f.write(b"\x00" * 1000)  # part of a file, then the process "dies"
    raise OSError("No space left on device")


def test_a_crash_while_saving_leaves_no_new_file(make_mini, tmp_path, monkeypatch):
    model = samadapt.adapt(make_mini(), "decoder")
    # adapter_io imported save_file by name: patch the name it calls
    monkeypatch.setattr(adapter_io, "save_file", _crash_midway)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space"):
        samadapt.save_adapter(model, out / "new.safetensors")
    assert list(out.iterdir()) == []


def test_a_crash_while_saving_leaves_the_old_file_intact(make_mini, tmp_path, monkeypatch):
    model = samadapt.adapt(make_mini(), "decoder")
    path = samadapt.save_adapter(model, tmp_path / "out" / "a.safetensors")
    good = path.read_bytes()
    _perturbed(model)
    monkeypatch.setattr(adapter_io, "save_file", _crash_midway)
    with pytest.raises(OSError):
        samadapt.save_adapter(model, path)
    assert path.read_bytes() == good
    assert [p.name for p in path.parent.iterdir()] == ["a.safetensors"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_not_saved(bad, make_mini, tmp_path):
    model = samadapt.adapt(make_mini(), "lora")
    with torch.no_grad():
        dict(model.trainable_named_parameters())["mask_decoder.iou_token.weight"][0, 0] = bad
    with pytest.raises(SamAdaptError, match="non-finite.*mask_decoder.iou_token.weight"):
        samadapt.save_adapter(model, tmp_path / "a.safetensors")
    assert not (tmp_path / "a.safetensors").exists()


# ---------------------------------------------------------------------------- loading failures
@pytest.fixture
def saved_lora(make_mini, tmp_path):
    model = _perturbed(samadapt.adapt(make_mini(), "lora"))
    return model, samadapt.save_adapter(model, tmp_path / "lora.safetensors")


def _expect_failure(path, sam, error, *words):
    snapshot = _snapshot(sam)
    with pytest.raises(error) as e:
        samadapt.load_adapter(path, sam)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    _assert_base_untouched(sam, snapshot)
    return str(e.value)


def test_adapter_for_another_model_type(saved_lora):
    _, path = saved_lora
    with torch.device("meta"):
        vit_b = samadapt.build_sam("vit_b", pretrained=False)
    _expect_failure(path, vit_b, AdapterMismatchError, "'mini'", "'vit_b'", "build_sam('mini'")


def test_adapter_onto_another_base_names_both_base_ids(saved_lora, other_mini_checkpoint, make_mini, mini_batch):
    model, path = saved_lora
    other = make_mini(other_mini_checkpoint)
    _expect_failure(
        path, other, AdapterMismatchError, model.base.base_id, other.samadapt_base.base_id, "check_base=False"
    )
    # the explicit escape hatch still works
    loaded = samadapt.load_adapter(path, other, check_base=False)
    assert loaded.base == other.samadapt_base


@pytest.mark.parametrize("keep", [0.5, 0.99, 0.002])
def test_truncated_adapter_file(saved_lora, make_mini, keep, tmp_path):
    _, path = saved_lora
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: int(len(data) * keep)])
    _expect_failure(cut, make_mini(), AdapterFileError, "truncated", str(cut))


def test_foreign_safetensors_file(make_mini, tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, str(path))
    _expect_failure(path, make_mini(), AdapterFileError, "not a samadapt adapter", "import_peft")


def test_text_file_named_safetensors(make_mini, tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("these are not tensors\n" * 20)
    _expect_failure(path, make_mini(), AdapterFileError, "not a readable safetensors file")


def test_missing_adapter_file(make_mini, tmp_path):
    _expect_failure(tmp_path / "nope.safetensors", make_mini(), AdapterFileError, "does not exist")


def test_newer_format_version(saved_lora, make_mini, tmp_path):
    model, path = saved_lora
    tensors = load_file(str(path))
    meta = adapter_io.adapter_metadata(model) | {"format_version": "2"}
    save_file(tensors, str(tmp_path / "v2.safetensors"), metadata=meta)
    _expect_failure(tmp_path / "v2.safetensors", make_mini(), AdapterFileError, "'2'", "upgrade samadapt")


def test_corrupt_metadata(saved_lora, make_mini, tmp_path):
    model, path = saved_lora
    meta = adapter_io.adapter_metadata(model) | {"strategy_config": "{rank: 4"}
    save_file(load_file(str(path)), str(tmp_path / "bad.safetensors"), metadata=meta)
    _expect_failure(tmp_path / "bad.safetensors", make_mini(), AdapterFileError, "corrupt samadapt metadata")


def test_missing_and_unexpected_tensors(saved_lora, make_mini, tmp_path):
    model, path = saved_lora
    tensors = load_file(str(path))
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    tensors["image_encoder.extra"] = torch.zeros(1)
    save_file(tensors, str(tmp_path / "odd.safetensors"), metadata=adapter_io.adapter_metadata(model))
    _expect_failure(tmp_path / "odd.safetensors", make_mini(), AdapterMismatchError, dropped, "image_encoder.extra")


def test_tensor_shapes_that_do_not_fit_the_options(make_mini, tmp_path):
    """A rank-8 file whose metadata claims rank 4 (e.g. hand-edited): refused by shape."""
    model = samadapt.adapt(make_mini(), "lora", rank=8)
    tensors = {n: t.contiguous() for n, t in model.trainable_state_dict().items()}
    meta = adapter_io.adapter_metadata(model) | {"strategy_config": json.dumps(model.config.to_dict() | {"rank": 4})}
    save_file(tensors, str(tmp_path / "r.safetensors"), metadata=meta)
    _expect_failure(tmp_path / "r.safetensors", make_mini(), AdapterMismatchError, "wrong shapes", "lora_A")


def test_unknown_strategy_in_the_file(saved_lora, make_mini, tmp_path):
    model, path = saved_lora
    meta = adapter_io.adapter_metadata(model) | {"strategy": "prefix_tuning"}
    save_file(load_file(str(path)), str(tmp_path / "s.safetensors"), metadata=meta)
    _expect_failure(tmp_path / "s.safetensors", make_mini(), samadapt.UnknownNameError, "'prefix_tuning'", "lora")

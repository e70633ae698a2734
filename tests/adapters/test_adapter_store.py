"""Named adapters under SAMADAPT_HOME and the base checkpoints they need (issue 2, points 4 and 5)."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import samadapt
from samadapt import adapter_store
from samadapt.errors import CheckpointError, CheckpointNotFoundError, ConfigError, UnknownNameError
from samadapt.models import checkpoints, registry
from samadapt.models.checkpoints import OFFICIAL_CHECKPOINTS, file_sha256

BOXES = np.array([[15, 20, 55, 60], [70, 50, 110, 85]], dtype=np.float32)


def _perturbed(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.trainable_named_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture
def home_checkpoint(mini_checkpoint, samadapt_home_dir):
    """The mini test checkpoint, installed in SAMADAPT_HOME/checkpoints (found there by its sha256)."""
    dest = samadapt_home_dir / "checkpoints" / "mini_finetuned_base.pth"
    dest.parent.mkdir(parents=True)
    shutil.copy(mini_checkpoint, dest)
    return dest


# ---------------------------------------------------------------------------- names
@pytest.mark.parametrize(
    "dataset, model_type, strategy, name",
    [
        ("taco", "vit_h", "decoder", "taco-vith"),
        ("taco", "vit_h", "lora", "taco-vith-lora"),
        ("zerowaste", "vit_b", "adapter", "zerowaste-vitb-adapter"),
        ("trashcan_material", "mini", "decoder", "trashcan_material-mini"),
    ],
)
def test_adapter_names(dataset, model_type, strategy, name):
    assert samadapt.adapter_name(dataset, model_type, strategy) == name
    assert adapter_store.parse_adapter_name(name) == adapter_store.AdapterName(dataset, model_type, strategy)


@pytest.mark.parametrize(
    "name, error, words",
    [
        ("taco", ConfigError, ["'taco'", "<dataset>-<tag>[-<strategy>]", "vith"]),
        ("taco-vith-lora-extra", ConfigError, ["<dataset>-<tag>[-<strategy>]"]),
        ("Taco-vith", ConfigError, ["'Taco-vith'"]),
        ("taco-vit_h", ConfigError, ["'vit_h' is not a model tag", "vitb", "vith"]),
        ("labelme-lora", ConfigError, ["'lora' is not a model tag", "labelme-mini-lora"]),
        ("taco-vith-lorra", ConfigError, ["'lorra'", "adapter", "decoder", "lora"]),
    ],
)
def test_bad_adapter_names_say_what_is_wrong(name, error, words):
    with pytest.raises(error) as e:
        adapter_store.parse_adapter_name(name)
    for w in words:
        assert w in str(e.value)


def test_bad_parts_of_a_name():
    with pytest.raises(ConfigError, match="'TACO-1'.*no '-'"):
        samadapt.adapter_name("TACO-1", "vit_h", "lora")
    with pytest.raises(UnknownNameError, match="'dora'"):
        samadapt.adapter_name("taco", "vit_h", "dora")
    with pytest.raises(UnknownNameError, match="'vit_x'"):
        samadapt.adapter_name("taco", "vit_x", "lora")


# ---------------------------------------------------------------------------- publish, list, load
@pytest.mark.parametrize("strategy, name", [("decoder", "demo-mini"), ("lora", "demo-mini-lora")])
def test_publish_list_and_load_by_name(strategy, name, make_mini, home_checkpoint, rgb_image, samadapt_home_dir):
    model = _perturbed(samadapt.adapt(make_mini(), strategy))
    card = {"metrics": {"fine_tuned": {"mean_iou": 0.7}}, "training": {"epochs": 2}}
    path = samadapt.publish_adapter(model, "demo", card=card)
    assert path == samadapt_home_dir / "adapters" / name / "adapter.safetensors"

    (listed,) = samadapt.list_adapters()
    assert listed["name"] == name and listed["path"] == str(path)
    assert listed["model_type"] == "mini" and listed["strategy"] == strategy and listed["dataset"] == "demo"
    assert listed["base_id"] == model.base.base_id
    assert listed["trainable_parameters"] == model.num_parameters(trainable_only=True)
    assert listed["metrics"] == card["metrics"] and "date" in listed
    assert samadapt.read_adapter_metadata(path)["info"]["metrics"] == card["metrics"]

    loaded = samadapt.load(name)
    assert loaded.base.checkpoint == str(home_checkpoint)
    assert not loaded.training and not loaded.sam.training
    for ours, theirs in zip(model.predict(rgb_image, boxes=BOXES), loaded.predict(rgb_image, boxes=BOXES)):
        assert np.array_equal(ours, theirs)
    # a path (file or folder) works as well as the name
    assert samadapt.load(path.parent).strategy == strategy


def test_load_with_an_explicit_checkpoint(make_mini, mini_checkpoint, rgb_image):
    model = _perturbed(samadapt.adapt(make_mini(), "adapter"))
    samadapt.publish_adapter(model, "demo")
    with pytest.raises(CheckpointNotFoundError) as e:  # the base is not in SAMADAPT_HOME/checkpoints
        samadapt.load("demo-mini-adapter")
    assert model.base.base_id.removeprefix("sha256:") in str(e.value) and "checkpoint=" in str(e.value)
    loaded = samadapt.load("demo-mini-adapter", checkpoint=mini_checkpoint)
    for ours, theirs in zip(model.predict(rgb_image, boxes=BOXES), loaded.predict(rgb_image, boxes=BOXES)):
        assert np.array_equal(ours, theirs)


def test_adapter_on_builtin_weights_loads_without_a_checkpoint(make_mini, tmp_path, monkeypatch, rgb_image):
    weights = tmp_path / "mini.safetensors"
    save_file({k: v.contiguous() for k, v in make_mini().state_dict().items()}, str(weights))
    monkeypatch.setattr(registry, "builtin_weights_path", lambda card: weights)
    model = _perturbed(samadapt.adapt(samadapt.build_sam("mini"), "decoder"))
    assert model.base.base_id.startswith("builtin:mini@")
    samadapt.publish_adapter(model, "demo")
    loaded = samadapt.load("demo-mini")
    assert loaded.base.base_id == model.base.base_id
    for ours, theirs in zip(model.predict(rgb_image, boxes=BOXES), loaded.predict(rgb_image, boxes=BOXES)):
        assert np.array_equal(ours, theirs)


def test_adapter_on_random_weights_needs_its_checkpoint():
    model = samadapt.adapt(samadapt.build_sam("mini", pretrained=False), "decoder")
    samadapt.publish_adapter(model, "demo")
    with pytest.raises(CheckpointError, match="randomly initialised.*pass the checkpoint"):
        samadapt.load("demo-mini")


def test_unknown_adapter_name_lists_the_known_ones(make_mini):
    samadapt.publish_adapter(samadapt.adapt(make_mini(), "decoder"), "demo")
    with pytest.raises(UnknownNameError) as e:
        samadapt.load("taco-vith")
    assert "'taco-vith'" in str(e.value) and "demo-mini" in str(e.value)


def test_list_adapters_is_empty_without_a_home():
    assert samadapt.list_adapters() == []


def test_publish_refuses_a_bad_name(make_mini, samadapt_home_dir):
    with pytest.raises(ConfigError):
        samadapt.publish_adapter(samadapt.adapt(make_mini(), "decoder"), "demo", name="my adapter")
    assert not (samadapt_home_dir / "adapters").exists()


# ---------------------------------------------------------------------------- base checkpoints
@pytest.mark.parametrize("model_type", sorted(c.model_type for c in OFFICIAL_CHECKPOINTS.values()))
def test_missing_official_base_checkpoint_says_where_and_how(model_type, samadapt_home_dir):
    official = samadapt.models.official_checkpoint(model_type)
    with pytest.raises(CheckpointNotFoundError) as e:
        checkpoints.find_base_checkpoint(model_type, f"sha256:{official.sha256}")
    msg = str(e.value)
    for part in (
        official.filename,
        official.sha256,
        official.url,
        f"samadapt download-checkpoint {model_type}",
        str(samadapt_home_dir / "checkpoints" / official.filename),
    ):
        assert part in msg


@pytest.fixture
def vit_b_as_official(vit_b_checkpoint, samadapt_home_dir, monkeypatch):
    """The random vit_b checkpoint installed under its official name, with the official sha256
    patched to its own (the real 375 MB download is not needed to test the lookup)."""
    dest = samadapt_home_dir / "checkpoints" / "sam_vit_b_01ec64.pth"
    dest.parent.mkdir(parents=True)
    try:
        os.link(vit_b_checkpoint, dest)  # no copy of 375 MB
    except OSError:
        shutil.copy(vit_b_checkpoint, dest)
    digest = file_sha256(vit_b_checkpoint)
    name = "sam_vit_b_01ec64.pth"
    monkeypatch.setitem(OFFICIAL_CHECKPOINTS, name, dataclasses.replace(OFFICIAL_CHECKPOINTS[name], sha256=digest))
    return dest, digest


def test_vit_b_adapter_finds_its_official_base_by_name(vit_b_as_official, vit_b_base):
    dest, digest = vit_b_as_official
    assert checkpoints.find_base_checkpoint("vit_b", f"sha256:{digest}") == dest

    model = _perturbed(samadapt.adapt(copy.deepcopy(vit_b_base), "decoder"))
    assert model.base.base_id == f"sha256:{digest}"
    samadapt.publish_adapter(model, "demo")
    assert [a["name"] for a in samadapt.list_adapters()] == ["demo-vitb"]
    loaded = samadapt.load("demo-vitb")  # builds vit_b from the official file, sha256 checked
    assert loaded.base.checkpoint == str(dest) and loaded.base.base_id == model.base.base_id
    ours, theirs = model.trainable_state_dict(), loaded.trainable_state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_corrupt_official_base_is_refused_on_load(vit_b_as_official, vit_b_base):
    """The adapter names the official base; the file on disk is damaged."""
    dest, _ = vit_b_as_official
    samadapt.publish_adapter(samadapt.adapt(copy.deepcopy(vit_b_base), "decoder"), "demo")
    dest.unlink()  # a hard link to the session's checkpoint: replace it, never write through it
    dest.write_bytes(b"partial download")
    with pytest.raises(CheckpointError, match="sha256.*samadapt download-checkpoint vit_b"):
        samadapt.load("demo-vitb")


def test_a_fine_tuned_base_is_found_by_hash_beside_the_official_file(samadapt_home_dir):
    """An adapter trained on a fine-tuned ViT-B must get that file, not the official one next to it."""
    ckpts = samadapt_home_dir / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "sam_vit_b_01ec64.pth").write_bytes(b"official (stand-in)")
    tuned = ckpts / "medsam_vit_b.pth"
    tuned.write_bytes(b"fine-tuned")
    assert checkpoints.find_base_checkpoint("vit_b", f"sha256:{file_sha256(tuned)}") == tuned
    with pytest.raises(CheckpointNotFoundError, match="pass checkpoint="):
        checkpoints.find_base_checkpoint("vit_b", "sha256:" + "1" * 64)


def test_download_skips_a_verified_file(tmp_path):
    """Already in place with the right sha256: no network access at all (the URL is unreachable)."""
    data = b"checkpoint bytes"
    (tmp_path / "sam_vit_h_4b8939.pth").write_bytes(data)
    import hashlib

    path = samadapt.download_checkpoint(
        "vit_h",
        url="http://127.0.0.1:9/unreachable",
        directory=tmp_path,
        sha256=hashlib.sha256(data).hexdigest(),
        progress=False,
    )
    assert path.read_bytes() == data


def test_download_of_a_type_without_official_weights():
    with pytest.raises(UnknownNameError, match="'mini'.*vit_b"):
        samadapt.download_checkpoint("mini")


def test_card_json_is_readable(make_mini, home_checkpoint):
    path = samadapt.publish_adapter(samadapt.adapt(make_mini(), "decoder"), "demo", card={"notes": "x"})
    card = json.loads((path.parent / "card.json").read_text())
    assert card["name"] == "demo-mini" and card["notes"] == "x" and card["strategy_config"] == {"train_decoder": True}

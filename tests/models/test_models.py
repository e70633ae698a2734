"""Model types: the registry and its cards, ``build_sam`` and checkpoint files (issue 2, points 2 and 5)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import save_file
from segment_anything import sam_model_registry

import samadapt
from samadapt.errors import CheckpointError, ConfigError, UnknownNameError
from samadapt.models import registry
from samadapt.models.checkpoints import OFFICIAL_CHECKPOINTS, file_sha256, official_checkpoint, remap_state_dict

OFFICIAL_TYPES = sorted(c.model_type for c in OFFICIAL_CHECKPOINTS.values())
# Parameter counts in millions (REFERENCE section 2, from the Segment Anything paper / upstream).
PUBLISHED_MILLIONS = {"vit_b": 93.7, "vit_l": 312.3, "vit_h": 641.1}


def _meta(model_type: str):
    with torch.device("meta"):
        return samadapt.build_sam(model_type, pretrained=False)


def _shapes(module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------- the registry
@pytest.mark.parametrize("model_type", sorted(samadapt.MODEL_TYPES))
def test_every_model_type_builds_and_is_recognised(model_type):
    sam = _meta(model_type)
    card = samadapt.get_model_card(model_type)
    assert registry.infer_model_type(sam) == model_type
    assert sam.image_encoder.img_size == card.image_size
    assert sam.prompt_encoder.image_embedding_size == (card.embedding_size, card.embedding_size)
    assert sam.samadapt_base == registry.BaseInfo(model_type, f"random:{model_type}", None)
    assert not sam.training
    assert registry.model_type_for_tag(card.tag) == model_type


@pytest.mark.parametrize("model_type", OFFICIAL_TYPES)
def test_official_architectures_match_upstream(model_type):
    """Same state-dict keys and shapes as upstream's own builder: official checkpoints load as-is."""
    with torch.device("meta"):
        upstream = sam_model_registry[model_type]()
    ours = _meta(model_type)
    assert _shapes(ours) == _shapes(upstream)
    total = sum(p.numel() for p in ours.parameters())
    assert round(total / 1e6, 1) == PUBLISHED_MILLIONS[model_type]
    prompt_and_decoder = sum(p.numel() for p in ours.prompt_encoder.parameters()) + sum(
        p.numel() for p in ours.mask_decoder.parameters()
    )
    assert round(prompt_and_decoder / 1e6, 1) == 4.1
    assert samadapt.get_model_card(model_type).checkpoint == official_checkpoint(model_type).filename


def test_unknown_model_type_lists_the_known_ones():
    with pytest.raises(UnknownNameError) as e:
        samadapt.build_sam("vit_x")
    for name in samadapt.MODEL_TYPES:
        assert name in str(e.value)
    assert "vit_x" in str(e.value)
    with pytest.raises(UnknownNameError, match="vitx"):
        registry.model_type_for_tag("vitx")


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"name": "ViT-B"}, "ViT-B"),
        ({"image_size": 1000}, "1000"),
        ({"encoder_global_attn_indexes": (2, 12)}, r"\[12\]"),
    ],
)
def test_model_card_validation(changes, match):
    with pytest.raises(ConfigError, match=match):
        dataclasses.replace(samadapt.get_model_card("vit_b"), **changes)


def test_registering_a_taken_name_or_tag_fails_and_changes_nothing():
    before = dict(samadapt.MODEL_TYPES)
    with pytest.raises(ConfigError, match="vit_b"):
        samadapt.register_model_type(samadapt.get_model_card("vit_b"))
    with pytest.raises(ConfigError, match="vitb"):
        samadapt.register_model_type(dataclasses.replace(samadapt.get_model_card("vit_b"), name="vit_b2"))
    assert samadapt.MODEL_TYPES == before


# ---------------------------------------------------------------------------- checkpoints
def test_vit_b_checkpoint_in_the_official_format_loads(vit_b_checkpoint, vit_b_base, vit_b_upstream):
    ours, theirs = vit_b_base.state_dict(), vit_b_upstream.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert vit_b_base.samadapt_base == registry.BaseInfo(
        "vit_b", f"sha256:{file_sha256(vit_b_checkpoint)}", str(vit_b_checkpoint)
    )
    assert not vit_b_base.training


def test_official_name_with_wrong_content_fails_the_sha256_check(tmp_path):
    path = tmp_path / "sam_vit_b_01ec64.pth"
    path.write_bytes(b"<html>403 Forbidden</html>")  # what a failed download often leaves
    official = OFFICIAL_CHECKPOINTS["sam_vit_b_01ec64.pth"]
    with pytest.raises(CheckpointError) as e:
        samadapt.build_sam("vit_b", path)
    msg = str(e.value)
    assert "sha256" in msg and official.sha256 in msg and file_sha256(path) in msg
    assert "samadapt download-checkpoint vit_b" in msg and official.url in msg


def test_official_name_of_another_model_type_is_refused(tmp_path):
    path = tmp_path / "sam_vit_l_0b3195.pth"
    path.write_bytes(b"not read: the name alone is enough")
    with pytest.raises(CheckpointError) as e:
        samadapt.build_sam("vit_b", path)
    assert "'vit_l'" in str(e.value) and "model_type='vit_l'" in str(e.value)


def test_checkpoint_of_another_model_type_names_it(mini_checkpoint):
    with torch.device("meta"), pytest.raises(CheckpointError) as e:
        samadapt.build_sam("vit_b", mini_checkpoint)
    msg = str(e.value)
    assert "'vit_b'" in msg and "model_type='mini'" in msg and "missing keys" in msg


def test_truncated_checkpoint(tmp_path, mini_checkpoint):
    data = mini_checkpoint.read_bytes()
    path = tmp_path / "mini_cut.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        samadapt.build_sam("mini", path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        samadapt.build_sam("mini", tmp_path / "nope.pth")


def test_checkpoint_that_is_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="not a state dict"):
        samadapt.build_sam("mini", path)


def test_wrapped_and_prefixed_state_dicts_are_remapped(tmp_path, make_mini):
    """DDP (``module.``) and Lightning-style (``{"state_dict": {"model.…"}}``) saves load the same."""
    sd = make_mini().state_dict()
    ddp = tmp_path / "ddp.pth"
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}}, ddp)
    lightning = tmp_path / "lightning.pth"
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 3}, lightning)
    for path in (ddp, lightning):
        loaded = samadapt.build_sam("mini", path).state_dict()
        assert all(torch.equal(loaded[k], sd[k]) for k in sd)
    assert remap_state_dict({"sam.a": 1, "b": 2}) == {"a": 1, "b": 2}


def test_builtin_weights(tmp_path, monkeypatch, make_mini):
    weights = tmp_path / "mini.safetensors"
    save_file({k: v.contiguous() for k, v in make_mini().state_dict().items()}, str(weights))
    monkeypatch.setattr(registry, "builtin_weights_path", lambda card: weights)
    sam = samadapt.build_sam("mini")
    assert sam.samadapt_base.base_id == f"builtin:mini@{file_sha256(weights, use_cache=False)}"
    monkeypatch.setattr(registry, "builtin_weights_path", lambda card: None)
    with pytest.raises(CheckpointError, match="pretrained=False"):
        samadapt.build_sam("mini")


def test_file_sha256_cache_follows_the_file(tmp_path, samadapt_home_dir):
    path = tmp_path / "f.bin"
    path.write_bytes(b"a")
    first = file_sha256(path)
    assert (samadapt_home_dir / "sha256-cache.json").is_file()
    assert file_sha256(path) == first
    path.write_bytes(b"bb")
    assert file_sha256(path) != first


def test_model_types_are_one_namespace_across_families():
    from samadapt.models.family import get_card, model_types
    from samadapt.models.registry import MODEL_TYPES

    names = model_types()
    assert {"vit_h", "mini", "sam2.1_hiera_tiny", "sam2.1_hiera_test"} <= set(names)
    assert get_card("sam2.1_hiera_tiny").tag == "s21t" and get_card("vit_h").tag == "vith"
    clash = dataclasses.replace(samadapt.get_model_card("mini"), name="mini_clash", tag="s21t")
    samadapt.register_model_type(clash)  # SAM 1's registry alone does not see SAM 2.1's tags
    try:
        with pytest.raises(ConfigError, match=r"tag \['s21t'\] registered by more than one model family"):
            model_types()
    finally:
        del MODEL_TYPES["mini_clash"]
    assert set(model_types()) == set(names)

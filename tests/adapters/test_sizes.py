"""Parameter counts and exact adapter file sizes without weights (``samadapt.sizes``)."""

from __future__ import annotations

import os

import pytest
import torch

import samadapt
from samadapt import sizes
from samadapt.adapter_io import adapter_metadata


@pytest.mark.parametrize("strategy", sorted(samadapt.STRATEGIES))
def test_computed_size_is_the_size_save_adapter_writes(strategy):
    info = {"dataset": "taco", "metrics": {"mean_iou": 0.5, "note": "é ü"}}
    computed = sizes.adapter_file_size("mini", strategy, info=info)
    assert computed == sizes.written_adapter_size("mini", strategy, info=info)


def test_computed_size_matches_a_real_adapter(make_mini, tmp_path):
    model = samadapt.adapt(make_mini(), "lora", targets=("qkv", "mlp"), rank=3)
    info = {"dataset": "demo", "training": {"epochs": 2}}
    path = samadapt.save_adapter(model, tmp_path / "a.safetensors", **info)
    tensors = {n: (tuple(p.shape), p.dtype) for n, p in model.trainable_named_parameters()}
    assert sizes.safetensors_size(tensors, adapter_metadata(model, info)) == os.path.getsize(path)


def test_official_sizes():
    s = sizes.strategy_size("vit_b", "decoder")
    assert (s.base, s.total, s.trainable) == (93_735_472, 93_735_472, 4_058_340)  # REFERENCE: about 4.06M
    lora = sizes.strategy_size("vit_h", "lora")
    assert lora.total - lora.base == 32 * (4 * 1280 + 3 * 1280 * 4)  # per block: A (4 x 1280) + B (3840 x 4)
    assert lora.trainable == lora.total - lora.base + s.trainable
    assert sizes.strategy_size("vit_l", "full").adapter_bytes > 4 * 312_000_000


def test_mixed_dtypes_are_not_guessed():
    with pytest.raises(NotImplementedError):
        sizes.safetensors_size({"a": ((1,), torch.float32), "b": ((1,), torch.float16)}, {})

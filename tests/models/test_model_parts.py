"""Model parts (``samadapt.models.parts``): every registered part goes through an adapter file and
comes back as it was; an adapter file carries them through one metadata entry."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import samadapt
from samadapt.models.parts import PARTS, PARTS_KEY, parse_parts_metadata
from samadapt.models.parts.calibration import Calibration
from samadapt.models.parts.class_head import attach_class_head


def _give_class_head(model) -> None:
    head = attach_class_head(model, {3: "can", 7: "bottle"})
    torch.manual_seed(1)
    for p in head.parameters():
        p.data.normal_()
    head.validation = {"instances": 4, "accuracy": 0.5}


def _give_calibration(model) -> None:
    model.auto_calibration = Calibration(
        0.5, 0.7, 8, 0.5, (0.0, 0.6, 1.0), (0.1, 0.5, 0.9), 2, 10, 3, 0.5, 0.5, 0.5, 2.0, 0.0, 0.0, "demo"
    )


#: how a test gives a model each part: a new part adds its line here (the test below asks for one)
GIVE = {"class_head": _give_class_head, "auto_calibration": _give_calibration}


def test_every_registered_part_has_a_way_to_be_given():
    assert set(GIVE) == set(PARTS)


@pytest.mark.parametrize("key", sorted(PARTS))
def test_each_part_round_trips_through_an_adapter_file(key, make_mini, tmp_path):
    model = samadapt.adapt(make_mini(), "decoder")
    assert PARTS[key].describe(model) is None
    GIVE[key](model)
    spec = PARTS[key].describe(model)
    assert spec is not None
    path = samadapt.save_adapter(model, tmp_path / "a.safetensors")
    with safe_open(str(path), framework="pt") as f:
        stored = json.loads(f.metadata()[PARTS_KEY])
    assert set(stored) == {key} and stored[key] == json.loads(json.dumps(spec))
    loaded = samadapt.load_adapter(path, make_mini())
    assert PARTS[key].describe(loaded) == spec
    assert set(parse_parts_metadata(samadapt.read_adapter_metadata(path))) == {key}
    want = model.trainable_state_dict()
    got = loaded.trainable_state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_a_model_without_parts_writes_no_parts_entry(make_mini, tmp_path):
    path = samadapt.save_adapter(samadapt.adapt(make_mini(), "decoder"), tmp_path / "a.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert PARTS_KEY not in f.metadata()

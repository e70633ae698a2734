"""Config dataclasses: one unknown-key check for every ``from_dict``, renamed keys of older
``config.yaml`` files (issue 10, item 4)."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from samadapt.config import RENAMED_KEYS, TrainConfig
from samadapt.data.prompts import PromptConfig
from samadapt.errors import ConfigError, SamAdaptError
from samadapt.options import check_keys
from samadapt.strategies import STRATEGIES


@pytest.mark.parametrize(
    "load, words",
    [
        (
            lambda: TrainConfig.from_dict({"epochz": 3}),
            ["unknown config keys ['epochz']", "did you mean 'epochs'", "valid config keys", "'lr'"],
        ),
        (
            lambda: PromptConfig.from_dict({"box_nois": 0.1}),
            ["unknown PromptConfig keys ['box_nois']", "did you mean 'box_noise'"],
        ),
        (
            lambda: STRATEGIES["lora"].config_class.from_dict({"rnak": 2}),
            ["unknown options ['rnak'] for LoraConfig", "did you mean 'rank'", "valid options"],
        ),
    ],
)
def test_every_from_dict_names_the_unknown_key_and_the_valid_ones(load, words):
    with pytest.raises(ConfigError) as e:
        load()
    for word in words:
        assert word in str(e.value)
    assert isinstance(e.value, (SamAdaptError, ValueError))


def test_check_keys_accepts_the_fields_and_names_everything_else():
    @dataclasses.dataclass
    class Opts:
        alpha: int = 1
        beta: int = 2

    check_keys(Opts, {"alpha": 3})
    with pytest.raises(ConfigError, match=r"unknown options \['zzz'\] for Opts; valid options: \['alpha', 'beta'\]"):
        check_keys(Opts, ["alpha", "zzz"], owner="Opts")


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_option_has_help_text(name):
    """The command line shows it (``samadapt train --help``)."""
    for f in dataclasses.fields(STRATEGIES[name].config_class):
        assert f.metadata.get("help"), f"{name}: option {f.name} has no help text"


def test_activation_checkpointing_has_one_name_and_old_config_files_still_load(tmp_path):
    assert RENAMED_KEYS == {"gradient_checkpointing": "activation_checkpointing"}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert "activation_checkpointing" in names and "gradient_checkpointing" not in names
    old = TrainConfig().to_dict()
    old["gradient_checkpointing"] = old.pop("activation_checkpointing")
    old["gradient_checkpointing"] = True
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(old, sort_keys=False))  # the config.yaml of a run before the rename
    loaded = TrainConfig.from_yaml(path)
    assert loaded.activation_checkpointing is True
    assert "gradient_checkpointing" not in loaded.to_yaml()
    # the new name wins where both are given (the command line over an older file)
    assert TrainConfig.from_yaml(path, activation_checkpointing=False).activation_checkpointing is False
    TrainConfig().check_resumable(TrainConfig.from_yaml(path, activation_checkpointing=False), path)


def test_every_option_is_in_exactly_one_group():
    """``TrainConfig.GROUPS`` (data / optimisation / prompts / evaluation / run ...) holds each field once:
    the command line's help sections are built from it."""
    grouped = [name for names in TrainConfig.GROUPS.values() for name in names]
    assert len(grouped) == len(set(grouped))
    assert sorted(grouped) == sorted(f.name for f in dataclasses.fields(TrainConfig))

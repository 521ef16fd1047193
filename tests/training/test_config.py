"""Typed configs: presets, strict YAML (unknown key / wrong type name the key and the file)."""

from __future__ import annotations

import pytest

from clinfuse.errors import ClinfuseInputError
from clinfuse.training.config import (
    TrainConfig,
    apply_overrides,
    config_from_dict,
    dump_config,
    list_presets,
    resolve_config,
    to_dict,
)


@pytest.mark.parametrize("name", ["phantom3d-small", "harvard2d", "ci-tiny"])
def test_presets_load_and_round_trip(name, tmp_path):
    cfg = resolve_config(name)
    assert isinstance(cfg, TrainConfig)
    assert cfg.model["spatial_dims"] == len(cfg.data.patch_size)
    assert config_from_dict(to_dict(cfg)) == cfg
    path = tmp_path / "saved.yaml"
    path.write_text(dump_config(cfg))
    assert resolve_config(path) == cfg  # what RUN/config.yaml holds is loadable as is


def test_shipped_presets_are_listed():
    assert {"phantom3d-small", "harvard2d", "ci-tiny"} <= set(list_presets())


def test_effective_batch_is_eight_in_the_shipped_presets():
    for name in ("phantom3d-small", "harvard2d"):
        assert resolve_config(name).effective_batch == 8


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: {preset: phantom3d-tiny}\noptim:\n  lr: 1.0e-3\n  momentum: 0.9\n")
    with pytest.raises(ClinfuseInputError) as err:
        resolve_config(path)
    assert "optim.momentum" in str(err.value)
    assert str(path) in str(err.value)


def test_wrong_type_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: {preset: phantom3d-tiny}\nmax_steps: many\n")
    with pytest.raises(ClinfuseInputError) as err:
        resolve_config(path)
    assert "'max_steps'" in str(err.value) and "int" in str(err.value)
    assert str(path) in str(err.value)


def test_wrong_type_in_model_section(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: {preset: phantom3d-tiny, channels: eight}\n")
    with pytest.raises(ClinfuseInputError, match="model.channels"):
        resolve_config(path)


def test_bool_is_not_an_int_and_literal_is_checked():
    with pytest.raises(ClinfuseInputError, match="batch_size"):
        resolve_config("ci-tiny", ["batch_size=true"])
    with pytest.raises(ClinfuseInputError, match="amp"):
        resolve_config("ci-tiny", ["amp=fp8"])


def test_overrides_are_typed():
    cfg = resolve_config("ci-tiny", ["optim.lr=3e-4", "jitter.p=1", "data.patch_size=[8, 8, 8]"])
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.jitter.p == 1.0 and isinstance(cfg.jitter.p, float)
    assert cfg.data.patch_size == (8, 8, 8)
    assert apply_overrides(cfg, ["max_steps=9"]).max_steps == 9
    assert resolve_config("ci-tiny", ["amp=off"]).amp == "off"  # YAML reads off as False


def test_dimension_mismatch_between_model_and_patch():
    with pytest.raises(ClinfuseInputError, match="spatial_dims"):
        resolve_config("ci-tiny", ["data.patch_size=[16, 16]", "data.val_patch_size=null"])


def test_unknown_model_preset_and_missing_file():
    with pytest.raises(ClinfuseInputError, match="model.preset"):
        resolve_config("ci-tiny", ["model.preset=huge"])
    with pytest.raises(ClinfuseInputError, match="presets"):
        resolve_config("no-such-preset")


def test_effective_batch_must_divide():
    with pytest.raises(ClinfuseInputError, match="effective_batch"):
        resolve_config("ci-tiny", ["batch_size=3"])

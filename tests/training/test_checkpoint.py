"""Files that are not clinfuse checkpoints give an error naming the file and what it is."""

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from clinfuse.errors import ClinfuseInputError
from clinfuse.training.checkpoint import FORMAT, load_checkpoint, read_checkpoint


class _Opaque:
    """A class object: weights_only loading refuses to unpickle it."""


def _nifti(path: Path) -> Path:
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), path)
    return path


def _expect(path: Path, *fragments: str) -> str:
    with pytest.raises(ClinfuseInputError) as e:
        load_checkpoint(path)
    text = str(e.value)
    assert str(path) in text
    for frag in fragments:
        assert frag in text, text
    for bad in ("KeyError", "UnpicklingError", "Traceback", "101"):
        assert bad not in text, text
    return text


def test_text_file_is_named_not_keyerror(tmp_path):
    # torch.load on this text gives "KeyError: 101" (pickle reading the byte 'e').
    notes = tmp_path / "notes.txt"
    notes.write_text("hello world\n", encoding="utf-8")
    _expect(notes, "cannot read checkpoint", "a text file", "clinfuse train")


def test_images_and_empty_files_are_named(tmp_path):
    _expect(_nifti(tmp_path / "mri.nii"), "a NIfTI image")
    gz = tmp_path / "mri.nii.gz"
    gz.write_bytes(gzip.compress(_nifti(tmp_path / "x.nii").read_bytes()))
    _expect(gz, "gzip file (a .nii.gz image?)")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    _expect(empty, "an empty file")


def test_foreign_pytorch_files(tmp_path):
    plain = tmp_path / "state_dict.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    _expect(plain, "not a clinfuse checkpoint", "plain state_dict", FORMAT)
    objects = tmp_path / "pickled.pt"
    torch.save(_Opaque, objects)
    _expect(objects, "weights_only=True")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(plain.read_bytes()[:100])
    _expect(truncated, "damaged or truncated")


def test_clinfuse_format_without_weights_is_damaged(tmp_path):
    path = tmp_path / "partial.ckpt"
    torch.save({"format": FORMAT, "step": 3}, path)
    with pytest.raises(ClinfuseInputError, match="damaged clinfuse checkpoint.*'config', 'ema'"):
        read_checkpoint(path)


class _WithDefault(torch.nn.Module):
    """A layer plus a buffer that older weights lack; its load hook supplies the default."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.register_buffer("temperature", torch.full((), 3.0))

    def _load_from_state_dict(self, state_dict, prefix, *args):
        state_dict.setdefault(prefix + "temperature", torch.tensor(1.0))
        super()._load_from_state_dict(state_dict, prefix, *args)


def test_load_weights_accepts_buffers_with_a_load_default():
    from clinfuse.training.checkpoint import load_weights

    old = {k: v for k, v in _WithDefault().state_dict().items() if k != "temperature"}
    model = _WithDefault()
    load_weights(model, old, "old.pt")
    assert float(model.temperature) == 1.0
    with pytest.raises(ClinfuseInputError, match="1 missing.*lin.bias") as e:
        load_weights(_WithDefault(), {"lin.weight": old["lin.weight"]}, "bad.pt")
    assert "bad.pt" in str(e.value)
    with pytest.raises(ClinfuseInputError, match="unexpected"):
        load_weights(_WithDefault(), {**old, "extra": torch.zeros(1)}, "bad.pt")


def test_prediction_enum_round_trips_weights_only_and_yaml(tmp_path):
    """The prediction type is an enum in the model, the plain string in YAML and checkpoints."""
    import yaml
    from torch.optim.swa_utils import AveragedModel

    from clinfuse.nn.model import Prediction
    from clinfuse.training.checkpoint import build_model, save_checkpoint
    from clinfuse.training.config import config_from_dict, dump_config, resolve_config

    cfg = resolve_config("ci-tiny", ["model.prediction=v"])
    assert cfg.model["prediction"] == "v" and type(cfg.model["prediction"]) is str
    text = dump_config(cfg)  # yaml.safe_dump: no Python objects
    assert yaml.safe_load(text)["model"]["prediction"] == "v"
    assert config_from_dict(yaml.safe_load(text)).model == cfg.model
    model = build_model(cfg.model)
    assert model.config.prediction is Prediction.v
    path = tmp_path / "v.ckpt"
    save_checkpoint(path, model=model, ema=AveragedModel(model), config=cfg, step=0)
    state = torch.load(path, weights_only=True)
    assert type(state["config"]["model"]["prediction"]) is str
    loaded = load_checkpoint(path)
    assert loaded.model.config.prediction is Prediction.v

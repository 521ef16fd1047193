"""`clinfuse evaluate` / `benchmark` check the checkpoint, the options and the dataset before
they create their results folder (issue 12 item 6): a bad one leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from _helpers import tiny_fusion_checkpoint
from clinfuse.cli import app
from clinfuse.errors import ClinfuseInputError


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    ckpt = tiny_fusion_checkpoint(d / "tiny.pt")
    text = d / "notes.pt"
    text.write_text("not a checkpoint\n")
    case = d / "data" / "case0"
    case.mkdir(parents=True)
    for role in ("mri", "ct"):
        nib.save(
            nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), case / f"{role}.nii.gz"
        )
    return {"ckpt": ckpt, "text": text, "data": d / "data"}


def _fails_without_folder(args: list[str], out: Path, *words: str) -> None:
    res = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert isinstance(res.exception, ClinfuseInputError), res.output
    for w in words:
        assert w in str(res.exception), str(res.exception)
    assert not out.exists()


@pytest.mark.parametrize("command", ["evaluate", "benchmark"])
def test_bad_checkpoint_option_or_data_leaves_no_folder(files, tmp_path, command):
    if command == "evaluate":
        base = ["evaluate", "--method", "clinfuse", "--data", str(files["data"])]
    else:
        base = ["benchmark", "--methods", "average,clinfuse", "--data", str(files["data"])]
    out = tmp_path / "results"
    # a file that is not a checkpoint: named, before any folder
    _fails_without_folder([*base, "--checkpoint", str(files["text"])], out, "notes.pt")
    good = [*base, "--checkpoint", str(files["ckpt"])]
    _fails_without_folder([*good, "--option", "eta=abc"], out, "--option")
    _fails_without_folder([*good, "--option", "colour=blue"], out, "colour")
    missing = [a if a != str(files["data"]) else str(tmp_path / "nowhere") for a in good]
    _fails_without_folder(missing, out, "nowhere")


@pytest.mark.parametrize("command", ["evaluate", "benchmark"])
def test_threads_option_sets_torch_threads(files, tmp_path, command):
    import torch

    before = torch.get_num_threads()
    if command == "evaluate":
        args = ["evaluate", "--method", "average", "--data", str(files["data"])]
    else:
        args = ["benchmark", "--methods", "average", "--data", str(files["data"])]
    try:
        torch.set_num_threads(2)  # so that the option has something to change
        res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "r"), "--threads", "1"])
        assert torch.get_num_threads() == 1, res.output
        bad = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "s"), "--threads", "0"])
        assert bad.exit_code != 0 and not (tmp_path / "s").exists()
    finally:
        torch.set_num_threads(before)

"""`clinfuse train` end to end on tiny phantoms written to disk, and its user errors."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from clinfuse.cli import app
from clinfuse.errors import ClinfuseInputError


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from clinfuse.phantom import PhantomConfig, write_phantom_dataset

    out = tmp_path_factory.mktemp("data") / "phantoms"
    cfg = PhantomConfig(shape=(24, 24, 16), spacing=(3.0, 3.0, 3.0), supersample=1)
    return write_phantom_dataset(out, 3, cfg, seed=0)


def test_cli_trains_and_resumes(phantoms, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--config", "ci-tiny", "--data", str(phantoms), "--out", str(run)]
    args += ["--device", "cpu", "--max-steps", "1", "--no-progress", "--threads", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (run / "last.ckpt").is_file() and (run / "best.ckpt").is_file()
    assert "done: step 1" in result.output
    # Resume without --config: the checkpoint's config, extended by --max-steps.
    again = ["train", "--resume", str(run / "last.ckpt"), "--data", str(phantoms)]
    again += ["--out", str(run), "--device", "cpu", "--max-steps", "2", "--no-progress"]
    result = CliRunner().invoke(app, again)
    assert result.exit_code == 0, result.output
    assert "done: step 2" in result.output


def test_cli_user_errors(phantoms, tmp_path):
    base = ["train", "--data", str(phantoms), "--out", str(tmp_path / "r"), "--device", "cpu"]
    result = CliRunner().invoke(app, [*base, "--config", "ci-tiny", "--set", "optim.momentum=1"])
    assert isinstance(result.exception, ClinfuseInputError)
    assert "optim.momentum" in str(result.exception)
    result = CliRunner().invoke(app, base)
    assert isinstance(result.exception, ClinfuseInputError)
    assert "--config" in str(result.exception)
    flat = [
        "--config",
        "harvard2d",
        "--set",
        "data.val_patients=[]",
        "--set",
        "data.test_patients=[]",
    ]
    result = CliRunner().invoke(app, [*base, *flat])  # 2D config, 3D data
    assert isinstance(result.exception, ClinfuseInputError)
    assert "3D" in str(result.exception) and "2D" in str(result.exception)

"""`clinfuse synth`: argument mapping (D H W / z y x -> x, y, z arrays), outputs, guard."""

import json

import numpy as np
from typer.testing import CliRunner

from clinfuse.cli import app
from clinfuse.errors import ClinfuseInputError


def test_synth_writes_dataset_with_mapped_shape(tmp_path):
    out = tmp_path / "ph"
    args = ["synth", "--n", "2", "--shape", "20", "24", "28", "--spacing", "5", "4", "3"]
    args += ["--seed", "3", "--out", str(out), "--contrast", "mixed", "--lesion", "mixed"]
    args += ["--fracture", "--misregister", "2", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "manifest.csv").is_file()
    truth = json.loads((out / "phantom_001" / "truth.json").read_text())
    assert truth["config"]["shape"] == [28, 24, 20]  # W H D -> x y z
    assert truth["config"]["spacing"] == [3.0, 4.0, 5.0]  # z y x given -> x y z stored
    assert truth["config"]["mri_contrast"] == "T2"  # mixed: case 1 is T2
    assert truth["misregistration"]["translation_norm_mm"] == 2.0
    assert np.isclose(truth["misregistration"]["rotation_deg"], 1.0)
    assert truth["seed"] == 4


def test_synth_refuses_existing_output(tmp_path):
    out = tmp_path / "ph"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    result = CliRunner().invoke(app, ["synth", "--n", "1", "--out", str(out)])
    assert result.exit_code != 0
    assert isinstance(result.exception, ClinfuseInputError)
    assert (out / "keep.txt").read_text() == "user data"
    assert not (out / "manifest.csv").exists()


def test_synth_2d(tmp_path):
    out = tmp_path / "p2"
    args = ["synth", "--n", "1", "--shape", "1", "48", "40", "--spacing", "1", "2", "2"]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    truth = json.loads((out / "phantom_000" / "truth.json").read_text())
    assert truth["config"]["shape"] == [40, 48]


def test_synth_bad_contrast(tmp_path):
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "x"), "--contrast", "PD"])
    assert isinstance(result.exception, ClinfuseInputError)


def test_synth_branch_territories(tmp_path):
    """`--territories branch`: ischaemic lesions drawn as branch infarcts (recorded in the
    truth); an unknown territory is a user error before anything is written."""
    out = tmp_path / "br"
    args = ["synth", "--n", "1", "--shape", "40", "48", "48", "--spacing", "3", "3", "3"]
    args += ["--territories", "branch", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    truth = json.loads((out / "phantom_000" / "truth.json").read_text())
    assert truth["config"]["ischaemic_territories"] == ["branch"]
    assert truth["lesions"][0]["territory"].endswith(" branch")
    bad = ["synth", "--out", str(tmp_path / "y"), "--territories", "MCA,basilar"]
    result = CliRunner().invoke(app, bad)
    assert isinstance(result.exception, ClinfuseInputError)
    assert "ischaemic_territories" in str(result.exception)

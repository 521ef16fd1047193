"""Bad input found by trying the CLI as a new user (issue 9): clear errors, no traceback, and no
half-written output folder left behind."""

import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from clinfuse.cli import app
from clinfuse.diffusion.guidance import load_preset
from clinfuse.errors import ClinfuseInputError
from clinfuse.preprocess.normalize import normalise_mri
from clinfuse.preprocess.resample import grid_with_spacing

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
from test_dataset_layouts import case_folder, head  # noqa: E402


def _user_error(res, *words: str) -> None:
    assert isinstance(res.exception, ClinfuseInputError), res.output
    for w in words:
        assert w in str(res.exception)


@pytest.mark.parametrize("where", ["/proc/clinfuse-x", "file/sub"])
def test_fuse_out_in_an_unwritable_place(tmp_path: Path, where: str):
    case_folder(tmp_path / "in")
    (tmp_path / "file").write_text("x")
    out = where if where.startswith("/") else str(tmp_path / where)
    res = CliRunner().invoke(
        app,
        ["fuse", "--mri", str(tmp_path / "in/mri.nii.gz"), "--ct", str(tmp_path / "in/ct.nii.gz")]
        + ["--out", out],
    )
    _user_error(res, "output folder")
    assert "DDIM" not in res.output  # nothing shown before the inputs are checked


def test_preprocess_spacing_of_the_wrong_length_leaves_nothing(tmp_path: Path):
    case_folder(tmp_path / "in" / "a")
    res = CliRunner().invoke(
        app, ["preprocess", str(tmp_path / "in"), str(tmp_path / "out"), "--spacing", "1,2"]
    )
    _user_error(res, "2 values for a 3D image")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ClinfuseInputError, match="one value or 3"):
        grid_with_spacing((4, 4, 4), np.eye(4), (1.0, 2.0))


def test_preprocess_failing_case_leaves_no_folder(tmp_path: Path):
    case_folder(tmp_path / "in" / "a")
    case_folder(tmp_path / "in" / "b", mri=np.full(head()["mri"].shape, 300.0, np.float32))
    res = CliRunner().invoke(app, ["preprocess", str(tmp_path / "in"), str(tmp_path / "out")])
    _user_error(res, "constant")
    assert not (tmp_path / "out").exists()  # neither the failed case nor the good one before it


def test_constant_mri_is_refused():
    with pytest.raises(ClinfuseInputError, match="MRI is constant"):
        normalise_mri(np.full((6, 6, 6), 100.0, np.float32))


def test_ct_on_another_grid_is_said(tmp_path: Path):
    from clinfuse.io.dataset import load_dataset
    from clinfuse.preprocess.pipeline import preprocess_case

    folder = case_folder(tmp_path / "a")
    img = nib.load(folder / "ct.nii.gz")
    ct = np.asarray(img.dataobj)[:, :, 1:-1]  # two slices fewer: another grid
    aff = img.affine.copy()
    aff[:3, 3] += aff[:3, 2]
    nib.save(nib.Nifti1Image(ct, aff), folder / "ct.nii.gz")
    case = load_dataset(folder)[0].load()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared = preprocess_case(case)
    assert any("CT was resampled onto the MRI grid" in str(w.message) for w in caught)
    assert prepared.record["notes"] and prepared.record["ct_resampled"]


def test_override_errors_name_the_option_not_the_preset_file():
    with pytest.raises(ClinfuseInputError) as err:
        load_preset("stroke", {"eta": -1.0}, overrides_source="--eta")
    assert str(err.value).startswith("--eta:") and "stroke.yaml" not in str(err.value)
    with pytest.raises(ClinfuseInputError, match="--option: guidance mode must be one of"):
        load_preset("stroke", {"mode": "x1"}, overrides_source="--option")

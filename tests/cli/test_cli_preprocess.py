"""`clinfuse preprocess` end to end on tiny datasets (folder, DICOM, Harvard-like, real CT)."""

import csv
import gzip
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from clinfuse.cli import app
from clinfuse.errors import ClinfuseInputError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
from test_dataset_layouts import case_folder, make_harvard  # noqa: E402
from test_dicom import write_series  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def run(*args: str):
    return CliRunner().invoke(app, ["preprocess", *args])


def test_folder_dataset_and_overwrite_rules(tmp_path: Path):
    case_folder(tmp_path / "in" / "a")
    case_folder(tmp_path / "in" / "b")
    res = run(str(tmp_path / "in"), str(tmp_path / "out"), "--spacing", "3")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((tmp_path / "out" / "manifest.csv").open()))
    assert [r["case_id"] for r in rows] == ["a", "b"]
    assert rows[0]["spacing"] == "3x3x3" and rows[0]["brain"] == "given"
    side = json.loads((tmp_path / "out" / "a" / "preprocess.json").read_text())
    assert side["record"]["grid"]["target_spacing"] == [3.0, 3.0, 3.0]
    assert not list((tmp_path / "out").rglob(".tmp-*"))
    # Inputs untouched, outputs not replaced without --overwrite, never inside the input.
    assert sorted(p.name for p in (tmp_path / "in" / "a").iterdir())[0] == "bone.nii.gz"
    res = run(str(tmp_path / "in"), str(tmp_path / "out"))
    assert isinstance(res.exception, ClinfuseInputError) and "--overwrite" in str(res.exception)
    assert run(str(tmp_path / "in"), str(tmp_path / "out"), "--overwrite").exit_code == 0
    res = run(str(tmp_path / "in"), str(tmp_path / "in" / "out"))
    assert isinstance(res.exception, ClinfuseInputError)
    assert not (tmp_path / "in" / "out").exists()
    res = run(str(tmp_path / "in"), str(tmp_path / "o2"), "--spacing", "a,b")
    assert isinstance(res.exception, ClinfuseInputError)


def test_user_error_exits_2_without_traceback(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-c", "from clinfuse.cli import main; main()", "preprocess",
         str(tmp_path / "missing"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "missing" in proc.stderr


def test_dicom_case_keeps_no_patient_identifiers(tmp_path: Path):
    write_series(tmp_path / "case" / "ct", n=4, intercept=0.0)  # 300-387 HU in slice 4: bone
    write_series(tmp_path / "case" / "mri", n=4, intercept=0.0)
    shape = (6, 5, 4)
    from clinfuse.io.dicom import load_dicom_series

    _, affine = load_dicom_series(tmp_path / "case" / "mri")
    m = np.zeros(shape, np.uint8)
    m[1:4, 1:4, 1:3] = 1
    nib.save(nib.Nifti1Image(m, affine), tmp_path / "case" / "brain.nii.gz")
    b = np.zeros(shape, np.uint8)
    b[0, :, :] = 1
    nib.save(nib.Nifti1Image(b, affine), tmp_path / "case" / "bone.nii.gz")
    res = run(str(tmp_path / "case"), str(tmp_path / "out"))
    assert res.exit_code == 0, res.output
    for f in (tmp_path / "out").rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            data = gzip.decompress(data) if f.name.endswith(".gz") else data
            assert b"Doe" not in data and b"SECRET" not in data, f
    assert "Doe" not in res.output


def test_harvard_like_png_dataset(tmp_path: Path):
    make_harvard(tmp_path / "h")
    for d in ("mri", "ct"):  # give the slices a head so automatic masks have something to find
        for f in (tmp_path / "h" / d).glob("*.png"):
            from PIL import Image

            g = np.indices((16, 16)) - 7.5
            r = np.sqrt((g**2).sum(0))
            img = np.where(r < 5, 90, 0) + np.where((r >= 5) & (r < 7), 255, 0)
            Image.fromarray(img.astype(np.uint8)).save(f)
    res = run(str(tmp_path / "h"), str(tmp_path / "out"))
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((tmp_path / "out" / "manifest.csv").open()))
    assert [r["patient_id"] for r in rows] == ["2", "2", "16"]
    assert rows[0]["ct_kind"] == "display" and rows[0]["ndim"] == "2"
    from clinfuse.preprocess.pipeline import load_prepared_dataset

    cases = load_prepared_dataset(tmp_path / "out")
    assert cases[0].shape == (16, 16) and cases[0].mask_source["bone"] == "auto"
    res = run(str(tmp_path / "out"), str(tmp_path / "again"))  # prepared data is not raw data
    assert isinstance(res.exception, ClinfuseInputError) and "prepared" in str(res.exception)


@pytest.mark.skipif(not (DATA / "volumes").is_dir(), reason="shared data not present")
def test_real_ct_stored_as_hu_plus_1024(tmp_path: Path):
    """VTK headsq CT (raw = HU + 1024) with a pseudo-MRI made from it: the offset is detected,
    reported and recorded; --ct-offset 0 turns the detection off."""
    src = DATA / "volumes" / "vtk_headsq_ct" / "ct_raw_plus1024.nii.gz"
    img = nib.load(src)
    raw = np.asanyarray(img.dataobj).astype(np.float32)
    case = tmp_path / "in" / "headsq"
    case.mkdir(parents=True)
    (case / "ct.nii.gz").symlink_to(src)
    pseudo_mri = np.clip(raw - 900.0, 0, 300)  # soft tissue bright, air and bone dark-ish
    nib.save(nib.Nifti1Image(pseudo_mri, img.affine), case / "mri.nii.gz")
    res = run(str(tmp_path / "in"), str(tmp_path / "out"))
    assert res.exit_code == 0, res.output
    assert "HU + 1024" in res.output
    side = json.loads((tmp_path / "out" / "headsq" / "preprocess.json").read_text())
    assert side["record"]["ct"]["offset_subtracted"] == 1024.0
    assert side["mask_source"] == {"bone": "auto", "brain": "auto"}
    res = run(str(tmp_path / "in"), str(tmp_path / "out0"), "--ct-offset", "0")
    side0 = json.loads((tmp_path / "out0" / "headsq" / "preprocess.json").read_text())
    assert side0["record"]["ct"]["offset_subtracted"] == 0.0

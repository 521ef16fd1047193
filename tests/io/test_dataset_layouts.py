"""Dataset layouts (folder, manifest CSV/JSON, APIS, Harvard PNG, DICOM) and bad-input errors."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from clinfuse.errors import ClinfuseInputError
from clinfuse.io.dataset import guess_ct_offset, load_dataset

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
AFF = np.diag([2.0, 2.0, 2.0, 1.0])


def head(n: int = 12) -> dict[str, np.ndarray]:
    """A tiny ball 'head': brain inside a bone shell, CT in HU."""
    g = np.indices((n, n, n)).astype(float) - (n - 1) / 2
    r = np.sqrt((g**2).sum(0))
    brain, bone = r < 3.5, (r >= 3.5) & (r < 5)
    mri = np.where(brain, 100.0, 0.0) + np.where(bone, 20.0, 0.0)
    ct = np.where(brain, 35.0, -1000.0) + np.where(bone, 2200.0, 0.0)
    lesion = brain & (g[0] > 1.5)
    return {"mri": mri, "ct": ct, "brain": brain, "bone": bone, "lesion": lesion}


def write(path: Path, arr: np.ndarray, aff: np.ndarray = AFF) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = arr.astype(np.uint8) if arr.dtype == bool else arr.astype(np.float32)
    nib.save(nib.Nifti1Image(a, aff), path)
    return path


def case_folder(folder: Path, suffix: str = ".nii.gz", **override: np.ndarray) -> Path:
    vols = head()
    vols.update(override)
    for role, arr in vols.items():
        write(folder / f"{role}{suffix}", arr)
    return folder


def test_folder_of_cases_and_single_case(tmp_path: Path):
    case_folder(tmp_path / "ds" / "a")
    case_folder(tmp_path / "ds" / "b", suffix=".nii")
    refs = load_dataset(tmp_path / "ds")
    assert [r.case_id for r in refs] == ["a", "b"]
    case = refs[1].load()
    h = head()
    np.testing.assert_array_equal(case.mri, h["mri"])
    assert case.bone.dtype == bool and np.array_equal(case.lesion, h["lesion"])
    assert case.spacing == (2.0, 2.0, 2.0) and case.ct_kind == "hu" and not case.grids
    assert case.meta["ct_offset"] == 0.0
    single = load_dataset(tmp_path / "ds" / "a")
    assert len(single) == 1 and single[0].case_id == "a"


def test_manifest_csv_and_json(tmp_path: Path):
    case_folder(tmp_path / "files" / "x")
    (tmp_path / "m.csv").write_text(
        "case_id,mri,ct,brain,bone,lesion\n"
        "c1,files/x/mri.nii.gz,files/x/ct.nii.gz,files/x/brain.nii.gz,files/x/bone.nii.gz,\n"
    )
    refs = load_dataset(tmp_path / "m.csv")
    assert refs[0].case_id == "c1" and "lesion" not in refs[0].paths
    assert refs[0].load().lesion is None
    rows = [{"case_id": "j", "mri": "files/x/mri.nii.gz", "ct": "files/x/ct.nii.gz"}]
    (tmp_path / "m.json").write_text(json.dumps({"cases": rows}))
    case = load_dataset(tmp_path / "m.json")[0].load()
    assert case.brain is None and case.case_id == "j"
    (tmp_path / "bad.csv").write_text("case_id,mri\nc,files/x/mri.nii.gz\n")
    with pytest.raises(ClinfuseInputError, match="lacks column"):
        load_dataset(tmp_path / "bad.csv")
    (tmp_path / "dup.csv").write_text("case_id,mri,ct\nc,a,b\nc,a,b\n")
    with pytest.raises(ClinfuseInputError, match="twice"):
        load_dataset(tmp_path / "dup.csv")


def test_apis_layout_with_ct_on_its_own_grid(tmp_path: Path):
    h = head()
    folder = tmp_path / "apis" / "train_000"
    write(folder / "train_000_adc.nii.gz", h["mri"])
    ct_aff = np.diag([1.0, 1.0, 4.0, 1.0])  # finer in-plane, thicker slices, same centre
    ct_aff[:3, 3] = [-0.5, -0.5, 5.0]
    write(folder / "train_000_ncct.nii.gz", np.full((24, 24, 5), 30.0), ct_aff)
    write(folder / "masks" / "train_000.nii.gz", h["lesion"])
    refs = load_dataset(tmp_path / "apis")
    assert refs[0].case_id == "train_000" and refs[0].paths["lesion"].parent.name == "masks"
    case = refs[0].load()
    assert case.ct.shape == (24, 24, 5) and "ct" in case.grids
    np.testing.assert_allclose(case.grids["ct"], ct_aff)
    assert np.array_equal(case.lesion, h["lesion"])


def test_dicom_case_folder(tmp_path: Path):
    from test_dicom import write_series

    write_series(tmp_path / "case" / "ct", n=4)
    write_series(tmp_path / "case" / "mri", n=4)
    case = load_dataset(tmp_path / "case")[0].load()
    assert case.mri.shape == case.ct.shape == (6, 5, 4)
    assert case.meta["ct_offset"] == 0.0  # min HU is -1024: already HU


def make_harvard(folder: Path) -> None:
    (folder / "mri").mkdir(parents=True)
    (folder / "ct").mkdir()
    lines = ["index,case_id,slice,source_mri,source_ct"]
    for i, (cid, sl) in enumerate([(2, 4), (2, 5), (16, 7)]):
        Image.fromarray(np.full((16, 16), 10 * i, np.uint8)).save(folder / "mri" / f"{i:03d}.png")
        Image.fromarray(np.full((16, 16), 200, np.uint8)).save(folder / "ct" / f"{i:03d}.png")
        lines.append(f"{i:03d},{cid},{sl},x,y")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")


def test_harvard_layout(tmp_path: Path):
    make_harvard(tmp_path / "h")
    refs = load_dataset(tmp_path / "h")
    assert [r.case_id for r in refs] == ["2_004", "2_005", "16_007"]
    assert [r.patient_id for r in refs] == ["2", "2", "16"]
    case = refs[1].load()
    assert case.ct_kind == "display" and case.mri.shape == (16, 16) and case.ndim == 2
    assert case.meta["patient_id"] == "2" and "ct_offset" not in case.meta
    assert np.all(case.mri == 10) and case.mri.dtype == np.float32


@pytest.mark.skipif(not (DATA / "harvard_mri_ct").is_dir(), reason="shared data not present")
def test_real_harvard_manifest():
    refs = load_dataset(DATA / "harvard_mri_ct")
    assert len(refs) == 125 and refs[0].case_id == "2_004"
    assert len({r.patient_id for r in refs}) == 7
    case = refs[19].load()
    assert case.case_id.startswith("16_") and case.mri.shape == (256, 256)


def test_ct_offset_detection(tmp_path: Path):
    h = head()
    raw = h["ct"] + 1024.0  # air 24 HU+1024 ~ stored unsigned
    case_folder(tmp_path / "c", ct=raw)
    with pytest.warns(UserWarning, match="HU \\+ 1024"):
        case = load_dataset(tmp_path / "c")[0].load()
    np.testing.assert_allclose(case.ct, h["ct"])
    assert case.meta["ct_offset"] == 1024.0
    kept = load_dataset(tmp_path / "c")[0].load(ct_offset=0)
    np.testing.assert_allclose(kept.ct, raw)
    assert guess_ct_offset(h["ct"]) == 0.0


@pytest.mark.skipif(not (DATA / "volumes").is_dir(), reason="shared data not present")
def test_ct_offset_on_real_ct():
    from clinfuse.io.nifti import load_nifti

    raw, _ = load_nifti(DATA / "volumes" / "vtk_headsq_ct" / "ct_raw_plus1024.nii.gz")
    assert guess_ct_offset(raw) == 1024.0
    hu, _ = load_nifti(
        DATA / "volumes" / "ct_head_single_slices" / "pydicom_data_CQ500-CT-310_693_slice.nii.gz"
    )
    assert hu.ndim == 2 and guess_ct_offset(hu) == 0.0


# ----------------------------------------------------------------------------- bad input


def expect_error(folder: Path, match: str, name: str) -> None:
    with pytest.raises(ClinfuseInputError, match=match) as e:
        load_dataset(folder)[0].load()
    assert name in str(e.value), str(e.value)


def test_missing_and_unreadable_files(tmp_path: Path):
    (tmp_path / "m.csv").write_text("case_id,mri,ct\nc,nothere/mri.nii.gz,nothere/ct.nii.gz\n")
    expect_error(tmp_path / "m.csv", "not found", "mri.nii.gz")
    case_folder(tmp_path / "u")
    (tmp_path / "u" / "ct.nii.gz").write_bytes(b"corrupt")
    expect_error(tmp_path / "u", "cannot read", "ct.nii.gz")
    with pytest.raises(ClinfuseInputError, match="not found"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "junk" / "stuff").mkdir(parents=True)
    with pytest.raises(ClinfuseInputError, match="not a case"):
        load_dataset(tmp_path / "junk")


def test_nan_inf(tmp_path: Path):
    mri = head()["mri"]
    mri[0, 0, 0] = np.nan
    case_folder(tmp_path / "n", mri=mri)
    expect_error(tmp_path / "n", "NaN", "mri.nii.gz")


def test_empty_and_non_binary_masks(tmp_path: Path):
    shape = head()["mri"].shape
    case_folder(tmp_path / "e", brain=np.zeros(shape, bool))
    expect_error(tmp_path / "e", "brain mask is empty", "brain.nii.gz")
    labels = head()["bone"].astype(np.float32) * 2
    case_folder(tmp_path / "l", bone=labels)
    expect_error(tmp_path / "l", "label values > 1", "bone.nii.gz")
    soft = head()["lesion"].astype(np.float32) * 0.5
    case_folder(tmp_path / "s", lesion=soft)
    expect_error(tmp_path / "s", "not binary", "lesion.nii.gz")


def test_geometry_mismatches(tmp_path: Path):
    case_folder(tmp_path / "far")
    far = AFF.copy()
    far[:3, 3] = [500.0, 0, 0]
    write(tmp_path / "far" / "ct.nii.gz", head()["ct"], far)
    assert load_dataset(tmp_path / "far")[0].load().meta["no_overlap"] == ["ct"]  # see pipeline
    write(tmp_path / "far" / "ct.nii.gz", head()["ct"])
    write(tmp_path / "far" / "brain.nii.gz", head()["brain"], far)
    expect_error(tmp_path / "far", "does not overlap", "brain.nii.gz")
    case_folder(tmp_path / "mix")
    write(tmp_path / "mix" / "bone.nii.gz", head()["bone"][:, :, 6])
    expect_error(tmp_path / "mix", "2D/3D mix", "bone.nii.gz")
    # 2D inputs without geometry cannot be resampled: a shape mismatch is an error.
    make_harvard(tmp_path / "h")
    Image.fromarray(np.zeros((20, 16), np.uint8)).save(tmp_path / "h" / "ct" / "001.png")
    with pytest.raises(ClinfuseInputError, match="one pixel grid") as e:
        load_dataset(tmp_path / "h")[1].load()
    assert "001.png" in str(e.value)
    # A mask on another overlapping 3D grid is kept for resampling, not refused.
    case_folder(tmp_path / "ok")
    write(tmp_path / "ok" / "lesion.nii.gz", head()["lesion"][:10], AFF)
    case = load_dataset(tmp_path / "ok")[0].load()
    assert case.lesion.shape == (10, 12, 12) and "lesion" in case.grids

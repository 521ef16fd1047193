"""write_phantom_dataset: layout, manifest, byte-for-byte determinism, overwrite guard, and
loading back through clinfuse.io."""

import csv
import hashlib
import json

import numpy as np
import pytest

from clinfuse.errors import ClinfuseInputError
from clinfuse.phantom import PhantomConfig, generate_phantom, write_phantom_dataset
from clinfuse.phantom.dataset import case_config

CFG = PhantomConfig(shape=(24, 28, 20), spacing=(4.0, 4.0, 5.0), fracture=True)


def digests(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "phantoms"
    write_phantom_dataset(out, 3, CFG, seed=5, contrast="mixed", lesion="mixed")
    return out


def test_layout_and_manifest(written):
    with open(written / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["case_id", "mri", "ct", "brain", "bone", "lesion"]
    assert [r["case_id"] for r in rows] == ["phantom_000", "phantom_001", "phantom_002"]
    for r in rows:
        for role in ("mri", "ct", "brain", "bone", "lesion"):
            assert (written / r[role]).is_file()
            assert r[role] == f"{r['case_id']}/{role}.nii.gz"
        truth = json.loads((written / r["case_id"] / "truth.json").read_text())
        assert "mri_to_ct_world" in truth["misregistration"]
        assert truth["masks_grid"] == "mri"
    assert not list(written.rglob(".tmp-*"))  # atomic writes leave no temp files


def test_same_seed_same_bytes(written, tmp_path):
    again = tmp_path / "again"
    write_phantom_dataset(again, 3, CFG, seed=5, contrast="mixed", lesion="mixed")
    assert digests(again) == digests(written)
    other = tmp_path / "other"
    write_phantom_dataset(other, 1, CFG, seed=6)
    assert digests(other)["phantom_000/mri.nii.gz"] != digests(written)["phantom_000/mri.nii.gz"]


def test_case_i_uses_seed_plus_i(written):
    from clinfuse.io.nifti import load_nifti

    cfg = case_config(CFG, 2, "mixed", "mixed")
    ph = generate_phantom(cfg, np.random.default_rng(5 + 2))
    mri, aff = load_nifti(written / "phantom_002" / "mri.nii.gz")
    ct, _ = load_nifti(written / "phantom_002" / "ct.nii.gz")
    np.testing.assert_array_equal(mri, ph.case.mri)
    np.testing.assert_array_equal(ct, ph.case.ct)
    np.testing.assert_allclose(aff, ph.case.affine)
    assert json.loads((written / "phantom_002" / "truth.json").read_text())["seed"] == 7


def test_mixed_cycles_contrast_and_lesion():
    pairs = {
        (
            case_config(CFG, i, "mixed", "mixed").mri_contrast,
            case_config(CFG, i, "mixed", "mixed").lesion,
        )
        for i in range(9)
    }
    assert len(pairs) == 9


def test_loads_as_a_clinfuse_dataset(written):
    from clinfuse.io.dataset import load_dataset

    refs = load_dataset(written)
    assert len(refs) == 3
    case = refs[0].load()
    assert case.mri.shape == (24, 28, 20) and case.bone.dtype == bool and case.bone.any()


def test_refuses_to_overwrite(written):
    before = digests(written)
    with pytest.raises(ClinfuseInputError, match="--overwrite"):
        write_phantom_dataset(written, 1, CFG, seed=99)
    assert digests(written) == before
    write_phantom_dataset(written, 1, CFG, seed=5, overwrite=True, contrast="mixed", lesion="mixed")
    assert digests(written)["phantom_000/ct.nii.gz"] == before["phantom_000/ct.nii.gz"]


def test_2d_dataset_round_trip(tmp_path):
    from clinfuse.io.nifti import load_nifti

    out = write_phantom_dataset(
        tmp_path / "d2", 1, PhantomConfig(shape=(48, 56), spacing=(2.0, 2.0)), 0
    )
    mri, aff = load_nifti(out / "phantom_000" / "mri.nii.gz")
    assert mri.shape == (48, 56)
    np.testing.assert_allclose(np.linalg.norm(aff[:3, :2], axis=0), (2.0, 2.0))


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"contrast": "PD"}, {"lesion": "tumour"}])
def test_bad_arguments(tmp_path, kwargs):
    args = {"n": 1, **kwargs}
    n = args.pop("n")
    with pytest.raises(ClinfuseInputError):
        write_phantom_dataset(tmp_path / "x", n, CFG, 0, **args)

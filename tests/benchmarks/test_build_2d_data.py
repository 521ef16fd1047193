"""benchmarks/build_2d_data.py: slice picking, the licence filter, one tiny build (one C-STAR
contrast, RIRE and a phantom at 4 mm, 2 slices each) read back by the loader, and one training
step of the `open2d` config on it."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clinfuse.io.dataset import load_dataset
from clinfuse.io.nifti import load_nifti
from clinfuse.preprocess.pipeline import preprocess_case
from clinfuse.training.config import resolve_config

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "build_2d_data.py"
_spec = importlib.util.spec_from_file_location("bench_build_2d_data", _PATH)
b2d = importlib.util.module_from_spec(_spec)
sys.modules["bench_build_2d_data"] = b2d
_spec.loader.exec_module(b2d)

HAS_VOLUMES = (b2d.VOLUMES / "rire_training_001" / "mr_t1.nii.gz").is_file()


def test_pick_slices_spread_inside_the_brain_and_through_the_lesion():
    brain = np.zeros((10, 10, 40), bool)
    brain[2:8, 2:8, 10:30] = True
    brain[4:6, 4:6, 5:10] = True  # thin caudal tail: below 25 % of the largest area
    picks = b2d.pick_slices(brain, 4)
    assert picks == [12, 17, 22, 27]
    lesion = np.zeros_like(brain)
    lesion[3:5, 3:5, 19:21] = True
    with_lesion = b2d.pick_slices(brain, 4, lesion=lesion)
    assert len(with_lesion) == 4 and any(lesion[:, :, z].any() for z in with_lesion)
    assert b2d.pick_slices(brain, 1) == [20]


def test_only_openly_licensed_sources():
    names = {s.name for s in b2d.OPEN_SOURCES}
    assert names == {"cstar_t1", "cstar_t2", "cstar_flair", "rire_t1"}
    chris = [s for s in b2d.TRAINING_SOURCES if s.name == "chris_t1"]
    with pytest.raises(ValueError, match="not openly licensed"):
        b2d.build(Path("/nonexistent"), sources=chris, phantoms=0)


def test_display_orientation_is_radiological():
    vol = np.zeros((4, 5, 3))
    vol[3, 4, 1] = 1.0  # patient right (max x), anterior (max y)
    take, aff = b2d.slice_geometry(np.diag([2.0, 3.0, 4.0, 1.0]), 1, vol.shape, "display")
    img = take(vol)
    assert img.shape == (5, 4) and img[0, 0] == 1.0  # top row = anterior, left = right
    np.testing.assert_allclose(np.diag(aff), [3.0, 2.0, 4.0, 1.0])
    take, aff = b2d.slice_geometry(np.diag([2.0, 3.0, 4.0, 1.0]), 1, vol.shape, "ras")
    assert take(vol)[3, 4] == 1.0 and aff[2, 3] == 4.0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    if not HAS_VOLUMES:
        pytest.skip("needs ../shared/data/volumes")
    out = tmp_path_factory.mktemp("open2d")
    sources = [s for s in b2d.OPEN_SOURCES if s.name in ("cstar_t2", "rire_t1")]
    t0 = time.perf_counter()
    b2d.build(
        out,
        per_source=1,
        phantoms=1,
        slices_per_volume=2,
        spacing=4.0,
        sources=sources,
        display_ct=0.5,
        log=lambda s: None,
    )
    seconds = time.perf_counter() - t0
    print(f"build_2d_data tiny build: {seconds:.1f} s")
    return out, seconds


def test_tiny_build_manifest_masks_and_loader(tiny: tuple[Path, float]):
    out, _ = tiny
    with open(out / "all" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(b2d.COLUMNS)
    assert len(rows) == 6  # 3 volumes x 2 slices
    by_patient: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_patient.setdefault(r["patient_id"], []).append(r)
    assert set(by_patient) == {"cstar", "rire001", "phantoms_phantom_000"}
    assert all(len(v) == 2 for v in by_patient.values())
    assert {r["ct_kind"] for r in rows} <= {"hu", "display"}
    for r in rows:
        assert r["orientation"] == "display" and float(r["brain_fraction"]) >= 0.25
        cstar = r["patient_id"] == "cstar"
        # C-STAR's real stroke is unlabelled: no lesion target, the partial mask + ignore side.
        assert (r["lesion"] == "") == cstar and (r["lesion_partial"] != "") == cstar
        assert (r["ignore"] != "") == cstar
        assert "chris" not in r["case_id"] and "vm_" not in r["case_id"]
    refs = {ref.case_id: ref for ref in load_dataset(out / "all")}
    assert set(refs) == {r["case_id"] for r in rows}
    for r in rows:
        ref = refs[r["case_id"]]
        assert ref.patient_id == r["patient_id"] and ref.ct_kind == r["ct_kind"]
        case = ref.load()
        assert case.ndim == 2 and case.ct.shape == case.mri.shape
        assert case.spacing == pytest.approx((4.0, 4.0))
        assert case.brain is not None and case.brain.any() and case.bone is not None
        assert not (case.brain & case.bone).any()
        if r["ct_kind"] == "hu":
            assert case.ct.min() < -900 and case.ct[case.bone].max() > 300
        else:
            assert case.ct.min() >= 0 and case.ct.max() <= 255
            assert np.array_equal(case.ct, np.round(case.ct))
        if r["lesion"]:
            assert case.lesion is not None and case.lesion.shape == case.mri.shape
        else:
            assert case.lesion is None
            partial, _ = load_nifti(out / "all" / r["lesion_partial"])
            ignore, _ = load_nifti(out / "all" / r["ignore"])
            assert partial.shape == ignore.shape == case.mri.shape
        prep = preprocess_case(case)
        assert prep.ndim == 2 and prep.mri.shape == case.mri.shape
    # Every slice of a volume is one patient: the 3D source keeps its own row-free folder.
    assert (out / "3d" / "real" / "manifest.csv").is_file()


def test_open2d_config_is_2d_with_the_lesion_term():
    cfg = resolve_config("open2d")
    assert tuple(cfg.data.patch_size) == (128, 128) and cfg.model["spatial_dims"] == 2
    assert cfg.roi.gamma > 0 and cfg.data.lesion_fraction > 0
    assert "rire001" in cfg.data.val_patients
    assert any(p.startswith("phantoms_phantom_") for p in cfg.data.val_patients)


def test_open2d_trains_one_step_on_the_tiny_build(tiny: tuple[Path, float], tmp_path: Path):
    out, _ = tiny
    run = tmp_path / "run"
    cmd = [
        *(sys.executable, "-m", "clinfuse", "train", "--config", "open2d"),
        *("--data", str(out / "all"), "--out", str(run), "--device", "cpu"),
        *("--threads", "1", "--max-steps", "1", "--no-progress"),
        # The tiny build has one phantom: validate on it, briefly (DDIM-2 on a 64² crop).
        *("--set", "data.val_patients=[phantoms_phantom_000]", "--set", "data.max_val_cases=1"),
        *("--set", "diffusion.val_sampling_steps=2", "--set", "data.val_patch_size=[64,64]"),
        *("--set", "batch_size=1", "--set", "effective_batch=1"),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert (run / "last.ckpt").is_file()
    with open(run / "metrics.csv", newline="") as f:
        steps = [r for r in csv.DictReader(f) if r["loss"]]
    assert len(steps) == 1 and np.isfinite(float(steps[0]["loss"]))

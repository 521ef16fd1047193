"""benchmarks/real3d.py: the rigid misregistration, the scenario cases, and one small end-to-end
run on a phantom standing in for the real test cases (baselines, registration, tables)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from clinfuse.phantom import PhantomConfig, generate_phantom

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "real3d.py"
_spec = importlib.util.spec_from_file_location("bench_real3d", _PATH)
r3 = importlib.util.module_from_spec(_spec)
sys.modules["bench_real3d"] = r3  # dataclasses look their module up there
_spec.loader.exec_module(r3)


def test_rigid_world_moves_by_d_mm_and_degrees():
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    shape = (10, 12, 8)
    np.testing.assert_allclose(r3.rigid_world(aff, shape, 0.0), np.eye(4), atol=1e-12)
    m = r3.rigid_world(aff, shape, 3.0)
    angle = np.degrees(np.arccos((np.trace(m[:3, :3]) - 1) / 2))
    assert angle == pytest.approx(3.0)
    centre = aff[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    assert np.linalg.norm(m[:3, :3] @ centre + m[:3, 3] - centre) == pytest.approx(3.0)


def test_variant_case_drops_masks_and_moves_only_the_ct_affine():
    case = generate_phantom(PhantomConfig(shape=(24, 28, 24), spacing=(4.0, 4.0, 4.0)), 1).case
    v = r3.variant_case(case, masks=False, misreg=2.0)
    assert v.brain is None and v.bone is None and case.brain is not None
    assert v.ct is case.ct and v.mri is case.mri and "ct" not in case.grids
    moved = r3.rigid_world(case.affine, case.ct.shape, 2.0) @ case.affine
    np.testing.assert_allclose(v.grids["ct"], moved)


def test_small_run_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    case = generate_phantom(PhantomConfig(shape=(32, 36, 32), spacing=(4.0, 4.0, 4.0)), 2).case
    monkeypatch.setattr(r3, "build_cases", lambda: [r3.RealTestCase("ph", case, "phantom")])
    monkeypatch.setattr(r3, "GRID_MM", 4.0)
    res = r3.run(
        ["average", "max", "composite"], ["exact", "auto", "misreg2"], [0.0, 1.0], tmp_path,
        native=True, checkpoint=None, log=lambda s: None,
    )  # fmt: skip
    rows = {(r["scenario"], r["method"]): r for r in res["rows"]}
    # The composite with exact masks is the ceiling of the project's and the masked scores.
    for key in ("brain_ssim", "bone_ssim", "brain_s_masked", "bone_s_masked"):
        assert rows[("exact", "composite")][key] == pytest.approx(1.0, abs=1e-6)
    assert rows[("misreg2", "composite")]["bone_ssim"] < 0.99  # scored against the unmoved CT
    assert ("curve1", "max") in rows and ("curve0_reg", "composite") in rows
    assert ("curve1", "average") not in rows  # the curve is for ours, max and the composite
    assert "native_brain_ssim" in rows[("auto", "max")]
    assert "native_brain_ssim" not in rows[("curve1", "max")]
    dice = res["info"]["cases"]["ph"]["auto_mask_dice_2mm"]
    assert dice["brain"] > 0.95 and dice["bone"] > 0.9
    md = r3.tables(res, "python benchmarks/real3d.py", "ours")
    assert "| composite | 1.000 / 1.000 |" in md and "Robustness" in md and "rigid MI" in md
    assert len(list(tmp_path.glob("*.npy"))) == len(res["rows"])  # cached fusions


def test_ours_records_what_guided_its_lesion_term(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Ours' row comes with its lesion head's record per scenario: the guiding source, the
    guiding and written lesion volumes (mL) and the written mask's components and doubtful mL,
    also printed above the tables."""
    from _helpers import tiny_fusion_checkpoint

    case = generate_phantom(PhantomConfig(shape=(32, 36, 32), spacing=(4.0, 4.0, 4.0)), 2).case
    monkeypatch.setattr(r3, "build_cases", lambda: [r3.RealTestCase("ph", case, "phantom")])
    monkeypatch.setattr(r3, "GRID_MM", 4.0)
    ckpt = str(tiny_fusion_checkpoint(tmp_path / "tiny.pt"))
    res = r3.run(
        ["ours"], ["exact"], [], tmp_path / "work", native=False, checkpoint=ckpt,
        log=lambda s: None,
    )  # fmt: skip
    les = res["info"]["cases"]["ph"]["ours_lesion"]["exact"]
    assert les["source"] in ("predicted", "rejected", "none")
    assert les["guide_ml"] >= 0.0 and les["predicted_ml"] >= 0.0
    assert les["source"] == "predicted" or les["guide_ml"] == 0.0  # no guide without a mask
    # the findings fuse writes (lesions.csv): components and their doubtful share
    assert les["components"] >= (les["predicted_ml"] > 0) and les["doubt_below"] == 0.85
    assert 0.0 <= les["doubtful_ml"] <= les["predicted_ml"] + 1e-3
    md = r3.tables(res, "python benchmarks/real3d.py", "ours")
    assert f"Ours' lesion head (exact): the lesion term was guided by '{les['source']}'" in md

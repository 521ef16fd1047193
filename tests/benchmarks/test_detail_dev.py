"""benchmarks/detail_dev.py: the cut brain mask that stands in for an automatic mask missing the
brainstem, and the temporary guided-filter settings of its grid search."""

import importlib.util
import sys
from pathlib import Path

import numpy as np

from clinfuse.phantom import PhantomConfig, generate_phantom
from clinfuse.preprocess import detail

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "detail_dev.py"
_spec = importlib.util.spec_from_file_location("bench_detail_dev", _PATH)
dd = importlib.util.module_from_spec(_spec)
sys.modules["bench_detail_dev"] = dd
_spec.loader.exec_module(dd)


def test_cut_brain_removes_the_lowest_mm_only():
    case = generate_phantom(PhantomConfig(shape=(32, 32, 24), spacing=(2.0, 2.0, 2.0)), 0).case
    cut = dd.cut_brain(case, 10.0)
    z = np.argwhere(case.brain)[:, 2]  # identity-like affine: voxel k is at 2k mm on S
    lowest = z.min()
    assert not cut.brain[..., : lowest + 5].any()  # within 10 mm of the lowest slice: gone
    np.testing.assert_array_equal(cut.brain[..., lowest + 6 :], case.brain[..., lowest + 6 :])
    assert case.brain.sum() > cut.brain.sum() > 0
    assert cut.mri is case.mri  # only the mask changes


def test_guide_settings_are_restored():
    before = detail.GUIDE_RADIUS_WORK_VOXELS, detail.GUIDE_EPS
    with dd._guide_settings(3.0, 1e-2):
        assert (detail.GUIDE_RADIUS_WORK_VOXELS, detail.GUIDE_EPS) == (3.0, 1e-2)
    assert (detail.GUIDE_RADIUS_WORK_VOXELS, detail.GUIDE_EPS) == before

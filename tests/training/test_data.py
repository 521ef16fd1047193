"""Training data: patient-level split, the ROI-composite target, patches, jitter on CT only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _helpers import make_training_case as make_case
from clinfuse.baselines.composite import roi_composite
from clinfuse.errors import ClinfuseInputError
from clinfuse.training.config import DataConfig, JitterConfig, resolve_config
from clinfuse.training.data import TrainData, patient_of, split_by_patient

HARVARD = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "harvard_mri_ct"


def test_patient_of_prefers_loader_metadata_then_pattern():
    assert patient_of("16_007", {"patient_id": "16"}, None) == "16"
    assert patient_of("16_007", {}, r"^(\d+)_") == "16"
    assert patient_of("phantom_003", {}, None) == "phantom_003"


def test_split_never_mixes_patients_and_drops_test():
    patients = {f"{p}_{s:03d}": p for p in ("2", "16", "21", "28", "37") for s in range(3)}
    cfg = DataConfig(patch_size=(8, 8), val_patients=["37"], test_patients=["16", "21"])
    train, val, test = split_by_patient(patients, cfg)
    assert {patients[c] for c in train} == {"2", "28"}
    assert {patients[c] for c in val} == {"37"}
    assert {patients[c] for c in test} == {"16", "21"}
    # Seeded fraction split: whole patients, deterministic.
    cfg = DataConfig(patch_size=(8, 8), val_fraction=0.4, split_seed=1)
    a = split_by_patient(patients, cfg)
    assert a == split_by_patient(patients, cfg)
    assert not {patients[c] for c in a[0]} & {patients[c] for c in a[1]}
    with pytest.raises(ClinfuseInputError, match="val_patients"):
        split_by_patient(patients, DataConfig(patch_size=(8, 8), val_patients=["99"]))


@pytest.mark.skipif(not HARVARD.is_dir(), reason="shared Harvard data not present")
def test_harvard_preset_never_trains_on_cases_16_and_21():
    from clinfuse.io.dataset import load_dataset

    cfg = resolve_config("harvard2d").data
    refs = load_dataset(HARVARD)  # reads the manifest only
    patients = {r.case_id: patient_of(r.case_id, {"patient_id": r.patient_id}, None) for r in refs}
    train, val, test = split_by_patient(patients, cfg)
    assert len(train) + len(val) + len(test) == 125
    assert {patients[c] for c in train} == {"2", "28", "32", "33"}
    assert {patients[c] for c in test} == {"16", "21"}
    assert not any(c.startswith(("16_", "21_")) for c in train + val)


def test_target_is_the_feathered_roi_composite_and_cond_order():
    case = make_case("a", shape=(16, 16, 16), lesion=True)
    cfg = DataConfig(patch_size=(16, 16, 16), feather_sigma=1.0)
    data = TrainData([case], [], cfg)
    item = data.sample(np.random.default_rng(0), JitterConfig(enabled=False))
    expected = roi_composite(case.mri, case.ct_bone, case.brain, case.bone, feather_sigma=1.0)
    np.testing.assert_array_equal(item["target"][0], expected)
    np.testing.assert_array_equal(item["cond"][0], case.mri)  # [mri, ct, ct_bone]
    np.testing.assert_array_equal(item["cond"][1], case.ct)
    np.testing.assert_array_equal(item["cond"][2], case.ct_bone)
    np.testing.assert_array_equal(item["lesion"][0], case.lesion)


def test_patch_shapes_padding_and_lesion_centring():
    case = make_case("a", shape=(20, 20, 12), lesion=True)  # z smaller than the patch
    cfg = DataConfig(patch_size=(8, 8, 16), lesion_fraction=1.0)
    data = TrainData([case], [], cfg)
    batch = data.sample_batch(np.random.default_rng(0), 3, JitterConfig(enabled=False))
    assert tuple(batch.cond.shape) == (3, 3, 8, 8, 16)
    assert tuple(batch.target.shape) == (3, 1, 8, 8, 16)
    # Every patch is centred on a lesion voxel, so each holds some lesion.
    assert all(float(batch.lesion[i].sum()) > 0 for i in range(3))
    assert batch.has_lesion.all()
    assert batch.spacing == [case.spacing] * 3


def test_same_generator_same_batch():
    cases = [make_case(f"c{i}", seed=i) for i in range(2)]
    data = TrainData(cases, [], DataConfig(patch_size=(8, 8, 8)))
    a = data.sample_batch(np.random.default_rng([0, 3, 1, 0]), 2, JitterConfig(p=0.5))
    b = data.sample_batch(np.random.default_rng([0, 3, 1, 0]), 2, JitterConfig(p=0.5))
    assert a.case_ids == b.case_ids and a.jitter == b.jitter
    assert bool((a.cond == b.cond).all()) and bool((a.target == b.target).all())


def test_jitter_moves_ct_side_only():
    case = make_case("a", shape=(16, 16, 16), lesion=True)
    cfg = DataConfig(patch_size=(16, 16, 16), lesion_fraction=0.0)
    data = TrainData([case], [], cfg)
    item = data.sample(
        np.random.default_rng(0),
        JitterConfig(p=1.0, max_translation_mm=2.0, max_rotation_deg=2.0),
    )
    assert item["jitter"].applied
    np.testing.assert_array_equal(item["cond"][0], case.mri)  # MRI side fixed
    np.testing.assert_array_equal(item["brain"][0], case.brain)
    assert not np.array_equal(item["cond"][1], case.ct)  # CT side moved
    assert not np.array_equal(item["bone"][0], case.bone)
    # The target follows the moved CT (it is the composite of MRI and the jittered CT).
    expected = roi_composite(
        case.mri, item["cond"][2], case.brain, item["bone"][0] > 0.5, feather_sigma=1.0
    )
    np.testing.assert_allclose(item["target"][0], expected, atol=1e-6)


def test_dimension_mismatch_is_a_clear_error():
    case2d = make_case("flat", shape=(16, 16), spacing=(1.0, 1.0))
    with pytest.raises(ClinfuseInputError, match="2D .* 3D"):
        TrainData([case2d], [], DataConfig(patch_size=(8, 8, 8)))

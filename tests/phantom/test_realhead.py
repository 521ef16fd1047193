"""Real-anatomy pairs (`clinfuse.phantom.realhead`) on real training volumes from ../shared/data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from clinfuse.errors import ClinfuseInputError
from clinfuse.io.dataset import load_dataset
from clinfuse.phantom.realhead import (
    CLASS_MEANS,
    LESION_MRI_LEVEL,
    RealHeadConfig,
    RealMri,
    RealSource,
    generate_real_pair,
    lesion_level,
    load_real_mri,
    tissue_memberships,
    write_real_dataset,
)

VOLUMES = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "volumes"
CHRIS = VOLUMES / "chris_t1_wholehead" / "t1.nii.gz"
CSTAR_T2 = VOLUMES / "cstar_chronic_stroke_brainextracted" / "t2.nii.gz"

pytestmark = pytest.mark.skipif(not CHRIS.is_file(), reason="../shared/data not present")


@pytest.fixture(scope="module")
def chris() -> RealMri:
    return load_real_mri(CHRIS)


def _ring(mask: np.ndarray, brain: np.ndarray) -> np.ndarray:
    return ndimage.binary_dilation(mask, iterations=2) & ~mask & brain


def test_pair_has_plausible_hu_and_consistent_masks(chris):
    cfg = RealHeadConfig(contrast="T1", spacing=4.0, lesion="ischaemic", augment=False)
    ph = generate_real_pair(chris, cfg, seed=0)
    c = ph.case
    assert c.mri.shape == c.ct.shape == c.brain.shape
    assert not (c.brain & c.bone).any(), "brain and bone must be disjoint"
    assert not (c.lesion & ~c.brain).any(), "the lesion lies in the brain"
    assert np.median(c.ct[c.brain]) == pytest.approx(30, abs=15)  # parenchyma + CSF, HU
    assert np.mean(c.ct[c.bone]) > 300  # cortical + diploe (blurred at 4 mm)
    head = ndimage.binary_dilation(c.brain | c.bone, iterations=3)
    far = ~ndimage.binary_dilation(head, iterations=8)
    assert np.median(c.ct[far]) < -900  # air outside the head
    # Intracranial volume of an adult head (1.2-1.9 L).
    vol_l = c.brain.sum() * 4.0**3 / 1e6
    assert 1.0 < vol_l < 2.0
    # The inserted ischaemic lesion is dark on T1 (painted between the image's CSF and grey
    # matter; this 0.8 mL one is mostly partial-volume border at 4 mm, so its level is checked,
    # and larger ones against their ring in test_lesion_contrast_per_sequence) and hypodense on CT.
    assert c.lesion.sum() > 0
    les = ph.truth["lesions"][0]
    _, centres = tissue_memberships(c.mri, c.brain & ~c.lesion, "T1", trim_bright=True)
    assert centres[0] < les["mri_level"] < centres[1]
    assert les["mri_level"] < np.percentile(c.mri[c.brain], 25)
    assert -15 <= les["ct_offset_hu"] <= -5


def test_same_seed_same_pair_and_augmentation_runs(chris):
    cfg = RealHeadConfig(contrast="T1", spacing=4.0, augment=True)
    a = generate_real_pair(chris, cfg, seed=3)
    b = generate_real_pair(chris, cfg, seed=3)
    np.testing.assert_array_equal(a.case.mri, b.case.mri)
    np.testing.assert_array_equal(a.case.ct, b.case.ct)
    np.testing.assert_array_equal(a.case.lesion, b.case.lesion)
    c = generate_real_pair(chris, cfg, seed=4)
    assert not np.array_equal(a.case.ct, c.case.ct)
    assert a.truth["augmentation"]["affine_and_elastic_seed"] >= 0


@pytest.mark.parametrize(
    ("contrast", "kind", "brighter"),
    [
        ("T1", "ischaemic", False),
        ("T2", "ischaemic", True),
        ("FLAIR", "ischaemic", True),
        ("DWI", "ischaemic", True),
        ("ADC", "ischaemic", False),
        ("T2", "haemorrhagic", False),
    ],
)
def test_lesion_contrast_per_sequence(chris, contrast, kind, brighter):
    # 5-40 mL: a lesion of many 4 mm voxels, so partial volume at its border cannot decide.
    cfg = RealHeadConfig(
        contrast="T1",
        output_contrast=contrast,
        spacing=4.0,
        lesion=kind,
        lesion_ml=(5.0, 40.0),
        augment=False,
    )
    ph = generate_real_pair(chris, cfg, seed=1)
    c = ph.case
    ring = _ring(c.lesion, c.brain)
    inside, around = c.mri[c.lesion].mean(), c.mri[ring].mean()
    assert (inside > around) == brighter
    ct_in, ct_ring = c.ct[c.lesion].mean(), c.ct[ring].mean()
    assert (ct_in > ct_ring) == (kind == "haemorrhagic")


def test_given_lesion_is_kept_and_hypodense_on_ct(chris):
    lesion = np.zeros(chris.mri.shape, dtype=bool)
    x, y, z = (s // 2 for s in chris.mri.shape)
    lesion[x + 10 : x + 30, y - 10 : y + 10, z + 5 : z + 25] = True
    real = RealMri(chris.mri, chris.affine, lesion=lesion, source=str(CHRIS))
    cfg = RealHeadConfig(contrast="T1", spacing=4.0, lesion="none", augment=False)
    ph = generate_real_pair(real, cfg, seed=0)
    c = ph.case
    assert c.lesion.sum() > 0.5 * lesion.sum() * (0.88 / 4.0) ** 3
    assert ph.truth["lesions"][0]["kind"] == "given"
    assert c.ct[c.lesion].mean() < c.ct[_ring(c.lesion, c.brain)].mean()


def test_brain_extracted_input_gets_a_synthetic_skull():
    real = load_real_mri(CSTAR_T2)
    cfg = RealHeadConfig(
        contrast="T2", skull="synthetic", spacing=4.0, lesion_side="right", augment=False
    )
    ph = generate_real_pair(real, cfg, seed=0)
    c = ph.case
    assert c.bone.sum() > 0.1 * c.brain.sum()
    assert np.mean(c.ct[c.bone]) > 300
    # Lesions stay in the allowed (right, RAS +x) hemisphere.
    mid = np.argwhere(c.brain)[:, 0].mean()
    assert np.argwhere(c.lesion)[:, 0].min() > mid - 1


def test_dataset_layout_loads_and_refuses_test_cases(tmp_path):
    src = RealSource("chris", "chris_t1_wholehead/t1.nii.gz", "T1", patient="chris")
    out = write_real_dataset(
        tmp_path / "ds", VOLUMES, n_per_source=2, seed=0, sources=[src], spacing=6.0
    )
    refs = load_dataset(out)
    assert [r.case_id for r in refs] == ["chris_000", "chris_001"]
    assert {r.patient_id for r in refs} == {"chris"}
    case = refs[0].load()
    assert case.bone is not None and case.bone.any()
    bad = RealSource("x", "seg3d_t1_skullmask/t1.nii.gz", "T1")
    with pytest.raises(ClinfuseInputError, match="test case"):
        write_real_dataset(tmp_path / "bad", VOLUMES, 1, 0, sources=[bad])


def test_synth_real_command(tmp_path):
    from typer.testing import CliRunner

    from clinfuse.cli import app

    args = ["synth-real", "--mri", str(CHRIS), "--out", str(tmp_path / "o"), "--n", "2"]
    args += ["--spacing", "6", "--output-contrasts", "keep,FLAIR", "--seed", "3"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    refs = load_dataset(tmp_path / "o")
    assert len(refs) == 2
    import json

    truth = json.loads((tmp_path / "o" / refs[1].case_id / "truth.json").read_text())
    assert truth["mri_contrast"] == "FLAIR" and truth["seed"] == 4
    bad = CliRunner().invoke(app, [*args[:6], "--output-contrasts", "PD"])
    assert bad.exit_code != 0


VISIBLE_MALE = VOLUMES / "visible_male_head" / "mri_t1.nii.gz"


@pytest.mark.parametrize("seed", [1, 3])
def test_visible_male_t1_infarct_is_dark_from_version_2(seed):
    """Version 1's intracranial mask took in the orbits' fat on this 5 mm-slice T1 and its
    white-matter centre became that bright tail, so an ischaemic T1 lesion came out bright;
    version 2 paints it darker than nearly all of the brain, as on every other source."""
    real = load_real_mri(VISIBLE_MALE)

    def percentile(version: str) -> tuple[float, float]:
        cfg = RealHeadConfig(contrast="T1", lesion="ischaemic", augment=False, version=version)
        c = generate_real_pair(real, cfg, seed=seed).case
        other = c.mri[c.brain & ~c.lesion]
        ml = float(c.brain.sum()) * float(np.prod(c.spacing)) / 1000.0
        return 100.0 * float((other < c.mri[c.lesion].mean()).mean()), ml

    p1, ml1 = percentile("1")
    p2, ml2 = percentile("2")
    assert p1 > 50.0 and ml1 > 2300.0  # the fault, kept reproducible for old data
    assert p2 < 25.0 and ml2 < 2000.0


def test_tissue_centres_ignore_a_bright_tail_when_asked():
    rng = np.random.default_rng(0)
    # CSF / GM / WM at 25 / 70 / 100 (T1 order), plus 4 % fat at 250 inside the mask.
    vals = np.concatenate(
        [rng.normal(m, 4.0, n) for m, n in ((25, 2000), (70, 4000), (100, 4000), (250, 400))]
    ).astype(np.float32)
    mri = vals.reshape(1, 1, -1)
    mask = np.ones_like(mri, dtype=bool)
    _, plain = tissue_memberships(mri, mask, "T1")
    p, trimmed = tissue_memberships(mri, mask, "T1", trim_bright=True)
    assert plain[2] > 110.0  # the fat tail pulled "white matter" up
    np.testing.assert_allclose(trimmed, [25.0, 70.0, 100.0], atol=2.0)
    np.testing.assert_allclose(p.sum(axis=0), 1.0, atol=1e-5)  # the fat still has memberships
    assert p[2, 0, 0, -1] > 0.99


def test_unknown_generator_version_is_refused():
    with pytest.raises(ClinfuseInputError, match="realhead version"):
        RealHeadConfig(version="4")


@pytest.mark.parametrize("contrast", list(CLASS_MEANS))
def test_lesion_level_is_version_2_on_canonical_centres(contrast):
    """On an image whose class centres are CLASS_MEANS times its white matter (every re-painted
    pair), version 3's level is version 2's: the level in white-matter units times WM."""
    wm = 137.0
    centres = np.asarray(CLASS_MEANS[contrast]) * wm
    for kind in ("ischaemic", "haemorrhagic"):
        lo, hi = LESION_MRI_LEVEL[kind][contrast]
        for level in (lo, (lo + hi) / 2, hi, 0.1, 5.0):
            assert lesion_level(level, contrast, centres) == pytest.approx(level * wm)


def test_lesion_level_follows_the_images_own_centres():
    # C-STAR's T2 as the 2 mm k-means sees it: grey matter at 1.8x white, not CLASS_MEANS' 1.3x.
    centres = np.array([295.0, 170.0, 95.0])
    lo, hi = LESION_MRI_LEVEL["ischaemic"]["T2"]
    assert lo * centres[2] < centres[1]  # version 2: the faint end is darker than grey matter
    for level in (lo, hi):
        assert centres[1] < lesion_level(level, "T2", centres) < centres[0]
    # Beyond the outer classes: linear with the nearest segment's slope (FLAIR: GM brightest).
    flair = np.array([40.0, 140.0, 100.0])
    assert lesion_level(1.45, "FLAIR", flair) == pytest.approx(140.0 + 0.2 * 40.0 / 0.25)
    # Degenerate fit (grey = white): version 2's rule.
    assert lesion_level(1.6, "T2", np.array([300.0, 95.0, 95.0])) == pytest.approx(1.6 * 95.0)


def test_version_3_infarct_outshines_grey_matter_on_cstar_t2():
    """Version 2 put C-STAR T2 infarcts near grey-matter signal (a label the MRI hardly shows);
    version 3 keeps the same anatomy, lesion mask and CT, and paints the infarct above the
    image's grey-matter centre. Same seed, so only the lesion's MRI signal differs."""
    real = load_real_mri(CSTAR_T2)
    base = dict(
        contrast="T2", skull="synthetic", spacing=4.0, lesion_side="right", lesion_ml=(10.0, 30.0)
    )
    v2 = generate_real_pair(real, RealHeadConfig(**base, augment=False, version="2"), seed=2)
    v3 = generate_real_pair(real, RealHeadConfig(**base, augment=False, version="3"), seed=2)
    np.testing.assert_array_equal(v2.case.lesion, v3.case.lesion)
    np.testing.assert_array_equal(v2.case.ct, v3.case.ct)
    lesion, brain = v3.case.lesion, v3.case.brain
    assert lesion.sum() > 20
    far = brain & ~ndimage.binary_dilation(lesion, iterations=4)  # past the blurred border
    np.testing.assert_allclose(v2.case.mri[far], v3.case.mri[far], rtol=1e-5, atol=1e-3)
    _, centres = tissue_memberships(v3.case.mri, far, "T2")
    l2, l3 = (v.truth["lesions"][0]["mri_level"] for v in (v2, v3))
    assert (
        v2.truth["lesions"][0]["mri_level_canonical"]
        == v3.truth["lesions"][0]["mri_level_canonical"]
    )
    assert l3 > l2 and l3 > centres[1]
    ring = _ring(lesion, brain)
    gap2 = v2.case.mri[lesion].mean() - v2.case.mri[ring].mean()
    gap3 = v3.case.mri[lesion].mean() - v3.case.mri[ring].mean()
    assert gap3 > gap2 and gap3 > 0

"""`fuse_case` / `fuse_prepared` / `write_outputs` end to end with a tiny random checkpoint."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from _helpers import tiny_fusion_checkpoint
from clinfuse.errors import ClinfuseInputError
from clinfuse.pipeline import (
    check_lesion_in_brain,
    fuse_case,
    fuse_prepared,
    load_model,
    sha256_of,
    write_outputs,
)

SHAPE = (20, 16, 14)  # > the 16³ training patch along x: two sliding windows (kept tiny: CPU)
FAST = {"n_inner": 1, "final_inner": 1}  # one gradient step per DDIM step keeps the tests quick
SPACING = (2.0, 2.0, 2.5)


def _head(shape=SHAPE):
    """An ellipsoid head: brain inside, a 2-voxel skull shell, a lesion in the brain."""
    idx = np.indices(shape).astype(np.float64)
    c = [(s - 1) / 2 for s in shape]
    r = np.sqrt(sum(((idx[i] - c[i]) / (0.45 * shape[i])) ** 2 for i in range(3)))
    brain = r < 0.75
    bone = (r >= 0.75) & (r < 0.95)
    lesion = brain & (((idx[0] - c[0] - 2) ** 2 + (idx[1] - c[1]) ** 2 + (idx[2] - c[2]) ** 2) < 9)
    mri = np.where(brain, 600.0 + 40 * idx[0], np.where(bone, 150.0, 0.0))
    mri[lesion] = 300.0
    ct = np.where(brain, 35.0, np.where(bone, 1200.0, -1000.0))
    return mri.astype(np.float32), ct.astype(np.float32), brain, bone, lesion


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_fusion_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def case_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("case")
    affine = np.diag([*SPACING, 1.0])
    mri, ct, brain, bone, lesion = _head()
    paths = {}
    for name, arr in (
        ("mri", mri),
        ("ct", ct),
        ("brain", brain),
        ("bone", bone),
        ("lesion", lesion),
    ):
        p = d / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(arr.astype(np.float32), affine), str(p))
        paths[name] = p
    return paths


def _prepared(paths, lesion=True):
    from clinfuse.io.dataset import load_case
    from clinfuse.preprocess.pipeline import preprocess_case

    roles = {k: v for k, v in paths.items() if lesion or k != "lesion"}
    return preprocess_case(load_case(**roles))


def test_fuse_prepared_samples_uncertainty_and_determinism(checkpoint, case_files):
    prep = _prepared(case_files)
    lm = load_model(checkpoint, 3)
    kw = dict(steps=1, samples=2, seed=5, patch_size=lm.patch_size, overrides={**FAST, "eta": 0.01})
    kw["window"] = "sliding"
    a = fuse_prepared(prep, lm.model, **kw)
    b = fuse_prepared(prep, lm.model, **kw)
    assert a.fused.shape == SHAPE and a.uncertainty.shape == SHAPE
    np.testing.assert_array_equal(a.fused, b.fused)
    assert a.uncertainty.max() > 0  # two samples from different noise differ
    # the ground truth never guides by default; one step (t = 999) never reaches line 7 (t <= T/2)
    # so no lesion mask guides at all (the "predicted" path: tests/diffusion/test_guidance.py)
    assert a.lesion_source == "none"
    assert a.record["sliding_window"]["patch"] == [16, 16, 16]
    # "auto" (the default) samples a volume this small in one call
    auto = fuse_prepared(prep, lm.model, **{**kw, "window": "auto"})
    assert auto.record["window"] == "whole" and auto.record["sliding_window"] is None
    assert 0 <= a.lesion_prob.min() and a.lesion_prob.max() <= 1
    oracle = fuse_prepared(
        prep, lm.model, steps=1, lesion="oracle", patch_size=lm.patch_size, overrides=FAST
    )
    assert oracle.lesion_source == "oracle" and oracle.uncertainty is None
    blend = fuse_prepared(
        prep, lm.model, **{**kw, "overrides": {**FAST, "eta": 0.01, "uncertainty_blend": 1.0}}
    )
    comp_dist = np.abs(blend.fused - prep.mri)[prep.brain].mean()
    assert comp_dist < np.abs(a.fused - prep.mri)[prep.brain].mean()  # pulled toward MRI


def test_air_in_every_source_stays_air(checkpoint, case_files):
    prep = _prepared(case_files)
    lm = load_model(checkpoint, 3)
    kw = dict(steps=1, seed=1, patch_size=lm.patch_size)
    on = fuse_prepared(prep, lm.model, overrides={**FAST, "eta": 0.0}, **kw)
    off = fuse_prepared(prep, lm.model, overrides={**FAST, "eta": 0.0, "air_threshold": 0.0}, **kw)
    air = np.all(prep.stack() <= -2.0 + 0.05, axis=0)
    assert air.any() and on.record["air_voxels"] == int(air.sum())
    np.testing.assert_allclose(on.fused[air], prep.stack().max(0)[air], atol=1e-6)
    np.testing.assert_array_equal(on.fused[~air], off.fused[~air])  # nothing else changes
    assert not np.allclose(off.fused[air], prep.stack().max(0)[air])  # the sampler's noise
    assert prep.lesion is not None and (on.lesion_prob[~prep.brain] == 0).all()


def test_fuse_case_and_write_outputs(checkpoint, case_files, tmp_path):
    steps = []
    res = fuse_case(
        {
            "mri": case_files["mri"],
            "ct": case_files["ct"],
            "brain": case_files["brain"],
            "bone": case_files["bone"],
            "lesion": case_files["lesion"],
        },
        checkpoint=checkpoint,
        overrides=FAST,
        steps=2,
        samples=2,
        progress=lambda i, n, info: steps.append((i, n)),
    )
    assert steps == [(0, 2), (1, 2), (2, 2)]  # 0: sampling starts, every input checked
    assert res.lesion_source == "user"
    out = write_outputs(res, tmp_path / "out", inputs=tuple(case_files.values()))
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        ["fused.nii.gz", "lesion_prob.nii.gz", "uncertainty.nii.gz", "montage.png", "run.json"]
        # the masks actually used, beside the fused image (issue 12 item 1)
        + ["brain.nii.gz", "bone.nii.gz", "lesion_guide.nii.gz", "fused_display.png"]
        # the head's own lesion mask and its findings table
        + ["lesion_mask.nii.gz", "lesions.csv"]
    )
    img = nib.load(str(out / "fused.nii.gz"))
    np.testing.assert_allclose(img.affine, np.diag([*SPACING, 1.0]))
    assert img.shape == SHAPE
    # --output-units model (default): the model range shown as [0, 1], said in the header
    data = np.asarray(img.dataobj)
    assert data.min() >= 0.0 and data.max() <= 1.0 and data.max() > 0.5
    assert (float(img.header["cal_min"]), float(img.header["cal_max"])) == (0.0, 1.0)
    assert b"[0,1]" in img.header["descrip"].tobytes()
    np.testing.assert_allclose(data, (res.fused + 2) / 4, atol=1e-6)  # same grid: no resampling
    run = json.loads((out / "run.json").read_text())
    assert run["output"]["units"] == "model" and run["output"]["range"] == [0.0, 1.0]
    assert run["estimate"]["expected_s"] > 0 and run["estimate"]["calls"]["denoiser"] == 2
    assert run["inputs"]["mri"]["sha256"] == sha256_of(case_files["mri"])
    assert run["checkpoint"]["sha256"] == sha256_of(checkpoint)
    assert run["seed"] == 0 and run["preset"] == "stroke" and run["lesion_source"] == "user"
    assert run["guidance"]["alpha"] == 1.0 and run["guidance"]["gamma"] == 3.0
    assert {"torch", "monai", "clinfuse"} <= set(run["versions"])
    # no overwrite without asking; nothing left behind
    with pytest.raises(ClinfuseInputError, match="overwrite"):
        write_outputs(res, out)
    write_outputs(res, out, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_interrupted_write_leaves_no_output(checkpoint, case_files, tmp_path, monkeypatch):
    import clinfuse.pipeline.outputs as pl

    prep = _prepared(case_files, lesion=False)
    res = fuse_prepared(
        prep, load_model(checkpoint, 3).model, steps=1, patch_size=(16, 16, 16), overrides=FAST
    )

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pl, "_versions", boom)  # fails while writing run.json, after the images
    with pytest.raises(KeyboardInterrupt):
        write_outputs(res, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_bad_input_is_caught_before_sampling(checkpoint, case_files, tmp_path):
    with pytest.raises(ClinfuseInputError, match="available presets"):
        fuse_case(dict(mri=case_files["mri"], ct=case_files["ct"]), preset="nope")
    with pytest.raises(ClinfuseInputError, match="not found"):
        fuse_case(dict(mri=tmp_path / "missing.nii.gz", ct=case_files["ct"]), checkpoint=checkpoint)
    with pytest.raises(ClinfuseInputError, match="no CT"):
        fuse_case(dict(mri=case_files["mri"]), checkpoint=checkpoint)
    with pytest.raises(ClinfuseInputError, match="is a 3D model but the input is 2D"):
        load_model(checkpoint, 2)
    # a lesion mask in the skull: rejected
    prep = _prepared(case_files)
    prep.lesion = prep.bone.copy()
    with pytest.raises(ClinfuseInputError, match="outside the brain"):
        check_lesion_in_brain(prep)


def test_evaluation_hook_registers_clinfuse(checkpoint, case_files):
    from clinfuse.evaluation.methods import register_method, resolve_method, unpack_output
    from clinfuse.pipeline import clinfuse_method_factory

    register_method("clinfuse", clinfuse_method_factory, replace=True)  # as the CLI does

    name, method = resolve_method("clinfuse", checkpoint=checkpoint, steps=1, eta=0.0)
    fused, lesion = unpack_output(method(_prepared(case_files)))
    assert name == "clinfuse" and fused.shape == SHAPE and lesion.shape == SHAPE
    with pytest.raises(ClinfuseInputError):
        resolve_method("clinfuse", checkpoint=checkpoint, preset="nope")


def test_cli_fuse(checkpoint, case_files, tmp_path):
    from typer.testing import CliRunner

    from clinfuse.cli import app

    out = tmp_path / "run"
    base = ["fuse", "--mri", str(case_files["mri"]), "--ct", str(case_files["ct"])]
    base += ["--brain", str(case_files["brain"]), "--bone", str(case_files["bone"])]
    base += ["--checkpoint", str(checkpoint), "--out", str(out), "--device", "cpu"]
    res = CliRunner().invoke(app, [*base, "--steps", "1", "--n-inner", "1", "--mode", "xt"])
    assert res.exit_code == 0, res.output
    run = json.loads((out / "run.json").read_text())
    assert run["guidance"]["mode"] == "xt" and run["steps"] == 1
    assert run["lesion_source"] == "none"  # no --lesion and one step: nothing guided it
    # the console says what the head's lesion mask holds, as run.json does
    said = run["lesions"]
    assert "lesion head:" in res.output
    assert ("no lesion found" in res.output) == (said["components"] == 0)
    res = CliRunner().invoke(app, [*base, "--steps", "1"])
    assert isinstance(res.exception, ClinfuseInputError) and "overwrite" in str(res.exception)
    res = CliRunner().invoke(app, [*base, "--preset", "migraine", "--overwrite"])
    assert isinstance(res.exception, ClinfuseInputError) and "stroke" in str(res.exception)
    bad = tmp_path / "fresh"
    res = CliRunner().invoke(
        app, [*base[:-4], "--out", str(bad), "--lesion", str(case_files["bone"])]
    )
    assert isinstance(res.exception, ClinfuseInputError) and "outside the brain" in str(
        res.exception
    )
    assert not bad.exists()  # checked before sampling; the output folder is not left behind


def test_png_pair_2d(tmp_path):
    """A 2D PNG pair (display-windowed CT) fuses into fused.png with a 2D checkpoint."""
    from torch.optim.swa_utils import AveragedModel

    from clinfuse.io.png import save_png
    from clinfuse.training.checkpoint import build_model, save_checkpoint
    from clinfuse.training.config import resolve_config

    over = [
        "model.preset=harvard2d",
        "model.channels=[8,16,32]",
        "model.encoder_widths=[8,16,32,64]",
    ]
    over += ["data.patch_size=[32,32]", "data.val_patch_size=[32,32]"]
    cfg = resolve_config("ci-tiny", over)
    torch.manual_seed(0)  # test-only: the random initial weights of the tiny model
    model = build_model(cfg.model)
    ckpt = save_checkpoint(
        tmp_path / "c2d.pt", model=model, ema=AveragedModel(model), config=cfg, step=0
    )
    state = torch.load(ckpt, weights_only=False)  # see the `checkpoint` fixture
    state["versions"] = {k: str(v) for k, v in state.get("versions", {}).items()}
    torch.save(state, ckpt)

    mri, ct, brain, bone, _ = _head((48, 40, 3))
    files = {}
    for name, arr in (("mri", mri), ("ct", ct)):
        a = arr[:, :, 1]
        files[name] = save_png(
            tmp_path / f"{name}.png", np.round((a - a.min()) / np.ptp(a) * 255).astype(np.uint8)
        )
    for name, arr in (("brain", brain), ("bone", bone)):
        files[name] = save_png(tmp_path / f"{name}.png", arr[:, :, 1].astype(np.uint8))
    res = fuse_case(files, checkpoint=ckpt, steps=1, overrides=FAST)
    assert res.prepared.ct_kind == "display" and res.fused.shape == (48, 40)
    out = write_outputs(res, tmp_path / "out")
    assert {"fused.png", "lesion_prob.nii.gz", "montage.png", "run.json"} <= {
        p.name for p in out.iterdir()
    }
    with pytest.raises(ClinfuseInputError, match="is a 2D model but the input is 3D"):
        load_model(ckpt, 3)


def _rot_z(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


@pytest.mark.parametrize(
    "orientation",
    [
        ("LAS", np.diag([-2.0, 2.0, 2.5])),
        ("LPI", np.diag([-2.0, -2.0, -2.5])),
        ("oblique", _rot_z(0.25) @ np.diag([2.0, -2.0, 2.5])),
    ],
    ids=lambda o: o[0],
)
def test_every_output_is_on_the_input_mri_grid(checkpoint, tmp_path, orientation):
    """Issue 12 item 2: shape, affine and voxel order of every NIfTI output = the MRI file's."""
    _, rot = orientation
    affine = np.eye(4)
    affine[:3, :3] = rot
    affine[:3, 3] = [12.0, -30.0, 8.0]
    mri, ct, brain, bone, _ = _head()
    paths = {}
    for name, arr in (("mri", mri), ("ct", ct), ("brain", brain), ("bone", bone)):
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(arr.astype(np.float32), affine), paths[name])
    res = fuse_case(paths, checkpoint=checkpoint, steps=1, overrides=FAST, window="whole")
    out = write_outputs(res, tmp_path / "out")
    niftis = sorted(out.glob("*.nii.gz"))
    assert {"fused.nii.gz", "lesion_prob.nii.gz", "brain.nii.gz", "bone.nii.gz"} <= {
        p.name for p in niftis
    }
    for p in niftis:
        img = nib.load(p)
        assert img.shape == mri.shape, p.name
        np.testing.assert_allclose(img.affine, affine, atol=1e-5, err_msg=p.name)
    # the masks come back voxel for voxel in the file's own order
    np.testing.assert_array_equal(np.asarray(nib.load(out / "bone.nii.gz").dataobj) > 0, bone)


def test_predicted_lesion_mask_uses_the_heads_mask_rule(checkpoint, case_files):
    """fuse's predicted lesion mask and `--lesion-head`'s scorer carry the head's mask rule
    (minimum size, minimum component probability), so fuse, guidance and evaluation clean the
    probability the same way."""
    from dataclasses import replace

    from clinfuse.evaluation.methods import mask_rule_of
    from clinfuse.nn.lesion_mask import LesionMaskRule, clean_mask
    from clinfuse.pipeline import lesion_head_predictor

    prep = _prepared(case_files)
    lm = load_model(checkpoint, 3)
    lm.model.lesion_head.min_lesion_ml.fill_(0.05)  # 5 voxels at 2 x 2 x 2.5 mm
    lm.model.lesion_head.min_component_prob.fill_(0.8)
    res = fuse_prepared(prep, lm.model, steps=1, patch_size=lm.patch_size, overrides=FAST)
    assert res.mask_rule == LesionMaskRule(pytest.approx(0.05), pytest.approx(0.8))
    assert mask_rule_of(res) is res.mask_rule
    speck = np.zeros(SHAPE, np.float32)
    speck[10, 8, 7] = 0.9  # one voxel: below 0.05 mL
    speck[2:6, 2:6, 2:6] = 0.9  # 64 voxels: kept
    speck[2:6, 10:13, 2:6] = 0.6  # 48 voxels of a doubtful secondary component: removed
    res.lesion_prob = speck
    mask = res.lesion_mask()
    assert mask.dtype == bool and int(mask.sum()) == 64 and not mask[10, 8, 7]
    # a rule dropping mirror ghosts is applied with the case's MRI (its mid-sagittal plane)
    res.mask_rule = replace(res.mask_rule, drop_mirror_ghosts=True)
    expected = clean_mask(speck, prep.spacing, 0.5, 0.05, 0.8, 0.0, True, prep.mri)
    assert np.array_equal(res.lesion_mask(), expected)
    predict = lesion_head_predictor(checkpoint)
    assert mask_rule_of(predict) == LesionMaskRule()  # nothing loaded yet
    assert predict(prep.mri, prep).shape == SHAPE
    assert mask_rule_of(predict) == LesionMaskRule()  # the tiny head keeps every component


def test_lesion_mask_and_findings_table_are_written(checkpoint, case_files, tmp_path):
    """fuse writes the head's lesion mask (its own rule) on the MRI's grid and one row per
    component in lesions.csv, most probable first, with world centroids and the doubtful flag
    of the preset's guidance gate; run.json sums them."""
    import csv

    from clinfuse.pipeline.outputs import describe_lesions, lesion_findings

    prep = _prepared(case_files, lesion=False)
    res = fuse_prepared(
        prep, load_model(checkpoint, 3).model, steps=1, patch_size=(16, 16, 16), overrides=FAST
    )
    prob = np.zeros(SHAPE, np.float32)
    prob[6:10, 5:9, 4:8] = 0.95  # 64 voxels in the brain, confident
    prob[13:15, 6:9, 5:8] = 0.7  # 18 voxels, doubtful under a 0.85 gate
    res.lesion_prob = prob * prep.brain
    kept = res.lesion_mask()
    res.record["guidance"]["lesion_guide_min_prob"] = 0.85
    out = write_outputs(res, tmp_path / "out")
    mask = np.asarray(nib.load(out / "lesion_mask.nii.gz").dataobj)
    np.testing.assert_array_equal(mask > 0, kept)
    rows = list(csv.DictReader((out / "lesions.csv").open()))
    vox_ml = float(np.prod(SPACING)) / 1000.0
    assert len(rows) == len(found := lesion_findings(res)[0]) == 2
    assert kept.sum() == 64 + 18
    first = rows[0]
    assert first["component"] == "1" and first["doubtful"] == "0" and rows[1]["doubtful"] == "1"
    assert float(first["volume_ml"]) == pytest.approx(64 * vox_ml, abs=1e-3)
    centre = np.array([7.5, 6.5, 5.5])
    np.testing.assert_allclose(
        [float(first[k]) for k in ("x_mm", "y_mm", "z_mm")], centre * SPACING, atol=0.06
    )
    run = json.loads((out / "run.json").read_text())["lesions"]
    assert run["components"] == len(rows) and run["doubt_below"] == 0.85
    assert run["total_ml"] == pytest.approx(sum(float(r["volume_ml"]) for r in rows), abs=1e-2)
    doubtful = [r for r in rows if r["doubtful"] == "1"]
    assert run["doubtful_ml"] == pytest.approx(
        sum(float(r["volume_ml"]) for r in doubtful), abs=1e-2
    )
    line = describe_lesions(found, 0.85)
    assert f"{len(rows)} component" in line and ("doubtful" in line) == bool(doubtful)
    # nothing found: the table keeps its header, run.json says zero
    res.lesion_prob = np.zeros(SHAPE, np.float32)
    write_outputs(res, out, overwrite=True)
    assert (out / "lesions.csv").read_text().count("\n") == 1
    assert json.loads((out / "run.json").read_text())["lesions"]["total_ml"] == 0
    assert describe_lesions([], 0.85).startswith("lesion head: no lesion found")


def test_the_mri_sequence_reaches_a_slotted_lesion_head(case_files, tmp_path):
    """`fuse_case(mri_contrast=...)` / `fuse --mri-contrast`: recorded in run.json and read by
    a lesion head with sequence slots (its probability changes with the sequence)."""
    from typer.testing import CliRunner

    from clinfuse.cli import app

    ckpt = tiny_fusion_checkpoint(
        tmp_path / "slotted.pt", lesion_inputs="fused+sources+mirror+contrast"
    )
    files = dict(mri=case_files["mri"], ct=case_files["ct"])
    runs = {
        c: fuse_case(files, checkpoint=ckpt, steps=1, overrides=FAST, mri_contrast=c)
        for c in ("T1", "T2", None)
    }
    assert runs["T1"].record["mri_contrast"] == {"given": "T1", "read_by_lesion_head": True}
    assert runs[None].record["mri_contrast"]["given"] is None
    assert not np.allclose(runs["T1"].lesion_prob, runs["T2"].lesion_prob)
    assert not np.allclose(runs["T1"].lesion_prob, runs[None].lesion_prob)
    head = load_model(ckpt, 3).model.lesion_head
    assert head.reads_contrast and head.mri_contrast is None  # nothing left set on the model
    # the CLI: a bad name is refused before any output exists; a good one lands in run.json
    out = tmp_path / "run"
    base = ["fuse", "--mri", str(files["mri"]), "--ct", str(files["ct"]), "--steps", "1"]
    base += ["--checkpoint", str(ckpt), "--out", str(out), "--device", "cpu", "--n-inner", "1"]
    res = CliRunner().invoke(app, [*base, "--mri-contrast", "PD"])
    assert isinstance(res.exception, ClinfuseInputError) and "FLAIR" in str(res.exception)
    assert not out.exists()
    res = CliRunner().invoke(app, [*base, "--mri-contrast", "flair"])
    assert res.exit_code == 0, res.output
    run = json.loads((out / "run.json").read_text())
    assert run["mri_contrast"] == {"given": "FLAIR", "read_by_lesion_head": True}


def test_written_lesion_probability_has_the_near_mask_temperature(checkpoint, case_files, tmp_path):
    """`lesion_prob.nii.gz` is `FusionResult.calibrated_lesion_prob()`: with a head's near-mask
    logit factor it differs from `lesion_prob` only within 10 mm of the head's mask, which
    stays the same; with one temperature it is `lesion_prob` itself."""
    from dataclasses import replace

    from clinfuse.nn.lesion_mask import LesionMaskRule

    prep = _prepared(case_files)
    lm = load_model(checkpoint, 3)
    res = fuse_prepared(prep, lm.model, steps=1, patch_size=lm.patch_size, overrides=FAST)
    assert res.calibrated_lesion_prob() is res.lesion_prob  # one temperature
    prob = np.where(prep.brain, 0.1, 0.0).astype(np.float32)
    prob[prep.lesion] = 0.9
    res = replace(res, lesion_prob=prob, mask_rule=LesionMaskRule(near_logit_scale=0.5))
    mask = res.lesion_mask()
    assert np.array_equal(mask, prep.lesion)
    shown = res.calibrated_lesion_prob()
    assert shown[prep.lesion] == pytest.approx(0.75, abs=1e-5)  # sigmoid(ln 9 / 2) = 3 / 4
    assert np.array_equal(shown >= 0.5, mask) and (shown[~prep.brain] == 0).all()
    out = write_outputs(res, tmp_path / "out")
    written = np.asarray(nib.load(str(out / "lesion_prob.nii.gz")).dataobj)
    np.testing.assert_allclose(written, shown, atol=1e-6)
    said = json.loads((out / "run.json").read_text())["lesions"]["mask_rule"]
    assert said == res.mask_rule.describe() and "logit x 0.500" in said
    assert np.array_equal(np.asarray(nib.load(str(out / "lesion_mask.nii.gz")).dataobj) > 0, mask)

"""Issue 12 items 1, 3, 4 and its done-when check: `fuse --output-units`, `fused_display.png`
orientation markers, the expected-time note, `--spacing` with native-resolution detail,
`--threads`, `--register`, a `clinfuse preprocess` folder as input; on phantoms with a tiny
random checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from _helpers import tiny_fusion_checkpoint
from clinfuse.errors import ClinfuseInputError
from clinfuse.pipeline import fuse_case, write_outputs
from clinfuse.pipeline.display import orthogonal_planes

FAST = {"n_inner": 1, "final_inner": 1}
NATIVE_MM = 1.5


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_fusion_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def _phantom(shape=(48, 48, 40), seed=3):
    from clinfuse.phantom import PhantomConfig, generate_phantom

    return generate_phantom(PhantomConfig(shape=shape, spacing=(NATIVE_MM,) * 3), seed).case


def _las(arr: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same image stored in LAS voxel order (x flipped), same world positions."""
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, arr.shape[0] - 1
    return np.ascontiguousarray(arr[::-1]), affine @ flip


def _write(case, folder: Path, las: bool = False, roles=("mri", "ct")) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role in roles:
        arr, aff = np.asarray(getattr(case, role), np.float32), case.affine
        if las:
            arr, aff = _las(arr, aff)
        paths[role] = folder / f"{role}.nii.gz"
        nib.save(nib.Nifti1Image(arr, aff), paths[role])
    return paths


# --------------------------------------------------------------------------- display markers


@pytest.mark.parametrize("order", ["RAS", "LAS", "LPI"])
def test_display_markers_follow_the_affine(order):
    """A blob on the patient's left and front shows on the side marked L (and A), whatever
    the voxel order of the file."""
    shape = (21, 19, 17)
    vol = np.zeros(shape, np.float32)
    vol[2:6, 8:17, 6:11] = 1.0  # crosses the central axial and coronal planes
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    assert nib.aff2axcodes(affine) == ("R", "A", "S")  # index x increases toward the right
    # so the blob (low x, high y) lies on the patient's LEFT and ANTERIOR
    flips = {"RAS": (), "LAS": (0,), "LPI": (0, 1, 2)}[order]
    aff = affine.copy()
    data = vol
    for ax in flips:
        f = np.eye(4)
        f[ax, ax], f[ax, 3] = -1.0, shape[ax] - 1
        data = np.flip(data, ax)
        aff = aff @ f
    assert "".join(nib.aff2axcodes(aff)) == order
    planes = {p.name: p for p in orthogonal_planes(np.ascontiguousarray(data), aff)}
    for name in ("axial", "coronal"):
        p = planes[name]
        cols = np.nonzero(p.image.max(0))[0]
        assert cols.size, (order, name)
        half = p.image.shape[1] / 2
        side = p.left if cols.mean() < half else p.right
        assert side == "L", (order, name)
    ax = planes["axial"]
    rows = np.nonzero(ax.image.max(1))[0]
    assert (ax.top if rows.mean() < ax.image.shape[0] / 2 else ax.bottom) == "A"
    sag = planes["sagittal"]
    assert (sag.left, sag.right, sag.top, sag.bottom) == ("A", "P", "S", "I")


# --------------------------------------------------------------------------- units, estimate


def test_output_units_source_and_the_estimate_note(checkpoint, tmp_path):
    case = _phantom((32, 32, 28))
    paths = _write(case, tmp_path / "in", roles=("mri", "ct", "brain", "bone"))
    notes = []
    src = fuse_case(
        paths,
        checkpoint=checkpoint,
        steps=1,
        overrides=FAST,
        window="whole",
        output_units="source",
        progress=lambda i, n, info: notes.append(info) if i == 0 else None,
    )
    # the note before sampling: grid, voxels and an estimate from one timed call per network
    grid = notes[0]["grid"]  # the padded working grid
    assert grid[:2] == [32, 32] and grid[2] >= 28 and notes[0]["voxels"] == int(np.prod(grid))
    assert notes[0]["expected_s"] > 0 and notes[0]["calls"]["denoiser"] == 1
    assert notes[0]["timed"]["denoiser_s"] > 0
    assert src.record["output"]["units"] == "source"
    bone = case.bone
    assert src.fused_native[bone].max() > 300  # HU in the skull
    assert src.fused_native[~bone].max() < 2000  # MRI units elsewhere
    with pytest.raises(ClinfuseInputError, match="--output-units"):
        fuse_case(paths, checkpoint=checkpoint, output_units="hu")


def test_cli_threads_and_bad_combinations(restore_threads, checkpoint, tmp_path):
    from typer.testing import CliRunner

    from clinfuse.cli import app

    case = _phantom((32, 32, 28))
    paths = _write(case, tmp_path / "in")
    out = tmp_path / "out"
    base = ["fuse", "--mri", str(paths["mri"]), "--ct", str(paths["ct"]), "--out", str(out)]
    base += ["--checkpoint", str(checkpoint), "--steps", "1", "--n-inner", "1"]
    res = CliRunner().invoke(
        app, [*base, "--threads", "1", "--window", "whole", "--roi-every-step"]
    )
    assert res.exit_code == 0, res.output
    run = json.loads((out / "run.json").read_text())
    assert run["threads"] == 1 and run["output"]["units"] == "model"
    assert run["guidance"]["roi_final_only"] is False  # the presets say true
    assert (out / "fused_display.png").stat().st_size > 1000
    res = CliRunner().invoke(app, ["fuse", "--out", str(tmp_path / "x")])
    assert isinstance(res.exception, ClinfuseInputError) and "--mri" in str(res.exception)
    res = CliRunner().invoke(
        app, [*base[:3], "--prepared", str(tmp_path), "--out", str(tmp_path / "y")]
    )
    assert isinstance(res.exception, ClinfuseInputError) and "--prepared" in str(res.exception)


# --------------------------------------------------------------------------- --spacing + detail


def test_spacing_restores_native_detail(checkpoint, tmp_path):
    """Fused at twice the native spacing: the output is on the MRI's grid, and ROI-SSIM
    against the native sources is higher with detail restored than without (issue 13 item 4)."""
    from clinfuse.metrics.roi import roi_ssim
    from clinfuse.preprocess.pipeline import preprocess_case

    case = _phantom()
    paths = _write(case, tmp_path / "in")
    kw = dict(checkpoint=checkpoint, steps=2, overrides={**FAST, "eta": 0.02}, window="whole")
    on = fuse_case(paths, spacing=2 * NATIVE_MM, **kw)
    off = fuse_case(paths, spacing=2 * NATIVE_MM, detail=False, **kw)
    assert on.prepared.shape == (24, 24, 20)  # the working grid
    assert on.fused_native.shape == case.mri.shape  # the output: the MRI's grid
    assert (
        on.record["output"]["detail"] is True
        and off.record["output"]["detail"] == "off (--no-detail)"
    )
    assert on.record["preprocessing"]["spacing"] == [2 * NATIVE_MM]
    np.testing.assert_array_equal(on.fused, off.fused)  # same sampling; only the way back differs
    native = preprocess_case(case)
    scores = {}
    for name, res in (("on", on), ("off", off)):
        x = res.fused_native * 4.0 - 2.0  # [0, 1] -> the model range
        scores[name] = (
            roi_ssim(x, native.mri, native.brain),
            roi_ssim(x, native.ct_bone, native.bone),
        )
    assert scores["on"][0] > scores["off"][0] and scores["on"][1] > scores["off"][1], scores


# --------------------------------------------------------------------------- --register, preprocess


def test_register_aligns_a_ct_from_another_frame(checkpoint, tmp_path):
    case = _phantom((40, 40, 32))
    paths = _write(case, tmp_path / "in")
    far = case.affine.copy()
    far[:3, 3] += [300.0, -40.0, 0.0]
    nib.save(nib.Nifti1Image(np.asarray(case.ct, np.float32), far), paths["ct"])
    kw = dict(checkpoint=checkpoint, steps=1, overrides=FAST, window="whole")
    with pytest.raises(ClinfuseInputError, match="--register"):
        fuse_case(paths, **kw)
    res = fuse_case(paths, register=True, **kw)
    reg = res.record["preprocessing"]["registration"]
    np.testing.assert_allclose(np.asarray(reg["matrix_ras"])[:3, 3], [300.0, -40.0, 0.0], atol=1.5)
    out = write_outputs(res, tmp_path / "out")
    run = json.loads((out / "run.json").read_text())
    assert run["preprocessing"]["registration"]["type"] == "Euler3D"
    assert res.record["output"]["detail"] == "not needed (fused on the MRI's own grid)"
    # the command line: without --register the error says to use it; with it, it fuses
    from typer.testing import CliRunner

    from clinfuse.cli import app

    cmd = ["fuse", "--mri", str(paths["mri"]), "--ct", str(paths["ct"]), "--out", str(out)]
    cmd += ["--checkpoint", str(checkpoint), "--steps", "1", "--n-inner", "1", "--overwrite"]
    res = CliRunner().invoke(app, cmd)
    assert isinstance(res.exception, ClinfuseInputError) and "--register" in str(res.exception)
    res = CliRunner().invoke(app, [*cmd, "--register", "--window", "whole"])
    assert res.exit_code == 0, res.output
    run = json.loads((out / "run.json").read_text())
    np.testing.assert_allclose(
        np.asarray(run["preprocessing"]["registration"]["matrix_ras"])[:3, 3],
        [300.0, -40.0, 0.0],
        atol=1.5,
    )


def test_a_preprocess_folder_is_accepted_or_named(checkpoint, tmp_path):
    from typer.testing import CliRunner

    from clinfuse.cli import app

    case = _phantom((32, 32, 28))
    paths = _write(case, tmp_path / "in")
    prep = tmp_path / "prep"
    res = CliRunner().invoke(app, ["preprocess", str(tmp_path / "in"), str(prep), "--spacing", "3"])
    assert res.exit_code == 0, res.output
    case_dirs = [p.parent for p in prep.glob("*/preprocess.json")]
    assert len(case_dirs) == 1
    # the files of a preprocessed case passed as --mri/--ct: named, with what to pass instead
    bad = [
        "fuse",
        "--mri",
        str(case_dirs[0] / "mri.nii.gz"),
        "--ct",
        str(case_dirs[0] / "ct.nii.gz"),
    ]
    res = CliRunner().invoke(app, [*bad, "--out", str(tmp_path / "o1")])
    assert isinstance(res.exception, ClinfuseInputError)
    assert "--prepared" in str(res.exception) and not (tmp_path / "o1").exists()
    # the folder itself (the output root with one case, or the case folder) fuses
    kw = dict(checkpoint=checkpoint, steps=1, overrides=FAST, window="whole")
    for folder in (prep, case_dirs[0]):
        res = fuse_case(folder, **kw)
        assert res.record["preprocessing"]["from_prepared_folder"] == str(folder.resolve())
        assert res.fused_native.shape == case.mri.shape  # back on the original MRI grid
    with pytest.raises(ClinfuseInputError, match="already preprocessed"):
        fuse_case(prep, spacing=2.0, **kw)
    assert paths["mri"].exists()


# --------------------------------------------------------------------------- done when (issue 12)


def test_done_when_las_head_with_spacing_2_overlays_the_mri(checkpoint, tmp_path):
    """A new user fuses an LAS head with `--spacing 2`: the output has the MRI's affine and
    shape, its values lie in the documented range [0, 1], and progress lines reach a log file
    (no TTY)."""
    case = _phantom((40, 40, 32))
    paths = _write(case, tmp_path / "in", las=True)
    mri_img = nib.load(paths["mri"])
    assert "".join(nib.aff2axcodes(mri_img.affine)) == "LAS"
    out, log = tmp_path / "out", tmp_path / "fuse.log"
    cmd = [sys.executable, "-m", "clinfuse", "fuse", "--mri", str(paths["mri"])]
    cmd += ["--ct", str(paths["ct"]), "--out", str(out), "--spacing", "2", "--threads", "1"]
    cmd += ["--checkpoint", str(checkpoint), "--steps", "2", "--n-inner", "1"]
    env = {**os.environ, "COLUMNS": "200"}
    with log.open("w") as fh:
        done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=600)
    text = log.read_text()
    assert done.returncode == 0, text
    for name in ("fused.nii.gz", "lesion_prob.nii.gz", "brain.nii.gz", "bone.nii.gz"):
        img = nib.load(out / name)
        assert img.shape == mri_img.shape, name
        np.testing.assert_allclose(img.affine, mri_img.affine, atol=1e-5, err_msg=name)
    fused = np.asarray(nib.load(out / "fused.nii.gz").dataobj)
    assert fused.min() >= 0.0 and fused.max() <= 1.0
    assert "expected time about" in text and "estimate" in text
    assert "step 1/2" in text and "step 2/2" in text and "ETA" in text
    run = json.loads((out / "run.json").read_text())
    assert run["output"]["detail"] is True and run["working_spacing"] == [2.0, 2.0, 2.0]


def test_slow_note_is_a_warning_with_hints_that_fit_the_run():
    from rich.console import Console

    from clinfuse.cli._progress import StepLines

    console = Console(record=True, width=400)
    info = {"grid": [88, 120, 88], "voxels": 929280, "expected_s": 2490.0, "slow": True}
    StepLines(console)(
        0, 10, {**info, "calls": {"denoiser": 10}, "spacing": [2.0] * 3, "sliding": True}
    )
    text = console.export_text()
    assert text.startswith("warning:") and "41.5 min" in text and "an estimate" in text
    assert "--window whole" in text and "--spacing 3" in text  # coarser than the 2 mm it ran at

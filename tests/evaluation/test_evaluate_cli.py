import json

import nibabel as nib
import numpy as np
from typer.testing import CliRunner

from clinfuse.cli import app
from clinfuse.errors import ClinfuseInputError


def ball(shape, centre, radius):
    grid = np.indices(shape).astype(float)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


def _write_dataset(root, n=3, shape=(16, 16, 16)):
    """Folder-of-cases layout in HU with given masks (mri/ct/brain/bone .nii.gz)."""
    c = [s / 2 - 0.5 for s in shape]
    head = ball(shape, c, 7)
    brain = ball(shape, c, 4)
    bone = head & ~ball(shape, c, 5)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    for i in range(n):
        rng = np.random.default_rng(i)
        d = root / f"case{i}"
        d.mkdir(parents=True)
        mri = np.where(head, 300 + 50 * rng.normal(size=shape), 0).astype(np.float32)
        ct = np.where(bone, 1200.0, np.where(head, 35.0, -1000.0)).astype(np.float32)
        for name, arr in (("mri", mri), ("ct", ct), ("brain", brain), ("bone", bone)):
            arr = arr.astype(np.uint8) if arr.dtype == bool else arr
            nib.save(nib.Nifti1Image(arr, aff), d / f"{name}.nii.gz")
    return root


def test_evaluate_then_compare(tmp_path):
    data = _write_dataset(tmp_path / "data")
    runner = CliRunner()
    for m in ("average", "composite"):
        r = runner.invoke(
            app,
            [
                "evaluate",
                "--method",
                m,
                "--data",
                str(data),
                "--out",
                str(tmp_path / m),
                "--limit",
                "2",
            ],
        )
        assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "composite" / "summary.json").read_text())
    assert s["n_cases"] == 2 and s["n_failed"] == 0
    assert (tmp_path / "average" / "fused" / "case1.nii.gz").is_file()
    r = runner.invoke(
        app, ["evaluate", "--compare", str(tmp_path / "average"), str(tmp_path / "composite")]
    )
    assert r.exit_code == 0, r.output
    assert "| composite |" in r.output and "Wilcoxon" in r.output
    # Nothing was written into the input folder.
    assert sorted(p.name for p in data.iterdir()) == ["case0", "case1", "case2"]


def test_evaluate_bad_usage(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["evaluate", "--method", "average"])
    assert isinstance(r.exception, ClinfuseInputError) and "--data" in str(r.exception)
    r = runner.invoke(
        app, ["evaluate", "--method", "nope", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    )
    assert isinstance(r.exception, ClinfuseInputError)
    r = runner.invoke(app, ["evaluate", "--compare", str(tmp_path)])
    assert isinstance(r.exception, ClinfuseInputError)


def test_benchmark_table(tmp_path):
    data = _write_dataset(tmp_path / "data", n=2)
    r = CliRunner().invoke(
        app,
        [
            "benchmark",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "b"),
            "--methods",
            "average,max",
            "--methods",
            "composite",
            "--subset",
            "first=case0",
        ],
    )
    assert r.exit_code == 0, r.output
    md = (tmp_path / "b" / "benchmark.md").read_text()
    for m in ("average", "max", "composite"):
        assert f"| {m} | 2 | 0 |" in md
        assert f"| {m} | 1 | 0 |" in md  # the subset table
    csv_text = (tmp_path / "b" / "benchmark.csv").read_text()
    assert csv_text.startswith("subset,method,metric,n,")
    assert (tmp_path / "b" / "max" / "per_case.csv").is_file()

"""benchmarks/denoiser_val.py: a tiny end-to-end run (the shipped checkpoint, unguided, 2 DDIM
steps), the cached resume, the summary table, and the refusal of the test heads."""

import importlib.util
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from clinfuse.phantom import PhantomConfig, write_phantom_dataset

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "denoiser_val.py"
_spec = importlib.util.spec_from_file_location("bench_denoiser_val", _PATH)
dv = importlib.util.module_from_spec(_spec)
sys.modules["bench_denoiser_val"] = dv
_spec.loader.exec_module(dv)


def test_tiny_run_scores_caches_and_summarises(tmp_path, capsys):
    cfg = PhantomConfig(shape=(32, 32, 24), spacing=(2.0, 2.0, 2.0))
    data = write_phantom_dataset(tmp_path / "ph", 1, cfg, 0)
    out = tmp_path / "dv.json"
    argv = ["--checkpoints", "shipped", "--labels", "s", "--data", str(data)]
    argv += ["--patients", "*", "--modes", "unguided", "--steps", "2", "--out", str(out)]
    assert dv.main(argv) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 1
    (row,) = rows.values()
    assert row["mode"] == "unguided" and set(dv.SCORE_KEYS) <= set(row)
    assert all(-1.0 <= row[k] <= 1.0 for k in dv.SCORE_KEYS)
    # a rerun is served from the cache (no new row, same values) and prints the table
    row["brain_ssim"] = 0.5
    out.write_text(json.dumps(rows))
    assert dv.main(argv) == 0
    assert json.loads(out.read_text()) == rows
    table = capsys.readouterr().out
    assert "| s | unguided | 1 | 0.5000 |" in table


def test_summary_means_per_label_and_mode():
    res = {
        "a|c1|guided": {"mode": "guided", **{k: 0.5 for k in dv.SCORE_KEYS}},
        "a|c2|guided": {"mode": "guided", **{k: 1.0 for k in dv.SCORE_KEYS}},
        "b|c1|guided": {"mode": "guided", **{k: 0.2 for k in dv.SCORE_KEYS}},
    }
    lines = dv.summary(res, ["a", "b"], ["guided", "auto"]).splitlines()
    assert lines[2].startswith("| a | guided | 2 | 0.7500 |")
    assert lines[3].startswith("| b | guided | 1 | 0.2000 |")
    assert len(lines) == 4  # no row for a mode without results


def test_refuses_a_dataset_from_a_test_head(tmp_path):
    head = tmp_path / "seg3d_t1_skullmask"
    head.mkdir()
    for name in ("mri", "ct"):
        nib.save(
            nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), head / f"{name}.nii.gz"
        )
    (tmp_path / "manifest.csv").write_text(
        "case_id,mri,ct\nx,seg3d_t1_skullmask/mri.nii.gz,seg3d_t1_skullmask/ct.nii.gz\n"
    )
    with pytest.raises(SystemExit, match="test head"):
        dv.main(["--checkpoints", "shipped", "--data", str(tmp_path / "manifest.csv")])

"""benchmarks/build_training_data.py: the lesion-phantom part (0.5-80 mL ischaemic lesions, all
five contrasts) and `--keep-existing`, which reuses a part already built instead of rebuilding
it, then one manifest over every part that the dataset loader reads."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from clinfuse.io.dataset import load_dataset

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "build_training_data.py"


def test_lesion_phantoms_and_keep_existing(tmp_path: Path) -> None:
    out = tmp_path / "data"
    # A "real" part from an earlier build: kept as it is (building it needs ../shared/data).
    (out / "real").mkdir(parents=True)
    with open(out / "real" / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerow(["case_id", "mri", "ct", "brain", "bone", "lesion", "patient_id"])
    cmd = [sys.executable, str(SCRIPT), str(out), "--phantoms", "1", "--lesion-phantoms", "2"]
    subprocess.run([*cmd, "--keep-existing"], check=True, capture_output=True, text=True)
    assert not any((out / "real").glob("*/mri.nii.gz"))  # not rebuilt
    refs = list(load_dataset(out / "all"))
    ids = [r.case_id for r in refs]
    assert ids == [
        "phantoms_phantom_000",
        "lesion_phantoms_phantom_000",
        "lesion_phantoms_phantom_001",
    ]
    for k in range(2):
        truth = json.loads(
            (out / "lesion_phantoms" / f"phantom_{k:03d}" / "truth.json").read_text()
        )
        assert 0.5 <= truth["lesion_volume_ml"] <= 80.0
        assert truth["config"]["lesion"] == "ischaemic"
        assert truth["config"]["lesion_ml"] == [0.5, 80.0]
    contrasts = [
        json.loads((out / "lesion_phantoms" / f"phantom_{k:03d}" / "truth.json").read_text())[
            "config"
        ]["mri_contrast"]
        for k in range(2)
    ]
    assert contrasts == ["T1", "T2"]

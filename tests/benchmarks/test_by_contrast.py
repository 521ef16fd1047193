"""benchmarks/by_contrast.py: per-contrast table from hand-made evaluate outputs."""

import csv
import importlib.util
import json
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "by_contrast.py"
_spec = importlib.util.spec_from_file_location("bench_by_contrast", _PATH)
bc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bc)

COLS = ["case_id", "patient_id", "brain_ssim", "bone_ssim", "dice", "nsd", "hd95"]


def _phantoms(root: Path, contrasts: dict[str, str]) -> Path:
    for cid, con in contrasts.items():
        (root / cid).mkdir(parents=True)
        (root / cid / "truth.json").write_text(json.dumps({"config": {"mri_contrast": con}}))
    return root


def _run(folder: Path, method: str, rows: list[dict], extra: tuple[str, ...] = ()) -> Path:
    folder.mkdir(parents=True)
    with open(folder / "per_case.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[*COLS, *extra, "error"])
        w.writeheader()
        for r in rows:
            w.writerow({"patient_id": r["case_id"], **r})
    (folder / "summary.json").write_text(json.dumps({"method": method}))
    return folder


@pytest.fixture
def setup(tmp_path):
    ph = _phantoms(tmp_path / "ph", {"p0": "T1", "p1": "T2", "p2": "T1", "p3": "ADC"})
    bench = tmp_path / "bench"
    _run(
        bench / "average",
        "average",
        [
            {"case_id": "p0", "brain_ssim": 0.8, "bone_ssim": 0.5},
            {"case_id": "p1", "brain_ssim": 0.7, "bone_ssim": 0.6},
            {"case_id": "p2", "brain_ssim": 0.9, "bone_ssim": 0.7},
            {"case_id": "p3", "brain_ssim": 0.1, "bone_ssim": 0.1, "error": "boom"},
        ],
    )
    _run(
        tmp_path / "ours_x0",
        "clinfuse",
        [
            {"case_id": c, "brain_ssim": 0.95, "bone_ssim": 0.9, "dice": 0.5, "nsd": 0.6}
            | {"hd95": 4.0, "ct_scored_against": "ct_reference"}
            for c in ("p0", "p1", "p2", "p3")
        ],
        extra=("ct_scored_against",),
    )
    _run(tmp_path / "ours_xt", "clinfuse", [{"case_id": "p0", "brain_ssim": 0.9}])
    return tmp_path, ph


def test_table_rows_and_hand_values(setup, tmp_path):
    root, ph = setup
    out_md = tmp_path / "by_contrast.md"
    args = [
        "--phantoms",
        str(ph),
        str(root / "ours_x0"),
        str(root / "ours_xt"),
        str(root / "bench"),
    ]
    assert bc.main([*args, "--out", str(out_md)]) == 0
    text = out_md.read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    assert lines[0] == "| contrast | method | n | brain_ssim | bone_ssim | dice | nsd | hd95 |"
    rows = {tuple(c.strip() for c in ln.split("|")[1:3]): ln for ln in lines[1:]}
    # Same method twice -> the folder names tell them apart; a benchmark folder is expanded.
    assert ("T1", "clinfuse (ours_x0)") in rows and ("T1", "clinfuse (ours_xt)") in rows
    # average on T1: brain (0.8, 0.9) -> 0.850 ± 0.071; bone (0.5, 0.7) -> 0.600 ± 0.141.
    assert rows[("T1", "average")].split("|")[3:6] == [" 2 ", " 0.850 ± 0.071 ", " 0.600 ± 0.141 "]
    assert rows[("ADC", "average")].split("|")[3].strip() == "0"  # the failed case is left out
    assert rows[("T2", "clinfuse (ours_x0)")].split("|")[6:9] == [
        " 0.500 ± — ",
        " 0.600 ± — ",
        " 4.000 ± — ",
    ]
    # Contrasts in T1, T2, ADC order.
    assert [k[0] for k in rows][::3] == ["T1", "T2", "ADC"]
    assert "unmoved CT" in text and "4 of 9" in text


def test_lesion_columns_only_when_present(setup):
    root, ph = setup
    folders = bc.run_folders([root / "bench"])
    rows = {n: bc.read_per_case(f) for n, f in zip(bc.labels(folders), folders, strict=True)}
    table = bc.by_contrast_table(rows, bc.case_contrasts(ph))
    assert table.splitlines()[0] == "| contrast | method | n | brain_ssim | bone_ssim |"


def test_bad_folders_are_user_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert bc.main(["--phantoms", str(tmp_path), str(tmp_path / "empty")]) == 2
    assert "no per_case.csv" in capsys.readouterr().err


def test_hd95_of_empty_predictions_is_counted_apart(tmp_path):
    ph = _phantoms(tmp_path / "ph", {"p0": "T1", "p1": "T1", "p2": "T1"})
    run = _run(
        tmp_path / "ours",
        "clinfuse",
        [
            {"case_id": "p0", "brain_ssim": 0.9, "dice": 0.5, "hd95": 4.0},
            {"case_id": "p1", "brain_ssim": 0.9, "dice": 0.5, "hd95": 6.0},
            {"case_id": "p2", "brain_ssim": 0.9, "dice": 0.0, "hd95": 99.0},  # the diagonal
        ],
        extra=("no_predicted_lesion",),
    )
    text = (run / "per_case.csv").read_text().replace(",99.0,,", ",99.0,1,")
    (run / "per_case.csv").write_text(text)
    rows = {"clinfuse": bc.read_per_case(run)}
    line = bc.by_contrast_table(rows, bc.case_contrasts(ph)).splitlines()[2]
    assert "5.000 ± 1.414; 1 of 3: no prediction" in line and "99" not in line

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
    # a real-anatomy case (its files are not read here) is in `all`, not in `all_phantoms`
    with open(out / "real" / "manifest.csv", "a", newline="") as f:
        csv.writer(f).writerow(["vm_t1_000", "a/mri.nii.gz", "a/ct.nii.gz", "", "", "", "vm"])
    subprocess.run([*cmd, "--keep-existing"], check=True, capture_output=True, text=True)
    with open(out / "all" / "manifest.csv", newline="") as f:
        first = next(csv.DictReader(f))
    assert (first["case_id"], first["mri"], first["patient_id"]) == (
        "vm_t1_000",
        "../real/a/mri.nii.gz",
        "vm",
    )
    refs = list(load_dataset(out / "all"))
    ids = [r.case_id for r in refs]
    assert ids == [
        "vm_t1_000",
        "phantoms_phantom_000",
        "lesion_phantoms_phantom_000",
        "lesion_phantoms_phantom_001",
    ]
    assert [r.case_id for r in load_dataset(out / "all_phantoms")] == ids[1:]
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


def test_parts_for_the_lesion_heads_weak_spots(tmp_path: Path) -> None:
    """Session 11's parts: T1 ischaemic 0.5-80 mL, small (0.5-5 mL) ischaemic and haemorrhagic
    lesions over all five contrasts, session 21's small (0.5-2 mL) ADC infarcts, session 22's
    small DWI infarcts, session 28's branch infarcts (1-10 mL), and the ranged validation
    phantoms (lesion kinds cycled), each at its own seed range."""
    out = tmp_path / "data"
    (out / "real").mkdir(parents=True)
    with open(out / "real" / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerow(["case_id", "mri", "ct", "brain", "bone", "lesion", "patient_id"])
    cmd = [sys.executable, str(SCRIPT), str(out), "--phantoms", "0", "--keep-existing"]
    cmd += ["--t1-phantoms", "1", "--small-phantoms", "1", "--small-haemorrhage-phantoms", "1"]
    cmd += ["--small-adc-phantoms", "1", "--small-dwi-phantoms", "1", "--branch-phantoms", "1"]
    cmd += ["--ranged-phantoms", "2", "--seed", "3"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    expect = {  # part: (seed, contrast of case 0, lesion kind(s), volume range in mL)
        "t1_phantoms": (40003, "T1", ["ischaemic"], (0.5, 80.0)),
        "small_phantoms": (41003, "T1", ["ischaemic"], (0.5, 5.0)),
        "small_haemorrhage_phantoms": (42003, "T1", ["haemorrhagic"], (0.5, 5.0)),
        "small_adc_phantoms": (43003, "ADC", ["ischaemic"], (0.5, 2.0)),
        "small_dwi_phantoms": (44003, "DWI", ["ischaemic"], (0.5, 2.0)),
        "branch_phantoms": (45003, "T1", ["ischaemic"], (1.0, 10.0)),
        "ranged_phantoms": (60003, "T1", ["ischaemic", "haemorrhagic"], (0.5, 80.0)),
    }
    for part, (seed, contrast, kinds, (lo, hi)) in expect.items():
        truths = [json.loads(p.read_text()) for p in sorted((out / part).glob("*/truth.json"))]
        assert truths[0]["seed"] == seed and truths[0]["config"]["mri_contrast"] == contrast
        assert [t["config"]["lesion"] for t in truths] == kinds
        assert all(lo <= t["lesion_volume_ml"] <= hi for t in truths)
    branch = json.loads((out / "branch_phantoms" / "phantom_000" / "truth.json").read_text())
    assert branch["lesions"][0]["territory"].endswith(" branch")
    ids = [r.case_id for r in load_dataset(out / "all")]
    assert len(ids) == 8 and ids[0] == "t1_phantoms_phantom_000"
    # every phantom part without the real-anatomy part: the second data set of a share-weighted
    # `train-lesion --data OUT/real --data OUT/all_phantoms`
    assert [r.case_id for r in load_dataset(out / "all_phantoms")] == ids


def test_lesion_free_real_part(tmp_path: Path) -> None:
    """`--lesion-free-real`: real-anatomy pairs with no inserted lesion, one per source here, at
    their own seeds (S + 900 + 1000 * source + k, apart from OUT/real's), listed in `all` but
    not in `all_phantoms`: where a lesion head's false lesions on real anatomy show."""
    out = tmp_path / "data"
    (out / "real").mkdir(parents=True)
    with open(out / "real" / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerow(["case_id", "mri", "ct", "brain", "bone", "lesion", "patient_id"])
    cmd = [sys.executable, str(SCRIPT), str(out), "--phantoms", "1", "--keep-existing"]
    cmd += ["--lesion-free-real", "1", "--seed", "7"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    truths = [
        json.loads(p.read_text()) for p in sorted((out / "real_lesion_free").glob("*/truth.json"))
    ]
    assert len(truths) >= 4  # one pair per source MRI (chris, C-STAR's sequences, RIRE, VM)
    assert {t["source_name"] for t in truths} >= {"chris_t1", "rire_t1", "vm_t1"}
    for t in truths:
        assert t["config"]["lesion"] == "none" and t["lesions"] == []
        assert t["lesion_volume_ml"] == 0.0 and t["mask_voxels"]["lesion"] == 0
        assert t["seed"] % 1000 == 7 + 900  # never a seed of OUT/real (k < 900)
        assert "seg3d" not in t["source_name"] and "clinical_stroke" not in t["source_name"]
    ids = [r.case_id for r in load_dataset(out / "all")]
    # prefixed by the part's name, so never the same id as OUT/real's pair of that source and k
    assert sorted(ids[:-1]) == sorted(f"real_lesion_free_{t['case_id']}" for t in truths)
    assert ids[-1] == "phantoms_phantom_000"
    assert [r.case_id for r in load_dataset(out / "all_phantoms")] == ["phantoms_phantom_000"]


def test_patients_split_real_anatomy_by_person_with_the_full_builds_seeds(tmp_path: Path) -> None:
    """`--patients` / `--exclude-patients`: the real-anatomy parts keep to / away from some
    people (a leave-one-person-out split), each kept pair at the seed a full build gives it;
    an unknown name is refused before anything is written."""
    import pytest

    from clinfuse.errors import ClinfuseInputError
    from clinfuse.phantom.realhead import write_real_dataset

    def build(out: Path, *extra: str) -> list[dict]:
        (out / "real").mkdir(parents=True)
        with open(out / "real" / "manifest.csv", "w", newline="") as f:
            csv.writer(f).writerow(["case_id", "mri", "ct", "brain", "bone", "lesion"])
        cmd = [sys.executable, str(SCRIPT), str(out), "--phantoms", "0", "--keep-existing"]
        cmd += ["--lesion-free-real", "1", "--seed", "3", *extra]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        return [
            json.loads(p.read_text())
            for p in sorted((out / "real_lesion_free").glob("*/truth.json"))
        ]

    only = build(tmp_path / "only", "--patients", "rire001")
    assert [t["source_name"] for t in only] == ["rire_t1"]
    rest = build(tmp_path / "rest", "--exclude-patients", "rire001,cstar")
    assert {t["source_name"] for t in rest} == {"chris_t1", "vm_t1"}
    # the seeds of a build of every source (source index kept): rire is source 1, vm source 2
    assert only[0]["seed"] == 3 + 900 + 1000 * 1
    assert {t["source_name"]: t["seed"] for t in rest}["vm_t1"] == 3 + 900 + 1000 * 2
    with pytest.raises(ClinfuseInputError, match="unknown patient 'bob'"):
        write_real_dataset(tmp_path / "bad", tmp_path, 1, 0, patients=["bob"])
    assert not (tmp_path / "bad").exists()


def test_union_of_built_sets_lists_every_case_once_with_working_paths(tmp_path: Path) -> None:
    """`--union-of A B`: one manifest over two built sets (e.g. two validation sets to calibrate
    on), ids prefixed by the set's folder, every path readable from the new folder; builds
    nothing itself."""
    for name, seed in (("va", "3"), ("vb", "4")):
        cmd = [sys.executable, str(SCRIPT), str(tmp_path / name), "--per-source", "0"]
        subprocess.run([*cmd, "--phantoms", "1", "--seed", seed], check=True, capture_output=True)
    out = tmp_path / "deeper" / "both"
    cmd = [sys.executable, str(SCRIPT), str(out), "--union-of", str(tmp_path / "va")]
    done = subprocess.run([*cmd, str(tmp_path / "vb")], check=True, capture_output=True, text=True)
    assert "2 cases" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["all"]
    cases = load_dataset(out / "all")
    assert [c.case_id for c in cases] == ["va_phantoms_phantom_000", "vb_phantoms_phantom_000"]
    for case, name in zip(cases, ("va", "vb"), strict=True):
        mri, lesion = case.paths["mri"], case.paths["lesion"]
        assert mri.resolve().is_relative_to((tmp_path / name).resolve())
        assert mri.is_file() and lesion.is_file()
        assert case.load().mri.shape == case.load().ct.shape
    same = [sys.executable, str(SCRIPT), str(tmp_path / "x"), "--union-of"]
    clash = subprocess.run(
        [*same, str(tmp_path / "va"), str(tmp_path / "deeper" / ".." / "va")],
        capture_output=True,
        text=True,
    )
    assert clash.returncode != 0 and "distinct" in clash.stderr


def test_union_of_keeps_or_leaves_out_people_and_reads_a_part(tmp_path: Path) -> None:
    """`--union-of` with `--exclude-patients` / `--patients`: a leave-one-person-out split of
    sets already built (rows by patient_id; a phantom is its own patient), and a part folder
    (SET/manifest.csv, e.g. data/real) is read as a set."""
    part = tmp_path / "data" / "real"
    part.mkdir(parents=True)
    with open(part / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "mri", "ct", "brain", "bone", "lesion", "ignore", "patient_id"])
        for case, who in (("rire_t1_000", "rire001"), ("vm_t1_000", "visible_male")):
            w.writerow([case, f"{case}/mri.nii.gz", f"{case}/ct.nii.gz", "", "", "", "", who])
    subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "va"), "--per-source", "0", "--phantoms", "1"],
        check=True,
        capture_output=True,
    )
    sets = ["--union-of", str(part), str(tmp_path / "va")]

    def ids(out: Path, *who: str) -> list[str]:
        cmd = [sys.executable, str(SCRIPT), str(out), *sets, *who]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        with open(out / "all" / "manifest.csv", newline="") as f:
            return [r["case_id"] for r in csv.DictReader(f)]

    rest = ids(tmp_path / "rest", "--exclude-patients", "rire001")
    assert rest == ["real_vm_t1_000", "va_phantoms_phantom_000"]
    assert ids(tmp_path / "only", "--patients", "rire001") == ["real_rire_t1_000"]
    with open(tmp_path / "rest" / "all" / "manifest.csv", newline="") as f:
        mri = next(csv.DictReader(f))["mri"]
    assert (tmp_path / "rest" / "all" / mri).resolve() == (part / "vm_t1_000" / "mri.nii.gz")

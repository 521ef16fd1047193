"""`clinfuse demo` end to end on tiny phantoms: baselines only (no checkpoint) and with a tiny
randomly initialised checkpoint standing in for the shipped one."""

import csv
import json
import math
from html.parser import HTMLParser

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

import clinfuse.demo as demo_mod
from clinfuse.baselines import BASELINES
from clinfuse.cli import app
from clinfuse.errors import ClinfuseInputError

TINY = {"shape": (20, 20, 16), "spacing": (10.0, 10.0, 8.0)}


def _rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


class _Imgs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    mp = pytest.MonkeyPatch()
    # Force the "no checkpoint yet" path even once the shipped checkpoint exists.
    mp.setattr(demo_mod, "default_checkpoint", lambda ndim=3: out.parent / "missing.pt")
    try:
        result = demo_mod.run_demo(out, n_cases=2, **TINY, command="clinfuse demo --test")
    finally:
        mp.undo()
    return result


def test_baselines_only_demo_writes_everything(baseline_run):
    r = baseline_run
    assert not r.model.available and "no shipped checkpoint" in r.model.reason
    assert r.methods == list(BASELINES)
    rows = _rows(r.per_case_csv)
    assert len(rows) == 2 * len(BASELINES)
    assert {row["method"] for row in rows} == set(BASELINES)  # no clinfuse row, no fake numbers
    assert {row["mri_contrast"] for row in rows} == {"T1", "T2"}  # mixed contrasts
    assert all(row["error"] == "" for row in rows)
    for row in rows:
        assert -1.0 <= float(row["brain_ssim"]) <= 1.0
        assert row["dice"] == ""  # no lesion head without the model: blank, not invented
    # The exact-mask composite copies the MRI into the brain: PSNR there is infinite.
    comp = [row for row in rows if row["method"] == "composite"]
    assert all(math.isinf(float(row["brain_psnr"])) for row in comp)
    for cid in {row["case_id"] for row in rows}:
        for role in ("mri", "ct", "brain", "bone", "lesion"):
            assert (r.out / "cases" / cid / f"{role}.nii.gz").is_file()
        for m in BASELINES:
            assert (r.out / "methods" / m / "fused" / f"{cid}.nii.gz").is_file()
        assert (r.out / "figures" / f"{cid}_montage.png").is_file()
        assert (r.out / "figures" / f"{cid}_methods.png").is_file()
    meta = json.loads((r.out / "demo.json").read_text())
    assert meta["seeds"] == [9000, 9001] and meta["model"]["available"] is False


def test_baselines_only_report_says_why_the_model_row_is_missing(baseline_run):
    text = baseline_run.report.read_text(encoding="utf-8")
    assert "row is missing" in text and "no shipped checkpoint" in text
    assert "http://" not in text and "https://" not in text and "<script" not in text
    parser = _Imgs()
    parser.feed(text)
    # ROI-SSIM plot + 2 figures per case, all embedded
    assert len(parser.srcs) == 1 + 2 * 2
    assert all(s.startswith("data:image/png;base64,") for s in parser.srcs)
    summary = baseline_run.summary_md.read_text(encoding="utf-8")
    assert "| composite |" in summary and "clinfuse demo --test" in summary


def test_demo_refuses_to_overwrite_and_bad_counts(baseline_run, tmp_path):
    with pytest.raises(ClinfuseInputError, match="overwrite"):
        demo_mod.run_demo(baseline_run.out, n_cases=1, **TINY)
    with pytest.raises(ClinfuseInputError, match="n-cases"):
        demo_mod.run_demo(tmp_path / "o", n_cases=0, **TINY)
    with pytest.raises(ClinfuseInputError, match="preset"):
        demo_mod.run_demo(tmp_path / "o3", n_cases=1, preset="nonsense", **TINY)
    with pytest.raises(ClinfuseInputError, match="unknown baseline"):
        demo_mod.run_demo(tmp_path / "o4", n_cases=1, methods=["median"], **TINY)
    assert not (tmp_path / "o3").exists() and not (tmp_path / "o4").exists()
    with pytest.raises(ClinfuseInputError, match="checkpoint file not found"):
        demo_mod.run_demo(tmp_path / "o2", n_cases=1, checkpoint=tmp_path / "nope.pt", **TINY)


def test_held_out_seeds_and_contrasts():
    cases = demo_mod.make_demo_cases(3, shape=(16, 16, 12), spacing=(10.0, 10.0, 10.0))
    assert [c.seed for c in cases] == [9000, 9001, 9002]
    assert [c.contrast for c in cases] == ["T1", "T2", "T1"]
    for c in cases:
        p = c.prepared
        assert p.lesion is not None and p.lesion.any()
        assert p.mri.min() >= -2 and p.mri.max() <= 2


def _tiny_checkpoint(path):
    """A randomly initialised ci-tiny model saved as a training checkpoint (test stand-in)."""
    import torch
    from torch.optim.swa_utils import AveragedModel

    from clinfuse.training.checkpoint import build_model, read_checkpoint, save_checkpoint
    from clinfuse.training.config import resolve_config

    cfg = resolve_config("ci-tiny")
    with torch.random.fork_rng():  # the random weights only; global RNG state is restored
        torch.manual_seed(0)
        model = build_model(cfg.model)
    save_checkpoint(path, model=model, ema=AveragedModel(model), config=cfg, step=0)
    try:
        read_checkpoint(path)
    except ClinfuseInputError:
        # save_checkpoint stores torch.__version__ (a TorchVersion object), which
        # weights_only loading rejects; store it as a string until training fixes that.
        state = torch.load(path, weights_only=False)
        state["versions"] = {k: str(v) for k, v in state["versions"].items()}
        torch.save(state, path)
    return path


@pytest.mark.slow
def test_demo_with_tiny_random_checkpoint(tmp_path):
    ckpt = _tiny_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "out"
    r = demo_mod.run_demo(
        out,
        n_cases=1,
        shape=(16, 16, 16),
        spacing=(12.0, 12.0, 10.0),
        checkpoint=ckpt,
        samples=2,
        steps=2,
        methods=["average", "composite"],
    )
    assert r.model.available and r.methods == ["clinfuse", "average", "composite"]
    rows = _rows(r.per_case_csv)
    assert [row["method"] for row in rows] == r.methods
    assert all(row["error"] == "" for row in rows)
    # The lesion head scores every method's fused image (random weights: any value, but real).
    for row in rows:
        assert 0.0 <= float(row["dice"]) <= 1.0 and 0.0 <= float(row["nsd"]) <= 1.0
    meta = json.loads((out / "demo.json").read_text())
    # The lesion term was guided by the head's own prediction, never the reference mask.
    assert set(meta["lesion_guidance"].values()) <= {
        "predicted",
        "rejected",
        "none",
    }  # never the reference
    assert meta["model"]["sha256"] and (out / "figures" / "reliability.png").is_file()
    text = r.report.read_text(encoding="utf-8")
    assert "row is missing" not in text and "Lesion probability calibration" in text
    fused = np.asarray(nib.load(out / "methods/clinfuse/fused/demo9000_T1.nii.gz").dataobj)
    assert fused.shape == (16, 16, 16) and np.isfinite(fused).all()


def test_cli_demo_runs_and_refuses_existing_output(restore_threads, tmp_path, monkeypatch):
    calls = {}
    real = demo_mod.run_demo

    def small(out, **kw):
        calls.update(kw)
        monkeypatch.setattr(demo_mod, "default_checkpoint", lambda ndim=3: tmp_path / "none.pt")
        return real(out, **kw, **TINY, methods=["average"])

    monkeypatch.setattr(demo_mod, "run_demo", small)
    out = tmp_path / "cli"
    args = ["demo", "--out", str(out), "--n-cases", "1", "--device", "cpu"]
    res = CliRunner().invoke(app, [*args, "--spacing", "12", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert (out / "report.html").is_file() and "report.html" in res.output
    assert calls["n_cases"] == 1 and calls["device"] == "cpu"
    assert calls["command"].startswith("clinfuse demo --out")
    # --spacing: every method works on that grid; --threads: recorded in the command
    assert calls["work_spacing"] == 12.0 and "--spacing 12 --threads 1" in calls["command"]
    case = next((out / "cases").iterdir()).name
    fused = nib.load(out / "methods" / "average" / "fused" / f"{case}.nii.gz")
    np.testing.assert_allclose(fused.header.get_zooms()[:3], (12.0, 12.0, 12.0), rtol=0.05)
    res = CliRunner().invoke(app, ["demo", "--out", str(out), "--n-cases", "1"])
    assert isinstance(res.exception, ClinfuseInputError)


def test_recorder_keeps_the_calibrated_probability_and_scores_the_raw_one():
    """The demo's recorder keeps the probability a reader is given (the head's near-mask
    temperature applied: calibration panels) and hands the harness the head's own probability
    with its rule (the scored mask); both give the same mask."""
    from types import SimpleNamespace

    from clinfuse.evaluation.methods import MethodOutput
    from clinfuse.nn.lesion_mask import LesionMaskRule

    prob = np.full((12, 12, 12), 0.1, np.float32)
    prob[4:8, 4:8, 4:8] = 0.9
    rule = LesionMaskRule(near_logit_scale=0.5)
    fused = np.zeros_like(prob)
    prepared = SimpleNamespace(case_id="c", spacing=(2.0, 2.0, 2.0), mri=fused)
    rec = demo_mod._Recorder("m", lambda p: MethodOutput(fused, prob, mask_rule=rule), None)
    out = rec(prepared)
    np.testing.assert_array_equal(out.lesion_pred, prob)
    assert out.mask_rule == rule
    kept = rec.outputs["c"]
    np.testing.assert_allclose(kept["lesion_prob"], rule.calibrated(prob, prob > 0.5, (2.0,) * 3))
    assert kept["lesion_prob"][5, 5, 5] == pytest.approx(0.75, abs=1e-5)
    assert np.array_equal(kept["lesion_mask"], prob > 0.5)

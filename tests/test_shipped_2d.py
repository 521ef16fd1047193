"""The shipped 2D model (`clinfuse/checkpoints/open2d.pt`, issue 13 item 5): the default of
`clinfuse fuse` on a PNG pair, trained only on openly licensed data (docs/TRAINING.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clinfuse.cli import app
from clinfuse.pipeline.model import default_checkpoint, shipped_checkpoint_path

HARVARD = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "harvard_mri_ct"
PAIR = "026"  # patient 16, slice 10: one of the 21 CDDFuse test pairs (never trained on)


def test_the_2d_model_is_shipped_with_its_model_card():
    path = default_checkpoint(2)
    assert path == shipped_checkpoint_path(2) and path.name == "open2d.pt"
    assert path.stat().st_size < 20e6
    card = path.with_suffix(".md").read_text()
    assert "benchmarks/train_open2d.sh" in card and "CC BY" in card and "MIT" in card


@pytest.mark.skipif(not HARVARD.is_dir(), reason="shared data not present")
def test_png_pair_fuses_with_the_shipped_2d_model(tmp_path):
    from clinfuse.baselines import BASELINES
    from clinfuse.metrics.roi import roi_ssim
    from clinfuse.pipeline import fuse_case

    mri, ct = HARVARD / "mri" / f"{PAIR}.png", HARVARD / "ct" / f"{PAIR}.png"
    out = tmp_path / "out"
    args = ["fuse", "--mri", str(mri), "--ct", str(ct), "--out", str(out), "--threads", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    assert Path(run["checkpoint"]["path"]).name == "open2d.pt"
    assert (out / "fused.png").is_file()
    # better than plain averaging in both ROIs (automatic masks, the project's ROI-SSIM)
    res = fuse_case({"mri": mri, "ct": ct})
    prep = res.prepared
    avg = BASELINES["average"](prep)
    for ref, mask in ((prep.mri, prep.brain), (prep.ct_bone, prep.bone)):
        assert roi_ssim(res.fused, ref, mask) > roi_ssim(avg, ref, mask) + 0.05

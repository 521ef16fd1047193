"""Reliability diagram and per-case box/strip plots are written as real PNGs."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from clinfuse.report.plots import per_case_values, save_metric_plot, save_reliability_diagram


def _curve(acc_fn):
    centres = (np.arange(15) + 0.5) / 15
    counts = np.arange(15)[::-1] * 10.0  # last bin empty: must be skipped, not drawn at 0
    return SimpleNamespace(
        bin_centres=centres, confidence=centres, accuracy=acc_fn(centres), counts=counts
    )


def test_reliability_diagram_png(tmp_path):
    out = save_reliability_diagram(
        tmp_path / "rel.png",
        {"clinfuse": _curve(lambda c: c), "average": _curve(lambda c: c**2)},
        scores={"clinfuse": {"ECE": 0.01, "Brier": 0.02}},
    )
    with Image.open(out) as im:
        assert im.format == "PNG"
        arr = np.asarray(im.convert("L"))
    assert arr.std() > 10  # not a blank canvas
    with pytest.raises(ValueError):
        save_reliability_diagram(tmp_path / "x.png", {})


def test_metric_plot_png_and_grouping(tmp_path):
    rows = [
        {"method": "average", "case_id": "a", "brain_ssim": "0.5", "bone_ssim": "0.2"},
        {"method": "average", "case_id": "b", "brain_ssim": "0.7", "bone_ssim": ""},
        {"method": "composite", "case_id": "a", "brain_ssim": "1.0", "bone_ssim": "nan"},
    ]
    brain = per_case_values(rows, "brain_ssim")
    assert brain == {"average": [0.5, 0.7], "composite": [1.0]}
    bone = per_case_values(rows, "bone_ssim")
    assert bone["average"][0] == 0.2 and math.isnan(bone["average"][1])
    out = save_metric_plot(tmp_path / "box.png", {"brain": brain, "bone": bone}, title="t")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > im.height


def test_reliability_panels_one_row_per_region(tmp_path):
    from clinfuse.report.plots import save_reliability_panels

    panels = {
        "brain": {"clinfuse": _curve(lambda c: c), "average": _curve(lambda c: c**2)},
        "lesion neighbourhood": {"clinfuse": _curve(lambda c: c**0.5)},
        "class-balanced (brain)": {"average": _curve(lambda c: 1 - c)},
    }
    dpi = 100
    out = save_reliability_panels(tmp_path / "rel3.png", panels, dpi=dpi)
    with Image.open(out) as im:
        arr = np.asarray(im.convert("L"))
        w, h = im.size
    assert arr.std() > 10 and h > w  # one row per region, narrow enough to sit beside a table
    assert w <= 700
    with pytest.raises(ValueError):
        save_reliability_panels(tmp_path / "x.png", {"brain": {}})

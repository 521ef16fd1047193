"""The demo report never misleads: empty predictions and infinite PSNR are counted apart, paired
tests and three calibration views are shown, captions match the images, the lesion-head line
comes from the model card, and the page renders in headless Chromium."""

import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from _helpers import ball
from clinfuse.metrics.segmentation import image_diagonal_mm
from clinfuse.report.demo_report import metric_cell, paired_table, write_demo_report
from clinfuse.report.html import DISCLAIMER

SHAPE = (20, 20, 12)
SPACING = (3.0, 3.0, 3.0)
DIAG = image_diagonal_mm(SHAPE, SPACING)


def test_hd95_of_empty_predictions_is_counted_apart():
    rows = [
        {"case_id": "a", "hd95": 4.0},
        {"case_id": "b", "hd95": 6.0},
        {"case_id": "c", "hd95": DIAG},
    ]
    cell = metric_cell(rows, "hd95", {"a": False, "b": False, "c": True})
    assert cell.startswith("5.000 ± 1.414") and cell.endswith("\n1 of 3: no prediction")
    assert f"{DIAG:.1f}" not in cell
    only_empty = metric_cell(rows[2:], "hd95", {"c": True})
    assert only_empty == "1 of 1: no prediction"


def test_infinite_psnr_is_counted_apart():
    rows = [{"case_id": "a", "brain_psnr": 30.0}, {"case_id": "b", "brain_psnr": math.inf}]
    assert metric_cell(rows, "brain_psnr") == "30.000\n1 of 2: identical in ROI (∞ dB)"
    assert "inf" not in metric_cell(rows[1:], "brain_psnr")


def test_paired_table_cells():
    ours = [
        {"case_id": c, "brain_ssim": v}
        for c, v in zip("abcdef", [0.9, 0.8, 0.85, 0.9, 0.7, 0.95], strict=True)
    ]
    base = [
        {"case_id": c, "brain_ssim": v - 0.1}
        for c, v in zip("abcdef", [0.9, 0.8, 0.85, 0.9, 0.7, 0.95], strict=True)
    ]
    table = paired_table({"clinfuse": ours, "average": base})
    assert table.header[0] == "against" and table.rows[0][0] == "average"
    # Six paired differences of +0.1: the exact two-sided p is 2 / 2^6.
    assert table.rows[0][1] == f"+0.100\np = {2 / 64:.3g} (n = 6)"
    assert "smallest possible p is 0.0312" in table.caption
    assert paired_table({"average": base}) is None


def _case(i, contrast, shift):
    lesion = ball(SHAPE, (30.0 + shift, 30.0, 18.0), 7.0, SPACING)
    brain = ball(SHAPE, (30.0, 30.0, 18.0), 22.0, SPACING)
    bone = ball(SHAPE, (30.0, 30.0, 18.0), 27.0, SPACING) & ~brain
    mri = np.where(brain, 0.5, -2.0).astype(np.float32)
    mri[lesion] = 1.0
    ct = np.where(bone, 1.5, -2.0).astype(np.float32)
    prepared = SimpleNamespace(
        mri=mri, ct_bone=ct, lesion=lesion, brain=brain, bone=bone, spacing=SPACING, shape=SHAPE
    )
    return SimpleNamespace(case_id=f"c{i}", seed=9000 + i, contrast=contrast, prepared=prepared)


class _Parser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.text = []
        self.alts = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.alts.append(dict(attrs).get("alt", ""))

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_report")
    cases = [_case(0, "T1", 0.0), _case(1, "T2", 3.0), _case(2, "T1", -3.0)]
    card = out / "tiny.md"
    card.write_text("- **Lesion head status**: a test head that misses\n  every small lesion.\n")
    recorders, rows_by_method = {}, {}
    for m, (hit, brain_psnr) in {
        "clinfuse": (True, 28.0),
        "average": (False, 20.0),
        "composite": (True, math.inf),
    }.items():
        outputs, rows = {}, []
        for k, c in enumerate(cases):
            p = c.prepared
            predicted = hit and k < 2  # the third case: no prediction for every method
            prob = np.where(p.lesion, 0.8 if predicted else 0.3, 0.05).astype(np.float32)
            outputs[c.case_id] = {"fused": p.mri, "lesion_prob": prob, "lesion_mask": prob >= 0.5}
            rows.append(
                {
                    "case_id": c.case_id,
                    "brain_ssim": 0.9 - 0.1 * k,
                    "bone_ssim": 0.5 + 0.1 * k,
                    "brain_psnr": brain_psnr,
                    "bone_psnr": 15.0 + k,
                    "dice": 0.8 if predicted else 0.0,
                    "nsd": 0.9 if predicted else 0.0,
                    "hd95": 3.0 + k if predicted else DIAG,
                    "no_predicted_lesion": 0.0 if predicted else 1.0,  # as the harness writes
                    "fuse_seconds": 1.0,
                    "error": None,
                }
            )
        recorders[m] = SimpleNamespace(outputs=outputs)
        rows_by_method[m] = rows
    csv = out / "per_case.csv"
    csv.write_text("method,case_id\n")
    status = SimpleNamespace(
        available=True, reason="ok", checkpoint=str(out / "tiny.pt"), sha256="0" * 64
    )
    html, md = write_demo_report(
        out,
        cases=cases,
        recorders=recorders,
        rows_by_method=rows_by_method,
        status=status,
        per_case_csv=csv,
        settings={"preset": "stroke", "shape": list(SHAPE), "spacing": list(SPACING)},
        command="clinfuse demo --test",
        timings={"all": 1.0},
    )
    return html, md


def test_report_text_is_honest(report):
    html, md = report
    parser = _Parser()
    parser.feed(html.read_text(encoding="utf-8"))
    body = " ".join(parser.text)
    assert body.count(DISCLAIMER) == 2  # top and bottom of the page
    assert (
        "Lesion head status (model card tiny.md): a test head that misses every small lesion."
        in body
    )
    assert "1 of 3: no prediction" in body and f"{DIAG:.3f}" not in body
    # the lesion columns are said to come from the demo's setting, not the head's benchmark
    grid = f"{SPACING[0]:g}" if len(set(SPACING)) == 1 else " x ".join(f"{v:g}" for v in SPACING)
    assert f"These phantoms (T1 / T2, at {grid} mm) are the demo's quick setting" in body
    assert "worked at" not in body  # no --spacing: the phantoms' own grid
    assert "identical in ROI (∞ dB)" in body and not re.search(r"\binf\b", body)
    assert "Paired Wilcoxon signed-rank tests: clinfuse against each method" in body
    for region in ("brain ECE", "lesion neighbourhood (≤ 10 mm) ECE", "class-balanced (brain) ECE"):
        assert region in body
    # Captions list exactly the columns drawn: no uncertainty column without samples >= 2.
    montage_alt = next(a for a in parser.alts if a.startswith("c0 (T1-like MRI"))
    assert "uncertainty" not in montage_alt
    assert "MRI | CT (bone window) | fused (clinfuse) | lesion overlay" in montage_alt
    methods_alt = next(a for a in parser.alts if a.startswith("c0: MRI"))
    assert "clinfuse | average | composite" in methods_alt
    summary = md.read_text(encoding="utf-8")
    assert DISCLAIMER in summary and "no prediction" in summary


def test_reliability_diagram_sits_beside_the_calibration_table(report):
    html, _ = report
    text = html.read_text(encoding="utf-8")
    section = text[text.index("Lesion probability calibration") :]
    section = section[: section.index("<h2>", 10)]
    assert '<div class="side">' in section and "<img" in section
    assert (html.parent / "figures" / "reliability.png").is_file()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH (apt-get install chromium)")
def test_demo_report_renders_in_headless_chromium(report, tmp_path):
    html, _ = report
    shot = tmp_path / "shot.png"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--hide-scrollbars",
        "--window-size=1300,2400",
        f"--screenshot={shot}",
        html.resolve().as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    with Image.open(shot) as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    grey = rgb.mean(axis=2)
    assert (grey < 200).mean() > 0.02 and grey.std() > 20
    # The disclaimer's red-tinted box (#fde2e1) is drawn near the top of the page.
    top = rgb[:400]
    pink = (
        (abs(top[..., 0] - 253) < 4) & (abs(top[..., 1] - 226) < 4) & (abs(top[..., 2] - 225) < 4)
    )
    assert pink.sum() > 1000

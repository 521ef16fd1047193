"""The HTML report is self-contained (no external references), embeds its images, and renders."""

import base64
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clinfuse.report.html import Table, format_stat, write_report
from clinfuse.report.montage import save_montage


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _report(tmp_path: Path) -> tuple[Path, Path]:
    shape = (24, 24, 10)
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    head = ((x - 12) ** 2 + (y - 12) ** 2 + (2 * (z - 5)) ** 2 < 100).astype(np.float32) * 3 - 2
    les = (x - 14) ** 2 + (y - 12) ** 2 + (2 * (z - 5)) ** 2 < 9
    png = save_montage(
        tmp_path / "montage.png", {"MRI": head, "fused": head}, overlay={"reference": les}
    )
    csv = tmp_path / "per_case.csv"
    csv.write_text("case_id,method,brain_ssim\nc0,average,0.5\n")
    table = Table(
        "3D phantoms",
        ["method", "brain ROI-SSIM"],
        [["average", format_stat(0.5, 0.1, (0.4, 0.6))], ["clinfuse", float("nan")]],
        caption="clinfuse demo --out X",
        highlight=["clinfuse"],
    )
    out = write_report(
        tmp_path / "report.html",
        title="clinfuse demo <test>",
        tables=[table],
        images=[("Case c0", png)],
        per_case_csv=csv,
        commands=["clinfuse demo --out X"],
        provenance={"seed": 9000, "checkpoint": "none"},
        notes=["The clinfuse row is missing: no checkpoint."],
    )
    return out, png


def test_format_stat():
    assert format_stat(0.91234, 0.01, (0.9, 0.93)) == "0.912 ± 0.010 [0.900, 0.930]"
    assert format_stat(float("nan")) == "—"
    assert format_stat(1.5, None, None, digits=1) == "1.5"


def test_report_is_self_contained_and_embeds_images(tmp_path):
    out, png = _report(tmp_path)
    text = out.read_text(encoding="utf-8")
    parser = _Collector()
    parser.feed(text)
    parser.close()
    tags = [t for t, _ in parser.tags]
    assert "script" not in tags and "link" not in tags and "iframe" not in tags
    assert "http://" not in text and "https://" not in text
    assert "url(" not in text and "@import" not in text  # no CSS fetches either
    for _tag, attrs in parser.tags:
        for key in ("href", "src"):
            if key in attrs:  # only embedded data or a file next to the report
                assert attrs[key].startswith("data:") or (
                    ":" not in attrs[key] and not attrs[key].startswith("/")
                ), attrs[key]
    for tag, attrs in parser.tags:
        if "src" in attrs:
            assert attrs["src"].startswith("data:image/png;base64,"), tag
    imgs = [a for t, a in parser.tags if t == "img"]
    assert len(imgs) == 1
    payload = base64.b64decode(imgs[0]["src"].split(",", 1)[1])
    assert payload == png.read_bytes()
    hrefs = [a["href"] for t, a in parser.tags if t == "a"]
    assert hrefs[0] == "per_case.csv" and hrefs[1].startswith("data:text/csv;base64,")
    body = "".join(parser.text)
    assert "clinfuse demo <test>" in body  # title escaped in the source, intact when parsed
    assert "0.500 ± 0.100" in body and "[0.400, 0.600]" in body and "—" in body
    assert "The clinfuse row is missing" in body and "9000" in body and "torch" in body
    assert 'class="highlight"' in text


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH (apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    out, _ = _report(tmp_path)
    shot = tmp_path / "shot.png"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--hide-scrollbars",
        "--window-size=1000,1400",
        f"--screenshot={shot}",
        out.resolve().as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    with Image.open(shot) as im:
        grey = np.asarray(im.convert("L")).astype(float)
    assert grey.shape == (1400, 1000)
    # Non-blank: a real share of the page is not background white, and it has structure.
    assert (grey < 200).mean() > 0.02 and grey.std() > 20

"""Montage geometry (orientation, mm aspect), point choice, contours and atomic writing."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _helpers import ball
from clinfuse.report.montage import (
    build_montage_figure,
    choose_point,
    comparison_montage,
    overlay_colours,
    save_montage,
    slice_views,
)


def test_slice_views_orientation_and_mm_extent():
    arr = np.zeros((10, 20, 5), dtype=np.float32)
    arr[9, 2, 3] = 1.0  # far right (x), posterior (y small), slice z=3
    views = {v.plane: v for v in slice_views(arr, (9, 2, 3), (1.0, 0.5, 4.0))}
    ax, co, sa = views["axial"], views["coronal"], views["sagittal"]
    # Axial: rows = y, cols = x, extent in mm = (x: 10 * 1, y: 20 * 0.5).
    assert ax.image.shape == (20, 10) and ax.extent == (0.0, 10.0, 0.0, 10.0)
    assert ax.image[2, 9] == 1.0 and ax.origin == "lower" and ax.index == 3
    # Coronal: rows = z (4 mm), cols = x: 10 mm wide, 20 mm tall.
    assert co.image.shape == (5, 10) and co.extent == (0.0, 10.0, 0.0, 20.0)
    assert co.image[3, 9] == 1.0
    # Sagittal: rows = z, cols = y: 10 mm wide, 20 mm tall.
    assert sa.image.shape == (5, 20) and sa.extent == (0.0, 10.0, 0.0, 20.0)
    assert sa.image[3, 2] == 1.0


def test_slice_views_2d_is_one_png_oriented_view():
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    (view,) = slice_views(arr, (1, 1), (2.0, 1.0))
    assert view.plane == "2d" and view.origin == "upper"
    np.testing.assert_array_equal(view.image, arr)
    assert view.extent == (0.0, 4.0, 6.0, 0.0)


def test_bad_spacing_is_rejected():
    with pytest.raises(ValueError, match="spacing"):
        slice_views(np.zeros((4, 4, 4)), (1, 1, 1), (1.0, 0.0, 1.0))


def test_anisotropic_voxels_are_not_squashed():
    # 40 x 40 x 16 voxels at 1 x 1 x 3 mm: the coronal view is 40 mm wide and 48 mm tall.
    fig = build_montage_figure(
        {"MRI": np.zeros((40, 40, 16), np.float32)}, spacing=(1.0, 1.0, 3.0), point=(20, 20, 8)
    )
    fig.canvas.draw()
    boxes = [ax.get_window_extent() for ax in fig.axes]
    ratios = [b.height / b.width for b in boxes]
    assert ratios[0] == pytest.approx(1.0, rel=0.03)  # axial 40 x 40 mm
    assert ratios[1] == pytest.approx(48 / 40, rel=0.03)  # coronal
    assert ratios[2] == pytest.approx(48 / 40, rel=0.03)  # sagittal


def test_choose_point_lands_inside_a_crescent_lesion():
    shape = (30, 30, 10)
    outer = ball(shape, (15, 15, 5), 10, (1, 1, 1))
    inner = ball(shape, (18, 15, 5), 9, (1, 1, 1))
    crescent = outer & ~inner
    assert not crescent[tuple(np.round(np.argwhere(crescent).mean(0)).astype(int))]
    assert crescent[choose_point(shape, [crescent])]
    assert choose_point(shape, [np.zeros(shape, bool), None]) == (15, 15, 5)


def test_overlay_colours_keep_reference_cyan():
    assert overlay_colours(["reference"]) == {"reference": "#00d5ff"}
    col = overlay_colours(["predicted", "reference lesion"])
    assert col["reference lesion"] == "#00d5ff" and col["predicted"] == "#ff4b1f"


def _count_colour(png: Path, rgb: tuple[int, int, int], tol: int = 40) -> int:
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int((np.abs(img - np.array(rgb)).sum(axis=-1) < tol).sum())


def test_save_montage_writes_png_with_contours(tmp_path):
    shape, sp = (32, 32, 12), (1.0, 1.0, 2.5)
    head = ball(shape, (16, 16, 15), 12, sp).astype(np.float32) * 3 - 2
    ref = ball(shape, (20, 16, 15), 4, sp)
    pred = ball(shape, (21, 17, 15), 4, sp)
    std = np.full(shape, 0.1, np.float32)
    out = tmp_path / "sub" / "montage.png"
    got = save_montage(
        out,
        {"MRI": head, "CT": -head, "fused": head, "uncertainty": std},
        overlay={"predicted": pred, "reference": ref},
        spacing=sp,
        title="case",
    )
    assert got == out and out.exists()
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > im.height  # 5 columns, 3 rows of cells
    assert _count_colour(out, (0, 213, 255)) > 20  # reference contour drawn (cyan)
    assert _count_colour(out, (255, 75, 31)) > 20  # prediction contour drawn (red)
    assert sorted(p.name for p in out.parent.iterdir()) == ["montage.png"]  # no temp left

    plain = save_montage(tmp_path / "plain.png", {"MRI": head, "CT": -head}, spacing=sp)
    assert _count_colour(plain, (0, 213, 255)) == 0


def test_2d_montage_has_one_row_and_overlay_column():
    img = np.zeros((24, 32), np.float32)
    les = np.zeros((24, 32), bool)
    les[8:14, 10:18] = True
    fig = build_montage_figure({"MRI": img, "fused": img}, overlay={"reference": les})
    assert len(fig.axes) == 3
    assert [ax.get_title() for ax in fig.axes] == ["MRI", "fused", "lesion overlay"]


def test_comparison_montage_one_column_per_method(tmp_path):
    shape = (16, 16, 8)
    rng = np.random.default_rng(0)
    imgs = {k: rng.uniform(-2, 2, shape).astype(np.float32) for k in ("MRI", "CT", "average")}
    les = np.zeros(shape, bool)
    les[6:10, 6:10, 3:5] = True
    out = comparison_montage(
        tmp_path / "cmp.png", imgs, overlay={"reference": les}, planes=["axial"]
    )
    assert out.exists() and _count_colour(out, (0, 213, 255)) > 10


def test_mismatched_panel_shapes_raise():
    with pytest.raises(ValueError, match="shape"):
        build_montage_figure({"a": np.zeros((4, 4, 4)), "b": np.zeros((4, 4, 5))})


def test_failed_save_leaves_no_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def boom(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(RuntimeError):
        save_montage(tmp_path / "m.png", {"MRI": np.zeros((8, 8), np.float32)})
    assert list(tmp_path.iterdir()) == []


def test_every_method_montage_labels_are_readable_in_the_report(tmp_path):
    # Nine columns (MRI, CT and seven methods) as in the demo: wrapped into blocks so that the
    # PNG is shown unscaled in the report and its labels are at least 12 px high on screen.
    from clinfuse.report.montage import LABEL_PT, REPORT_WIDTH_PX

    shape = (24, 24, 12)
    names = ["MRI", "CT (bone)", "clinfuse", "average", "weighted", "max", "laplacian"]
    names += ["wavelet", "composite"]
    imgs = {k: np.zeros(shape, np.float32) for k in names}
    les = np.zeros(shape, bool)
    les[10:14, 10:14, 5:7] = True
    dpi = 110
    out = comparison_montage(tmp_path / "cmp.png", imgs, overlay={"reference": les}, dpi=dpi)
    with Image.open(out) as im:
        width = im.size[0]
    scale = min(1.0, REPORT_WIDTH_PX / width)
    assert LABEL_PT * dpi / 72 * scale >= 12
    fig = build_montage_figure(imgs, overlay={"reference": les}, overlay_every=True)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == names  # every method labelled once, in order
    sizes = [ax.title.get_fontsize() for ax in fig.axes if ax.get_title()]
    assert min(sizes) >= LABEL_PT
    assert _count_colour(out, (0, 213, 255)) > 20  # reference outlined on the panels

"""PNG montages: orthogonal slices (axial/coronal/sagittal) of images, maps and lesion contours.

Rendered with matplotlib's Agg canvas (no pyplot global state, no display needed). Voxel
spacing sets each slice's extent in mm, so anisotropic voxels are shown with their true shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from clinfuse.io.atomic import atomic_write
from clinfuse.model_range import MODEL_RANGE

Plane = Literal["axial", "coronal", "sagittal", "2d"]
PLANES_3D: tuple[Plane, ...] = ("axial", "coronal", "sagittal")
# The report shows figures at most this wide (html.py: 1400 px page, 1 em padding each side);
# montages wrap into blocks of `MAX_COLUMNS` panels so that they are not scaled down below it
# and their 11 pt labels stay about 17 px high on screen (the every-method montage with all
# nine columns in one row was scaled to ~7 px labels).
REPORT_WIDTH_PX = 1350
MAX_COLUMNS = 5
LABEL_PT = 11.0
# Contour colours: red/orange for the prediction, cyan for the reference, then more; chosen to
# stay distinguishable for red-green colour-blind readers and against a grey background.
OVERLAY_COLOURS = ("#ff4b1f", "#00d5ff", "#ffd500", "#b266ff")


@dataclass(frozen=True)
class SliceView:
    """One 2D view ready for `imshow`: image rows go bottom-up when `origin == "lower"`."""

    plane: Plane
    index: int  # the slice index along the fixed axis (row index for 2D: -1)
    image: np.ndarray
    extent: tuple[float, float, float, float]  # (left, right, bottom, top) in mm
    origin: Literal["lower", "upper"]


def _check_spacing(ndim: int, spacing: Sequence[float] | None) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    sp = tuple(float(s) for s in spacing)
    if len(sp) != ndim or any(not np.isfinite(s) or s <= 0 for s in sp):
        raise ValueError(f"spacing {spacing!r} must have {ndim} positive values")
    return sp


def slice_views(
    array: np.ndarray, point: Sequence[int], spacing: Sequence[float] | None = None
) -> list[SliceView]:
    """Orthogonal slices of `array` through voxel `point`.

    3D arrays are (x, y, z) in RAS+ order (ARCHITECTURE.md): axial shows x to the right and y
    (anterior) up, coronal x right and z (superior) up, sagittal y right and z up — the patient's
    right is on the right of the screen (neurological convention). 2D arrays are (rows, cols)
    as in a PNG and are shown as is. Extents are in mm, so the aspect ratio follows the spacing.
    """
    arr = np.asarray(array)
    sp = _check_spacing(arr.ndim, spacing)
    if arr.ndim == 2:
        rows, cols = arr.shape
        ext = (0.0, cols * sp[1], rows * sp[0], 0.0)
        return [SliceView("2d", -1, arr, ext, "upper")]
    if arr.ndim != 3:
        raise ValueError(f"expected a 2D or 3D array, got shape {arr.shape}")
    nx, ny, nz = arr.shape
    i, j, k = (int(np.clip(p, 0, n - 1)) for p, n in zip(point, arr.shape, strict=True))
    sx, sy, sz = sp
    return [
        SliceView("axial", k, arr[:, :, k].T, (0.0, nx * sx, 0.0, ny * sy), "lower"),
        SliceView("coronal", j, arr[:, j, :].T, (0.0, nx * sx, 0.0, nz * sz), "lower"),
        SliceView("sagittal", i, arr[i, :, :].T, (0.0, ny * sy, 0.0, nz * sz), "lower"),
    ]


def choose_point(shape: Sequence[int], masks: Sequence[np.ndarray | None] = ()) -> tuple[int, ...]:
    """The voxel the slices go through: inside the lesion if any mask is non-empty, else centre.

    Uses the centroid of the union of the masks, moved to the nearest mask voxel: the centroid
    of a crescent-shaped lesion can fall outside it, and the point of the montage is to show it.
    """
    union = np.zeros(tuple(shape), dtype=bool)
    for m in masks:
        if m is not None:
            union |= np.asarray(m, dtype=bool)
    if not union.any():
        return tuple(int(s) // 2 for s in shape)
    idx = np.argwhere(union)
    centroid = idx.mean(axis=0)
    nearest = idx[np.argmin(((idx - centroid) ** 2).sum(axis=1))]
    return tuple(int(v) for v in nearest)


def _point_masks(masks: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Masks that decide where to slice: the reference ones when they are non-empty, because a
    poor prediction (scattered false positives) must not pull the slices away from the lesion."""
    ref = [m for k, m in masks.items() if "ref" in k.lower() and m.any()]
    return ref or list(masks.values())


def _display(
    name: str, data: np.ndarray, ranges: Mapping[str, tuple[float, float]] | None
) -> tuple[str, tuple[float, float]]:
    """Colour map and value range for a panel (explicit range wins)."""
    key = name.lower()
    is_map = any(word in key for word in ("uncert", "std", "prob", "error", "diff"))
    cmap = "magma" if is_map else "gray"
    if ranges is not None and name in ranges:
        return cmap, tuple(float(v) for v in ranges[name])
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return cmap, (0.0, 1.0)
    if "prob" in key:
        return cmap, (0.0, 1.0)
    if is_map:
        hi = float(np.percentile(finite, 99.5))
        return cmap, (0.0, hi if hi > 0 else 1.0)
    lo, hi = float(finite.min()), float(finite.max())
    # Model-range images share one fixed window so MRI, CT and every fusion are comparable.
    if lo >= MODEL_RANGE[0] - 1e-3 and hi <= MODEL_RANGE[1] + 1e-3:
        return cmap, MODEL_RANGE
    lo, hi = (float(v) for v in np.percentile(finite, [0.5, 99.5]))
    return cmap, (lo, hi if hi > lo else lo + 1.0)


def overlay_colours(labels: Sequence[str]) -> dict[str, str]:
    """Contour colour per mask label: a label containing "ref" is always cyan, others red first.

    Fixed so that "reference" reads the same in every montage of a report.
    """
    others = [c for c in OVERLAY_COLOURS if c != OVERLAY_COLOURS[1]]
    out: dict[str, str] = {}
    for label in labels:
        if "ref" in label.lower() and OVERLAY_COLOURS[1] not in out.values():
            out[label] = OVERLAY_COLOURS[1]
        else:
            out[label] = others[len([v for v in out.values() if v in others]) % len(others)]
    return out


def _legend(fig: Figure, labels: Sequence[str]) -> None:
    colours = overlay_colours(labels)
    handles = [Line2D([0], [0], color=colours[lab], lw=2, label=lab) for lab in labels]
    fig.legend(
        handles=handles, loc="lower right", fontsize=LABEL_PT - 1, frameon=False, ncol=len(handles)
    )


def _draw_contours(ax: Axes, view_of: dict[str, SliceView]) -> None:
    colours = overlay_colours(list(view_of))
    for label, view in view_of.items():
        colour = colours[label]
        img = view.image.astype(np.float32)
        if img.min() == img.max():  # nothing to outline in this slice
            continue
        ax.contour(
            img,
            levels=[0.5],
            colors=[colour],
            linewidths=1.2,
            extent=view.extent,
            origin=view.origin,
        )


def build_montage_figure(
    columns: Mapping[str, np.ndarray],
    *,
    overlay: Mapping[str, np.ndarray] | None = None,
    overlay_on: str | None = None,
    overlay_title: str = "lesion overlay",
    overlay_every: bool = False,
    spacing: Sequence[float] | None = None,
    point: Sequence[int] | None = None,
    planes: Sequence[Plane] | None = None,
    ranges: Mapping[str, tuple[float, float]] | None = None,
    title: str | None = None,
    cell_inches: float = 2.2,
    max_columns: int | None = MAX_COLUMNS,
) -> Figure:
    """The montage as a matplotlib `Figure` (rows = planes, columns = panels [+ overlay]).

    `columns` maps a column title to a 2D/3D array; all arrays share one shape. `overlay` maps a
    label to a boolean mask drawn as a contour (first colour red/orange, second cyan) on the
    panel named `overlay_on` (default: "fused" if present, else the first panel) in an extra
    column, or on every panel when `overlay_every`. More than `max_columns` columns wrap into
    further blocks of rows, so the figure never has to be shrunk until its labels are unreadable.
    """
    if not columns:
        raise ValueError("no panels to draw")
    arrays = {name: np.asarray(a) for name, a in columns.items()}
    shape = next(iter(arrays.values())).shape
    masks = {k: np.asarray(v, dtype=bool) for k, v in (overlay or {}).items() if v is not None}
    for name, a in {**arrays, **masks}.items():
        if a.shape != shape:
            raise ValueError(f"panel {name!r} has shape {a.shape}, expected {shape}")
    if len(shape) not in (2, 3):
        raise ValueError(f"expected 2D or 3D panels, got shape {shape}")
    sp = _check_spacing(len(shape), spacing)
    pt = tuple(point) if point is not None else choose_point(shape, _point_masks(masks))
    if len(pt) != len(shape):
        raise ValueError(f"point {pt} must have {len(shape)} coordinates")
    wanted: Sequence[Plane] = ("2d",) if len(shape) == 2 else (planes or PLANES_3D)

    extra_column = bool(masks) and not overlay_every
    if extra_column:
        if overlay_on is None:
            overlay_on = "fused" if "fused" in arrays else next(iter(arrays))
        if overlay_on not in arrays:
            raise ValueError(f"overlay_on={overlay_on!r} is not a panel: {list(arrays)}")
    titles = list(arrays) + ([overlay_title] if extra_column else [])
    per_block = len(titles) if not max_columns else max(1, min(len(titles), int(max_columns)))
    n_blocks = -(-len(titles) // per_block)
    views = {name: {v.plane: v for v in slice_views(a, pt, sp)} for name, a in arrays.items()}
    # Row heights follow each plane's height/width in mm, so cells are not padded with blank
    # space (a flat 2D slice or a thick-sliced coronal view gets a row of its own shape).
    first = next(iter(views.values()))
    ratios = [
        float(np.clip(abs(v.extent[3] - v.extent[2]) / (v.extent[1] - v.extent[0]), 0.25, 4.0))
        for v in (first[p] for p in wanted)
    ]
    extra = (0.5 if title else 0.15) + (0.35 if masks else 0.0) + 0.45 * n_blocks
    fig = Figure(figsize=(cell_inches * per_block, cell_inches * sum(ratios) * n_blocks + extra))
    FigureCanvasAgg(fig)
    axes = fig.subplots(
        len(wanted) * n_blocks,
        per_block,
        squeeze=False,
        gridspec_kw={"height_ratios": ratios * n_blocks},
    )

    mask_views = {name: {v.plane: v for v in slice_views(m, pt, sp)} for name, m in masks.items()}
    styles = {name: _display(name, a, ranges) for name, a in arrays.items()}
    for c_all, col in enumerate(titles):
        block, c = divmod(c_all, per_block)
        is_overlay = extra_column and c_all == len(arrays)
        src = overlay_on if is_overlay else col
        cmap, (lo, hi) = styles[src]
        for r, plane in enumerate(wanted):
            ax = axes[block * len(wanted) + r][c]
            view = views[src][plane]
            ax.imshow(
                view.image,
                cmap=cmap,
                vmin=lo,
                vmax=hi,
                extent=view.extent,
                origin=view.origin,
                interpolation="nearest",
                aspect="equal",
            )
            if masks and (is_overlay or overlay_every):
                _draw_contours(ax, {k: mv[plane] for k, mv in mask_views.items()})
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                is_map = cmap != "gray" and not is_overlay
                ax.set_title(f"{col}\n[{lo:.2g}, {hi:.2g}]" if is_map else col, fontsize=LABEL_PT)
            if c == 0:
                label = plane if plane == "2d" else f"{plane} {view.index}"
                ax.set_ylabel(label, fontsize=LABEL_PT - 1)
    for c_all in range(len(titles), n_blocks * per_block):  # the last block's empty cells
        block, c = divmod(c_all, per_block)
        for r in range(len(wanted)):
            axes[block * len(wanted) + r][c].set_axis_off()
    if masks:
        _legend(fig, list(masks))
    if title:
        fig.suptitle(title, fontsize=LABEL_PT + 1)
    fig.tight_layout(rect=(0, 0.03 if masks else 0, 1, 1))
    return fig


def _save(fig: Figure, path: str | Path, dpi: int) -> Path:
    out = Path(path)
    with atomic_write(out) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return out


def save_montage(
    path: str | Path,
    panels: Mapping[str, np.ndarray],
    *,
    overlay: Mapping[str, np.ndarray] | None = None,
    overlay_on: str | None = None,
    spacing: Sequence[float] | None = None,
    point: Sequence[int] | None = None,
    ranges: Mapping[str, tuple[float, float]] | None = None,
    title: str | None = None,
    dpi: int = 110,
) -> Path:
    """Write a PNG montage: rows axial/coronal/sagittal (one row for 2D), one column per panel.

    Typical call: `panels={"MRI": mri, "CT": ct_bone, "fused": fused, "uncertainty": std}` and
    `overlay={"predicted lesion": prob > 0.5, "reference lesion": lesion}`, which adds a last
    column with the contours on the fused image. Slices go through `point` (voxel indices;
    default: inside the lesion, else the centre). Model-range images share the window [-2, 2];
    panels whose name contains "uncert"/"std"/"prob" use a colour map. Written atomically.
    """
    fig = build_montage_figure(
        panels,
        overlay=overlay,
        overlay_on=overlay_on,
        spacing=spacing,
        point=point,
        ranges=ranges,
        title=title,
    )
    return _save(fig, path, dpi)


def comparison_montage(
    path: str | Path,
    images: Mapping[str, np.ndarray],
    *,
    overlay: Mapping[str, np.ndarray] | None = None,
    spacing: Sequence[float] | None = None,
    point: Sequence[int] | None = None,
    planes: Sequence[Plane] | None = None,
    title: str | None = None,
    dpi: int = 110,
    max_columns: int | None = MAX_COLUMNS,
) -> Path:
    """Write a PNG with the same slices of several methods side by side (one column each).

    `images` maps a column title (e.g. "MRI", "CT", "average", ..., "clinfuse") to arrays of one
    shape, all drawn in the model window [-2, 2]. `overlay` masks (e.g. the reference lesion)
    are outlined on every column, so the lesion boundary can be compared across methods. More
    than `max_columns` images wrap into further blocks of rows (readable labels in the report).
    """
    if not images:
        raise ValueError("no images to compare")
    fig = build_montage_figure(
        images,
        overlay=overlay,
        overlay_every=True,
        spacing=spacing,
        point=point,
        planes=planes,
        ranges={name: MODEL_RANGE for name in images},
        title=title,
        max_columns=max_columns,
    )
    return _save(fig, path, dpi)

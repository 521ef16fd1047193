"""Head anatomy of the phantom as a function of world position: smooth random fields, layer
depths, ventricles, vascular-territory lesions, haematoma and fracture -> tissue labels.

Everything is evaluated at arbitrary points (mm, relative to the volume centre), so the same
anatomy can be sampled on the MRI grid and on a rigidly moved CT grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from clinfuse.phantom import tissues as T
from clinfuse.phantom.config import ISCHAEMIC_TERRITORIES

# Unit vectors (brain-normalised x = right, y = anterior, z = superior) of the vascular
# territories, for the right hemisphere; x flips for the left. MCA: lateral convexity;
# ACA: medial frontal/parasagittal; PCA: occipital.
TERRITORY_AXES: dict[str, tuple[float, float, float]] = {
    "MCA": (0.95, 0.05, 0.30),
    "ACA": (0.30, 0.55, 0.78),
    "PCA": (0.35, -0.92, 0.15),
}


@dataclass
class SmoothField:
    """A Gaussian random field with unit variance, stored on a coarse grid and sampled
    trilinearly; `corr_mm` is its correlation length."""

    origin: np.ndarray  # (3,) world mm of grid index 0
    step: float  # grid spacing in mm
    grid: np.ndarray  # float32 (nx, ny, nz)

    @classmethod
    def draw(
        cls, rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, corr_mm: float
    ) -> SmoothField:
        step = corr_mm / 2.0
        n = np.ceil((hi - lo) / step).astype(int) + 3
        noise = rng.standard_normal(tuple(int(v) for v in n))
        grid = ndimage.gaussian_filter(noise, sigma=1.0, mode="wrap")
        grid = (grid - grid.mean()) / max(float(grid.std()), 1e-12)
        return cls(origin=lo - step, step=step, grid=grid.astype(np.float32))

    def on_grid(self, ax: np.ndarray, ay: np.ndarray, az: np.ndarray) -> np.ndarray:
        """Sample on the axis-aligned grid ax x ay x az (1D mm coordinates) -> (nx, ny, nz).

        Trilinear interpolation is separable, so it is three small matrix products instead of
        a per-point `map_coordinates` (10x faster on the supersampled grids used here).
        """
        out = self.grid
        for axis, coords in enumerate((ax, ay, az)):
            w = _linear_weights(
                (np.asarray(coords) - self.origin[axis]) / self.step, out.shape[axis]
            )
            out = np.moveaxis(np.tensordot(w, out, axes=(1, axis)), 0, axis)
        return out.astype(np.float32)


def _linear_weights(idx: np.ndarray, n: int) -> np.ndarray:
    """(len(idx), n) matrix of linear-interpolation weights, indices clamped to the grid."""
    idx = np.clip(idx.astype(np.float64), 0.0, n - 1.0)
    i0 = np.minimum(np.floor(idx).astype(int), n - 2)
    t = idx - i0
    w = np.zeros((idx.size, n), dtype=np.float32)
    rows = np.arange(idx.size)
    w[rows, i0] = 1.0 - t
    w[rows, i0 + 1] = t
    return w


@dataclass
class Lesion:
    """One lesion, in world mm. `kind`: wedge (territorial infarct, or a branch infarct: a
    narrow wedge whose `territory` reads e.g. "MCA branch"), lacune, haematoma."""

    kind: str
    territory: str
    side: str  # "left" | "right"
    apex: tuple[float, float, float]  # wedge apex / sphere centre (mm)
    axis: tuple[float, float, float]  # wedge axis in brain-normalised space (unit)
    half_angle_deg: float
    inner_radius: float  # wedge: brain-normalised radius where it starts
    radii_mm: tuple[float, float, float]  # lacune / haematoma semi-axes

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class Anatomy:
    """All random anatomy parameters of one phantom (drawn once, then evaluated anywhere)."""

    head_axes: np.ndarray  # (3,) mm semi-axes of the scalp surface
    layers_mm: dict[str, float]  # thickness of each layer, outside -> in
    brain_axes: np.ndarray  # (3,) mm, semi-axes of the intracranial cavity (approx.)
    fields: dict[str, SmoothField]
    lesions: list[Lesion] = field(default_factory=list)
    fracture: dict[str, Any] | None = None

    def skull_inner_depth(self) -> float:
        L = self.layers_mm
        return L["skin"] + L["fat"] + L["outer_table"] + L["diploe"] + L["inner_table"]

    def skull_outer_depth(self) -> float:
        return self.layers_mm["skin"] + self.layers_mm["fat"]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def draw_anatomy(
    rng: np.random.Generator,
    extent_mm: np.ndarray,
    lesion_kind: str,
    n_lesions: int,
    fracture: bool,
    margin_mm: float,
    plane_height: float | None = None,
    ischaemic_territories: Sequence[str] = ISCHAEMIC_TERRITORIES,
) -> Anatomy:
    """Draw the anatomy for a field of view of `extent_mm` (x, y, z) centred on 0.

    `plane_height` (2D mode): the slice lies at z = plane_height x the brain's z semi-axis;
    round lesions (lacunes, haematomas) are centred on it so the slice cuts them.
    """
    # The head fills ~88 % of the in-plane field of view and ~90 % in z, like a cropped scan.
    head_axes = extent_mm * np.array([0.44, 0.44, 0.45]) * rng.uniform(0.95, 1.0, 3)
    # Layer thicknesses (mm) of an adult head; scaled down only for tiny fields of view so a
    # 32 mm test phantom still has a brain. Skull total ~6-9 mm = 3-4 voxels at 2 mm.
    scale = float(np.clip(head_axes.min() / 45.0, 0.35, 1.0))
    layers = {
        "skin": rng.uniform(1.5, 2.5) * scale,
        "fat": rng.uniform(2.5, 4.0) * scale,
        "outer_table": rng.uniform(1.5, 2.2) * scale,
        "diploe": rng.uniform(2.5, 3.5) * scale,
        "inner_table": rng.uniform(1.3, 1.8) * scale,
        "csf": rng.uniform(1.5, 2.5) * scale,
        "grey_matter": rng.uniform(2.5, 3.2) * scale,
        "sulcus_depth": rng.uniform(10.0, 16.0) * scale,
        # Width of the grey-matter lining of each sulcus bank, in units of the gyral field.
        "gm_band": rng.uniform(0.45, 0.6),
        "scale": scale,
    }
    inner = sum(layers[k] for k in ("skin", "fat", "outer_table", "diploe", "inner_table"))
    brain_axes = head_axes - inner
    lo = -extent_mm / 2.0 - margin_mm
    hi = extent_mm / 2.0 + margin_mm
    fields = {
        "shape": SmoothField.draw(rng, lo, hi, 40.0),
        "thickness": SmoothField.draw(rng, lo, hi, 25.0),
        "gyri": SmoothField.draw(rng, lo, hi, 5.5 * max(scale, 0.6)),
        "lesion": SmoothField.draw(rng, lo, hi, 12.0),
        "bias": SmoothField.draw(rng, lo, hi, 90.0),
    }
    anat = Anatomy(head_axes, layers, brain_axes, fields)
    if lesion_kind != "none":
        # Haematomas keep the default list (they read it as deep vs lobar); so does an
        # ischaemic phantom unless told otherwise, which keeps every seeded phantom unchanged.
        names = ischaemic_territories if lesion_kind == "ischaemic" else ISCHAEMIC_TERRITORIES
        territories = [str(t) for t in rng.permutation(list(names))]
        for i in range(n_lesions):
            les = _draw_lesion(rng, lesion_kind, territories[i % len(territories)], brain_axes)
            if plane_height is not None and les.kind != "wedge":
                les.apex = (les.apex[0], les.apex[1], float(plane_height * brain_axes[2]))
            anat.lesions.append(les)
    if fracture:
        # A linear fracture: a thin slab through the skull, centred on a random point of the
        # upper convexity, running along a random tangent for 25-45 mm.
        centre_dir = _unit(
            np.array([rng.uniform(-1, 1), rng.uniform(-0.8, 0.8), rng.uniform(0.2, 0.9)])
        )
        tangent = _unit(np.cross(centre_dir, _unit(rng.standard_normal(3))))
        normal = _unit(np.cross(centre_dir, tangent))
        anat.fracture = {
            "centre_dir": centre_dir.tolist(),
            "normal": normal.tolist(),
            "width_mm": float(rng.uniform(2.0, 3.0)),
            "half_length_deg": float(rng.uniform(12.0, 20.0)),
        }
    return anat


def _draw_lesion(rng: np.random.Generator, kind: str, territory: str, b: np.ndarray) -> Lesion:
    side = str(rng.choice(["left", "right"]))
    sx = 1.0 if side == "right" else -1.0
    if kind == "haemorrhagic":
        # Deep (basal ganglia/thalamus) or lobar haematoma, 5-14 mm radius.
        deep = territory in ("lacune", "MCA")
        rel = np.array([0.28, rng.uniform(-0.15, 0.15), rng.uniform(-0.1, 0.15)])
        if not deep:
            rel = np.array([0.45, *np.array(TERRITORY_AXES[territory][1:]) * 0.45])
        apex = tuple(float(v) for v in np.array([sx, 1.0, 1.0]) * rel * b)
        r = rng.uniform(5.0, 14.0) * float(np.clip(b.min() / 60.0, 0.3, 1.0))
        radii = tuple(float(r * f) for f in rng.uniform(0.75, 1.15, 3))
        return Lesion(
            "haematoma", "deep" if deep else territory, side, apex, (0, 0, 1), 0, 0, radii
        )
    if territory == "lacune":
        rel = np.array([sx * rng.uniform(0.15, 0.3), rng.uniform(-0.1, 0.2), rng.uniform(0.0, 0.3)])
        r = rng.uniform(3.0, 7.0) * float(np.clip(b.min() / 60.0, 0.4, 1.0))
        radii = tuple(float(r * f) for f in rng.uniform(0.8, 1.2, 3))
        apex = tuple(float(v) for v in rel * b)
        return Lesion("lacune", "lacunar", side, apex, (0, 0, 1), 0, 0, radii)
    if territory == "branch":
        # One branch of a territory: a narrow wedge (6-12 degrees) from 60-85 % of the way to
        # the cortex outwards, pointing anywhere around its parent territory's axis.
        parent = str(rng.choice(["MCA", "ACA", "PCA"]))
        axis = _unit(np.array(TERRITORY_AXES[parent]) * np.array([sx, 1.0, 1.0]))
        axis = _unit(axis + rng.normal(0.0, 0.3, 3))
        apex = (float(sx * 0.12 * b[0]), 0.0, 0.0)
        half, inner = float(rng.uniform(6.0, 12.0)), float(rng.uniform(0.6, 0.85))
        vec = tuple(float(v) for v in axis)
        return Lesion("wedge", f"{parent} branch", side, apex, vec, half, inner, (0.0,) * 3)
    axis = _unit(np.array(TERRITORY_AXES[territory]) * np.array([sx, 1.0, 1.0]))
    axis = _unit(axis + rng.normal(0.0, 0.12, 3))
    apex = (float(sx * 0.12 * b[0]), 0.0, 0.0)
    return Lesion(
        "wedge",
        territory,
        side,
        apex,
        tuple(float(v) for v in axis),
        float(rng.uniform(12.0, 32.0)),
        float(rng.uniform(0.3, 0.6)),
        (0.0, 0.0, 0.0),
    )


def _ellipsoid_depth(x: np.ndarray, y: np.ndarray, z: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Approximate depth (mm, > 0 inside) below the ellipsoid surface: (1 - r) / |grad r|."""
    ax, ay, az = (float(a) for a in axes)
    r = np.sqrt((x / ax) ** 2 + (y / ay) ** 2 + (z / az) ** 2)
    grad = np.sqrt((x / ax**2) ** 2 + (y / ay**2) ** 2 + (z / az**2) ** 2) / np.maximum(r, 1e-6)
    return ((1.0 - r) / np.maximum(grad, 1e-6)).astype(np.float32)


def _in_ellipsoid(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, centre: np.ndarray, axes: np.ndarray
) -> np.ndarray:
    return ((x - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2 + (
        (z - centre[2]) / axes[2]
    ) ** 2 < 1.0


def tissue_labels(ax: np.ndarray, ay: np.ndarray, az: np.ndarray, anat: Anatomy) -> np.ndarray:
    """Tissue labels (uint8, see `tissues`) on the grid ax x ay x az (1D world mm) -> 3D array.

    Coordinates broadcast (x is (n, 1, 1) etc.) so only the layered fields cost full-size memory.
    """
    L = anat.layers_mm
    x = np.asarray(ax, dtype=np.float32)[:, None, None]
    y = np.asarray(ay, dtype=np.float32)[None, :, None]
    z = np.asarray(az, dtype=np.float32)[None, None, :]
    shape = (x.shape[0], y.shape[1], z.shape[2])

    def f(name: str) -> np.ndarray:
        return anat.fields[name].on_grid(ax, ay, az)

    # Depth below the scalp surface, with a gentle large-scale shape irregularity (~2 mm).
    depth = _ellipsoid_depth(x, y, z, anat.head_axes) + 2.0 * L["scale"] * f("shape")
    lab = np.zeros(shape, dtype=np.uint8)
    d_skin = L["skin"]
    d_fat = d_skin + L["fat"]
    d_ot = d_fat + L["outer_table"]
    # Diploe thickness varies smoothly over the skull (+-1 mm).
    d_dip = d_ot + np.maximum(L["diploe"] + 0.8 * L["scale"] * f("thickness"), 0.8)
    d_in = d_dip + L["inner_table"]
    lab[depth > 0] = T.SKIN
    lab[depth > d_skin] = T.FAT
    lab[depth > d_fat] = T.CORTICAL
    lab[depth > d_ot] = T.DIPLOE
    lab[depth > d_dip] = T.CORTICAL
    inside = depth > d_in
    lab[inside] = T.CSF

    # Cortex: sulci are the zero-crossing sheets of a smooth field (|g| < 0.12, CSF) down to
    # the sulcal depth; grey matter lines the brain surface and both banks of every sulcus
    # (|g| < 0.12 + band, about one cortical thickness), so white matter reaches up into the
    # gyral crowns only (grey/white volume ~0.45; a real adult brain is nearer 1).
    g = f("gyri")
    ag = np.abs(g)
    d_pial = d_in + L["csf"]
    gm_t = L["grey_matter"]
    sd = L["sulcus_depth"]
    parenchyma = inside & (depth > d_pial)
    lab[parenchyma] = T.WM
    lining = (ag < 0.12 + L["gm_band"]) & (depth < d_pial + sd + gm_t)
    lab[parenchyma & ((depth < d_pial + gm_t) | lining)] = T.GM
    lab[inside & (ag < 0.12) & (depth < d_pial + sd)] = T.CSF

    b = anat.brain_axes
    # Interhemispheric fissure (falx region): a thin midline CSF sheet, interrupted by the
    # corpus callosum (an ellipse in the mid-sagittal plane above the third ventricle).
    callosum = (y / (0.4 * b[1])) ** 2 + ((z - 0.08 * b[2]) / (0.3 * b[2])) ** 2 < 1.0
    fissure = inside & (np.abs(x) < 0.9 * L["scale"] + 0.3) & ~callosum & (z > -0.2 * b[2])
    lab[fissure] = T.CSF
    # Deep grey matter (basal ganglia/thalamus) and the ventricles.
    for sx in (-1.0, 1.0):
        lab[_in_ellipsoid(x, y, z, b * [sx * 0.2, -0.02, -0.05], b * [0.11, 0.22, 0.13])] = T.GM
    for sx in (-1.0, 1.0):
        c = b * np.array([sx * 0.1, 0.0, 0.12])
        lat = _in_ellipsoid(x, y, z, c, b * [0.07, 0.36, 0.12])
        lab[lat] = T.CSF
    lab[_in_ellipsoid(x, y, z, b * [0.0, -0.02, -0.02], b * [0.02, 0.14, 0.12])] = T.CSF

    if anat.lesions:
        parenchyma = (lab == T.GM) | (lab == T.WM)
        lf = f("lesion")
        for les in anat.lesions:
            region = _lesion_region(x, y, z, les, b, lf)
            if les.kind == "haematoma":
                # A haematoma displaces whatever brain tissue was there (CSF included).
                lab[region & inside & (depth > d_pial)] = T.BLOOD
            else:
                hit = region & parenchyma
                lab[hit & (lab == T.GM)] = T.INFARCT_GM
                lab[hit & (lab == T.WM)] = T.INFARCT_WM

    if anat.fracture is not None:
        fr = anat.fracture
        norm = np.sqrt(x * x + y * y + z * z) + 1e-6
        c = np.asarray(fr["centre_dir"], dtype=np.float32)
        n = np.asarray(fr["normal"], dtype=np.float32)
        cosang = (x * c[0] + y * c[1] + z * c[2]) / norm
        along = cosang > np.cos(np.deg2rad(fr["half_length_deg"]))
        thin = np.abs(x * n[0] + y * n[1] + z * n[2]) < fr["width_mm"] / 2.0
        lab[along & thin & (depth > d_fat) & (depth <= d_in)] = T.GAP
    return lab


def _lesion_region(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, les: Lesion, b: np.ndarray, lf: np.ndarray
) -> np.ndarray:
    """Points inside one lesion's (irregular) envelope."""
    if les.kind in ("lacune", "haematoma"):
        r = np.asarray(les.radii_mm)
        c = np.asarray(les.apex)
        q = ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2
        return q < 1.0 + 0.25 * lf
    # Wedge: points whose direction from the apex (in brain-normalised space) lies within the
    # territory cone, from `inner_radius` out to the cortex; the border wobbles by ~+-5 degrees.
    ax = np.asarray(les.axis)
    ux = (x - les.apex[0]) / b[0]
    uy = (y - les.apex[1]) / b[1]
    uz = (z - les.apex[2]) / b[2]
    rad = np.sqrt(ux * ux + uy * uy + uz * uz) + 1e-6
    cosang = (ux * ax[0] + uy * ax[1] + uz * ax[2]) / rad
    half = np.deg2rad(les.half_angle_deg + 5.0 * lf)
    return (cosang > np.cos(half)) & (rad > les.inner_radius)

"""Tissue labels of the phantom and their intensity ranges (CT in HU, MRI in arbitrary units).

Each case draws one value per tissue uniformly from its range, so intensities vary between
cases but stay inside published ranges (sources in docs/PHANTOMS.md).
"""

from __future__ import annotations

import numpy as np

# Labels of the high-resolution tissue map (uint8). Order matters only for the lookup tables.
AIR, SKIN, FAT, CORTICAL, DIPLOE, CSF, GM, WM, INFARCT_GM, INFARCT_WM, BLOOD, GAP = range(12)
TISSUE_NAMES: tuple[str, ...] = (
    "air",
    "skin",
    "fat",
    "cortical_bone",
    "diploe",
    "csf",
    "grey_matter",
    "white_matter",
    "infarct_grey",
    "infarct_white",
    "blood",
    "fracture_gap",
)
BONE_LABELS = (CORTICAL, DIPLOE)
INTRACRANIAL_LABELS = (CSF, GM, WM, INFARCT_GM, INFARCT_WM, BLOOD)
LESION_LABELS = (INFARCT_GM, INFARCT_WM, BLOOD)

# (low, high) ranges. CT: Hounsfield units. Infarct is given as an offset below the parenchyma
# it replaces (early ischaemic oedema lowers attenuation by a few HU).
CT_HU: dict[str, tuple[float, float]] = {
    "air": (-1000.0, -1000.0),
    "skin": (20.0, 50.0),
    "fat": (-110.0, -70.0),
    "cortical_bone": (1200.0, 1700.0),
    "diploe": (350.0, 650.0),
    "csf": (2.0, 12.0),
    "grey_matter": (36.0, 44.0),
    "white_matter": (22.0, 29.0),
    "infarct_offset": (-15.0, -5.0),  # early ischaemic hypodensity (issue 10: -5 to -15 HU)
    "blood": (60.0, 85.0),  # acute haematoma
    "fracture_gap": (35.0, 60.0),  # soft tissue / clot filling the fracture line
}

# MRI in arbitrary positive units. Infarct is a factor on the parenchyma it replaces.
# T1-like: bright fat and fatty marrow (diploe), dark CSF and cortical bone, WM > GM.
# T2-like: bright CSF, GM > WM, dark cortical bone, infarct bright, acute blood dark.
# ADC-like (x1e-6 mm^2/s): CSF ~3000, GM ~850, WM ~720, acute infarct ~50 % of parenchyma.
# FLAIR-like: T2 weighting with the CSF signal nulled: dark CSF, GM > WM, infarct bright.
# DWI-like (b = 1000): dark CSF, GM slightly above WM, acute infarct very bright.
MRI_UNITS: dict[str, dict[str, tuple[float, float]]] = {
    "T1": {
        "air": (0.0, 0.0),
        "skin": (300.0, 400.0),
        "fat": (850.0, 1000.0),
        "cortical_bone": (20.0, 60.0),
        "diploe": (600.0, 750.0),
        "csf": (100.0, 180.0),
        "grey_matter": (400.0, 480.0),
        "white_matter": (600.0, 680.0),
        "infarct_factor": (0.80, 0.90),
        "blood": (380.0, 460.0),  # hyperacute haematoma: roughly iso on T1
        "fracture_gap": (300.0, 400.0),
    },
    "T2": {
        "air": (0.0, 0.0),
        "skin": (250.0, 350.0),
        "fat": (500.0, 650.0),
        "cortical_bone": (20.0, 60.0),
        "diploe": (300.0, 400.0),
        "csf": (900.0, 1050.0),
        "grey_matter": (550.0, 620.0),
        "white_matter": (400.0, 460.0),
        "infarct_factor": (1.35, 1.60),
        "blood": (150.0, 250.0),  # acute deoxyhaemoglobin: T2 dark
        "fracture_gap": (400.0, 500.0),
    },
    "ADC": {
        "air": (0.0, 0.0),
        "skin": (800.0, 1000.0),
        "fat": (50.0, 150.0),
        "cortical_bone": (20.0, 80.0),
        "diploe": (100.0, 250.0),
        "csf": (2800.0, 3200.0),
        "grey_matter": (800.0, 900.0),
        "white_matter": (680.0, 760.0),
        "infarct_factor": (0.45, 0.60),
        "blood": (450.0, 600.0),  # acute haematoma: restricted diffusion
        "fracture_gap": (900.0, 1100.0),
    },
    "FLAIR": {
        "air": (0.0, 0.0),
        "skin": (300.0, 400.0),
        "fat": (450.0, 600.0),
        "cortical_bone": (20.0, 60.0),
        "diploe": (300.0, 420.0),
        "csf": (60.0, 120.0),
        "grey_matter": (520.0, 600.0),
        "white_matter": (400.0, 460.0),
        "infarct_factor": (1.40, 1.80),
        "blood": (380.0, 520.0),  # hyperacute haematoma: iso to mildly bright
        "fracture_gap": (400.0, 500.0),
    },
    "DWI": {
        "air": (0.0, 0.0),
        "skin": (150.0, 250.0),
        "fat": (40.0, 100.0),
        "cortical_bone": (10.0, 40.0),
        "diploe": (40.0, 100.0),
        "csf": (60.0, 110.0),
        "grey_matter": (430.0, 480.0),
        "white_matter": (380.0, 420.0),
        "infarct_factor": (1.80, 2.60),
        "blood": (200.0, 300.0),  # susceptibility: dark
        "fracture_gap": (200.0, 300.0),
    },
}


def draw_lookup(
    ranges: dict[str, tuple[float, float]], rng: np.random.Generator, kind: str
) -> np.ndarray:
    """One value per label (float32 lookup table), drawn uniformly from `ranges`.

    `kind` is "ct" (infarct = parenchyma + offset) or "mri" (infarct = parenchyma * factor).
    """
    lut = np.zeros(len(TISSUE_NAMES), dtype=np.float64)
    for label, name in enumerate(TISSUE_NAMES):
        if name.startswith("infarct"):
            continue
        lo, hi = ranges[name]
        lut[label] = rng.uniform(lo, hi)
    if kind == "ct":
        off = rng.uniform(*ranges["infarct_offset"])
        lut[INFARCT_GM], lut[INFARCT_WM] = lut[GM] + off, lut[WM] + off
    else:
        fac = rng.uniform(*ranges["infarct_factor"])
        lut[INFARCT_GM], lut[INFARCT_WM] = lut[GM] * fac, lut[WM] * fac
    return lut.astype(np.float32)

"""8-bit grayscale PNG in and out (Pillow); colour is reduced to luminance with a warning."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from clinfuse.errors import ClinfuseInputError
from clinfuse.io.atomic import atomic_write


def load_png(path: str | Path) -> np.ndarray:
    """Load an 8-bit grayscale PNG as a uint8 array of shape (rows, cols).

    RGB/RGBA/palette images are converted to luminance (ITU-R 601-2, Pillow's "L") with a
    `UserWarning`; 16-bit or float images are refused because their scale is unknown.
    """
    path = Path(path)
    if not path.is_file():
        raise ClinfuseInputError("file not found", path)
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                raise ClinfuseInputError(
                    f"PNG mode {mode!r} is not 8-bit; only 8-bit grayscale PNGs are supported",
                    path,
                )
            if mode != "L":
                warnings.warn(
                    f"{path}: PNG mode {mode!r} converted to 8-bit luminance",
                    UserWarning,
                    stacklevel=2,
                )
                img = img.convert("L")
            arr = np.array(img, dtype=np.uint8)
    except ClinfuseInputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ClinfuseInputError(f"cannot read PNG ({type(err).__name__}: {err})", path) from err
    return arr


def save_png(path: str | Path, array_uint8: np.ndarray) -> Path:
    """Write a 2D uint8 array as an 8-bit grayscale PNG, atomically."""
    arr = np.asarray(array_uint8)
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise ValueError(f"save_png expects a 2D uint8 array, got {arr.dtype} {arr.shape}")
    path = Path(path)
    with atomic_write(path) as tmp:
        Image.fromarray(arr, mode="L").save(tmp, format="PNG")
    return path

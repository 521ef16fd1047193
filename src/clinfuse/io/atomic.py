"""Atomic output writing and output-folder safety checks (never touch inputs, never clobber)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from clinfuse.errors import ClinfuseInputError


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success move it onto `path` with `os.replace`.

    The temp name keeps the final name as its suffix (``.tmp-<hex>-mri.nii.gz``) because writers
    such as nibabel pick the format from the extension. On error the temp file is removed and
    `path` is left untouched, so a reader never sees a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{uuid.uuid4().hex[:12]}-{path.name}"
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic_write: nothing was written to {tmp}")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a small text file (JSON sidecar, CSV manifest) atomically, UTF-8."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _is_within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_output_dir(
    out: str | Path, overwrite: bool = False, inputs: Iterable[str | Path] = ()
) -> Path:
    """Validate and create an output folder; return it resolved.

    Refuses (``ClinfuseInputError``) when `out` lies inside an input folder (or the folder of an
    input file), when an input lies inside `out` (``--overwrite`` could then replace it), or when
    `out` already holds files and `overwrite` is false.
    """
    try:
        out_r = Path(out).expanduser().resolve()
    except (OSError, RuntimeError) as err:
        raise ClinfuseInputError(f"cannot use this output path: {err}", out) from None
    for inp in inputs:
        inp_r = Path(inp).expanduser().resolve()
        folder = inp_r if inp_r.is_dir() else inp_r.parent
        if _is_within(out_r, folder):
            raise ClinfuseInputError(
                f"output folder {out_r} is inside the input folder {folder}; "
                "choose an output folder outside the inputs",
                out,
            )
        if _is_within(inp_r, out_r):
            raise ClinfuseInputError(
                f"input {inp_r} lies inside the output folder; choose another output folder", out
            )
    if out_r.exists() and not out_r.is_dir():
        raise ClinfuseInputError("output path exists and is not a folder", out)
    if out_r.is_dir() and any(out_r.iterdir()) and not overwrite:
        raise ClinfuseInputError(
            "output folder already exists and is not empty; pass --overwrite to replace its files",
            out,
        )
    try:
        out_r.mkdir(parents=True, exist_ok=True)
        probe = out_r / f".write-test-{uuid.uuid4().hex[:8]}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        # unwritable place (/proc/x), a parent that is a file, no permission, read-only disk
        raise ClinfuseInputError(
            f"cannot create or write the output folder ({err.strerror or err})", out
        ) from None
    return out_r

"""Shared parsing of method options for `clinfuse evaluate` and `clinfuse benchmark`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from clinfuse.errors import ClinfuseInputError


def method_options(
    checkpoint: Path | None, preset: str | None, option: list[str]
) -> dict[str, Any]:
    """`--checkpoint`, `--preset` and `--option key=value` (YAML-typed values) as one dict."""
    opts: dict[str, Any] = {}
    if checkpoint is not None:
        if not checkpoint.is_file():
            raise ClinfuseInputError("checkpoint file not found", checkpoint)
        opts["checkpoint"] = checkpoint
    if preset is not None:
        opts["preset"] = preset
    for item in option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ClinfuseInputError(f"--option expects key=value, got {item!r}")
        # YAML typing so `levels=3` is an int and `mri_weight=0.6` a float.
        opts[key.strip()] = yaml.safe_load(value) if value else ""
    return opts


def lesion_scorer(
    lesion_head: str | Path | None,
) -> tuple[Callable[[Any, Any], Any] | None, str | None]:
    """`--lesion-head` value -> (`pipeline.lesion_head_predictor`, the name recorded), or
    (None, None); "default" is the shipped checkpoint."""
    if lesion_head is None:
        return None, None
    from clinfuse.pipeline import lesion_head_predictor

    path = None if str(lesion_head) == "default" else Path(lesion_head)
    if path is not None and not path.is_file():
        raise ClinfuseInputError("--lesion-head: checkpoint file not found", path)
    return lesion_head_predictor(path), str(lesion_head)

"""The method registry of the evaluation harness: baselines by name, plus `register_method`.

A *method* is a callable `(PreparedCase) -> fused` where `fused` is a model-range array of the
case's shape, or a `MethodOutput` (any object with `.fused` and optionally `.lesion_pred` /
`.lesion_prob` and `.mask_rule`, see `mask_rule_of`). A *factory* builds a method from
options (`--checkpoint`, `--preset`, `--option key=value`). The harness knows only the
baselines; the CLI registers our diffusion model explicitly (`register_method("clinfuse",
pipeline.clinfuse_method_factory)`), so the evaluation package never imports the pipeline.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clinfuse.errors import ClinfuseInputError
from clinfuse.nn.lesion_mask import LesionMaskRule
from clinfuse.preprocess.prepared import PreparedCase


@dataclass
class MethodOutput:
    """What a method may return instead of a bare array: the fused image and a lesion mask."""

    fused: np.ndarray  # model range [-2, 2], shape of the prepared case
    lesion_pred: np.ndarray | None = None  # bool mask, or probabilities (thresholded at 0.5)
    # the producing lesion head's post-processing: a probability's mask is cleaned by it
    # before scoring (`evaluation.case.lesion_mask`)
    mask_rule: LesionMaskRule = field(default_factory=LesionMaskRule)


MethodFn = Callable[[PreparedCase], Any]
MethodFactory = Callable[..., MethodFn]

_REGISTRY: dict[str, MethodFactory] = {}


def register_method(name: str, factory: MethodFactory, *, replace: bool = False) -> None:
    """Make `name` usable in `evaluate_dataset`, `clinfuse evaluate --method` and `benchmark`.

    `factory(**options)` returns the method; options come from the CLI (`checkpoint`, `preset`,
    `--option key=value`). Re-registering a name raises unless `replace=True`.
    """
    if not name or not isinstance(name, str):
        raise ValueError("method name must be a non-empty string")
    if name in _REGISTRY and not replace:
        raise ValueError(f"method {name!r} is already registered (pass replace=True)")
    _REGISTRY[name] = factory


def _baseline_factory(fn: Callable[..., np.ndarray]) -> MethodFactory:
    def factory(**options: Any) -> MethodFn:
        # Check the options now (TypeError), not once per case in the middle of a run.
        inspect.signature(fn).bind(None, **options)
        return functools.partial(fn, **options) if options else fn

    factory.__doc__ = fn.__doc__
    return factory


def _register_baselines() -> None:
    from clinfuse.baselines import BASELINES

    for name, fn in BASELINES.items():
        if name not in _REGISTRY:
            _REGISTRY[name] = _baseline_factory(fn)


def available_methods() -> list[str]:
    """Registered method names (baselines first, then those added with `register_method`)."""
    _register_baselines()
    return list(_REGISTRY)


def resolve_method(method: str | MethodFn, **options: Any) -> tuple[str, MethodFn]:
    """Return `(name, method)` for a registered name or a callable (options go to the factory).

    Unknown names and options a method does not accept raise `ClinfuseInputError`.
    """
    if callable(method):
        if options:
            raise ValueError("options apply to registered names only; bind them yourself")
        name = getattr(method, "__name__", None) or type(method).__name__
        return str(name), method
    _register_baselines()
    if method not in _REGISTRY:
        raise ClinfuseInputError(
            f"unknown method {method!r}; available: {', '.join(available_methods())}"
        )
    factory = _REGISTRY[method]
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as err:
        raise ClinfuseInputError(
            f"method {method!r} does not accept options {options}: {err}"
        ) from err
    try:
        return method, factory(**options)
    except TypeError as err:
        raise ClinfuseInputError(f"method {method!r}: bad options {options}: {err}") from err


def unpack_output(out: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """Split a method's return value into (fused array, lesion prediction or None)."""
    if isinstance(out, np.ndarray):
        return out, None
    fused = getattr(out, "fused", None)
    if fused is None:
        raise TypeError(
            f"a method must return an array or an object with .fused, got {type(out).__name__}"
        )
    lesion = getattr(out, "lesion_pred", None)
    if lesion is None:
        lesion = getattr(out, "lesion_prob", None)
    return np.asarray(fused), None if lesion is None else np.asarray(lesion)


def mask_rule_of(source: Any) -> LesionMaskRule:
    """The `LesionMaskRule` a method's output or a `lesion_head` callable carries (the lesion
    head's own, e.g. `pipeline.FusionResult.mask_rule`); keep every component when it carries
    none. Read after the call: a head loaded on first use sets it then."""
    value = getattr(source, "mask_rule", None)
    return value if isinstance(value, LesionMaskRule) else LesionMaskRule()

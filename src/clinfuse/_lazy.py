"""Lazy package exports: one `__getattr__` factory shared by the subpackages' `__init__`s."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_getattr(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` importing `name` from `exports[name]` on first access, so
    that importing a light submodule does not pull in torch/MONAI through the package."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__

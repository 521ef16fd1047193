"""`Choice`: the base of the package's closed choices (guidance mode, prediction type, lesion
source). A `str` enum whose members print as their value, parsed with a user-facing error."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TypeVar

from clinfuse.errors import ClinfuseInputError

C = TypeVar("C", bound="Choice")


class Choice(str, Enum):
    """A closed set of strings. Members equal their value (`Choice.x == "x"`) and print as it,
    so JSON, YAML dumps and messages show the plain string."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def parse(cls: type[C], value: object, what: str, source: str | Path | None = None) -> C:
        """`value` as a member; anything else is a `ClinfuseInputError` listing the choices."""
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in cls)
            raise ClinfuseInputError(
                f"{what} must be one of {allowed}, got {value!r}", source
            ) from None

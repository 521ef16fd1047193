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


# The MRI sequences the package knows (phantom contrasts, the lesion head's sequence slots,
# `fuse --mri-contrast`), in the order of the head's slots.
MRI_CONTRASTS: tuple[str, ...] = ("T1", "T2", "ADC", "FLAIR", "DWI")
UNKNOWN_CONTRAST = "unknown"


def parse_mri_contrast(value: object, source: str | Path | None = None) -> str | None:
    """An MRI sequence name as its canonical spelling (`MRI_CONTRASTS`, case-insensitive), or
    None for an unknown sequence (None, "" or "unknown"). Anything else is a
    `ClinfuseInputError` naming `source` and listing the choices."""
    if value is None:
        return None
    text = str(value).strip()
    if text == "" or text.lower() == UNKNOWN_CONTRAST:
        return None
    for name in MRI_CONTRASTS:
        if text.lower() == name.lower():
            return name
    allowed = ", ".join((*MRI_CONTRASTS, UNKNOWN_CONTRAST))
    raise ClinfuseInputError(f"MRI contrast must be one of {allowed}, got {value!r}", source)

"""User-facing errors: the CLI prints these without a traceback and exits non-zero."""

from __future__ import annotations

from pathlib import Path


class ClinfuseInputError(ValueError):
    """Bad input from the user (file, mask, config...). The message names the file and problem."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)

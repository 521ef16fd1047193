"""`clinfuse fuse`."""

from __future__ import annotations

import typer

from clinfuse.errors import ClinfuseInputError


def register(app: typer.Typer) -> None:
    """Add the `fuse` command to the app."""

    @app.command("fuse")
    def fuse() -> None:
        """(not implemented yet)"""
        raise ClinfuseInputError("`clinfuse fuse` is not implemented yet")

"""`clinfuse preprocess`."""

from __future__ import annotations

import typer

from clinfuse.errors import ClinfuseInputError


def register(app: typer.Typer) -> None:
    """Add the `preprocess` command to the app."""

    @app.command("preprocess")
    def preprocess() -> None:
        """(not implemented yet)"""
        raise ClinfuseInputError("`clinfuse preprocess` is not implemented yet")

"""`clinfuse evaluate`."""

from __future__ import annotations

import typer

from clinfuse.errors import ClinfuseInputError


def register(app: typer.Typer) -> None:
    """Add the `evaluate` command to the app."""

    @app.command("evaluate")
    def evaluate() -> None:
        """(not implemented yet)"""
        raise ClinfuseInputError("`clinfuse evaluate` is not implemented yet")

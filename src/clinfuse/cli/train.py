"""`clinfuse train`."""

from __future__ import annotations

import typer

from clinfuse.errors import ClinfuseInputError


def register(app: typer.Typer) -> None:
    """Add the `train` command to the app."""

    @app.command("train")
    def train() -> None:
        """(not implemented yet)"""
        raise ClinfuseInputError("`clinfuse train` is not implemented yet")

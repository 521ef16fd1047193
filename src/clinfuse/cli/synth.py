"""`clinfuse synth`."""

from __future__ import annotations

import typer

from clinfuse.errors import ClinfuseInputError


def register(app: typer.Typer) -> None:
    """Add the `synth` command to the app."""

    @app.command("synth")
    def synth() -> None:
        """(not implemented yet)"""
        raise ClinfuseInputError("`clinfuse synth` is not implemented yet")

"""`clinfuse benchmark`."""

from __future__ import annotations

import typer

from clinfuse.errors import ClinfuseInputError


def register(app: typer.Typer) -> None:
    """Add the `benchmark` command to the app."""

    @app.command("benchmark")
    def benchmark() -> None:
        """(not implemented yet)"""
        raise ClinfuseInputError("`clinfuse benchmark` is not implemented yet")

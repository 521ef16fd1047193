"""`clinfuse demo`."""

from __future__ import annotations

import typer

from clinfuse.errors import ClinfuseInputError


def register(app: typer.Typer) -> None:
    """Add the `demo` command to the app."""

    @app.command("demo")
    def demo() -> None:
        """(not implemented yet)"""
        raise ClinfuseInputError("`clinfuse demo` is not implemented yet")

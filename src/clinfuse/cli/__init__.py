"""The `clinfuse` command-line app: one Typer app, each subcommand in its own module.

Commands parse arguments, call the library and print; user errors (`ClinfuseInputError`)
are printed without a traceback and exit with status 2.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from clinfuse.cli import (
    benchmark,
    demo,
    evaluate,
    fuse,
    preprocess,
    synth,
    train,
    train_lesion,
)
from clinfuse.errors import ClinfuseInputError

app = typer.Typer(
    name="clinfuse",
    help="ROI-guided diffusion fusion of co-registered head MRI and CT (CLIN-FuseDiff++).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _module in (demo, synth, preprocess, train, train_lesion, fuse, evaluate, benchmark):
    _module.register(app)


def register_methods() -> None:
    """Make our model the evaluation method "clinfuse" (`evaluate --method clinfuse`,
    `benchmark --methods clinfuse`). Done here, explicitly: the evaluation harness and the
    pipeline never import each other."""
    from clinfuse.evaluation.methods import register_method
    from clinfuse.pipeline import clinfuse_method_factory

    register_method("clinfuse", clinfuse_method_factory, replace=True)


register_methods()


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except ClinfuseInputError as err:
        Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False)
        sys.exit(2)

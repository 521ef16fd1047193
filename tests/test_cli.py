from typer.testing import CliRunner

from clinfuse.cli import app

COMMANDS = ["demo", "synth", "preprocess", "train", "fuse", "evaluate", "benchmark"]


def test_help_lists_every_command():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in COMMANDS:
        assert cmd in result.output

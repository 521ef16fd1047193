"""The README's test command is the one CI runs, and it prints pytest's summary line."""

import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_test_command() -> list[str]:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    found = [ln.strip() for ln in lines if ln.strip().startswith("python -m pytest")]
    assert len(found) == 1, found
    return shlex.split(found[0])


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    ci_cmds = [shlex.split(ln.strip()) for ln in ci if ln.strip().startswith("python -m pytest")]
    assert ci_cmds == [_readme_test_command()]


def test_readme_test_command_prints_the_summary_line(tmp_path):
    # The README's command with the project's pytest configuration, on a one-test folder.
    (tmp_path / "test_one.py").write_text("def test_one():\n    pass\n", encoding="utf-8")
    cmd = _readme_test_command()
    assert cmd[:3] == ["python", "-m", "pytest"] and cmd[-1] == "tests"
    args = [sys.executable, "-m", "pytest", *cmd[3:-1]]
    args += [
        "-c",
        str(ROOT / "pyproject.toml"),
        "--rootdir",
        str(tmp_path),
        "-p",
        "no:cacheprovider",
    ]
    res = subprocess.run(
        [*args, str(tmp_path / "test_one.py")], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 passed" in res.stdout, res.stdout

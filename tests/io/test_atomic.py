from pathlib import Path

import pytest

from clinfuse.errors import ClinfuseInputError
from clinfuse.io.atomic import atomic_write, check_output_dir, write_text_atomic


def test_atomic_write_replaces_only_on_success(tmp_path: Path):
    target = tmp_path / "a.txt"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith("a.txt")
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no temp files left


def test_check_output_dir_rules(tmp_path: Path):
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "mri.nii.gz").write_bytes(b"x")
    with pytest.raises(ClinfuseInputError, match="inside the input folder"):
        check_output_dir(inp / "out", inputs=[inp])
    with pytest.raises(ClinfuseInputError, match="inside the input folder"):
        check_output_dir(inp, overwrite=True, inputs=[inp / "mri.nii.gz"])
    with pytest.raises(ClinfuseInputError, match="inside the output folder"):
        check_output_dir(tmp_path, overwrite=True, inputs=[inp])
    out = check_output_dir(tmp_path / "out", inputs=[inp])
    assert out.is_dir()
    (out / "x").write_text("1")
    with pytest.raises(ClinfuseInputError, match="--overwrite"):
        check_output_dir(out, inputs=[inp])
    assert check_output_dir(out, overwrite=True, inputs=[inp]) == out.resolve()
    (tmp_path / "file").write_text("1")
    with pytest.raises(ClinfuseInputError, match="not a folder"):
        check_output_dir(tmp_path / "file", overwrite=True)

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clinfuse.errors import ClinfuseInputError
from clinfuse.io.png import load_png, save_png


def test_round_trip(tmp_path: Path):
    img = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)
    save_png(tmp_path / "a.png", img)
    out = load_png(tmp_path / "a.png")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, img)
    with pytest.raises(ValueError):
        save_png(tmp_path / "b.png", img.astype(np.float32))


def test_rgb_becomes_luminance_with_warning(tmp_path: Path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[..., 1] = 100
    rgb[..., 2] = 50
    Image.fromarray(rgb, "RGB").save(tmp_path / "c.png")
    with pytest.warns(UserWarning, match="luminance"):
        out = load_png(tmp_path / "c.png")
    # ITU-R 601-2: L = R*299/1000 + G*587/1000 + B*114/1000 = 59.8 + 58.7 + 5.7 = 124.2
    assert out.shape == (8, 8) and np.all(out == 124)


def test_bad_pngs(tmp_path: Path):
    Image.fromarray(np.full((4, 4), 40000, np.uint16)).save(tmp_path / "d16.png")
    with pytest.raises(ClinfuseInputError, match="not 8-bit"):
        load_png(tmp_path / "d16.png")
    (tmp_path / "junk.png").write_bytes(b"nope")
    with pytest.raises(ClinfuseInputError, match="cannot read PNG") as e:
        load_png(tmp_path / "junk.png")
    assert "junk.png" in str(e.value)
    with pytest.raises(ClinfuseInputError, match="not found"):
        load_png(tmp_path / "none.png")

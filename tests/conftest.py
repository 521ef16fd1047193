"""Root test configuration: makes `tests/_helpers.py` importable from every test folder;
shared fixtures."""

import sys
from pathlib import Path

import pytest

# The test folders are not packages, so pytest only puts each test file's own folder on
# sys.path; the shared helpers live one level up, in this folder.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture
def restore_threads():
    """`--threads N` sets torch's global thread count: put it back for the next tests."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)

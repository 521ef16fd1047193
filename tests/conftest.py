"""Root test configuration: makes `tests/_helpers.py` importable from every test folder."""

import sys
from pathlib import Path

# The test folders are not packages, so pytest only puts each test file's own folder on
# sys.path; the shared helpers live one level up, in this folder.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

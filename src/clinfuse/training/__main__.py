"""`python -m clinfuse.training ARGS` = `clinfuse train ARGS` (the form `torchrun -m` needs)."""

from __future__ import annotations

import sys

from clinfuse.cli import main

if __name__ == "__main__":
    sys.argv[1:1] = ["train"]
    main()

"""`python -m clinfuse ARGS` = `clinfuse ARGS` (the form torchrun needs:
`torchrun ... -m clinfuse train ...`)."""

from __future__ import annotations

from clinfuse.cli import main

if __name__ == "__main__":
    main()

"""`python -m cityseg_fast` is the same as the `cityseg` console script (and works under torchrun)."""

from cityseg_fast.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

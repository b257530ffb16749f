"""A straggler on purpose: run a `cityseg` command with one rank's loaders slowed by a sleep per batch.

    torchrun --standalone --nproc_per_node=2 benchmarks/slow_rank.py --rank 1 --sleep 0.05 -- \\
        train --config configs/train/unet_cpu_synth.yaml --data data/synth --out runs/straggler

The rank named by --rank (its RANK under torchrun) gets every loader it builds wrapped in
tests/loader_fixtures.Slowed (the wrapper the stall and straggler tests use), so its data wait grows by the
sleep; the other ranks run as they are. The straggler test (tests/test_ranks.py) and the CPU scaling run
(benchmarks/run_scaling.py) start it; it is no part of the package.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # loader_fixtures: one Slowed wrapper

import pytest  # noqa: E402  (MonkeyPatch: what slow_loaders patches the loader factory with)
from loader_fixtures import slow_loaders  # noqa: E402

import cityseg_fast.bench.runners  # noqa: E402, F401  (imported first: slow_loaders patches the modules that hold build_loader)
import cityseg_fast.engine.train  # noqa: E402, F401
from cityseg_fast.cli import main  # noqa: E402


def run(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rank", type=int, default=1, help="the rank to slow (default 1)")
    p.add_argument("--sleep", type=float, required=True, help="seconds added before each of its batches")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the cityseg command and its arguments")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if int(os.environ.get("RANK", "0")) == args.rank:
        slow_loaders(pytest.MonkeyPatch(), args.sleep)
    return main(command)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))

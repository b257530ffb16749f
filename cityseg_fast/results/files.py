"""The results files of a run folder: `results.jsonl`, and one `results.shard-I-of-N.jsonl` per sweep shard.

    results_files("runs/sweeps/gpu_full")  ->  [.../results.jsonl, .../results.shard-0-of-4.jsonl, ...]
    shard_file(1, 4)                        ->  "results.shard-1-of-4.jsonl"

A sharded sweep (`cityseg sweep --shard I/N`) writes its own file, so N nodes can share one folder (or
be copied into one: the names never collide); the sweep's skip check and the report read every results
file of the folder as one run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

RESULTS_FILE = "results.jsonl"
_SHARD = re.compile(r"results\.shard-(\d+)-of-(\d+)\.jsonl")


def shard_file(index: int, count: int) -> str:
    """The results file name of shard `index` (0-based) of `count`."""
    return f"results.shard-{index}-of-{count}.jsonl"


def shard_of(path: str | os.PathLike) -> tuple[int, int] | None:
    """(index, count) of a shard's results file, None for any other name."""
    m = _SHARD.fullmatch(Path(path).name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def results_files(folder: str | os.PathLike) -> list[Path]:
    """The folder's results files that exist: results.jsonl first, then the shard files by (N, I)."""
    d = Path(folder)
    shards = [p for p in d.glob("results.shard-*.jsonl") if shard_of(p)]
    shards.sort(key=lambda p: shard_of(p)[::-1])
    main = d / RESULTS_FILE
    return ([main] if main.is_file() else []) + [p for p in shards if p.is_file()]


def missing_shards(files: list[Path]) -> list[str]:
    """Names of the shard files absent from `files` for every N that some of them are shards of."""
    found: dict[int, set[int]] = {}
    for p in files:
        s = shard_of(p)
        if s:
            found.setdefault(s[1], set()).add(s[0])
    return [shard_file(i, n) for n, have in sorted(found.items()) for i in range(n) if i not in have]

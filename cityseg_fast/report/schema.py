"""The result row: one JSON line per measured point. Benchmarks write them; reports read only them.

A row:
    {
      "schema": 1,
      "scenario": "loader" | "model" | "e2e" | "infer" | "accuracy",
      "status": "ok" | "oom" | "error",
      "error": null | "one-line message",
      "point_id": "3f2a...",          # stable id of (scenario, point): a sweep skips ids already ok
      "point": {...},                 # the swept parameters, flat: model, crop [H, W], batch_size,
                                      # dtype, channels_last, compile, loader, loader_device,
                                      # world_size, decode_only, ... (whatever the scenario varies)
      "metrics": {...},               # flat numbers: images_per_s, latency_ms_p50/p90/p99, iqr_ms,
                                      # compile_s, recompiles, mem_*_mib, flops_per_image, mfu, miou ...
      "config": {...}, "config_hash": "...",
      "env": {...},                   # bench.env.collect_env()
      "time": "2026-11-24T19:00:00+00:00"
    }

Rows are appended atomically: the whole line in one write under an exclusive lock, then flush and
fsync, so a killed writer leaves either the whole line or none of it; a torn last line (a crash
inside the write) is skipped by `read_rows`, never silently merged with the next, and `scan_rows`
says which lines it skipped.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
SCENARIOS = ("loader", "model", "e2e", "infer", "accuracy")
STATUSES = ("ok", "oom", "error")
_REQUIRED = {
    "schema": int,
    "scenario": str,
    "status": str,
    "point_id": str,
    "point": dict,
    "metrics": dict,
    "config": dict,
    "config_hash": str,
    "env": dict,
    "time": str,
}


def point_id(scenario: str, point: dict[str, Any]) -> str:
    """Stable id of a measured point: the scenario and its parameters, not the results."""
    blob = json.dumps({"scenario": scenario, **point}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def make_row(
    scenario: str,
    point: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    *,
    status: str = "ok",
    error: str | None = None,
    config: dict[str, Any] | None = None,
    config_hash: str = "",
    env: dict[str, Any] | None = None,
) -> dict[str, Any]:
    row = {
        "schema": SCHEMA_VERSION,
        "scenario": scenario,
        "status": status,
        "error": error,
        "point_id": point_id(scenario, point),
        "point": dict(point),
        "metrics": dict(metrics or {}),
        "config": dict(config or {}),
        "config_hash": config_hash,
        "env": dict(env or {}),
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    validate_row(row)
    return row


def validate_row(row: dict[str, Any]) -> None:
    """Raise ValueError naming the first field that breaks the schema."""
    if not isinstance(row, dict):
        raise ValueError(f"result row: a JSON object expected, got {type(row).__name__}")
    for key, tp in _REQUIRED.items():
        if key not in row:
            raise ValueError(f"result row: missing field '{key}'")
        if not isinstance(row[key], tp):
            raise ValueError(
                f"result row: field '{key}' must be {tp.__name__}, got {type(row[key]).__name__}"
            )
    if row["schema"] != SCHEMA_VERSION:
        raise ValueError(f"result row: schema {row['schema']} (this version reads {SCHEMA_VERSION})")
    if row["scenario"] not in SCENARIOS:
        raise ValueError(f"result row: unknown scenario '{row['scenario']}'")
    if row["status"] not in STATUSES:
        raise ValueError(f"result row: unknown status '{row['status']}'")
    if row["status"] != "ok" and not row.get("error"):
        raise ValueError("result row: a non-ok row needs an error message")
    for k, v in row["metrics"].items():
        if v is not None and not isinstance(v, (int, float, str, bool, list, dict)):
            raise ValueError(f"result row: metric '{k}' has type {type(v).__name__}")


def append_row(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append one row atomically (one write of the whole line under an exclusive lock, then fsync)."""
    validate_row(row)
    line = (json.dumps(row, sort_keys=True, default=str) + "\n").encode()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # several writers (sweep + torchrun ranks) never interleave
        # A previous writer killed mid-line left a torn tail: start on a fresh line so this row survives.
        if os.fstat(fd).st_size > 0:
            with open(p, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def scan_rows(path: str | os.PathLike) -> tuple[list[dict[str, Any]], list[int]]:
    """(valid rows, 1-based numbers of the non-empty lines that are not: torn, garbage or off-schema)."""
    rows, bad = [], []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            validate_row(row)
        except ValueError:  # json.JSONDecodeError is one
            bad.append(number)
            continue
        rows.append(row)
    return rows, bad


def read_rows(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> Iterator[dict[str, Any]]:
    """Rows of one or more results.jsonl files; torn or invalid lines are skipped (`scan_rows` names them)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for path in paths:
        if Path(path).is_file():
            yield from scan_rows(path)[0]

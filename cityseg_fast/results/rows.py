"""The result row on disk: one JSON line per measured point, appended atomically, read back validated.

A row (schema 2):
    {
      "schema": 2,
      "scenario": "loader" | "model" | "infer" | "e2e" | "accuracy" | "baseline",   (scenarios.py)
      "status": "ok" | "oom" | "error",
      "error": null | "one-line message",
      "point_id": "3f2a...",          # stable id of (scenario, point): a sweep skips ids already ok
      "point": {...},                 # what identifies the point, flat: model, resolution [H, W],
                                      # batch_size, dtype, channels_last, compile, loader, world_size, ...
      "metrics": {...},               # flat values: images_per_s, latency_ms_p50, miou (a fraction),
                                      # per_class_iou, mem_*_mib, mfu ... (NaN is stored as null)
      "companions": {"loader": id, "model": id, "base": id},   # rows the derived metrics divide by
      "config": {...}, "config_hash": "...",
      "env": {...},                   # environment.collect_env()
      "time": "2026-11-24T19:00:00+00:00"
    }

Rows are appended atomically: the whole line in one write under an exclusive lock, then flush and
fsync, so a killed writer leaves either the whole line or none of it; a torn last line (a crash
inside the write) is skipped by `read_rows`, never silently merged with the next, and `scan_rows`
says which lines it skipped. Schema-1 rows (before this module) are upgraded as they are read.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cityseg_fast import jsonsafe
from cityseg_fast.results.scenarios import SCENARIOS

SCHEMA_VERSION = 2
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
# Metrics a schema-1 sweep stored on its rows; schema 2 derives them when rows are merged (derive.py).
_V1_DERIVED = (
    "e2e_efficiency",
    "e2e_limit_images_per_s",
    "e2e_limit_kind",
    "e2e_loader_point_id",
    "e2e_model_point_id",
    "scaling_efficiency",
    "scaling_base_point_id",
)


# An environment variable left in a value ($NAME or ${NAME}): a sweep spec resolves every one before a
# point runs, but older sweeps recorded rows with the literal text (their variable was unset then).
VARIABLE = re.compile(r"\$(?:\{(\w+)\}|([A-Za-z_]\w*))")


def variables_in(value: Any) -> list[str]:
    """Names of the variables left in the strings of `value` (nested dicts / lists), each once, in order."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return list(dict.fromkeys(n for v in value for n in variables_in(v)))
    if isinstance(value, str):
        return list(dict.fromkeys(a or b for a, b in VARIABLE.findall(value)))
    return []


def unresolved(row: dict[str, Any]) -> list[str]:
    """The variables a row was recorded under unresolved (its config or point still holds `${...}`): such a
    row measured something other than its point says, so it is never matched with real rows."""
    return variables_in([row.get("config") or {}, row.get("point") or {}])


def point_id(scenario: str, point: dict[str, Any]) -> str:
    """Stable id of a measured point: the scenario and its parameters, not the results."""
    blob = json.dumps({"scenario": scenario, **point}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def validate_row(row: Any) -> None:
    """Raise ValueError naming the first field that breaks the schema."""

    if not isinstance(row, dict):
        raise ValueError(f"result row: a JSON object expected, got {type(row).__name__}")
    for key, tp in _REQUIRED.items():
        if key not in row:
            raise ValueError(f"result row: missing field '{key}'")
        if not isinstance(row[key], tp):
            raise ValueError(f"result row: field '{key}' must be {tp.__name__}, got {type(row[key]).__name__}")
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


def upgrade(row: Any) -> Any:
    """A schema-1 row in schema 2: `crop` -> `resolution`, `iou` -> `per_class_iou`, mIoU and pixel
    accuracy as fractions (some producers wrote percentages), the derived metrics it stored kept under
    `derived` (no companions to derive them again), a new point_id for the renamed point."""
    if not isinstance(row, dict) or row.get("schema") != 1:
        return row
    row = {**row, "schema": SCHEMA_VERSION}
    point = dict(row.get("point") or {})
    if "crop" in point:
        point["resolution"] = point.pop("crop")
    metrics = dict(row.get("metrics") or {})
    if "iou" in metrics and "per_class_iou" not in metrics:
        metrics["per_class_iou"] = metrics.pop("iou")
    for key in ("miou", "acc"):
        if isinstance(metrics.get(key), (int, float)) and metrics[key] > 1:
            metrics[key] = metrics[key] / 100.0
    row["derived"] = {k: metrics.pop(k) for k in _V1_DERIVED if k in metrics}
    row["point"], row["metrics"] = point, metrics
    if isinstance(row.get("scenario"), str):
        row["point_id"] = point_id(row["scenario"], point)
    row.setdefault("companions", {})
    return row


def append_row(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append one row atomically (one write of the whole line under an exclusive lock, then fsync)."""
    validate_row(row)
    stored = {k: v for k, v in row.items() if k != "derived"}  # derived metrics are computed on read
    line = (jsonsafe.dumps(stored, sort_keys=True, default=str) + "\n").encode()
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
            row = upgrade(json.loads(line))
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

"""Loading runs for reports: a run is one results.jsonl, read and merged by cityseg_fast.results only
(the latest row per point, with its derived metrics); the report computes no number of its own.

Also the small helpers every table and plot shares: a point's resolution, which point keys vary
within a set of rows (so tables show only those), and a compact label for a point.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cityseg_fast.errors import UserError
from cityseg_fast.results import merge, scan_rows

RESULTS_FILE = "results.jsonl"
# Point keys in the order tables show them; keys not listed here follow, alphabetically.
POINT_ORDER = (
    "model",
    "resolution",
    "batch_size",
    "dtype",
    "channels_last",
    "compile",
    "loader",
    "loader_device",
    "decode_only",
    "image_format",
    "quality",
    "world_size",
)


@dataclass
class Run:
    """The rows of one results.jsonl, newest row per point_id (a retried point keeps its last result)."""

    name: str
    path: Path
    rows: list[dict[str, Any]]
    lines: int = 0  # non-empty lines in the file
    bad_lines: list[int] = field(default_factory=list)  # line numbers scan_rows rejected (torn or invalid)
    superseded: int = 0  # older rows of a point that was measured again
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def skipped(self) -> int:
        return len(self.bad_lines)

    def skipped_note(self) -> str:
        """'2 unreadable lines skipped (7, 12)'; '' when none."""
        if not self.bad_lines:
            return ""
        shown = ", ".join(map(str, self.bad_lines[:10])) + (", ..." if len(self.bad_lines) > 10 else "")
        n = len(self.bad_lines)
        return f"{n} unreadable line{'s' if n > 1 else ''} skipped (line{'s' if n > 1 else ''} {shown})"


def results_path(run: str | os.PathLike) -> Path:
    """RUN_DIR/results.jsonl, or the file itself when given one; UserError when neither exists."""
    p = Path(run)
    if not p.exists():
        raise UserError(f"{p}: no such run directory")
    if p.is_dir():
        p = p / RESULTS_FILE
        if not p.is_file():
            raise UserError(
                f"{p}: not found (a run directory holds the results.jsonl a benchmark or sweep wrote)"
            )
    return p


def load_run(run: str | os.PathLike, name: str | None = None) -> Run:
    path = results_path(run)
    try:
        rows, bad = scan_rows(path)
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    lines = len(rows) + len(bad)
    if lines == 0:
        raise UserError(f"{path}: empty, no result rows to report")
    if not rows:
        raise UserError(
            f"{path}: none of its {lines} lines is a valid result row (see cityseg_fast/results/rows.py)"
        )
    kept = merge(rows)
    superseded = len(rows) - len(kept)
    label = name or (path.parent.name if path.name == RESULTS_FILE else path.stem)
    return Run(label, path, kept, lines=lines, bad_lines=bad, superseded=superseded)


def load_runs(runs: Sequence[str | os.PathLike]) -> list[Run]:
    """Load every run; names are the directory names, made unique with a suffix where they collide."""
    if not runs:
        raise UserError("no run directories given")
    loaded = [load_run(r) for r in runs]
    seen: dict[str, int] = {}
    for run in loaded:
        n = seen.get(run.name, 0)
        seen[run.name] = n + 1
        if n:
            run.name = f"{run.name}#{n + 1}"
    return loaded


# ---------------------------------------------------------------- point helpers


def resolution(point: dict[str, Any]) -> str | None:
    """'512x1024' (H x W) from point['resolution'] (a [H, W] list)."""
    v = point.get("resolution")
    if v is None:
        return None
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return f"{int(v[0])}x{int(v[1])}"
    return str(v)


def res_pixels(res: str | None) -> int:
    """Pixels of an 'HxW' string, for sorting resolutions; 0 when unknown."""
    try:
        h, w = str(res).lower().split("x")
        return int(h) * int(w)
    except (ValueError, AttributeError):
        return 0


def flat_point(row: dict[str, Any]) -> dict[str, Any]:
    """The row's point with its resolution as an 'HxW' string (how tables and labels show it)."""
    p = dict(row["point"])
    if p.get("resolution") is not None:
        p["resolution"] = resolution(p)
    return p


def _key_order(k: str) -> tuple[int, str]:
    return (POINT_ORDER.index(k) if k in POINT_ORDER else len(POINT_ORDER), k)


def point_keys(rows: Iterable[dict[str, Any]]) -> list[str]:
    keys: set[str] = set()
    for r in rows:
        keys.update(flat_point(r))
    return sorted(keys, key=_key_order)


def split_keys(rows: Sequence[dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """(keys whose value differs between rows, {key: value} of keys equal in every row)."""
    pts = [flat_point(r) for r in rows]
    varying, constant = [], {}
    for k in point_keys(rows):
        values = {repr(p.get(k)) for p in pts}
        if len(values) > 1:
            varying.append(k)
        else:
            constant[k] = pts[0].get(k)
    return varying, constant


def point_label(point: dict[str, Any], keys: Sequence[str]) -> str:
    """'unet 512x1024 bs8 bf16' style label of the given keys (booleans shown by name when true)."""
    parts = []
    for k in keys:
        v = point.get(k)
        if v is None:
            continue
        if k == "batch_size":
            parts.append(f"bs{v}")
        elif isinstance(v, bool):
            parts.append(k.replace("_", "-") if v else f"no-{k.replace('_', '-')}")
        elif k in ("model", "resolution", "dtype", "loader"):
            parts.append(str(v))
        elif k == "compile":
            parts.append("eager" if v in ("off", False) else f"compile={v}")
        else:
            parts.append(f"{k}={v}")
    return " ".join(parts)


def loader_label(point: dict[str, Any]) -> str:
    """'dali (gpu)', 'dali (cpu) decode-only', 'torch', 'synthetic' ..."""
    name = str(point.get("loader", "?"))
    dev = point.get("loader_device")
    label = f"{name} ({dev})" if dev and name == "dali" else name
    if point.get("decode_only"):
        label += " decode-only"
    return label


def metric(row: dict[str, Any], key: str) -> float | None:
    """A numeric metric of an ok row, or None."""
    if row["status"] != "ok":
        return None
    v = row["metrics"].get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def peak_memory(row: dict[str, Any]) -> tuple[float | None, str]:
    """The most meaningful peak memory of a row: torch allocated on a GPU, else host RSS; (MiB, which)."""
    for key, what in (
        ("mem_torch_peak_allocated_mib", "torch peak allocated"),
        ("mem_nvml_used_mib", "GPU memory used (NVML)"),
        ("mem_host_peak_rss_mib", "host peak RSS"),
    ):
        v = metric(row, key)
        if v:
            return v, what
    return None, ""


def tagged_rows(runs: Sequence[Run], scenario: str | None = None) -> list[dict[str, Any]]:
    """Rows of every run (optionally of one scenario), each with a '_run' key naming its run."""
    out = []
    for run in runs:
        for r in run.rows:
            if scenario is None or r["scenario"] == scenario:
                out.append({**r, "_run": run.name})
    return out

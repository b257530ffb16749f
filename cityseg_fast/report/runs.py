"""Loading runs for reports: a run is a results file, or every results file of a run folder (its
results.jsonl and a sharded sweep's results.shard-I-of-N.jsonl), or those of several folders merged
(`cityseg report --merge`); read and merged by cityseg_fast.results only (the latest row per point,
with its derived metrics), so the report computes no number of its own.

Also the small helpers every table and plot shares: a point's resolution, which point keys vary
within a set of rows (so tables show only those), and a compact label for a point.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cityseg_fast.config import format_hw
from cityseg_fast.errors import UserError
from cityseg_fast.results import (
    RESULTS_FILE,
    Row,
    latest_per_point,
    merge,
    missing_shards,
    results_files,
    scan_rows,
    split_unresolved,
    unresolved,
)
from cityseg_fast.results.rounds import collapse_rounds
from cityseg_fast.results.scenarios import (
    LOADER_DECODER,
    LOADER_DESCRIPTION,
    MEM_HOST_PEAK_RSS_MIB,
    MEM_NVML_USED_MIB,
    MEM_TORCH_PEAK_ALLOCATED_MIB,
)

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
class Source:
    """One results file of a run: how many non-empty lines it has, and which of them are unreadable."""

    path: Path
    lines: int = 0
    bad_lines: list[int] = field(default_factory=list)  # line numbers scan_rows rejected (torn or invalid)

    def skipped_note(self) -> str:
        """'2 unreadable lines skipped (lines 7, 12)'; '' when none."""
        if not self.bad_lines:
            return ""
        shown = ", ".join(map(str, self.bad_lines[:10])) + (", ..." if len(self.bad_lines) > 10 else "")
        n = len(self.bad_lines)
        return f"{n} unreadable line{'s' if n > 1 else ''} skipped (line{'s' if n > 1 else ''} {shown})"


@dataclass
class Run:
    """The rows of one run (one results.jsonl, or every results file of a folder or of several merged
    folders: a sharded sweep's shards), newest row per point_id (a retried point keeps its last result)."""

    name: str
    path: Path  # the results file, or the folder / first folder of a merged run
    rows: list[Row]
    sources: list[Source] = field(default_factory=list)
    superseded: int = 0  # older rows of a point that was measured again
    unresolved: list[str] = field(default_factory=list)  # variables of rows left out: recorded unresolved
    unresolved_rows: int = 0
    missing_shards: list[str] = field(default_factory=list)  # shard files a sharded run lacks
    extra: dict[str, Any] = field(default_factory=dict)
    _tagged: tuple[str, list[RunRow]] | None = field(default=None, repr=False, compare=False)

    def tagged(self) -> list[RunRow]:
        """Its rows tagged with its name, made once per name (every table and plot asks for them)."""
        if self._tagged is None or self._tagged[0] != self.name:
            self._tagged = (self.name, [RunRow(**{f.name: getattr(r, f.name) for f in dataclasses.fields(Row)},
                                               run=self.name) for r in self.rows])  # fmt: skip
        return self._tagged[1]

    @property
    def lines(self) -> int:
        return sum(s.lines for s in self.sources)

    @property
    def bad_lines(self) -> list[int]:
        return [n for s in self.sources for n in s.bad_lines]

    @property
    def skipped(self) -> int:
        return len(self.bad_lines)

    def skipped_note(self) -> str:
        """'2 unreadable lines skipped (7, 12)' (per file when there are several); '' when none."""
        if len(self.sources) == 1:
            return self.sources[0].skipped_note()
        return "; ".join(f"{s.path.name}: {s.skipped_note()}" for s in self.sources if s.bad_lines)

    def notes(self) -> list[str]:
        """What the report says about this run's files beside its rows."""
        out = [self.skipped_note()] if self.skipped else []
        if self.superseded:
            out.append(f"{self.superseded} older result(s) of re-measured points ignored")
        return out + self.warnings()

    def warnings(self) -> list[str]:
        """The notes worth a line on stderr too: rows left out as unresolved, shards missing."""
        out = []
        if self.unresolved_rows:
            names = ", ".join(f"${{{n}}}" for n in self.unresolved)
            out.append(f"{self.unresolved_rows} row(s) recorded with {names} unset left out")
        if self.missing_shards:
            out.append(f"shard file(s) missing: {', '.join(self.missing_shards)}")
        return out


def results_paths(run: str | os.PathLike) -> list[Path]:
    """The results files of a run: a folder's results.jsonl and shard files, or the file itself when
    given one; UserError when there are none."""
    p = Path(run)
    if not p.exists():
        raise UserError(f"{p}: no such run directory")
    if p.is_file():
        return [p]
    files = results_files(p)
    if not files:
        raise UserError(
            f"{p / RESULTS_FILE}: not found (a run directory holds the results.jsonl, or the "
            "results.shard-I-of-N.jsonl files, a benchmark or sweep wrote)"
        )
    return files


def _read(path: Path) -> tuple[list[Row], Source]:
    try:
        rows, bad = scan_rows(path)
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    return rows, Source(path, len(rows) + len(bad), bad)


def load_run(run: str | os.PathLike | Sequence[str | os.PathLike], name: str | None = None) -> Run:
    """One run from a results file, a run folder, or several folders merged (the shards of a sweep).
    Rows of several files are taken in the order they were measured, so the latest of a point wins."""
    given = [run] if isinstance(run, (str, os.PathLike)) else list(run)
    paths = [f for r in given for f in results_paths(r)]
    rows, sources = [], []
    for path in paths:
        got, source = _read(path)
        rows += got
        sources.append(source)
    where = paths[0] if len(paths) == 1 else Path(given[0])
    lines = sum(s.lines for s in sources)
    if lines == 0:
        raise UserError(f"{where}: empty, no result rows to report")
    if not rows:
        raise UserError(f"{where}: none of its {lines} lines is a valid result row (see cityseg_fast/results/schema.py)")
    if len(paths) > 1:
        rows.sort(key=lambda r: r.time)  # stable: file order within the same second
    real, ghosts = split_unresolved(rows)
    latest, superseded = latest_per_point(real)
    kept = merge(collapse_rounds(latest))  # a repeated point: one row, the median over its rounds
    first = paths[0]
    label = name or (first.parent.name if first.name == RESULTS_FILE or len(paths) > 1 else first.stem)
    return Run(label, where, kept, sources, superseded=superseded,
               unresolved=sorted({v for r in ghosts for v in unresolved(r)}), unresolved_rows=len(ghosts),
               missing_shards=missing_shards(paths))  # fmt: skip


def load_runs(runs: Sequence[str | os.PathLike], merge_all: bool = False) -> list[Run]:
    """Load every run (or, merge_all, all of them as one run); names are the directory names, made unique
    with a suffix where they collide."""
    if not runs:
        raise UserError("no run directories given")
    loaded = [load_run(runs)] if merge_all else [load_run(r) for r in runs]
    seen: dict[str, int] = {}
    for run in loaded:
        n = seen.get(run.name, 0)
        seen[run.name] = n + 1
        if n:
            run.name = f"{run.name}#{n + 1}"
    return loaded


# ---------------------------------------------------------------- point helpers


def resolution(point: Mapping[str, Any]) -> str | None:
    """'512x1024' (H x W) from point['resolution'] (a [H, W] list)."""
    v = point.get("resolution")
    return None if v is None else format_hw(v)


def res_pixels(res: str | None) -> int:
    """Pixels of an 'HxW' string, for sorting resolutions; 0 when unknown."""
    try:
        h, w = str(res).lower().split("x")
        return int(h) * int(w)
    except (ValueError, AttributeError):
        return 0


def flat(point: Mapping[str, Any]) -> dict[str, Any]:
    """A point with its resolution as an 'HxW' string (how tables and labels show it)."""
    p = dict(point)
    if p.get("resolution") is not None:
        p["resolution"] = resolution(p)
    return p


def flat_point(row: Row) -> dict[str, Any]:
    """The row's point, flat (see `flat`)."""
    return flat(row.point)


def _key_order(k: str) -> tuple[int, str]:
    return (POINT_ORDER.index(k) if k in POINT_ORDER else len(POINT_ORDER), k)


def point_keys(rows: Iterable[Row]) -> list[str]:
    keys: set[str] = set()
    for r in rows:
        keys.update(r.point)
    return sorted(keys, key=_key_order)


def split_keys(rows: Sequence[Row]) -> tuple[list[str], dict[str, Any]]:
    """(keys whose point value differs between rows, {key: value} of keys equal in every row)."""
    return split_point_keys([r.point for r in rows])


def split_point_keys(points: Sequence[Mapping[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """(keys whose value differs between points, {key: value} of keys equal in every point), resolutions flat."""
    pts = [flat(p) for p in points]
    varying, constant = [], {}
    for k in sorted({k for p in pts for k in p}, key=_key_order):
        values = {repr(p.get(k)) for p in pts}
        if len(values) > 1:
            varying.append(k)
        else:
            constant[k] = pts[0].get(k)
    return varying, constant


def point_label(point: Mapping[str, Any], keys: Sequence[str]) -> str:
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


def loader_label(point: Mapping[str, Any], decoder: str = "") -> str:
    """'dali (gpu)', 'dali (cpu) decode-only', 'torch', 'synthetic' ...; with the row's decoder
    (`row_decoder`): 'torch [PIL]', 'torch (gpu) [torchvision.io nvJPEG] decode-only', 'dali (gpu) [DALI nvJPEG]'."""
    name = str(point.get("loader", "?"))
    dev = point.get("loader_device")
    label = f"{name} ({dev})" if dev and name in ("dali", "torch") else name
    if decoder:
        label += f" [{decoder}]"
    if point.get("decode_only"):
        label += " decode-only"
    return label


_DECODER_IN_DESCRIPTION = re.compile(r"decoder ([^,()]+)")


def row_decoder(row: Row) -> str:
    """The decoder a loader or e2e row's loader ran, as the row recorded it: LOADER_DECODER (loader rows),
    else named in its LOADER_DESCRIPTION (the torch loaders name it there); rows recorded before the
    decoder was: the torch backend's only decoder then (PIL), DALI's by where it ran. '' where the row
    holds no description (a failed point) or names no loader."""
    if row.metrics.get(LOADER_DECODER):
        return str(row.metrics[LOADER_DECODER])
    desc = str(row.metrics.get(LOADER_DESCRIPTION) or "")
    found = _DECODER_IN_DESCRIPTION.search(desc)
    if found:
        return found.group(1).strip()
    backend = row.point.get("loader")
    if not desc or backend not in ("torch", "dali"):
        return ""
    if backend == "torch":
        return "PIL"  # the torch loader decoded with PIL alone before loader.decoder existed
    return "DALI nvJPEG" if row.point.get("loader_device") == "gpu" else "DALI CPU"


def peak_memory(row: Row) -> tuple[float | None, str]:
    """The most meaningful peak memory of a row: torch allocated on a GPU, else host RSS; (MiB, which)."""
    for key, what in (
        (MEM_TORCH_PEAK_ALLOCATED_MIB, "torch peak allocated"),
        (MEM_NVML_USED_MIB, "GPU memory used (NVML)"),
        (MEM_HOST_PEAK_RSS_MIB, "host peak RSS"),
    ):
        v = row.number(key)
        if v:
            return v, what
    return None, ""


@dataclass(frozen=True, kw_only=True)
class RunRow(Row):
    """A row as a report of several runs shows it: with the name of the run it came from."""

    run: str = ""


def run_of(row: Row) -> str:
    """The run a row was tagged with (`tagged_rows`); '' for an untagged row."""
    return row.run if isinstance(row, RunRow) else ""


def tagged_rows(runs: Sequence[Run], scenario: str | None = None) -> list[RunRow]:
    """Rows of every run (optionally of one scenario), each tagged with the name of its run."""
    return [r for run in runs for r in run.tagged() if scenario is None or r.scenario == scenario]

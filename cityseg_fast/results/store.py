"""The results file on disk: one JSON line per row (schema.py), appended atomically, read back checked.

    append_row("results.jsonl", row)           # the whole line in one write, under a lock, then fsync
    rows, bad = scan_rows("results.jsonl")     # the rows, and the numbers of the lines that are none
    rows = list(read_rows(["a.jsonl", "b.jsonl"]))

Rows are appended atomically: the whole line in one write under an exclusive lock, then flush and
fsync, so a killed writer leaves either the whole line or none of it; a torn last line (a crash
inside the write) is skipped by `read_rows`, never silently merged with the next, and `scan_rows`
says which lines it skipped. Older rows are upgraded as they are read (Row.from_json).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cityseg_fast import jsonsafe
from cityseg_fast.diskio import append_all, make_dirs
from cityseg_fast.results.schema import Row


def append_row(path: str | os.PathLike, row: Row) -> None:
    """Append one row atomically (one write of the whole line under an exclusive lock, then fsync)."""
    line = (jsonsafe.dumps(row.to_json(), sort_keys=True, default=str) + "\n").encode()
    p = Path(path)
    make_dirs(p.parent)
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # several writers (sweep + torchrun ranks) never interleave
        # A previous writer killed mid-line left a torn tail: start on a fresh line so this row survives.
        if os.fstat(fd).st_size > 0:
            with open(p, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = b"\n" + line
        append_all(fd, line, p)  # a full disk: one line naming the file, left as it was
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _share(obj: Any, seen: dict[str, Any]) -> Any:
    """`obj` (a parsed row) with its environment's and its config sections' values replaced by an equal one
    already read, if any: a sweep repeats them on every row, and ten thousand copies were most of a report's
    memory. Values nested in a row are never changed (rows are read-only), so sharing them is safe."""
    if not isinstance(obj, dict):
        return obj
    for holder, keys in ((obj, ("env",)), (obj.get("config"), None)):
        if not isinstance(holder, dict):
            continue
        for k in keys or list(holder):
            v = holder.get(k)
            if isinstance(v, dict):
                for name, item in v.items():
                    if isinstance(item, (dict, list)):
                        v[name] = seen.setdefault(repr(item), item)
                holder[k] = seen.setdefault(repr(v), v)
    return obj


def scan_rows(path: str | os.PathLike) -> tuple[list[Row], list[int]]:
    """(valid rows, 1-based numbers of the non-empty lines that are not: torn, garbage or off-schema)."""
    rows, bad = [], []
    seen: dict[str, Any] = {}  # equal environments and config sections, held once (`_share`)
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(Row.from_json(_share(json.loads(line), seen)))
        except (ValueError, TypeError):  # json.JSONDecodeError is a ValueError; TypeError: a malformed old row
            bad.append(number)
    return rows, bad


def read_rows(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> Iterator[Row]:
    """Rows of one or more results.jsonl files; torn or invalid lines are skipped (`scan_rows` names them)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for path in paths:
        if Path(path).is_file():
            yield from scan_rows(path)[0]

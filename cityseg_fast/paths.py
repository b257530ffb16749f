"""Output paths, checked before any work starts: a directory to create or reuse, a results file to append to.

    out = check_out_dir(args.out, "--out")            # a UserError if it (or a parent) is an existing file
    check_append_file(args.append, "--append")        # ... if it is a directory or not a JSON-lines file

Each check raises a one-line UserError naming the path and the option, so a command never does its work
and then fails to write it (or tracebacks on mkdir), and never writes into a file it does not own.
"""

from __future__ import annotations

import os
from pathlib import Path

from cityseg_fast.errors import UserError


def _first_existing(p: Path) -> Path:
    for q in (p, *p.parents):
        if q.exists():
            return q
    return Path(".")


def _check_parent(p: Path, what: str) -> None:
    """The nearest existing ancestor of `p` must be a directory this process can write into."""
    q = _first_existing(p.parent)
    if not q.is_dir():
        raise UserError(f"{p}: cannot create {what} there, {q} is a file")
    if not os.access(q, os.W_OK | os.X_OK):
        raise UserError(f"{p}: cannot create {what} there, no write permission in {q}")


def check_out_dir(path: str | os.PathLike, option: str) -> Path:
    """`path` as an output directory to create or reuse; returns it. Nothing is created here."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"{p}: exists and is not a directory ({option} names an output directory)")
    if not p.exists():
        _check_parent(p, f"the {option} directory")
    return p


def check_append_file(path: str | os.PathLike, option: str) -> Path:
    """`path` as a results file to append JSON lines to: a new file, or one that starts with a JSON row
    (so a row never lands at the end of an image, a YAML file or a report); returns it."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"{p}: is a directory ({option} names a results .jsonl file to append to)")
    if not p.exists():
        _check_parent(p, f"the {option} file")
        return p
    if not os.access(p, os.W_OK):
        raise UserError(f"{p}: no write permission ({option})")
    try:
        with open(p, "rb") as f:
            head = f.read(256).lstrip()
    except OSError as e:
        raise UserError(f"{p}: cannot read ({e.strerror}; {option})") from None
    if head and not head.startswith(b"{"):  # a JSON row (even one torn by a killed writer) starts so
        raise UserError(f"{p}: not a results file (it does not start with a JSON row); {option} appends rows")
    return p

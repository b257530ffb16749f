"""Writing files on a disk that can fill up: atomic writes, and a full disk (ENOSPC, EDQUOT) as one line.

    with atomic_path(out / "x.png") as tmp:      # write `tmp` any way (PIL, np.save, open + torch.save)
        img.save(tmp, format="PNG")               # renamed over x.png when the block succeeds, removed if not
    append_all(fd, line, path)                   # an append: all of the line or none of it
    with disk_full_is_user_error(path):          # any other write: a full disk -> the one-line UserError
        fig.savefig(path)

A full disk or quota is something the user fixes, not a bug: it becomes a UserError that names the path
("...: cannot write, the disk is full (No space left on device); free space and rerun"), so the CLI prints
one line and exits 2, and the temporary file is gone, so the finished files beside it are all that is left
and a rerun continues from them. Every writer of the package goes through these, so the rule lives here.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cityseg_fast.errors import UserError

DISK_FULL = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded"}


def temp_name(path: str | os.PathLike) -> Path:
    """Where `atomic_path` writes `path` first: `.NAME.tmpPID` beside it (hidden; a rerun's clean-up finds
    the ones a killed process left by this pattern)."""
    p = Path(path)
    return p.with_name(f".{p.name}.tmp{os.getpid()}")


def disk_full_cause(exc: BaseException) -> OSError | None:
    """The ENOSPC / EDQUOT OSError behind `exc`: `exc` itself or one in its __cause__ / __context__ chain
    (torch.save reports a full disk as a RuntimeError raised while the write's OSError was handled)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def disk_full_error(path: str | os.PathLike | None, err: OSError) -> UserError:
    """The one line for a full disk while writing `path` (None: the path is unknown)."""
    where = f"{path}: cannot write" if path is not None else "cannot write"
    return UserError(f"{where}, {DISK_FULL[err.errno]} ({os.strerror(err.errno)}); free space and rerun")


@contextmanager
def disk_full_is_user_error(path: str | os.PathLike) -> Iterator[None]:
    """Run the block; a full disk raised in it (whatever wraps it) becomes the one-line UserError naming `path`."""
    try:
        yield
    except Exception as e:
        cause = disk_full_cause(e)
        if cause is None:
            raise
        raise disk_full_error(path, cause) from None


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary name beside `path` for the block to write; renamed over `path` when the block ends,
    removed when it raises. Readers never see a half-written file, and a full disk is the one-line
    UserError naming `path` (the file that was there before, if any, is untouched)."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        with disk_full_is_user_error(path):
            yield tmp
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # after a failure; gone already after the rename


def append_all(fd: int, data: bytes, path: str | os.PathLike) -> None:
    """Append all of `data` to the open file `fd` (O_APPEND, of `path`) and fsync, or nothing of it: on an
    error the file is cut back to its old size (no torn line), a full disk raising the one-line UserError."""
    size = os.fstat(fd).st_size
    try:
        with disk_full_is_user_error(path):
            written = os.write(fd, data)
            if written < len(data):  # a nearly full disk writes a part; the rest then raises ENOSPC
                os.write(fd, data[written:])
            os.fsync(fd)
    except BaseException:
        os.ftruncate(fd, size)
        raise


def make_dirs(path: str | os.PathLike) -> Path:
    """`path` and its parents created (a full disk can refuse a directory too: the one-line UserError)."""
    p = Path(path)
    with disk_full_is_user_error(p):
        p.mkdir(parents=True, exist_ok=True)
    return p

"""One writer per directory: an advisory lock (fcntl.flock) on DIR/.cityseg.lock, held for a process's life.

    with held(out, "cityseg prepare"):      # or lock = hold(out, "cityseg train") ... lock.release()
        ...                                 # a second process that holds(out) meanwhile gets a UserError

`cityseg train`, `sweep`, `study` and `prepare` hold their output directory's lock while they write there. A
second one is refused with one line naming the holder (pid, host, command, since when: the lock file's
content), exit 2. The lock is the kernel's, and the kernel drops it when the holder ends however it ends (a
SIGKILL, the out-of-memory killer), so a lock file left by a dead process is taken over silently. The
holder removes the file when it releases the lock, so a finished (or refused) command leaves the directory
as it would be without one; whoever locked a file that was removed meanwhile sees that its inode is no
longer the path's and locks the new file instead (else two processes could hold two different files).

One process, one writer: holding a directory this process already holds nests (a study holds its folder,
then its sweep asks for it again). The ranks of a torchrun job are one writer: rank 0 alone takes the lock
(engine/rundir.py), as it alone writes. A sweep's shards may share one folder (each writes its own results
file), so a shard locks `.cityseg.results.shard-I-of-N.lock` instead (`scope`).

flock is shared between nodes only where the filesystem arbitrates it: NFS (Linux emulates flock with the
server's byte-range locks, unless mounted `local_lock=flock|all` or `nolock`), Lustre mounted `-o flock`
(`localflock`: this node only). Where it is node-local, two jobs on two nodes are not kept apart; where
flock is refused (Lustre `noflock`: ENOSYS, or ENOLCK / EOPNOTSUPP), a warning says the directory is not
locked and the work goes on.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cityseg_fast.diskio import disk_full_is_user_error, make_dirs
from cityseg_fast.errors import UserError

LOCK_FILE = ".cityseg.lock"
UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}  # flock refused by the filesystem
_HELD: dict[Path, DirLock] = {}  # lock file -> this process's lock on it (nested holds share it)


@dataclass
class DirLock:
    """A held lock (fd None: the filesystem refused flock, nothing is held). `release` ends one hold."""

    path: Path
    fd: int | None
    holds: int = field(default=1)

    def release(self) -> None:
        self.holds -= 1
        if self.holds > 0:
            return
        _HELD.pop(self.path, None)
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # while still locked: no one else holds this file now
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None


def lock_path(directory: Path, scope: str | None = None) -> Path:
    return directory / (LOCK_FILE if scope is None else f".cityseg.{scope}.lock")


def is_lock_file(path: Path) -> bool:
    """A lock file of this module (a directory holding only these is as good as empty)."""
    return path.name.startswith(".cityseg.") and path.name.endswith(".lock")


def hold(directory: str | os.PathLike, command: str, scope: str | None = None) -> DirLock:
    """Create `directory` if needed and lock it for this process (see the module docstring); a UserError
    naming the holder if a live process holds it. `command` ('cityseg train') is what a refusal names."""
    directory = make_dirs(directory)
    path = lock_path(directory, scope).resolve()
    mine = _HELD.get(path)
    if mine is not None:
        mine.holds += 1
        return mine
    while True:
        with disk_full_is_user_error(path):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            return _not_locked(directory, path, e)
        if _still_there(fd, path):
            break
        os.close(fd)  # its holder removed it between our open and our lock: lock the path's new file
    _write_holder(fd, path, command)
    lock = _HELD[path] = DirLock(path, fd)
    return lock


def _not_locked(directory: Path, path: Path, e: OSError) -> DirLock:
    """flock's refusal: another holder (a UserError naming it), or a filesystem without flock (a warning)."""
    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
        raise UserError(f"{directory}: {_holder(path)} is writing here; wait for it to end or use another "
                        "output directory") from None  # fmt: skip
    if e.errno not in UNSUPPORTED:
        raise e
    print(f"warning: {directory}: not locked, the filesystem refuses flock ({e.strerror}): a second writer "
          "would not be refused", file=sys.stderr, flush=True)  # fmt: skip
    return DirLock(path, None)


def _still_there(fd: int, path: Path) -> bool:
    """Whether the file `fd` locks is still the one at `path`."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


@contextmanager
def held(directory: str | os.PathLike, command: str, scope: str | None = None) -> Iterator[DirLock]:
    """`hold` for the block."""
    lock = hold(directory, command, scope)
    try:
        yield lock
    finally:
        lock.release()


def _write_holder(fd: int, path: Path, command: str) -> None:
    since = datetime.now().astimezone().isoformat(timespec="seconds")
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "since": since}
    with disk_full_is_user_error(path):
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)


def _holder(path: Path) -> str:
    """'pid 123 on host n7 (cityseg train, since 2025-01-01T09:00:00+01:00)', from the lock file. The holder
    writes it just after locking: an empty (or just removed) file is read again for a moment."""
    for _ in range(10):
        try:
            who = json.loads(path.read_text())
            return f"pid {who['pid']} on host {who['host']} ({who['command']}, since {who['since']})"
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.05)
    return "another process (it has not said who yet)"

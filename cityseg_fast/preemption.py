"""Preemption: SIGTERM and SIGUSR1 (a time limit, a preemption) set a flag, read where the work can stop.

    with catch_stop_signals() as stop:     # the handlers for the block, the previous ones restored after
        ...
        if stop.requested:                 # read where the work can stop cleanly (train: the log interval)
            save(); raise Preempted(f"stopped by {stop.name} ...")   # cityseg exits EXIT_PREEMPTED (75)

The handler only sets the flag: Python runs it between two bytecodes of the main thread, possibly inside a
checkpoint write or while a lock is held, so anything more (saving, signalling children, taking a lock)
would run at an arbitrary point of the interrupted code. Slurm sends SIGTERM at a job's time limit or on
preemption (then SIGKILL after its grace period, KillWait), or the signal `sbatch --signal=USR1@90` chooses,
to every process of the job unless `B:` sends it to the batch shell alone; a second signal while stopping
changes nothing. Processes that belong to a parent that stops them (a DataLoader's workers) ignore both
signals (`ignore_stop_signals`), so a signal sent to every process does not kill them under the parent.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from cityseg_fast.errors import EXIT_PREEMPTED

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """Whether this process was asked to stop, and by which signal (the last one received)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str | None:
        """'SIGTERM' or 'SIGUSR1'; None when no signal came."""
        return signal.Signals(self.signum).name if self.signum is not None else None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum  # only this: see the module docstring


@contextmanager
def catch_stop_signals() -> Iterator[StopRequest]:
    """A StopRequest set by SIGTERM / SIGUSR1 during the block. Outside the main thread (where Python cannot
    install handlers) the request is never set and the signals keep their previous effect."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {s: signal.signal(s, stop.handle) for s in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def ignore_stop_signals(*_: object) -> None:
    """In a worker process its parent stops and reaps (a DataLoader's `worker_init_fn`): SIGTERM and SIGUSR1
    sent to every process of a job are the parent's to act on, not a reason for the worker to die under it."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def stopped_status(returncode: int | None) -> bool:
    """Whether a child's exit status says a stop signal ended it: EXIT_PREEMPTED (it saved first), or killed
    by SIGTERM / SIGUSR1 (a process without a handler). torchrun's 1 says nothing: it is any failure too."""
    return returncode == EXIT_PREEMPTED or (returncode is not None and -returncode in STOP_SIGNALS)

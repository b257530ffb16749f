"""Task functions for data/parallel.py's tests: importable by spawned workers, and light (no pytest, no torch)."""

from __future__ import annotations

import os
import signal

from cityseg_fast.errors import UserError


def fail_at(task: tuple[int, int]) -> int:
    """Task (i, bad): a one-line UserError naming item i when i == bad, else i."""
    i, bad = task
    if i == bad:
        raise UserError(f"item {i}: cannot process it")
    return i


def bug_at(task: tuple[int, int]) -> int:
    """Task (i, bad): a bug (ValueError) at i == bad."""
    i, bad = task
    if i == bad:
        raise ValueError(f"a bug at item {i}")
    return i


def killed_at(task: tuple[int, int]) -> int:
    """Task (i, bad): at i == bad the worker dies by SIGKILL, as the out-of-memory killer ends a process."""
    i, bad = task
    if i == bad:
        os.kill(os.getpid(), signal.SIGKILL)
    return i


def name(task: tuple[int, int]) -> str:
    return f"item {task[0]}"



def stopped_at(task: tuple[int, int]) -> int:
    """Task (i, bad): at i == bad this process gets SIGTERM (as a job's time limit sends it) and goes on."""
    i, bad = task
    if i == bad:
        signal.raise_signal(signal.SIGTERM)
    return i

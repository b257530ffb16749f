"""One sweep point: its child process (`cityseg bench SCENARIO --config POINT.yaml`), waited for, turned into rows.

    wait = start_point(sp, work, timeout_s, devices)   # the child runs now
    rows = wait()                                      # its rows (the point's own first), or None if stopped

The child writes its rows to its own scratch file and the sweep (bench/sweep.py) alone appends them to the
results file. A crash, a timeout or an exit without a row becomes an `error` row with a one-line message;
a child ended by a stop signal (a cluster's SIGTERM / SIGUSR1, or the sweep stopping) gives None: no row.
Children die with the sweep (PR_SET_PDEATHSIG) and are stopped together on Ctrl-C or a stop signal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from cityseg_fast.bench.sweep_spec import PACKAGE_ROOT, SweepPoint
from cityseg_fast.config import dump_config
from cityseg_fast.preemption import stopped_status
from cityseg_fast.results import (
    MAX_BATCH_SEARCH_FROM,
    POINT_WALL_S,
    Row,
    read_rows,
    row_for,
)
from cityseg_fast.results.scenarios import VISIBLE_DEVICES

# Starts a point's child now and returns the function that waits for it and gives its rows: the point's own
# first, then any more the measurement records (an accuracy point's one per eval scale: results.rows_for);
# None when a stop signal ended it first.
Runner = Callable[[SweepPoint, Path, float, tuple[str, ...]], Callable[[], list[Row] | None]]

_LIVE: set[subprocess.Popen] = set()  # children in flight, stopped together on Ctrl-C
_LIVE_LOCK = threading.Lock()
STOPPING = threading.Event()  # the sweep was told to stop: a child that ends without a row was stopped


# ---------------------------------------------------------------------------------------------
# one point


def point_command(sp: SweepPoint, cfg_path: Path, row_path: Path) -> list[str]:
    """The child's command line: `cityseg bench SCENARIO --config POINT.yaml`, writing its row to row_path."""
    bench = ["-m", "cityseg_fast", "bench", sp.scenario, "--config", str(cfg_path), "--json", "--append", str(row_path)]
    if sp.round is not None:  # a repeated point: the round is part of the identity the child records
        bench += ["--round", str(sp.round)]
    if sp.world_size > 1:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={sp.world_size}",
            *bench,
        ]
    return [sys.executable, *bench]


def _child_env(devices: tuple[str, ...] = ()) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT, *filter(None, [env.get("PYTHONPATH")])])
    if devices:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    return env


def _pdeathsig() -> Callable[[], None] | None:
    """In the child: get SIGTERM if the sweep dies, so a killed sweep leaves no point running (Linux).
    libc is loaded here, before any thread starts: the child, forked while other threads may hold the
    import lock, only calls the function."""
    try:
        import ctypes

        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except Exception:
        return None
    return lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


DIE_WITH_PARENT = _pdeathsig()


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:500] if lines else ""


def _wait(proc: subprocess.Popen, timeout_s: float) -> tuple[str, bool]:
    """(stderr, timed out) of a child, stopped at the timeout (torchrun forwards SIGTERM to its workers)."""
    try:
        return proc.communicate(timeout=timeout_s)[1] or "", False
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            return proc.communicate(timeout=15)[1] or "", True
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.communicate()[1] or "", True
    except BaseException:  # Ctrl-C while waiting in this thread: stop the child too, then let the sweep stop
        proc.terminate()
        proc.wait(timeout=15)
        raise


def _failure(returncode: int, err: str, timed_out: bool, timeout_s: float) -> str:
    if timed_out:
        return f"timeout: point ran longer than {timeout_s:.0f} s"
    if returncode < 0:
        msg = f"killed by signal {-returncode} ({signal.Signals(-returncode).name})"
        return msg + ("; " + _last_line(err) if _last_line(err) else "")
    return _last_line(err) or f"exit code {returncode} and no result row"


def start_point(
    sp: SweepPoint, work: Path, timeout_s: float, devices: tuple[str, ...] = ()
) -> Callable[[], list[Row] | None]:
    """Start one point in a fresh subprocess (on `devices` when given); the function returned waits for
    it and returns its rows: the point's (ok, oom or error), then any more the child recorded with it; None
    when a stop signal ended it first. Call it from the thread that lives longest: the child's parent-death
    signal follows the thread that started it."""
    cfg_path = work / f"{sp.scenario}-{sp.id}.yaml"
    row_path = work / f"{sp.scenario}-{sp.id}.jsonl"
    dump_config(sp.cfg, cfg_path)
    row_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        point_command(sp, cfg_path, row_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_child_env(devices),
        preexec_fn=DIE_WITH_PARENT,
    )
    with _LIVE_LOCK:
        _LIVE.add(proc)
    return lambda: _finish(sp, proc, work, row_path, timeout_s, devices, t0)


def _finish(
    sp: SweepPoint, proc: subprocess.Popen, work: Path, row_path: Path, timeout_s: float,
    devices: tuple[str, ...], t0: float,
) -> list[Row] | None:  # fmt: skip

    try:
        err, timed_out = _wait(proc, timeout_s)
    finally:
        with _LIVE_LOCK:
            _LIVE.discard(proc)
    wall = time.perf_counter() - t0
    ran = {POINT_WALL_S: wall, **({MAX_BATCH_SEARCH_FROM: sp.search_from} if sp.search_from is not None else {})}
    rows = list(read_rows(row_path))
    if not rows and not timed_out and (STOPPING.is_set() or stopped_status(proc.returncode)):
        return None  # stopped, not failed: no row (torchrun's exit status is 1 then, hence STOPPING)
    if rows and not timed_out:
        # The child built and checked them with rows_for (its first: the same point as sp.point): the sweep's
        # record goes beside that measurement, in a new row; the rows after it (per eval scale) are as made.
        rows = [replace(rows[0], sweep=ran), *rows[1:]]
    else:
        msg = _failure(proc.returncode, err, timed_out, timeout_s)
        seen = {VISIBLE_DEVICES: ",".join(devices)} if devices else None
        rows = [row_for(sp.scenario, sp.cfg, seen, error=msg, world_size=sp.world_size, sweep=ran, point=sp.extra)]
    if not rows[0].ok:
        (work / f"{sp.scenario}-{sp.id}.stderr.txt").write_text(err[-20000:])
    return rows


def run_point(sp: SweepPoint, work: Path, timeout_s: float, devices: tuple[str, ...] = ()) -> list[Row] | None:
    """Run one point in a fresh subprocess and return its rows, its own first (None: a stop signal ended it)."""
    return start_point(sp, work, timeout_s, devices)()


def signal_children() -> list[subprocess.Popen]:
    """SIGTERM to every child in flight (torchrun passes it on to its workers); returns them."""
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for proc in procs:
        proc.terminate()
    return procs


def stop_children() -> None:
    procs = signal_children()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()

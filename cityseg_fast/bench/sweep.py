"""Running a sweep: one fresh subprocess per point, one at a time or side by side on a device list, resumable.

    spec = load_spec("configs/sweeps/cpu_quick.yaml")     # bench/sweep_spec.py: points, variables, shards
    run_sweep(spec, "runs/cpu_quick")                        # -> runs/cpu_quick/results.jsonl
    run_sweep(spec, out, devices=["0", "1", "2", "3"])       # up to four single-device points at once

Scheduling. Without a device list: one point at a time, the devices left as the sweep found them (a
world-size-N point is torchrun on the first N visible GPUs). With one: each point gets its own devices
through CUDA_VISIBLE_DEVICES, a single-device point one of them, a world-size-N point N of them
(torchrun --nproc_per_node=N); points start in spec order as soon as enough devices are free, and the
next point waits for its N devices rather than being overtaken (so a big point is never starved). The
child records the devices it saw in `metrics.visible_devices` (a metric: not part of the point id). The
sweep's own record of a point (its wall time, the batch a max-batch search started from) goes in the
row's `sweep` field, beside the child's measurement, never into it.
Running points side by side is sound for the bookkeeping (derived metrics are computed when rows are
read, so a point's companions may run in any order, in any shard) but not free for the numbers: points
side by side share the host's CPU cores, memory bandwidth and PCIe, which loader and e2e points feel most.

Guarantees:
- the parent alone appends to the results file (results.append_row: atomic, fsync); a point's child
  writes to its own scratch file, so a killed sweep loses at most the points in flight, never a row;
- rerunning skips points already `ok` (and `oom`, unless --retry-oom) in any results file of the out
  folder (results.jsonl and every shard's), so an interrupted sweep resumes without duplicate rows;
  `error` points are retried; rows recorded under an unresolved ${VAR} never count as done;
- any failure (exception, crash, timeout) becomes an `error` row with a one-line message; an
  out-of-memory becomes `oom`, and with max_batch_search the same point at half the batch runs next;
  the sweep always goes on to the next point;
- SIGTERM or SIGUSR1 (a cluster's time limit or preemption; preemption.py) stops the sweep: no new point
  starts, the running ones get SIGTERM (a training point saves and exits 75, torchrun passes it to its
  workers, a benchmark point just ends), their rows are not written (a point that finished first keeps
  its row), and run_sweep raises Preempted (exit 75); a rerun measures the stopped points, and a training
  point resumes from its checkpoint where its train.resume allows. A point ended by a stop signal sent to
  it alone (exit 75, or killed by SIGTERM / SIGUSR1) is likewise stopped, not failed;
- one sweep writes a results file at a time: a second one into the same folder and file is refused
  (dirlock.py); the shards of a sweep, each with its own file, may share the folder.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from cityseg_fast import dirlock
from cityseg_fast.bench.sweep_spec import PACKAGE_ROOT, SweepPoint, SweepSpec, halved
from cityseg_fast.config import dump_config
from cityseg_fast.errors import Preempted, UserError
from cityseg_fast.preemption import StopRequest, catch_stop_signals, stopped_status
from cityseg_fast.results import (
    MAX_BATCH_SEARCH_FROM,
    POINT_WALL_S,
    Row,
    append_row,
    read_rows,
    results_files,
    row_for,
    split_unresolved,
)
from cityseg_fast.results.scenarios import IMAGES_PER_S, VISIBLE_DEVICES

# Starts a point's child now and returns the function that waits for it and gives its rows: the point's own
# first, then any more the measurement records (an accuracy point's one per eval scale: results.rows_for);
# None when a stop signal ended it first.
Runner = Callable[[SweepPoint, Path, float, tuple[str, ...]], Callable[[], list[Row] | None]]

_LIVE: set[subprocess.Popen] = set()  # children in flight, stopped together on Ctrl-C
_LIVE_LOCK = threading.Lock()
_STOPPING = threading.Event()  # the sweep was told to stop: a child that ends without a row was stopped


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


_DIE_WITH_PARENT = _pdeathsig()


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
        preexec_fn=_DIE_WITH_PARENT,
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
    if not rows and not timed_out and (_STOPPING.is_set() or stopped_status(proc.returncode)):
        return None  # stopped, not failed: no row (torchrun's exit status is 1 then, hence _STOPPING)
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


def _signal_children() -> list[subprocess.Popen]:
    """SIGTERM to every child in flight (torchrun passes it on to its workers); returns them."""
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for proc in procs:
        proc.terminate()
    return procs


def _stop_children() -> None:
    procs = _signal_children()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


# ---------------------------------------------------------------------------------------------
# the sweep


@dataclass
class ProgressLine:
    """One point's line in the live table; the numbers as shown ('' until the point finishes)."""

    scenario: str
    point: str  # the sweep point's label
    devices: str  # the devices it runs on, comma-separated ('' without a device list)
    status: str  # running | skipped | ok | oom | error | stopped
    images_per_s: str = ""
    wall_s: str = ""


@dataclass
class Progress:
    total: int
    devices: bool = False  # show the devices column
    lines: list[ProgressLine] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "oom": 0, "error": 0, "skipped": 0})

    def add(self, sp: SweepPoint, status: str, devices: tuple[str, ...] = ()) -> int:
        self.lines.append(ProgressLine(sp.scenario, sp.label, ",".join(devices), status))
        if status == "skipped":
            self.counts["skipped"] += 1
        return len(self.lines) - 1

    def finish(self, i: int, row: Row) -> None:
        ips, wall = row.metrics.get(IMAGES_PER_S), row.sweep.get(POINT_WALL_S)
        line = self.lines[i]
        line.status = row.status
        line.images_per_s = f"{ips:.1f}" if isinstance(ips, float) else ""
        line.wall_s = f"{wall:.0f}" if isinstance(wall, float) else ""
        self.counts[row.status] += 1

    def stopped(self, i: int) -> None:
        """Point `i` was ended by a stop signal before it finished: no row."""
        self.lines[i].status = "stopped"
        self.counts["stopped"] = self.counts.get("stopped", 0) + 1

    def table(self, title: str) -> Any:
        t = Table(
            title=f"{title}: {sum(self.counts.values())}/{self.total}  "
            + "  ".join(f"{k} {v}" for k, v in self.counts.items())
        )
        cols = ["scenario", "point"] + (["devices"] if self.devices else []) + ["status", "images/s", "s"]
        for col in cols:
            t.add_column(col, justify="right" if col in ("images/s", "s") else "left")
        for ln in self.lines[-30:]:
            color = {"ok": "green", "oom": "yellow", "error": "red", "skipped": "dim", "running": "cyan",
                     "stopped": "magenta"}[ln.status]  # fmt: skip
            status = f"[{color}]{ln.status}[/{color}]"
            where = [ln.devices] if self.devices else []
            t.add_row(ln.scenario, ln.point, *where, status, ln.images_per_s, ln.wall_s)
        return t


class _Devices:
    """The free devices; without a list, one slot (one point at a time, on whatever the child sees)."""

    def __init__(self, devices: Sequence[str] | None) -> None:
        self.all = list(devices or [])
        self.free = list(self.all)
        self.running = 0

    def take(self, n: int) -> tuple[str, ...] | None:
        if not self.all:
            return None if self.running else self._took(())
        if len(self.free) < n:
            return None
        got, self.free = tuple(self.free[:n]), self.free[n:]
        return self._took(got)

    def _took(self, got: tuple[str, ...]) -> tuple[str, ...]:
        self.running += 1
        return got

    def give(self, got: tuple[str, ...]) -> None:
        self.running -= 1
        self.free = [d for d in self.all if d in self.free or d in got]


def check_devices(spec: SweepSpec, devices: Sequence[str] | None) -> None:
    """A UserError when a point needs more devices than the list has (it could never start)."""
    if devices is None:
        return
    big = [sp.world_size for sp in spec.points if sp.world_size > len(devices)]
    if big:
        raise UserError(
            f"--devices {','.join(devices)}: {len(devices)} device(s), but {len(big)} point(s) of {spec.source} "
            f"need world_size {max(big)}; list more devices or leave those points out (--only)"
        )


def done_ids(out: Path, done_status: Sequence[str] = ("ok", "oom")) -> set[str]:
    """Point ids already measured (with one of `done_status`) in any results file of `out`; rows under
    an unresolved variable never count."""

    real, _ = split_unresolved(read_rows(results_files(out)))
    return {r.point_id for r in real if r.status in done_status}


def run_sweep(
    spec: SweepSpec,
    out_dir: str | os.PathLike,
    *,
    retry_oom: bool = False,
    live: bool = True,
    time_budget_s: float | None = None,
    devices: Sequence[str] | None = None,
    runner: Runner = start_point,
) -> dict[str, int]:
    """Run every point not already done; returns counts {ok, oom, error, skipped[, not_started]}.

    devices: run points side by side on these (see the module docstring). time_budget_s: start no new
    point once this much wall time has passed (points in flight finish, bounded by the spec's timeout_s);
    the rest is left for a rerun, which resumes. runner: how a point is started (tests pass a stub).
    Holds the out folder's lock for its results file; a stop signal (or a point stopped by one) ends it
    with Preempted once the points in flight have ended (see the module docstring)."""

    check_devices(spec, devices)
    out = Path(out_dir)
    scope = None if spec.shard is None else Path(spec.results_file).stem  # shards share the folder
    with dirlock.held(out, "cityseg sweep", scope), catch_stop_signals() as stop:
        state = _Sweep(spec, out, retry_oom, devices, runner)
        _run_points(state, live, time_budget_s, stop)
    if stop.requested or state.progress.counts.get("stopped"):
        raise Preempted(state.stopped_text(stop))
    return state.progress.counts


def _run_points(state: _Sweep, live: bool, time_budget_s: float | None, stop: StopRequest) -> None:
    """run_sweep's loop: start what the devices allow, collect what finishes, until nothing is left."""
    t0, name, console = time.perf_counter(), state.spec.name, Console(stderr=True)
    table = state.progress.table(name)
    try:
        with Live(table, console=console, refresh_per_second=2, transient=False, auto_refresh=live) as view:
            while state.todo or state.slots.running:
                if stop.requested:
                    state.stop()
                elif time_budget_s is not None and time.perf_counter() - t0 > time_budget_s and state.todo:
                    state.progress.counts["not_started"] = len(state.todo)
                    state.todo.clear()
                state.start_ready()
                view.update(state.progress.table(name))
                if state.slots.running:
                    state.collect_one(stop)
                    view.update(state.progress.table(name))
    except BaseException:  # Ctrl-C (or a bug): no child outlives the sweep
        _stop_children()
        raise
    finally:
        if not console.is_terminal:  # rich ends the table there without a newline: the next line would join it
            console.line()


class _Sweep:
    """The running state of run_sweep: the queue, the devices, the points in flight, the progress."""

    def __init__(self, spec: SweepSpec, out: Path, retry_oom: bool, devices: Sequence[str] | None,
                 runner: Runner) -> None:  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        self.work = out / "points"
        self.work.mkdir(exist_ok=True)
        self.spec, self.results, self.runner = spec, out / spec.results_file, runner
        self.done_status = ("ok",) if retry_oom else ("ok", "oom")
        self.done = done_ids(out, self.done_status)
        self.slots = _Devices(devices)
        self.todo = list(spec.points)
        self.progress = Progress(total=len(spec.points), devices=bool(devices))
        self.finished: queue.Queue[tuple[SweepPoint, tuple[str, ...], int, Any]] = queue.Queue()
        self.stopping = False
        _STOPPING.clear()

    def stop(self) -> None:
        """A stop signal came: no new point starts, the running ones get SIGTERM (once)."""
        if self.stopping:
            return
        self.stopping = True
        _STOPPING.set()  # before the children end: one that ends without a row is then stopped, not failed
        if self.todo:
            self.progress.counts["not_started"] = len(self.todo)
            self.todo.clear()
        _signal_children()

    def stopped_text(self, stop: StopRequest) -> str:
        """Preempted's line: what was stopped, what was kept."""
        c = self.progress.counts
        by = f"stopped by {stop.name}" if stop.requested else "a point was stopped by a signal"
        return (f"{by}: {c.get('stopped', 0)} point(s) stopped before they finished, {c.get('not_started', 0)} "
                f"not started; every finished point's row is in {self.results}; rerun the same command to "
                "resume")  # fmt: skip

    def start_ready(self) -> None:
        """Start points in order while the next one's devices are free; skip those already done."""
        while self.todo:
            sp = self.todo[0]
            if sp.id in self.done:
                self.todo.pop(0)
                self.progress.add(sp, "skipped")
                continue
            got = self.slots.take(sp.world_size)
            if got is None:
                return
            self.todo.pop(0)
            try:
                wait = self.runner(sp, self.work, self.spec.timeout_s, got)
            except BaseException:
                self.slots.give(got)
                raise
            i = self.progress.add(sp, "running", got)
            threading.Thread(target=self._wait, args=(sp, got, i, wait), daemon=True).start()

    def _wait(self, sp: SweepPoint, got: tuple[str, ...], i: int, wait: Callable[[], list[Row] | None]) -> None:
        try:
            result: Any = wait()
        except BaseException as e:  # handed to the main thread, which raises it
            result = e
        self.finished.put((sp, got, i, result))

    def collect_one(self, stop: StopRequest) -> None:
        """Wait for a point to finish, append its row (the parent alone writes), free its devices; return
        early when a stop signal comes, for the caller to stop the points first."""
        while True:
            try:
                sp, got, i, rows = self.finished.get(timeout=0.5)
                break
            except queue.Empty:
                if stop.requested and not self.stopping:
                    return
        self.slots.give(got)
        if isinstance(rows, BaseException):
            raise rows
        if rows is None:  # ended by a stop signal: no row, a rerun measures it
            self.progress.stopped(i)
            return
        for r in rows:
            append_row(self.results, r)
        row = rows[0]  # the point's own: what the progress shows and the batch search reads
        self.progress.finish(i, row)
        if row.status in self.done_status:  # a max-batch-search try may be a later point of the grid
            self.done.add(row.point_id)
        if row.status == "oom" and self.spec.max_batch_search and not self.stopping:
            nxt = halved(sp)
            if nxt is not None:
                self.progress.total += 1
                self.todo.insert(0, nxt)

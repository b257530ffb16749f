"""Map a function over tasks in spawned worker processes with a progress bar (synth, prepare); never hangs.

    run_parallel(fn, tasks, workers=4, progress=True, what="prepare", name=lambda t: str(t.image))

Each worker has its own pipe and holds one task at a time, so the parent always knows which task each
worker is processing. An error in one task (a UserError naming a corrupt file, a full disk) stops the map:
no new task starts, the tasks under way finish (so none is left half-written), the workers exit and the
error is raised. A worker that dies (the out-of-memory killer, a signal) is one line naming its task.
SIGTERM or SIGUSR1 (a cluster's time limit or preemption, sent to every process of the job) stops the map
the same way: the workers ignore it, the tasks under way finish, and Preempted says how many are done
(exit 75: rerunning the command continues, as synth and prepare skip or redo whole files only).

Why not multiprocessing.Pool: its terminate() on an error can hang forever when its task-handler thread
is blocked on a full pipe of queued tasks (seen in a test of prepare's error path). Why not
concurrent.futures.ProcessPoolExecutor: when a worker dies it fails every pending task alike
(BrokenProcessPool) and cannot say which task that worker held. Here nothing is queued in a shared pipe,
and no worker is killed while another one's error is raised.
"""

from __future__ import annotations

import collections
import multiprocessing as mp
import multiprocessing.connection
import pickle
import signal
import traceback
from collections.abc import Callable
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cityseg_fast.errors import Preempted, UserError
from cityseg_fast.preemption import StopRequest, catch_stop_signals, ignore_stop_signals


def run_parallel(
    fn: Callable, tasks: list, workers: int, progress: bool, what: str, name: Callable[[Any], str] = str
) -> list:
    """`fn` mapped over `tasks` in `workers` spawned processes (inline for one), results in completion
    order, with a progress bar titled `what`; `name(task)` names a task in the line for a dead worker."""

    with Progress(
        TextColumn(f"[bold]{what}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        disable=not progress, transient=False,
    ) as bar, catch_stop_signals() as stop:
        job = bar.add_task(what, total=len(tasks))
        if workers <= 1:
            results = []
            for task in tasks:
                if stop.requested:
                    break
                results.append(fn(task))
                bar.advance(job)
        else:
            results = _map(fn, tasks, min(workers, len(tasks)), lambda: bar.advance(job), name, stop)
    if stop.requested:  # also after the last task: the caller's next step must not start
        raise Preempted(f"stopped by {stop.name} during {what} after {len(results)} of {len(tasks)} items (each one "
                        "written whole); rerun the same command to continue")  # fmt: skip
    return results


def _map(fn: Callable, tasks: list, workers: int, advance: Callable[[], None], name: Callable[[Any], str],
         stop: StopRequest) -> list:  # fmt: skip
    ctx = mp.get_context("spawn")
    pool = [_Worker(ctx, fn) for _ in range(workers)]
    queue = collections.deque(tasks)
    results: list = []
    error: BaseException | None = None
    try:
        for w in pool:
            w.give(queue)
        while busy := {w.conn: w for w in pool if w.task is not None}:
            for conn in mp.connection.wait(list(busy)):
                w = busy[conn]
                ok, value = w.receive(name)
                if ok:
                    results.append(value)
                    advance()
                elif error is None and not (stop.requested and isinstance(value, WorkerDied)):
                    error = value  # (a worker the job's stop signal killed while it started is not one)
                    queue.clear()  # no new task starts; the ones under way finish
                if stop.requested:
                    queue.clear()  # likewise
                w.give(queue)
    except BaseException:  # Ctrl-C or a bug here: stop at once
        for w in pool:
            w.proc.kill()
        raise
    finally:
        for w in pool:
            w.stop()
    if error is not None:
        raise error
    return results


class _Worker:
    """One spawned process serving tasks over its own pipe, and the task it holds (None: idle)."""

    def __init__(self, ctx: Any, fn: Callable) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, fn), daemon=True)
        self.proc.start()
        child.close()  # the worker's end lives in the worker only: its death reads as EOF here
        self.task: Any = None
        self.alive = True

    def give(self, queue: collections.deque) -> None:
        """The next task from `queue`, if any (none for a dead worker)."""
        self.task = queue.popleft() if queue and self.alive else None
        if self.task is not None:
            try:
                self.conn.send((self.task,))
            except OSError:  # it died since its last answer: the next wait reads EOF and names this task
                pass

    def receive(self, name: Callable[[Any], str]) -> tuple[bool, Any]:
        """(True, result) or (False, the exception to raise) for the task this worker held."""
        task, self.task = self.task, None
        try:
            ok, value = self.conn.recv()
        except (EOFError, OSError):
            self.alive = False
            self.proc.join()
            death = process_death(self.proc.exitcode)
            return False, WorkerDied(f"{name(task)}: the worker process handling it {death}; "
                                    "free memory or use fewer --workers, then rerun")  # fmt: skip
        if not ok:
            value, tb = value
            if not isinstance(value, UserError):  # a bug: keep the worker's traceback
                value.__cause__ = RemoteTraceback(tb)
        return ok, value

    def stop(self) -> None:
        if self.alive and self.proc.is_alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
        self.proc.join()
        self.conn.close()


class WorkerDied(UserError):
    """A worker process died holding a task (the out-of-memory killer, a signal): one line naming the task."""


class RemoteTraceback(Exception):
    """A worker's traceback, shown as the cause of the exception re-raised in the parent."""

    def __str__(self) -> str:
        return self.args[0]


def process_death(exitcode: int | None) -> str:
    """How a process ended, to follow "the worker ...": "was killed by SIGKILL (...)", "exited with status 1"."""
    if exitcode is not None and exitcode < 0:
        sig = signal.Signals(-exitcode).name
        oom = " (the out-of-memory killer sends it)" if -exitcode == signal.SIGKILL else ""
        return f"was killed by {sig}{oom}"
    return f"exited with status {exitcode}"


def _serve(conn: Any, fn: Callable) -> None:
    """A worker's loop: run `fn` on each task received, answer (True, result) or (False, (error, traceback))."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the parent decides
    ignore_stop_signals()  # so do a job's SIGTERM / SIGUSR1: the parent stops handing out tasks
    try:
        while (msg := conn.recv()) is not None:
            try:
                reply = (True, fn(msg[0]))
            except Exception as e:
                reply = (False, _portable(e))
            conn.send(reply)
    except EOFError:  # the parent is gone
        pass


def _portable(e: Exception) -> tuple[Exception, str]:
    """`e` and its traceback text, `e` replaced by a RuntimeError saying what it was if it cannot be pickled."""
    tb = "".join(traceback.format_exception(e))
    try:
        pickle.loads(pickle.dumps(e))
    except Exception:
        e = RuntimeError(f"{type(e).__name__}: {e}")
    return e, tb

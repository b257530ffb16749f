"""data/parallel.py: an error stops the map without a hang, a dead worker is one line naming its task."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from engine_fixtures import REPO, child_pids, deadline
from pool_fixtures import bug_at, fail_at, killed_at, name, stopped_at

from cityseg_fast.data.parallel import RemoteTraceback, run_parallel
from cityseg_fast.errors import Preempted, UserError

TESTS = REPO / "tests"


def test_results_of_every_task_inline_and_in_workers():
    tasks = [(i, -1) for i in range(40)]
    assert run_parallel(fail_at, tasks, 1, False, "t", name) == list(range(40))
    with deadline(120):
        assert sorted(run_parallel(fail_at, tasks, 2, False, "t", name)) == list(range(40))


def test_an_early_failure_among_thousands_of_tasks_never_hangs_repeated():
    # multiprocessing.Pool hung here about once in 80 runs (terminate() behind a task handler blocked on a
    # full pipe of queued tasks); 20 runs in a child process, which the timeout ends if one hangs.
    code = textwrap.dedent("""
        from pool_fixtures import fail_at, name
        from cityseg_fast.data.parallel import run_parallel
        from cityseg_fast.errors import Preempted, UserError
        for rep in range(20):
            try:
                run_parallel(fail_at, [(i, 5) for i in range(3000)], 2, False, "stress", name)
            except UserError as e:
                assert str(e) == "item 5: cannot process it", e
            else:
                raise AssertionError("the failure was not raised")
        print("20 runs stopped")
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its workers too
        proc.communicate()
        pytest.fail("run_parallel hung after an early failure")
    assert proc.returncode == 0 and "20 runs stopped" in out, err[-3000:]


def test_a_worker_killed_by_a_signal_is_one_line_naming_its_task():
    tasks = [(i, 7) for i in range(200)]
    with deadline(120), pytest.raises(UserError) as e:
        run_parallel(killed_at, tasks, 2, False, "t", name)
    msg = str(e.value)
    assert msg.startswith("item 7: ") and "SIGKILL" in msg and "\n" not in msg, msg


def test_a_bug_in_a_worker_keeps_its_traceback():
    with deadline(120), pytest.raises(ValueError, match="a bug at item 3") as e:
        run_parallel(bug_at, [(i, 3) for i in range(20)], 2, False, "t", name)
    assert isinstance(e.value.__cause__, RemoteTraceback)
    assert "bug_at" in str(e.value.__cause__)  # the worker's frames


def test_a_synth_worker_killed_mid_run_is_one_line_naming_its_frame(tmp_path):
    out = tmp_path / "synth"
    cmd = [sys.executable, "-m", "cityseg_fast", "synth", "--out", str(out), "--train", "2000", "--val", "0",
           "--test", "0", "--size", "64x128", "--workers", "2", "--no-progress"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        with deadline(120):
            while len(workers := child_pids(proc.pid, b"spawn_main")) < 2 or not any(out.rglob("*_labelIds.png")):
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.02)
            os.kill(workers[0], signal.SIGKILL)  # mid-run: frames are being written
            _, err = proc.communicate()
    except TimeoutError:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("cityseg synth: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert "_leftImg8bit.png: the worker process handling it was killed by SIGKILL" in lines[0], lines[0]


def test_a_stop_signal_ends_the_map_after_the_task_under_way():
    """SIGTERM while task 3 runs (inline, in this process): task 3 finishes, no other starts, Preempted."""
    with pytest.raises(Preempted, match=r"^stopped by SIGTERM during t after 4 of 10 items"):
        run_parallel(stopped_at, [(i, 3) for i in range(10)], 1, False, "t", name)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is this map's only

"""Shared fixtures. Tests run on the CPU; GPU tests are marked `gpu` and skipped without CUDA.

Switches for a run that must prove something (benchmarks/gpu_session.py sets them):
- CITYSEG_REQUIRE_GPU=1: a `gpu` test fails where it would skip (no usable CUDA, or a skip of its own),
  so a suite that could not run counts as failed, not as passed;
- CITYSEG_TEST_TIMEOUT_S=N: each test fails after N s (SIGALRM in the test's Python code); one stuck in C
  code ends the whole run at N + 30 s with every thread's traceback (faulthandler), never hangs it;
- CITYSEG_TEST_LOG=FILE: one JSON line per collected list, test start and phase result, appended as they
  happen, so which tests passed survives a kill (pytest's --junitxml is written only at the end);
- CITYSEG_TEST_DEADLINE=EPOCH_S: no test starts within CITYSEG_TEST_MIN_S (default 15) of it, and none
  runs past it (its time limit is cut to the deadline); the run stops there cleanly (exit 2, its junit
  XML written) for a later run to resume.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import signal
import sys
import threading
import time

import pytest

# Keep CPU tests predictable on small CI machines.
os.environ.setdefault("OMP_NUM_THREADS", "2")

REQUIRE_GPU = os.environ.get("CITYSEG_REQUIRE_GPU", "") == "1"
TIMEOUT_S = float(os.environ.get("CITYSEG_TEST_TIMEOUT_S") or 0)
DEADLINE = float(os.environ.get("CITYSEG_TEST_DEADLINE") or 0)
MIN_TEST_S = float(os.environ.get("CITYSEG_TEST_MIN_S") or 15)
LOG = os.environ.get("CITYSEG_TEST_LOG", "")
HARD_STOP_GRACE_S = 30  # after the soft timeout, before faulthandler ends the run


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available() or REQUIRE_GPU:  # required: pytest_runtest_setup fails them instead
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if REQUIRE_GPU and rep.skipped and "gpu" in item.keywords:
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"CITYSEG_REQUIRE_GPU=1: a gpu test may not skip ({reason})"


# -- a resumable, bounded run -------------------------------------------------------------------


def _log(**record) -> None:
    if LOG:
        with open(LOG, "a") as f:
            f.write(json.dumps({"t": round(time.time(), 1), **record}) + "\n")


def pytest_collection_finish(session):
    _log(event="collected", nodeids=[item.nodeid for item in session.items])


def pytest_runtest_logstart(nodeid, location):
    _log(event="start", nodeid=nodeid)


def pytest_runtest_logreport(report):
    _log(event="report", nodeid=report.nodeid, when=report.when, outcome=report.outcome)


class TimeLimitExceeded(Exception):
    """The test ran longer than CITYSEG_TEST_TIMEOUT_S."""


def _on_alarm(signum, frame):
    raise TimeLimitExceeded(f"CITYSEG_TEST_TIMEOUT_S={TIMEOUT_S:.0f} or CITYSEG_TEST_DEADLINE: the test ran longer")


def _limit_s() -> float:
    """This phase's time limit: the per-test one, cut to what is left before the deadline; 0 = none."""
    if DEADLINE:
        left = max(1.0, DEADLINE - time.time())
        return min(TIMEOUT_S, left) if TIMEOUT_S else left
    return TIMEOUT_S


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    if DEADLINE and time.time() + MIN_TEST_S > DEADLINE:
        item.session.shouldstop = "CITYSEG_TEST_DEADLINE: too little time left for the next test"
        _log(event="deadline", nodeid=item.nodeid)
        return True  # handled: not run; the run loop stops after this
    return None


@contextlib.contextmanager
def _time_limit():
    """CITYSEG_TEST_TIMEOUT_S around one phase of a test (setup, call), where signals can reach it."""
    limit = _limit_s()
    armed = limit > 0 and threading.current_thread() is threading.main_thread() and sys.platform != "win32"
    if armed:
        previous = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, limit)
        faulthandler.dump_traceback_later(limit + HARD_STOP_GRACE_S, exit=True)
    try:
        yield
    finally:
        if armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            faulthandler.cancel_dump_traceback_later()
            signal.signal(signal.SIGALRM, previous)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    with _time_limit():  # fixtures count: a session fixture may build datasets or pipelines
        if REQUIRE_GPU and "gpu" in item.keywords:
            import torch

            if not torch.cuda.is_available():
                msg = "CITYSEG_REQUIRE_GPU=1: this gpu test needs a usable CUDA GPU, and there is none"
                pytest.fail(msg, pytrace=False)
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    with _time_limit():
        yield


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    on a shared 2-core runner, 2 spinning OpenMP threads made small model tests 3-50x slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

"""Loader workers that fail mid-epoch, through the CLI: a torch DataLoader worker killed by a signal, and a
DALI pipeline whose decoding thread raises, each end `cityseg bench loader` with one
line and a non-zero exit, never a hang (a timeout makes one a failure)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from engine_fixtures import PY, REPO, child_pids, env
from loader_fixtures import write_prepared

from cityseg_fast.data import dali

TIMEOUT_S = 120  # a hang fails the test after this long


def _loader_workers(pid: int) -> list[int]:
    """The DataLoader workers of process `pid`: they are started by its forkserver, a child of it."""
    return [w for server in child_pids(pid, b"forkserver") for w in child_pids(server)]


def _bench_loader(root: Path, *args: str) -> subprocess.Popen:
    cmd = [PY, "-m", "cityseg_fast", "bench", "loader", "--data", str(root), "--crop", "64x128",
           "--batch-size", "2", "--warmup", "1", *args]  # fmt: skip
    return subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"the loader hung: no exit within {TIMEOUT_S} s")
    return proc.returncode, err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("cityseg bench: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def test_a_torch_loader_worker_killed_mid_epoch_is_one_line(tmp_path):
    root = write_prepared(tmp_path, {"train": 8})
    proc = _bench_loader(root, "--loader", "torch", "--iters", "1000000", "loader.num_workers=2")
    deadline = time.monotonic() + TIMEOUT_S
    while len(workers := _loader_workers(proc.pid)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(workers) == 2, f"no DataLoader workers appeared (exit {proc.poll()})"
    time.sleep(0.5)  # mid-epoch: both are loading batches (an epoch here is 4 batches, the run endless)
    os.kill(workers[0], signal.SIGKILL)  # as the out-of-memory killer would
    code, err = _finish(proc)
    assert code != 0
    line = _one_error_line(err)
    assert f"worker process {workers[0]} was killed by SIGKILL" in line, line


@pytest.mark.skipif(not dali.dali_available(), reason="nvidia.dali not installed")
def test_a_dali_decoder_thread_that_raises_mid_epoch_is_one_line(tmp_path):
    # DALI decodes in its own threads: a corrupt JPEG fails there. (An input callback that raises, on a
    # corrupt .npy label, is test_dali.py's test_corrupt_npy_label_mid_epoch_names_it.)
    root = write_prepared(tmp_path, {"train": 8})
    bad = sorted((root / "train" / "images").iterdir())[5]
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not an image " * 20)
    proc = _bench_loader(root, "--loader", "dali", "--device", "cpu", "--iters", "1000000")
    code, err = _finish(proc)
    assert code == 2
    assert str(bad) in _one_error_line(err)

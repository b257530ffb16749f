"""One writer per directory: a live holder is named and refused, a dead one's lock is taken over silently, a
released one's file is gone, holds nest in one process, sweep shards have their own locks; prepare and sweep
refuse a second writer."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess

import pytest
from engine_fixtures import PY, REPO, env, write_tiny_cityscapes

from cityseg_fast import dirlock
from cityseg_fast.bench.sweep import run_sweep
from cityseg_fast.bench.sweep_spec import SweepSpec
from cityseg_fast.cli import main
from cityseg_fast.errors import UserError

HOLD = "import sys; from cityseg_fast import dirlock; dirlock.hold(sys.argv[1], sys.argv[2]); print('held', flush=True); sys.stdin.read()"  # noqa: E501


def _holder(directory, command="cityseg train") -> subprocess.Popen:
    """Another process holding `directory`'s lock until its stdin closes (or it is killed)."""
    proc = subprocess.Popen([PY, "-c", HOLD, str(directory), command], cwd=REPO, env=env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_holder_is_refused_by_name_and_a_killed_ones_lock_taken_over(tmp_path):
    out = tmp_path / "run"
    proc = _holder(out)
    try:
        with pytest.raises(UserError) as refused:
            dirlock.hold(out, "cityseg train")
        line = str(refused.value)
        assert "\n" not in line and line.startswith(f"{out}: pid {proc.pid} on host {socket.gethostname()} ")
        assert "(cityseg train, since 20" in line and "is writing here" in line
    finally:
        proc.send_signal(signal.SIGKILL)  # no clean-up: the kernel drops the lock, the file stays
        proc.wait()
    assert json.loads((out / dirlock.LOCK_FILE).read_text())["pid"] == proc.pid
    with dirlock.held(out, "cityseg train"):  # taken over, silently
        assert json.loads((out / dirlock.LOCK_FILE).read_text())["pid"] == os.getpid()


def _refused_elsewhere(directory) -> str:
    """dirlock.hold(directory) tried by another process: the refusal it printed ('' if it got the lock)."""
    p = subprocess.run([PY, "-c", HOLD, str(directory), "x"], cwd=REPO, env=env(), input="", text=True,
                       capture_output=True)  # fmt: skip
    return p.stderr.strip().splitlines()[-1] if p.returncode else ""


def test_holds_nest_in_one_process_and_sweep_shards_lock_apart(tmp_path):
    outer = dirlock.hold(tmp_path, "cityseg study")
    with dirlock.held(tmp_path, "cityseg sweep"):  # the study's own sweep: the same writer, no refusal
        pass
    assert outer.fd is not None  # the inner release left the outer hold
    assert f"pid {os.getpid()} on host" in _refused_elsewhere(tmp_path)  # and it still keeps others out
    outer.release()
    assert outer.fd is None and not (tmp_path / dirlock.LOCK_FILE).exists()  # released: the file is gone
    assert _refused_elsewhere(tmp_path) == ""
    with dirlock.held(tmp_path, "cityseg sweep", "results.shard-0-of-2"):
        with dirlock.held(tmp_path, "cityseg sweep", "results.shard-1-of-2") as second:
            assert second.path.name == ".cityseg.results.shard-1-of-2.lock"


def test_a_second_prepare_or_sweep_into_a_live_folder_is_refused(tmp_path, capsys):
    src, out = write_tiny_cityscapes(tmp_path / "src", {"train": 1, "val": 1}, size=(16, 32)), tmp_path / "out"
    prepare = ["prepare", "--src", str(src), "--out", str(out), "--no-progress", "--workers", "1"]
    proc = _holder(out, "cityseg prepare")
    try:
        assert main(prepare) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{out}: pid {proc.pid} on host" in err, err
        with pytest.raises(UserError, match=f"pid {proc.pid} on host .*cityseg prepare"):
            run_sweep(SweepSpec(name="t", points=[]), out, live=False)
    finally:
        proc.communicate("")
    proc = _holder(out, "cityseg prepare")
    proc.send_signal(signal.SIGKILL)  # a killed holder's lock file stays ...
    proc.wait()
    assert main(prepare) == 0  # ... and does not make `out` "not empty": taken over
    assert (out / "manifest.json").is_file() and not (out / dirlock.LOCK_FILE).exists()

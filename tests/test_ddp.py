"""DDP: a 2-process gloo run under torchrun keeps bit-identical replicas, and the check can tell; so does a
run over two "nodes" (two torchrun launchers, one process each, --node_rank 0 and 1, master 127.0.0.1); a
rank stopped mid-training makes the other fail within train.dist_timeout_s with one line; a torchrun job is
one writer of its run directory, and SIGTERM to one rank stops both at the same iteration, saved there."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch
from engine_fixtures import (
    PY,
    REPO,
    TORCHRUN,
    child_pids,
    env,
    free_port,
    tiny_overrides,
    torchrun,
    torchrun_nodes,
    write_tiny_cityscapes,
)

from cityseg_fast.cli import main
from cityseg_fast.dirlock import LOCK_FILE
from cityseg_fast.engine.checkpoint import list_checkpoints, load_checkpoint
from cityseg_fast.engine.dist import fingerprint

pytestmark = pytest.mark.usefixtures("one_thread")


def test_fingerprint_sees_a_one_element_change():
    a = torch.nn.Conv2d(3, 4, 3)
    b = torch.nn.Conv2d(3, 4, 3)
    b.load_state_dict(a.state_dict())
    assert torch.equal(fingerprint(a), fingerprint(b))
    with torch.no_grad():
        b.weight[1, 2, 0, 1] += 1e-6
    assert not torch.equal(fingerprint(a), fingerprint(b))
    with torch.no_grad():  # a permutation keeps the plain sum; the position-weighted sum catches it
        b.load_state_dict(a.state_dict())
        b.weight.copy_(a.weight.flip(0))
    assert not torch.equal(fingerprint(a), fingerprint(b))


def test_two_process_gloo_training_keeps_replicas_identical(tmp_path):
    data = write_tiny_cityscapes(tmp_path / "data")
    out = tmp_path / "run"
    # batch 2 per rank x 2 ranks = the global batch of the 1-process tests; BatchNorm stays per rank
    over = tiny_overrides(data, out, iters=10, **{"loader.batch_size": 2, "train.ckpt_interval": 10})
    p = torchrun(2, "train", *over, "--json")
    summary = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])
    assert summary["world_size"] == 2 and summary["iters"] == 10
    assert summary["replicas_in_sync"] is True
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["event"] == "start" and rows[0]["world_size"] == 2
    (ev,) = [r for r in rows if r["event"] == "eval"]
    assert ev["images"] == 4  # each val image counted once across the two ranks
    ck = load_checkpoint(list_checkpoints(out)[-1])
    assert ck["iteration"] == 10
    assert not any(k.startswith("module.") for k in ck["model"])  # saved without the DDP wrapper


def test_two_nodes_train_in_sync_and_evaluate_each_image_once(tmp_path):
    data = write_tiny_cityscapes(tmp_path / "data", {"train": 8, "val": 5})  # 5: a padded last eval batch
    out = tmp_path / "run"
    over = tiny_overrides(data, out, iters=4, **{"loader.batch_size": 2, "train.log_interval": 2})
    node0, node1 = torchrun_nodes(2, "train", *over, "--json")
    assert not [ln for ln in node1.stdout.splitlines() if ln.startswith("{")]  # rank 0 alone reports
    summary = json.loads([ln for ln in node0.stdout.splitlines() if ln.startswith("{")][-1])
    assert summary["world_size"] == 2 and summary["iters"] == 4 and summary["replicas_in_sync"] is True
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["event"] == "start" and rows[0]["world_size"] == 2
    (ev,) = [r for r in rows if r["event"] == "eval"]  # evaluated once, across both nodes
    assert ev["images"] == 5  # every val image counted once: none twice, no padding counted
    assert load_checkpoint(list_checkpoints(out)[-1])["iteration"] == 4


def test_a_stopped_rank_makes_the_other_fail_with_one_line_within_the_timeout(tmp_path):
    data = write_tiny_cityscapes(tmp_path / "data", {"train": 4, "val": 2})
    out = tmp_path / "run"
    over = tiny_overrides(data, out, iters=1_000_000, **{
        "loader.batch_size": 2, "train.log_interval": 2, "train.ckpt_interval": 1_000_000,
        "train.dist_timeout_s": 5,
    })  # fmt: skip
    # The two ranks as torchrun starts them, without torchrun: each rank's own stderr, and no agent that
    # would end the stopped one for us.
    port = free_port()
    ranks = []
    for rank in range(2):
        e = {**env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}  # fmt: skip
        ranks.append(subprocess.Popen([PY, "-m", "cityseg_fast", "train", *over], cwd=REPO, env=e,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))  # fmt: skip
    try:
        metrics, deadline = out / "metrics.jsonl", time.monotonic() + 180
        while not (metrics.exists() and '"train"' in metrics.read_text()):  # mid-training: a step was logged
            assert ranks[0].poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.1)
        ranks[1].send_signal(signal.SIGSTOP)  # stopped, not dead: its sockets stay open
        try:
            _, err = ranks[0].communicate(timeout=5 + 90)  # the timeout, and time to start failing
        except subprocess.TimeoutExpired:
            pytest.fail("rank 0 hung behind the stopped rank 1")
    finally:
        for p in ranks:
            p.kill()
            p.communicate()
    assert ranks[0].returncode == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("cityseg train: error:")]
    assert len(lines) == 1 and "Traceback" not in err and "terminate called" not in err, err[-3000:]
    assert "rank 0 of 2:" in lines[0] and "timed out after 5 s (train.dist_timeout_s): rank 1 did not" in lines[0]


def _rank(pid: int) -> int:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return int(next(v for v in environ if v.startswith(b"RANK=")).removeprefix(b"RANK="))


def test_a_torchrun_job_is_one_writer_and_sigterm_to_one_rank_stops_both_at_one_saved_iteration(
    tmp_path, capsys
):
    data = write_tiny_cityscapes(tmp_path / "data")
    out = tmp_path / "run"
    over = tiny_overrides(data, out, iters=60, **{"loader.batch_size": 2, "train.log_interval": 2,
                                                  "train.ckpt_interval": 50})  # fmt: skip
    cmd = [*TORCHRUN, "--nproc_per_node=2", "--standalone", "-m", "cityseg_fast", "train", *over]
    with tempfile.TemporaryFile("w+") as err:
        job = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=err, text=True)
        try:
            metrics, deadline = out / "metrics.jsonl", time.monotonic() + 180
            while not (metrics.exists() and '"train"' in metrics.read_text()):
                assert job.poll() is None and time.monotonic() < deadline, "training did not start"
                time.sleep(0.05)
            ranks = {_rank(pid): pid for pid in child_pids(job.pid, b"cityseg_fast")}
            # One writer: rank 0 holds the lock, rank 1 trains beside it, a second train is refused.
            assert json.loads((out / LOCK_FILE).read_text())["pid"] == ranks[0]
            assert main(["train", *over]) == 2
            assert f"pid {ranks[0]} on host" in capsys.readouterr().err
            os.kill(ranks[1], signal.SIGTERM)  # rank 1 alone: rank 0 learns of it in the log's all-reduce
            code = job.wait(120)
        finally:
            if job.poll() is None:
                job.kill()
                job.wait()
        err.seek(0)
        lines = [ln for ln in err.read().splitlines() if ln.startswith("cityseg train: stopped by")]
    assert code == 1  # torchrun reports a worker's 75 as a failure: its own status is 1 (README)
    assert len(lines) == 2, lines
    stops = {int(re.search(r"at iteration (\d+) of 60", ln).group(1)) for ln in lines}
    assert len(stops) == 1, lines  # both ranks stopped at the same iteration
    (k,) = stops
    assert any(ln.startswith("cityseg train: stopped by SIGTERM at") for ln in lines)
    assert any("stopped by a signal to another rank" in ln and "(saved " in ln for ln in lines)
    stopped = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert stopped == {**stopped, "event": "preempted", "iter": k, "signal": None, "saved": True}
    assert load_checkpoint(out / f"ckpt_{k:08d}.pt")["iteration"] == k

    p = torchrun(2, "train", *over, "--json")  # the same command resumes there, the stale lock taken over
    summary = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])
    assert summary["start_iter"] == k and summary["iters"] == 60 and summary["replicas_in_sync"] is True

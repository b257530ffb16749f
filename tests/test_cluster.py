"""The cluster recipes (scripts/slurm/) on this machine: train.sbatch run as Slurm would run it on 2 nodes, with
`srun` and `scontrol` faked (srun starts the node script once per node, each in its own process group, as on
its own host) and the SLURM_* variables of a 2-node job: 2 gloo processes train with replicas in sync. Then a
stop signal to every node's process group: the ranks save, the job exits EXIT_PREEMPTED and asks to be
requeued. A sweep as a job array, then its merged report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from engine_fixtures import PY, REPO, env, free_port, tiny_overrides, write_tiny_cityscapes

from cityseg_fast.errors import EXIT_PREEMPTED

pytestmark = pytest.mark.usefixtures("one_thread")

FAKE_SRUN = """#!/usr/bin/env bash
# srun, faked: the command once per node, each in its own session (its process group: what a node's signal reaches)
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_JOB_NUM_NODES; i++)); do
    SLURM_NODEID=$i SLURM_PROCID=$i SLURM_LOCALID=0 setsid "$@" &
    pids+=($!)
    echo $! >> "$FAKE_SLURM_LOG.pids"
done
status=0
for p in "${pids[@]}"; do wait "$p"; s=$?; [ "$s" -gt "$status" ] && status=$s; done
exit $status
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
# scontrol, faked: the job's hosts (this one, once per node), and a requeue written down
case "$1 $2" in
    "show hostnames") for ((i = 0; i < SLURM_JOB_NUM_NODES; i++)); do echo 127.0.0.1; done ;;
    requeue*) echo "requeue $2" >> "$FAKE_SLURM_LOG" ;;
    *) echo "fake scontrol: $*" >&2; exit 1 ;;
esac
"""


def _pids_naming(path: Path) -> list[int]:
    """The processes whose command line names `path` (this test's own: the run directory is its tmp_path)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(path).encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:  # ended meanwhile
            continue
    return found


def _job(tmp_path: Path, *args: str, script: str = "train.sbatch", **slurm: str) -> subprocess.Popen:
    """scripts/slurm/SCRIPT ARGS as a 2-node job with job id 4242 (the batch shell's environment; `slurm`: more
    variables, or others)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    e = {**env(), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHON": PY, "SLURM_JOB_ID": "4242",
         "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_SUBMIT_DIR": str(REPO),
         "NPROC_PER_NODE": "1", "MASTER_PORT": str(free_port()), "FAKE_SLURM_LOG": str(tmp_path / "slurm.log"),
         **slurm}  # fmt: skip
    cmd = ["bash", str(REPO / "scripts" / "slurm" / script), *args]
    return subprocess.Popen(cmd, cwd=tmp_path, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_the_training_job_on_two_faked_nodes_keeps_its_replicas_in_sync(tmp_path):
    data = write_tiny_cityscapes(tmp_path / "data", {"train": 8, "val": 2})
    out = tmp_path / "run"
    job = _job(tmp_path, *tiny_overrides(data, out, iters=4, **{"loader.batch_size": 2, "train.log_interval": 2}),
               "--json")  # fmt: skip
    stdout, stderr = job.communicate(timeout=300)
    assert job.returncode == 0, stderr[-3000:]
    (summary,) = [json.loads(ln) for ln in stdout.splitlines() if ln.startswith("{")]  # rank 0's node alone
    assert summary["world_size"] == 2 and summary["iters"] == 4 and summary["replicas_in_sync"] is True
    assert "rendezvous 127.0.0.1:" in stderr and not (tmp_path / "slurm.log").exists()  # no requeue
    env_json = json.loads((out / "env.json").read_text())
    assert [r["rank"] for r in env_json["ranks"]] == [0, 1]  # every rank's CPU set recorded


def test_a_stop_signal_makes_the_job_exit_preempted_and_requeue(tmp_path):
    data = write_tiny_cityscapes(tmp_path / "data", {"train": 8, "val": 2})
    out = tmp_path / "run"
    over = tiny_overrides(data, out, iters=1_000_000, **{"loader.batch_size": 2, "train.log_interval": 2,
                                                         "train.ckpt_interval": 1_000_000})  # fmt: skip
    job = _job(tmp_path, *over)
    try:
        deadline = time.monotonic() + 240
        while not ((out / "metrics.jsonl").exists() and '"train"' in (out / "metrics.jsonl").read_text()):
            assert job.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        for pid in map(int, (tmp_path / "slurm.log.pids").read_text().split()):  # Slurm's --signal, per node
            os.killpg(pid, signal.SIGUSR1)
        _, stderr = job.communicate(timeout=180)
        time.sleep(1)
        left = _pids_naming(out)  # torchrun handled SIGUSR1: it stopped its workers, none is left running
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
        for pid in _pids_naming(out):  # a torchrun killed outright would leave its workers (own sessions) behind
            os.kill(pid, signal.SIGKILL)
    assert job.returncode == EXIT_PREEMPTED, stderr[-3000:]
    assert (tmp_path / "slurm.log").read_text().split() == ["requeue", "4242"]
    assert "stopped by SIGUSR1" in stderr
    assert left == []
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])  # the ranks saved, then stopped
    assert last["event"] == "preempted" and last["saved"] is True and Path(last["checkpoint"]).is_file()


SPEC = """name: tiny_array
runs:
  - scenarios: [model]
    grid:
      model.name: [unet_s16]
      model.base_width: [4]
      data.crop: [[32, 64]]
      loader.batch_size: [1, 2, 3]          # shard 0 of 2 has two of these points, shard 1 one
      bench.iters: [2]
      bench.warmup: [1]
"""


def test_a_sweep_as_a_job_array_then_one_merged_report(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(SPEC)
    out = tmp_path / "sweep"
    for task in (0, 1):  # the two tasks of `sbatch --array=0-1`, one shard each
        job = _job(tmp_path, str(spec), str(out), script="sweep.sbatch", SLURM_JOB_NUM_NODES="1",
                   SLURM_ARRAY_TASK_ID=str(task), SLURM_ARRAY_TASK_COUNT="2", SLURM_ARRAY_TASK_MIN="0", DEVICES="")
        _, stderr = job.communicate(timeout=300)
        assert job.returncode == 0, stderr[-3000:]
        assert len((out / f"shard-{task}" / f"results.shard-{task}-of-2.jsonl").read_text().splitlines()) == 2 - task
    job = _job(tmp_path, str(out), script="report.sbatch")
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 0, stderr[-3000:]
    md = (out / "report" / "REPORT.md").read_text()
    assert "| 3 | 3 | 0 | 0 | model |" in md  # both shards' folders, one run: 3 points, 3 ok
    assert "missing" not in md

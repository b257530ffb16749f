"""Training runs: run-directory contents, SIGKILL + resume continues exactly (the dead run's lock taken over),
SIGTERM saves where it stops and a rerun matches an uninterrupted run (a second writer refused meanwhile),
non-finite loss stops cleanly, and clear errors for bad checkpoints, wrong models and missing splits."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import time

import pytest
import torch
from engine_fixtures import (
    PY,
    REPO,
    env,
    run_cli,
    tiny_overrides,
    trained_run,
    write_tiny_cityscapes,
)

from cityseg_fast.cli import main
from cityseg_fast.config import load_config
from cityseg_fast.data.torch_loader import TorchLoader
from cityseg_fast.dirlock import LOCK_FILE
from cityseg_fast.engine.checkpoint import list_checkpoints, load_checkpoint
from cityseg_fast.engine.schedule import LogWindow, Schedule
from cityseg_fast.engine.step import SegLoss
from cityseg_fast.engine.train import train
from cityseg_fast.errors import EXIT_PREEMPTED
from cityseg_fast.preemption import catch_stop_signals

pytestmark = pytest.mark.usefixtures("one_thread")


def _events(run_dir, kind=None):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if kind is None or r["event"] == kind]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory.getbasetemp())


def test_run_directory(run):
    data, out = run
    cfg = load_config([out / "config.yaml"])  # the resolved config reloads
    assert cfg.train.iters == 30 and cfg.model.base_width == 8 and cfg.data.root == str(data)
    assert "torch" in json.loads((out / "env.json").read_text())
    train = _events(out, "train")
    assert [r["iter"] for r in train] == [5, 10, 15, 20, 25, 30]
    assert train[-1]["loss"] < 0.7 * train[0]["loss"]
    assert all(r["images_per_s"] > 0 and r["lr"] >= 0 for r in train)
    for r in train:  # MMSegmentation's time / data_time, the measured stall and memory, on every train line
        assert r["time"] > 0 and 0 <= r["data_time"] < r["time"], r
        assert 0 <= r["stall_fraction"] <= 1 and 0 <= r["data_wait_ms_p50"] <= r["data_wait_ms_p99"], r
        assert r["mem_host_rss_mib"] > 0, r
        assert {"mem_torch_max_allocated_mib", "mem_torch_max_reserved_mib", "mem_nvml_used_mib"} <= set(r)
    assert all(isinstance(r["timestamp"], float) for r in _events(out))
    (end,) = _events(out, "end")
    assert 0 <= end["stall_fraction_mean"] <= 1
    (ev,) = _events(out, "eval")
    assert ev["iter"] == 30 and 0 < ev["miou"] <= 1 and len(ev["per_class_iou"]) == 19
    ckpts = list_checkpoints(out)
    assert [p.name for p in ckpts] == ["ckpt_00000020.pt", "ckpt_00000030.pt"]  # keep_ckpts = 2
    raw = torch.load(ckpts[-1], weights_only=True)
    assert raw["iteration"] == 30 and set(raw) >= {
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "rng",
        "config",
    }
    assert raw["scheduler"]["last_epoch"] == 30


def test_sigkill_then_resume_continues_exactly(tmp_path):
    data = write_tiny_cityscapes(tmp_path / "data")
    out = tmp_path / "run"
    args = tiny_overrides(data, out, iters=60, **{"train.log_interval": 2, "train.ckpt_interval": 20})
    proc = subprocess.Popen(
        [PY, "-m", "cityseg_fast", "train", *args],
        cwd=REPO,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 150
        while (
            time.monotonic() < deadline and proc.poll() is None
        ):  # kill a few steps past the first checkpoint
            logged = _events(out, "train") if (out / "metrics.jsonl").exists() else []
            if logged and logged[-1]["iter"] >= 26:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    killed = _events(out, "train")
    survivors = list_checkpoints(out)
    assert survivors, "a checkpoint was lost"
    resumed_from = load_checkpoint(survivors[-1])["iteration"]  # loads: no torn file
    assert resumed_from in (20, 40)
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == proc.pid  # the dead run's lock file stays

    rerun = run_cli("train", *args)
    assert "writing here" not in rerun.stderr and "warning" not in rerun.stderr  # taken over silently
    rows = _events(out)
    (resume,) = [r for r in rows if r["event"] == "resume"]
    assert resume["iter"] == resumed_from
    after = [r for r in rows[rows.index(resume) :] if r["event"] == "train"]
    assert after[0]["iter"] == resumed_from + 2 and after[-1]["iter"] == 60
    # Exact continuation: iterations logged by both the killed and the resumed process have the same loss
    # (same weights, optimizer state, schedule, RNG and data order).
    before = {r["iter"]: r["loss"] for r in killed if r["iter"] > resumed_from}
    overlap = [r for r in after if r["iter"] in before]
    assert overlap, (killed[-1], resumed_from)
    for r in overlap:
        assert math.isclose(r["loss"], before[r["iter"]], rel_tol=1e-5), (r, before[r["iter"]])
    assert after[-1]["loss"] < killed[0]["loss"]  # the loss continued, it did not restart
    assert [p.name for p in list_checkpoints(out)][-1] == "ckpt_00000060.pt"
    end = [r for r in rows if r["event"] == "end"][-1]
    assert end["iters"] == 60 and end["start_iter"] == resumed_from


def _losses(run_dir) -> dict[int, float]:
    return {r["iter"]: r["loss"] for r in _events(run_dir, "train")}


def test_sigterm_saves_where_it_stops_and_a_rerun_matches_an_uninterrupted_run(tmp_path, capsys):
    data = write_tiny_cityscapes(tmp_path / "data")
    out, ref = tmp_path / "run", tmp_path / "ref"
    # A loader worker: SIGTERM goes to every process, as Slurm sends it, and the worker must not die of it.
    extra = {"train.log_interval": 2, "train.ckpt_interval": 50, "loader.num_workers": 1}
    args = tiny_overrides(data, out, iters=40, **extra)
    with open(tmp_path / "stderr.txt", "w+") as err:
        proc = subprocess.Popen([PY, "-m", "cityseg_fast", "train", *args], cwd=REPO, env=env(),
                                stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
        try:
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline and proc.poll() is None:
                logged = _events(out, "train") if (out / "metrics.jsonl").exists() else []
                if logged and logged[-1]["iter"] >= 4:
                    break
                time.sleep(0.05)
            # One writer: a second train into the live run directory is refused, naming the first.
            assert main(["train", *args]) == 2
            refused = capsys.readouterr().err.strip()
            assert len(refused.splitlines()) == 1 and f"pid {proc.pid} on host" in refused, refused
            assert "(cityseg train, since " in refused and "is writing here" in refused
            os.killpg(proc.pid, signal.SIGTERM)  # the process and its loader worker and forkserver
            assert proc.wait(60) == EXIT_PREEMPTED
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err.seek(0)
        last = err.read().strip().splitlines()[-1]
    stopped = _events(out)[-1]
    assert stopped["event"] == "preempted" and stopped["signal"] == "SIGTERM" and stopped["saved"] is True
    k = stopped["iter"]
    assert 4 < k < 40 and k % 2 == 0, k  # at a log interval: where the ranks agree, and no sync is added
    assert last.startswith(f"cityseg train: stopped by SIGTERM at iteration {k} of 40 (saved "), last
    assert load_checkpoint(out / f"ckpt_{k:08d}.pt")["iteration"] == k  # written there, atomically
    assert "eval" not in {r["event"] for r in _events(out)}  # the grace period is not spent evaluating

    assert main(["train", *args]) == 0  # the same command resumes
    (resume,) = _events(out, "resume")
    assert resume["iter"] == k
    assert main(["train", *tiny_overrides(data, ref, iters=40, **extra)]) == 0  # never interrupted
    resumed, uninterrupted = _losses(out), _losses(ref)
    assert sorted(resumed) == sorted(uninterrupted) == list(range(2, 41, 2))
    for it, loss in uninterrupted.items():  # same weights, optimizer, schedule, RNG and data order
        assert math.isclose(resumed[it], loss, rel_tol=1e-5), (it, resumed[it], loss)
    assert _events(out, "end")[-1]["iters"] == 40


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    data = write_tiny_cityscapes(tmp_path / "data", {"train": 4, "val": 2})
    out = tmp_path / "run"
    over = tiny_overrides(
        data,
        out,
        iters=40,
        **{
            "train.optimizer": "sgd",
            "train.lr": 1e12,  # diverges within a few steps
            "train.log_interval": 3,  # checkpoints between log lines must still never hold NaN weights
            "train.ckpt_interval": 1,
            "train.max_nonfinite": 2,
            "train.keep_ckpts": 50,
        },
    )
    assert main(["train", *over]) == 2
    err = capsys.readouterr().err
    assert "loss non-finite for 2 consecutive log intervals" in err and "last good checkpoint" in err
    ckpts = list_checkpoints(out)
    assert ckpts, "no good checkpoint was kept"
    last = load_checkpoint(ckpts[-1])
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    logged = [r["iter"] for r in _events(out, "train")]
    assert last["iteration"] < max(logged)  # it stopped after the last good checkpoint, did not overwrite it


def _strict(line: str) -> dict:
    """A JSON line read as strict parsers read it: the bare words NaN / Infinity / -Infinity are errors."""

    def refuse(word: str) -> None:
        raise ValueError(f"not strict JSON: {word} in {line}")

    return json.loads(line, parse_constant=refuse)


def test_an_infinite_loss_leaves_strict_json(tmp_path, monkeypatch, capsys):
    """The loss is +inf at every step (the gradients stay finite, so the run goes on): metrics.jsonl and
    `train --json` write it as null, never as the word Infinity that JSON.parse, jq or serde reject."""
    forward = SegLoss.forward
    monkeypatch.setattr(SegLoss, "forward", lambda self, out, target: forward(self, out, target) + math.inf)
    data = write_tiny_cityscapes(tmp_path / "data", {"train": 4, "val": 2})
    out = tmp_path / "run"
    over = tiny_overrides(data, out, iters=4, **{"train.log_interval": 1, "train.ckpt_interval": 2})
    assert main(["train", "--json", *over]) == 0
    rows = [_strict(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows if r["event"] == "train"] == [None] * 4
    (end,) = [r for r in rows if r["event"] == "end"]
    assert end["final_loss"] is None and end["iters"] == 4 and end["checkpoint"] is None
    summary = _strict(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["final_loss"] is None and len(summary["per_class_iou"]) == 19
    assert not list_checkpoints(out)  # a run whose loss is not finite saves no checkpoint


def test_a_run_that_fails_mid_way_closes_its_loaders(tmp_path, monkeypatch):
    closed = []
    close = TorchLoader.close

    def spy(self: TorchLoader) -> None:
        closed.append("train" if self.spec.train else "val")
        close(self)

    calls = itertools.count(1)
    forward = SegLoss.forward

    def fails_at_step_3(self, out, target):
        if next(calls) == 3:
            raise RuntimeError("the model failed at step 3")
        return forward(self, out, target)

    monkeypatch.setattr(TorchLoader, "close", spy)
    monkeypatch.setattr(SegLoss, "forward", fails_at_step_3)
    data = write_tiny_cityscapes(tmp_path / "data", {"train": 4, "val": 2})
    cfg = load_config([], tiny_overrides(data, tmp_path / "run", iters=10))
    with pytest.raises(RuntimeError, match="failed at step 3"):
        train(cfg)
    assert sorted(closed) == ["train", "val"]


def test_schedule_logs_evaluates_and_checkpoints_at_each_interval_and_the_last_iteration():
    cfg = load_config([], ["train.iters=23", "train.log_interval=5", "train.eval_interval=100",
                           "train.ckpt_interval=10"])  # fmt: skip
    schedule = Schedule.from_config(cfg.train)
    due = {i: schedule.due(i) for i in range(1, 24)}
    assert [i for i, d in due.items() if d.log] == [5, 10, 15, 20, 23]
    assert [i for i, d in due.items() if d.eval] == [23]
    assert [i for i, d in due.items() if d.ckpt] == [10, 20, 23]
    assert [i for i, d in due.items() if d.pause] == [10, 20, 23]  # buffers broadcast before eval / ckpt


def test_a_stop_signal_sets_a_flag_that_the_log_sync_carries_and_turns_the_due_actions_into_a_save():
    before = signal.getsignal(signal.SIGUSR1)
    window = LogWindow(torch.device("cpu"), 0, 0.0)
    window.add(torch.tensor(2.0))
    window.add(torch.tensor(4.0))
    with catch_stop_signals() as stop:
        assert window.sync(1, stop.requested) == (3.0, False, [])  # [] : no fp16 scaler trace to read with it
        os.kill(os.getpid(), signal.SIGUSR1)  # the handler only records it
        assert stop.requested and stop.name == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) == before  # restored after the block
    window.next(10, 0.0)
    window.add(torch.tensor(1.0))
    assert window.sync(1, True) == (1.0, True, [])  # the same all-reduce as the loss (a no-op in one process)
    due = Schedule(iters=100, log=5, eval=5, ckpt=50).due(5)
    assert (due.eval, due.ckpt, due.stop) == (True, False, False)
    assert (due.stopping().eval, due.stopping().ckpt, due.stopping().stop) == (False, True, True)


def test_bad_inputs_are_one_line_errors(run, tmp_path, capsys):
    data, out = run
    ckpt = str(list_checkpoints(out)[-1])

    def fails(*argv: str, match: str) -> None:
        assert main(list(argv)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and match in err, err

    fails("eval", "--checkpoint", str(tmp_path / "nope.pt"), match="nope.pt: checkpoint not found")
    junk = tmp_path / "junk.pt"
    junk.write_text("hello")
    fails("eval", "--checkpoint", str(junk), match="junk.pt: not a readable checkpoint")
    fails(
        "eval", "--checkpoint", ckpt, "--data", str(data), "model.base_width=16", match="weights do not fit"
    )
    fails(
        "eval",
        "--checkpoint",
        ckpt,
        "--data",
        str(data),
        "model.name=unet_s32",
        "model.base_width=null",
        match="weights do not fit",
    )
    no_val = write_tiny_cityscapes(tmp_path / "no_val", {"train": 4})
    fails("eval", "--checkpoint", ckpt, "--data", str(no_val), match="split 'val'")
    fails("train", *tiny_overrides(no_val, tmp_path / "r"), match="split 'val'")
    assert not (tmp_path / "r" / "ckpt_00000010.pt").exists()
    fails(
        "train",
        *tiny_overrides(data, tmp_path / "r2"),
        "--resume",
        str(tmp_path / "missing.pt"),
        match="missing.pt",
    )


def test_sync_bn_with_compile_under_ddp_is_refused_before_any_work(tmp_path):
    """SyncBN graph-breaks dynamo and compile + DDP + SyncBN fails in open torch reports: the shipped
    recipes run SyncBN eager, and asking for both is one clear error, before anything is written."""
    from cityseg_fast.engine.dist import DistInfo
    from cityseg_fast.engine.train import _train
    from cityseg_fast.errors import UserError

    cfg = load_config([], ["train.sync_bn=true", "precision.compile=default", f"train.out_dir={tmp_path / 'run'}"])
    info = DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"), is_main=True)
    with pytest.raises(UserError, match="precision.compile=off"):
        _train(cfg, info)
    assert not (tmp_path / "run").exists()
    for name in ("fcn_r50_d8_512x1024_40k", "fcn_r50_d8_512x1024_80k", "unet_512x1024"):
        recipe = load_config([f"configs/train/{name}.yaml"], [])
        assert not (recipe.train.sync_bn and recipe.precision.compile != "off"), name

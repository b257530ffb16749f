"""Iteration-based training: one process or DDP under torchrun, periodic eval, checkpoints, exact resume.

    summary = train(cfg)   # a TrainSummary: miou, per_class_iou, acc, iters, wall_s, out_dir, checkpoint, ...

`_train` reads top to bottom: `_set_up` (claim the run directory, loaders, model and optimizer, resume),
`_loop` (about 25 lines, like mmengine's IterBasedTrainLoop.run: one `step.train_step`, then the interval
actions `Schedule.due` names: log, evaluate, checkpoint; engine/schedule.py), `_finish` (final numbers, the 'end' event); an
ExitStack closes the loaders, NVML and the event logs however the run ends.

The loop never reads a value on the host except at log intervals, where the summed loss is pulled once
(`LogWindow.sync`, the one sync point per interval) and written to out_dir/metrics.jsonl (engine/events.py). Each
'train' line also has, as MMSegmentation logs them: `time` (s per iteration), `data_time` (s per iteration
blocked in next() on the loader), the measured data wait (`data_wait_ms_p50` / `_p99`, `stall_fraction`:
engine/stall.py, read after that same sync) and memory (host RSS; on a GPU torch's max allocated /
reserved and NVML's used); with fp16, the GradScaler's `loss_scale` and `skipped_steps` so far, read in that
same transfer (`ScalerStep.trace`). Under DDP it also has every rank's data wait, compute and all-reduce wait (min /
median / max, each rank's, the slowest rank and the straggler: engine/ranks.py), one all_gather of three floats
right after that sync. Every line has its wall-clock `timestamp`.

Preemption. SIGTERM or SIGUSR1 (a cluster's time limit or preemption) only sets a flag (preemption.py). The
ranks agree on it in the log interval's all-reduce, which already runs: `LogWindow.sync` reduces the tensor
[summed loss, stop flag] (one all-reduce, one host read, as before), so no sync is added and every rank
learns at the same iteration that some rank was signalled. There the due actions become `Due.stopping`:
no evaluation, a checkpoint (the usual atomic write, rank 0, unless one is due anyway), a 'preempted' event,
then `Preempted` on every rank: the process exits EXIT_PREEMPTED (75), and rerunning the same command
resumes from that checkpoint exactly. The worst case, a signal just after a log interval, needs a grace
period (Slurm's KillWait, or the `--signal=...@SECONDS` lead; under torchrun also its `--shutdown-timeout`,
30 s by default) of

    grace >= train.log_interval x (seconds per iteration) + one checkpoint write

plus any evaluation or regular checkpoint the schedule puts between the signal and that log interval
(one under way is finished first), and the set-up when the signal comes before the first log interval.

Extending the loop: an interval action is a field of `Schedule` and of `Due` plus one line in `_loop`;
another place for the events is another `EventLog`, added in `event_logs` (TensorBoard is one:
engine/tensorboard.py, with train.tensorboard=true).
"""

from __future__ import annotations

import math
import random
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from cityseg_fast import diskio, jsonsafe
from cityseg_fast.config import Config, dump_config, to_dict
from cityseg_fast.data.batch import Batch
from cityseg_fast.data.factory import Loader, build_loader
from cityseg_fast.data.plan import endless
from cityseg_fast.engine import checkpoint as ckpt_io
from cityseg_fast.engine import dist, rundir, tensorboard
from cityseg_fast.engine.evaluate import evaluate, iou_table
from cityseg_fast.engine.events import (
    EventLogs,
    ProgressBar,
    event_logs,
    interval_fields,
    memory_fields,
    progress_bar,
    progress_text,
)
from cityseg_fast.engine.ranks import (
    AllReduceClock,
    gather_rank_times,
    rank_fields,
    rank_times,
)
from cityseg_fast.engine.schedule import LogWindow, NonFiniteGuard, Schedule
from cityseg_fast.engine.stall import StallMeter, StallStats
from cityseg_fast.engine.step import TrainState, build_train_state, train_step
from cityseg_fast.environment import collect_env
from cityseg_fast.errors import Preempted, UserError
from cityseg_fast.hardware import affinity_warning, rank_cpus
from cityseg_fast.memstats import NvmlDevice
from cityseg_fast.models import model_from_config
from cityseg_fast.preemption import StopRequest, catch_stop_signals


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


# ---------------------------------------------------------------------------------------------
# where the events go


# ---------------------------------------------------------------------------------------------
# what the loop decides once per iteration


# ---------------------------------------------------------------------------------------------
# checkpoints and log lines


def make_checkpoint(state: TrainState, iteration: int) -> dict[str, Any]:
    return {
        "format": ckpt_io.FORMAT,
        "version": ckpt_io.VERSION,
        "iteration": iteration,
        "model": ckpt_io.unwrap_model(state.model).state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(),
        "rng": ckpt_io.capture_rng(),
        "config": to_dict(state.cfg),
    }


def restore(state: TrainState, path: Path, ck: dict[str, Any] | None = None) -> int:
    """Load the checkpoint at `path` (or `ck`, already loaded from it) into `state`; returns the iteration
    to continue from."""
    ck = ck if ck is not None else ckpt_io.load_checkpoint(path)
    ckpt_io.load_model_state(state.model, ck["model"], path)
    state.optimizer.load_state_dict(ck["optimizer"])
    state.scheduler.load_state_dict(ck["scheduler"])
    state.scaler.load_state_dict(ck["scaler"])
    ckpt_io.restore_rng(ck["rng"])
    return int(ck["iteration"])


# ---------------------------------------------------------------------------------------------
# the run


@dataclass(frozen=True)
class TrainSummary:
    """What `train` returns; the 'end' event records the same but per_class_iou (the 'eval' event has it)."""

    miou: float  # the last evaluation's (a fraction)
    per_class_iou: list[float]  # 19, NaN where a class is undefined
    acc: float  # pixel accuracy
    iters: int  # the iteration the run ended at
    start_iter: int  # where this process started: 0, or the iteration of the checkpoint it resumed
    final_loss: float  # the last logged loss (NaN when this process logged none)
    wall_s: float  # this process's loop and final evaluation
    out_dir: str
    checkpoint: str | None  # the last checkpoint saved or resumed from
    world_size: int
    replicas_in_sync: bool  # DDP kept every rank's weights identical
    stall_fraction_mean: float | None  # rank 0's: waiting time / wall of every logged step

    def end_fields(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "per_class_iou"}


@dataclass
class _Run:
    """What the loop reads and updates, built once by `_set_up`."""

    cfg: Config
    info: dist.DistInfo
    out: Path
    state: TrainState  # state.model: what train_step calls (DDP-wrapped under torchrun)
    net: nn.Module  # the prepared module without DDP: evaluation, buffers, the health check
    val_loader: Loader
    stream: Iterator[tuple[int, Batch]]  # (epoch, batch) from the train loader, from the resumed position
    logs: EventLogs
    meter: StallMeter
    clock: AllReduceClock | None  # the gradient all-reduce's wait under DDP (engine/ranks.py), else None
    nvml: NvmlDevice | None  # rank 0 on a GPU with NVML, else None
    stop: StopRequest  # set by SIGTERM / SIGUSR1; the ranks agree on it at the log interval
    schedule: Schedule
    window: LogWindow
    guard: NonFiniteGuard
    start: int
    t0: float
    last_ckpt: Path | None
    it: int = 0
    last_loss: float = math.nan
    result: dict[str, Any] | None = None  # the last evaluation's


def train(cfg: Config) -> TrainSummary:
    """Train per `cfg` (single process, or DDP when launched by torchrun); returns its TrainSummary. A
    collective that times out (a stopped rank) is one line naming it (dist.run_distributed)."""
    return dist.run_distributed(lambda info: _train(cfg, info), cfg.train.dist_timeout_s)


def _train(cfg: Config, info: dist.DistInfo) -> TrainSummary:
    """This process's run; the loaders, NVML and the event logs are closed however it ends."""
    if cfg.train.sync_bn and info.world_size > 1 and cfg.precision.compile != "off":
        raise UserError(
            "train.sync_bn=true with precision.compile under DDP: dynamo graph-breaks at every "
            "SyncBatchNorm (pytorch#161302) and compile + DDP + SyncBN fails in open reports "
            "(pytorch#107372); set precision.compile=off (as the shipped recipes do) or train.sync_bn=false"
        )
    if cfg.train.tensorboard:
        tensorboard.require()  # every rank, before any work: none waits for a rank 0 that cannot log
    with ExitStack() as cleanup:
        run = _set_up(cfg, info, cleanup)
        _loop(run)
        return _finish(run)


def _loop(run: _Run) -> None:
    """The iterations: one train step, then the interval actions the schedule says are due."""
    with progress_bar(run.info.is_main) as progress:
        bar = ProgressBar(progress, total=run.cfg.train.iters, completed=run.start)
        while run.it < run.cfg.train.iters:
            epoch, batch = run.meter.next(run.stream)
            with run.meter.step():
                loss = train_step(run.state, batch)
            run.window.add(loss)
            run.it += 1
            bar.advance()
            due = run.schedule.due(run.it)
            if due.log and _log(run, epoch, bar):  # every rank learns of a stop signal here, at the same it
                due = due.stopping()
            if due.pause:
                dist.broadcast_buffers(run.net)  # every rank evaluates, rank 0 saves, the same BN statistics
                run.meter.restart()  # the evaluation / checkpoint that follows is not a data wait
            if due.eval:
                _evaluate(run, bar)
            if due.ckpt:
                _checkpoint(run)
            if due.stop:
                _stop(run)
            if due.log:
                run.window.restart_clock()  # images/s of the next interval excludes eval and checkpoint time


def _log(run: _Run, epoch: int, bar: ProgressBar) -> bool:
    """The end of a log interval: its one host sync, its 'train' line and bar stats, the non-finite guard.
    Returns whether any rank was asked to stop (the same on every rank)."""
    run.last_loss, stop, scaler = run.window.sync(run.info.world_size, run.stop.requested, run.state.scaler.trace())
    now = time.perf_counter()
    stats = run.meter.take()
    line = {**train_line(run, epoch, now, stats), **_rank_fields(run, stats), **run.state.scaler.trace_fields(scaler)}
    run.logs.write("train", **line)
    bar.show(progress_text(line))
    run.window.next(run.it, now)
    run.guard.check(run.last_loss, run.it, run.out, run.last_ckpt)
    return stop


def _rank_fields(run: _Run, stats: StallStats) -> dict[str, Any]:
    """Under DDP, every rank's timing figures (engine/ranks.py): a collective, so every rank calls it, right
    after the interval's sync; {} in one process."""
    if run.info.world_size < 2:
        return {}
    ranks = gather_rank_times(rank_times(stats, run.clock), run.info.device)
    return rank_fields(ranks, run.cfg.train.straggler_threshold)


def train_line(run: _Run, epoch: int, now: float, stats: StallStats) -> dict[str, Any]:
    """A 'train' line's fields, for the interval that ends at `now`: iter, epoch, loss, lr, images_per_s
    (global), wall_s since the loop started, then the interval's timing (`stats`: the meter's) and memory."""
    iters, seconds = run.it - run.window.start_it, now - run.window.start_t
    global_batch = run.cfg.loader.batch_size * run.info.world_size
    return {
        "iter": run.it,
        "epoch": epoch,
        "loss": run.last_loss,
        "lr": run.state.optimizer.param_groups[0]["lr"],
        "images_per_s": iters * global_batch / max(seconds, 1e-9),
        "wall_s": now - run.t0,
        **interval_fields(stats, iters, seconds),
        **memory_fields(run.info.device, run.nvml),
    }


def _evaluate(run: _Run, bar: ProgressBar) -> None:
    main = run.info.is_main
    r = evaluate(run.net, run.val_loader, run.cfg, run.info.device, progress=bar.progress if main else None)
    run.result = r
    run.logs.write("eval", iter=run.it, miou=r["miou"], per_class_iou=r["per_class_iou"], acc=r["acc"],
                   images=r["images"])  # fmt: skip
    if main:
        bar.print(f"iter {run.it}: val mIoU {100 * r['miou']:.2f}")


def _checkpoint(run: _Run) -> None:
    """A checkpoint of healthy weights, written by rank 0 while the others wait."""
    if not run.guard.healthy(run.net):
        return
    if run.info.is_main:
        ck = make_checkpoint(run.state, run.it)
        run.last_ckpt = ckpt_io.save_checkpoint(ck, run.out, keep=run.cfg.train.keep_ckpts)
    dist.barrier()  # no rank runs ahead while rank 0 writes (keeps a later failure's state clear)


def _stop(run: _Run) -> None:
    """After the checkpoint of an agreed stop: the 'preempted' event, then Preempted on every rank."""
    ckpt = run.last_ckpt  # rank 0's: the others' is the one they resumed from
    saved = ckpt is not None and ckpt.name == ckpt_io.checkpoint_name(run.it)
    run.logs.write("preempted", iter=run.it, signal=run.stop.name, checkpoint=str(ckpt) if ckpt else None,
                   saved=saved)  # fmt: skip
    if not run.info.is_main:
        kept = "rank 0 saves"
    else:  # not saved: the weights were not finite (NonFiniteGuard), the last good checkpoint stays
        kept = f"saved {ckpt}" if saved else f"nothing saved, the last good checkpoint is {ckpt}"
    by = run.stop.name or "a signal to another rank"
    raise Preempted(f"stopped by {by} at iteration {run.it} of {run.cfg.train.iters} ({kept}); "
                    "rerun the same command to resume")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# before and after the loop


def _set_up(cfg: Config, info: dist.DistInfo, cleanup: ExitStack) -> _Run:
    """Claim the run directory, build the loaders, model and optimizer, resume, write config.yaml and
    env.json, announce the run. What must be closed is registered on `cleanup`."""
    stop = cleanup.enter_context(catch_stop_signals())  # first: a signal during the set-up stops at the first log
    out = Path(cfg.train.out_dir)
    # Rank 0 decides (its view of out_dir is the one with the checkpoints); a refusal there stops every rank.
    claim = dist.run_on_main(lambda: rundir.claim_run_dir(cfg))  # None on the other ranks
    if claim is not None:
        cleanup.callback(claim.lock.release)  # held for the run's life: one writer per run directory
    for note in claim.notes if claim else ():
        print(note, file=sys.stderr, flush=True)
    resume_from = dist.broadcast_object(claim.resume if claim else None)  # every rank loads that file
    seed_everything(cfg.train.seed)  # every rank: identical initial weights (DDP also broadcasts them)
    train_loader, val_loader = _open_loaders(cfg, info, cleanup)
    state = _build_state(cfg, info)
    net = state.eval_model  # the compiled module without DDP: evaluation, buffers, the health check
    start = 0
    if resume_from is not None:  # the loaded checkpoint goes with `claim` when this function returns
        start = restore(state, resume_from, claim.ckpt if claim else None)  # every rank loads the same weights
    clock = AllReduceClock.install(state.model, info.device)  # None in one process
    ranks = dist.all_gather_object(_rank_env(info))  # every rank's CPU sets, for rank 0's env.json
    if info.is_main:  # only now: a config.yaml says a run of this config started here (rundir refuses others)
        _write_run_files(cfg, out, ranks)
    logs = event_logs(out, info, cfg.train, start)
    cleanup.callback(logs.close)
    _announce(logs, cfg, info, train_loader, resume_from, start)
    nvml = NvmlDevice.open(info.device) if info.is_main else None  # None on the CPU or without NVML
    if nvml is not None:
        cleanup.callback(nvml.close)
    steps_per_epoch = len(train_loader)
    stream = endless(train_loader, start // steps_per_epoch, start % steps_per_epoch)
    meter, now = StallMeter(info.device), time.perf_counter()
    return _Run(cfg=cfg, info=info, out=out, state=state, net=net, val_loader=val_loader, stream=stream,
                logs=logs, meter=meter, clock=clock, nvml=nvml, stop=stop, schedule=Schedule.from_config(cfg.train),
                window=LogWindow(info.device, start, now), guard=NonFiniteGuard(cfg.train.max_nonfinite),
                start=start, t0=now, last_ckpt=resume_from, it=start)  # fmt: skip


def _rank_env(info: dist.DistInfo) -> dict[str, Any]:
    """This rank's place: host, device, the CPUs it may run on and NVML's ideal set for its GPU (hardware.py)."""
    return {"rank": info.rank, "host": socket.gethostname(), "local_rank": info.local_rank,
            "device": str(info.device), **rank_cpus(info.device)}  # fmt: skip


def _write_run_files(cfg: Config, out: Path, ranks: list[Any]) -> None:
    """Rank 0: config.yaml, and env.json (the environment and every rank's CPU sets); a warning on the console
    when ranks run outside their GPU's ideal CPU set."""
    dump_config(cfg, out / rundir.CONFIG_FILE)
    with diskio.atomic_path(out / "env.json") as tmp:
        tmp.write_text(jsonsafe.dumps({**collect_env(), "ranks": ranks}, indent=1, default=str) + "\n")
    warning = affinity_warning(ranks)
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)


def _open_loaders(cfg: Config, info: dist.DistInfo, cleanup: ExitStack) -> tuple[Loader, Loader]:
    """This rank's train and val loaders, each closed by `cleanup` however the run ends."""
    loaders = []
    for split, train in ((cfg.data.train_split, True), (cfg.data.val_split, False)):
        loader = build_loader(cfg, split, info.rank, info.world_size, train=train, device=info.device)
        cleanup.callback(loader.close)
        loaders.append(loader)
    if len(loaders[0]) == 0:
        raise UserError(f"{cfg.data.root or 'data.root'}: fewer training images than one batch per rank")
    return loaders[0], loaders[1]


def _build_state(cfg: Config, info: dist.DistInfo) -> TrainState:
    """Model (SyncBatchNorm under DDP with train.sync_bn), optimizer, schedule, scaler and loss on this
    rank's device; the model in DDP under torchrun, then compiled (precision.prepare_for_training)."""
    model = None
    if cfg.train.sync_bn and info.world_size > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model_from_config(cfg))
    return build_train_state(cfg, info.device, model, wrap=lambda m: dist.wrap_ddp(m, info.device))


def _announce(logs: EventLogs, cfg: Config, info: dist.DistInfo, train_loader: Loader,
              resume_from: Path | None, start: int) -> None:  # fmt: skip
    """The run's first event: 'resume' (and a console line) or 'start'."""
    if resume_from is not None:
        logs.write("resume", iter=start, checkpoint=str(resume_from))
        if info.is_main:
            print(f"resuming from {resume_from} at iteration {start} of {cfg.train.iters}", file=sys.stderr,
                  flush=True)  # fmt: skip
        return
    logs.write("start", iter=0, world_size=info.world_size, train_loader=train_loader.description,
               images_per_epoch=train_loader.num_samples * info.world_size)  # fmt: skip


def _finish(run: _Run) -> TrainSummary:
    """After the last iteration: the final numbers (evaluating once if this process never did), the
    replicas check, the IoU table on the console and the 'end' event."""
    dist.broadcast_buffers(run.net)
    if run.result is None:  # resumed a finished run: evaluate once so the summary still has numbers
        run.result = evaluate(run.net, run.val_loader, run.cfg, run.info.device)
    wall = time.perf_counter() - run.t0
    # DDP must keep the replicas identical: every rank compares its weights with the others'.
    in_sync = dist.replicas_in_sync(ckpt_io.unwrap_model(run.state.model))
    if run.info.is_main:
        Console(stderr=True).print(iou_table(run.result, title=f"{run.cfg.model.name} @ iter {run.it}"))
    summary = TrainSummary(
        miou=run.result["miou"],
        per_class_iou=run.result["per_class_iou"],
        acc=run.result["acc"],
        iters=run.it,
        start_iter=run.start,
        final_loss=run.last_loss,
        wall_s=wall,
        out_dir=str(run.out),
        checkpoint=str(run.last_ckpt) if run.last_ckpt else None,
        world_size=run.info.world_size,
        replicas_in_sync=in_sync,
        stall_fraction_mean=run.meter.mean_stall_fraction(),
    )
    run.logs.write("end", **summary.end_fields())
    return summary

"""Iteration-based training: one process or DDP under torchrun, periodic eval, checkpoints, exact resume.

    summary = train(cfg)   # {"miou", "per_class_iou", "iters", "wall_s", "out_dir", "checkpoint", ...}

The loop calls `step.train_step` and never reads a value on the host except at log intervals, where the
summed loss is pulled once (the one sync point per interval) and written to out_dir/metrics.jsonl. Each
'train' line also has, as MMSegmentation logs them: `time` (s per iteration), `data_time` (s per iteration
blocked in next() on the loader), the measured data wait (`data_wait_ms_p50` / `_p99`, `stall_fraction`:
engine/stall.py, read after that same sync) and memory (host RSS; on a GPU torch's max allocated /
reserved and NVML's used). Every line has its wall-clock `timestamp`.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import nn

from cityseg_fast.config import Config, dump_config, to_dict
from cityseg_fast.data.factory import build_loader
from cityseg_fast.data.plan import endless
from cityseg_fast.engine import checkpoint as ckpt_io
from cityseg_fast.engine import dist, rundir
from cityseg_fast.engine.evaluate import evaluate, iou_table, json_safe
from cityseg_fast.engine.stall import StallMeter
from cityseg_fast.engine.step import TrainState, build_train_state, train_step
from cityseg_fast.environment import collect_env
from cityseg_fast.errors import UserError
from cityseg_fast.memstats import NvmlDevice, host_rss_mib, torch_memory_mib
from cityseg_fast.models import model_from_config


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


class MetricsLog:
    """JSON lines in out_dir/metrics.jsonl, written by rank 0 only, flushed per line."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def write(self, **row: Any) -> None:
        if not self.enabled:
            return
        row = {"timestamp": round(time.time(), 3), **row}
        with open(self.path, "a") as f:
            f.write(json.dumps(json_safe(row)) + "\n")
            f.flush()


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


def _progress(enabled: bool):
    return Progress(  # on stderr, like every line a run prints: stdout is left to results (bench --json)
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
        console=Console(stderr=True),
    )


def memory_fields(device: torch.device, nvml: Any) -> dict[str, float | None]:
    """A 'train' line's memory: host RSS of this process; on a GPU torch's max allocated / reserved since the
    run started (host-side allocator counters) and NVML's used memory (`nvml`: a memstats.NvmlDevice or None)."""

    t = torch_memory_mib(device)
    return {
        "mem_host_rss_mib": host_rss_mib(),
        "mem_torch_max_allocated_mib": t["mem_torch_max_allocated_mib"],
        "mem_torch_max_reserved_mib": t["mem_torch_max_reserved_mib"],
        "mem_nvml_used_mib": nvml.used_mib() if nvml is not None else None,
    }


def interval_fields(meter: StallMeter, iters: int, seconds: float) -> dict[str, float | None]:
    """A 'train' line's timing: s per iteration, s per iteration blocked in next(), and the data wait the
    meter measured (this rank's); called right after the interval's sync, so every step in it has ended."""
    stats = meter.take()
    m = stats.metrics()
    n = len(stats.host_wait_s)
    return {
        "time": seconds / max(1, iters),
        "data_time": sum(stats.host_wait_s) / n if n else None,
        "data_wait_ms_p50": m["data_wait_ms_p50"],
        "data_wait_ms_p99": m["data_wait_ms_p99"],
        "stall_fraction": m["stall_fraction"],
    }


def _healthy(bad_checks: int, model: nn.Module) -> bool:
    """Whether the weights are worth a checkpoint: no non-finite logged loss, and every weight and buffer
    finite (BatchNorm statistics blow up too). One sync, only at checkpoint time, which syncs anyway."""
    if bad_checks:
        return False
    flags = [torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def train(cfg: Config) -> dict[str, Any]:
    """Train per `cfg` (single process, or DDP when launched by torchrun); returns a summary dict."""
    return dist.run_distributed(lambda info: _train(cfg, info), cfg.train.dist_timeout_s)


def _train(cfg: Config, info: dist.DistInfo) -> dict[str, Any]:
    t = cfg.train
    if t.sync_bn and info.world_size > 1 and cfg.precision.compile != "off":
        raise UserError(
            "train.sync_bn=true with precision.compile under DDP: dynamo graph-breaks at every "
            "SyncBatchNorm (pytorch#161302) and compile + DDP + SyncBN fails in open reports "
            "(pytorch#107372); set precision.compile=off (as the shipped recipes do) or train.sync_bn=false"
        )
    out = Path(t.out_dir)
    # Rank 0 decides (its view of out_dir is the one with the checkpoints); a refusal there stops every rank.
    claim = dist.run_on_main(lambda: rundir.claim_run_dir(cfg))  # None on the other ranks
    for note in claim.notes if claim else ():
        print(note, file=sys.stderr, flush=True)
    resume_from = dist.broadcast_object(claim.resume if claim else None)  # every rank loads that file
    seed_everything(t.seed)  # same seed on every rank: identical initial weights (DDP also broadcasts them)

    train_loader = build_loader(
        cfg, cfg.data.train_split, info.rank, info.world_size, train=True, device=info.device
    )
    val_loader = build_loader(
        cfg, cfg.data.val_split, info.rank, info.world_size, train=False, device=info.device
    )
    if len(train_loader) == 0:
        raise UserError(f"{cfg.data.root or 'data.root'}: fewer training images than one batch per rank")

    model = None
    if t.sync_bn and info.world_size > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model_from_config(cfg))
    state = build_train_state(cfg, info.device, model)
    net = state.model  # prepared (compiled) module, used for evaluation
    start = 0
    if resume_from is not None:
        start = restore(state, resume_from, claim.ckpt if claim else None)
    claim = None  # its checkpoint is in the model and optimizer now: do not hold a second copy
    state.model = dist.wrap_ddp(net, info.device)
    if info.is_main:  # only now: a config.yaml says a run of this config started here (rundir refuses others)
        dump_config(cfg, out / rundir.CONFIG_FILE)
        (out / "env.json").write_text(json.dumps(collect_env(), indent=1, default=str) + "\n")

    log = MetricsLog(out / rundir.METRICS_FILE, info.is_main)
    if resume_from is not None:
        log.write(event="resume", iter=start, checkpoint=str(resume_from))
        if info.is_main:
            print(f"resuming from {resume_from} at iteration {start} of {t.iters}", file=sys.stderr, flush=True)
    else:
        log.write(
            event="start",
            iter=0,
            world_size=info.world_size,
            train_loader=train_loader.description,
            images_per_epoch=train_loader.num_samples * info.world_size,
        )
    steps_per_epoch = len(train_loader)
    stream = endless(train_loader, start // steps_per_epoch, start % steps_per_epoch)
    global_batch = cfg.loader.batch_size * info.world_size

    last_ckpt: Path | None = resume_from
    result: dict[str, Any] | None = None
    meter = StallMeter(info.device)
    nvml = NvmlDevice.open(info.device) if info.is_main else None  # None on the CPU or without NVML
    loss_sum = torch.zeros((), device=info.device)
    n_in_sum, bad_checks, last_loss = 0, 0, float("nan")
    t0 = time.perf_counter()
    t_log, it_log = t0, start
    it = start
    with _progress(info.is_main) as progress:
        task = progress.add_task("train", total=t.iters, completed=start, stats="")
        while it < t.iters:
            epoch, batch = meter.next(stream)
            with meter.step():
                loss = train_step(state, batch)
            loss_sum += loss  # outside the step's events: the log sync waits for this add, so for the end event
            n_in_sum += 1
            it += 1
            progress.advance(task)
            if it % t.log_interval == 0 or it == t.iters:
                # The one host sync per log interval: average the loss over the interval and the ranks.
                dist.all_reduce_sum(loss_sum)
                last_loss = loss_sum.item() / (n_in_sum * info.world_size)
                now = time.perf_counter()
                ips = (it - it_log) * global_batch / max(now - t_log, 1e-9)
                lr = state.optimizer.param_groups[0]["lr"]
                timing = interval_fields(meter, it - it_log, now - t_log)
                log.write(event="train", iter=it, epoch=epoch, loss=last_loss, lr=lr, images_per_s=ips,
                          wall_s=now - t0, **timing, **memory_fields(info.device, nvml))  # fmt: skip
                stall = timing["stall_fraction"]
                stall_text = f"  stall {stall:.0%}" if stall is not None else ""
                progress.update(task, stats=f"loss {last_loss:.4f}  lr {lr:.2e}  {ips:.1f} img/s{stall_text}")
                loss_sum.zero_()
                n_in_sum, t_log, it_log = 0, now, it
                if math.isfinite(last_loss):
                    bad_checks = 0
                else:
                    bad_checks += 1
                    if bad_checks >= t.max_nonfinite:
                        where = f"; last good checkpoint: {last_ckpt}" if last_ckpt else ""
                        raise UserError(
                            f"{out}: loss non-finite for {bad_checks} consecutive log intervals (iteration {it}); "
                            f"lower train.lr or use precision.dtype=fp32/bf16{where}"
                        )
            if it % t.eval_interval == 0 or it == t.iters or it % t.ckpt_interval == 0:
                dist.broadcast_buffers(net)  # every rank evaluates and rank 0 saves the same BN statistics
                meter.restart()  # the evaluation / checkpoint that follows is not a data wait
            if it % t.eval_interval == 0 or it == t.iters:
                result = evaluate(
                    net, val_loader, cfg, info.device, progress=progress if info.is_main else None
                )
                log.write(
                    event="eval",
                    iter=it,
                    miou=result["miou"],
                    per_class_iou=result["per_class_iou"],
                    acc=result["acc"],
                    images=result["images"],
                )
                if info.is_main:
                    progress.console.print(f"iter {it}: val mIoU {100 * result['miou']:.2f}")
            if (it % t.ckpt_interval == 0 or it == t.iters) and _healthy(bad_checks, net):
                if info.is_main:
                    last_ckpt = ckpt_io.save_checkpoint(make_checkpoint(state, it), out, keep=t.keep_ckpts)
                dist.barrier()  # no rank runs ahead while rank 0 writes (keeps a later failure's state clear)
            if it % t.log_interval == 0:
                t_log = time.perf_counter()  # images/s of the next interval excludes eval and checkpoint time

    dist.broadcast_buffers(net)
    if result is None:  # resumed a finished run: evaluate once so the summary still has numbers
        result = evaluate(net, val_loader, cfg, info.device)
    wall = time.perf_counter() - t0
    in_sync = dist.replicas_in_sync(ckpt_io.unwrap_model(state.model))  # DDP must keep the replicas identical
    if info.is_main:
        Console(stderr=True).print(iou_table(result, title=f"{cfg.model.name} @ iter {it}"))
    train_loader.close()
    val_loader.close()
    if nvml is not None:
        nvml.close()
    summary = {
        "miou": result["miou"],
        "per_class_iou": result["per_class_iou"],
        "acc": result["acc"],
        "iters": it,
        "start_iter": start,
        "final_loss": last_loss,
        "wall_s": wall,
        "out_dir": str(out),
        "checkpoint": str(last_ckpt) if last_ckpt else None,
        "world_size": info.world_size,
        "replicas_in_sync": in_sync,
        "stall_fraction_mean": meter.mean_stall_fraction(),  # rank 0's: waiting time / wall of every logged step
    }
    log.write(event="end", **{k: v for k, v in summary.items() if k != "per_class_iou"})
    return summary

"""What a training run records and shows: its events (metrics.jsonl and any other EventLog, such as TensorBoard),
the fields of a 'train' line (timing, memory), and the progress bar on stderr."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

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

from cityseg_fast import diskio, jsonsafe
from cityseg_fast.config import TrainConfig
from cityseg_fast.engine import dist, rundir, tensorboard
from cityseg_fast.engine.ranks import (
    straggler_text,
)
from cityseg_fast.engine.stall import StallStats
from cityseg_fast.memstats import host_rss_mib, torch_memory_mib


class EventLog(Protocol):
    """A place a run's events go, on rank 0: 'start' or 'resume', 'train' per log interval, 'eval', 'end'.
    Fields are plain values; floats may be NaN or inf (each writer makes them what its format takes)."""

    def write(self, event: str, **fields: Any) -> None: ...

    def close(self) -> None: ...


class MetricsLog:
    """The EventLog of out_dir/metrics.jsonl: one strict-JSON line per event (NaN and inf are null), each
    stamped with its wall-clock `timestamp`, written and flushed at once (a killed run keeps every line)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, event: str, **fields: Any) -> None:
        row = {"timestamp": round(time.time(), 3), "event": event, **fields}
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:  # the whole line or none of it; a full disk is one line naming the file (diskio)
            diskio.append_all(fd, (jsonsafe.dumps(row) + "\n").encode(), self.path)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Nothing held open: each line opened and closed its file."""


class EventLogs:
    """Every EventLog of a run, written in order; none on the other ranks (rank 0 alone logs)."""

    def __init__(self, logs: Sequence[EventLog]) -> None:
        self.logs = list(logs)

    def write(self, event: str, **fields: Any) -> None:
        for log in self.logs:
            log.write(event, **fields)

    def close(self) -> None:
        for log in self.logs:
            log.close()


def event_logs(out: Path, info: dist.DistInfo, t: TrainConfig, start: int) -> EventLogs:
    """Where this rank's events go: on rank 0 metrics.jsonl and, with train.tensorboard, OUT/tb; none elsewhere."""
    if not info.is_main:
        return EventLogs([])
    logs: list[EventLog] = [MetricsLog(out / rundir.METRICS_FILE)]
    if t.tensorboard:
        logs.append(tensorboard.TensorBoardLog.open(out, start))
    return EventLogs(logs)


def progress_bar(enabled: bool):
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


def interval_fields(stats: StallStats, iters: int, seconds: float) -> dict[str, float | None]:
    """A 'train' line's timing: s per iteration, s per iteration blocked in next(), and the data wait the
    meter measured (this rank's `take`, right after the interval's sync, so every step in it has ended)."""
    m = stats.metrics()
    n = len(stats.host_wait_s)
    return {
        "time": seconds / max(1, iters),
        "data_time": sum(stats.host_wait_s) / n if n else None,
        "data_wait_ms_p50": m["data_wait_ms_p50"],
        "data_wait_ms_p99": m["data_wait_ms_p99"],
        "stall_fraction": m["stall_fraction"],
    }


class ProgressBar:
    """The console's progress bar (disabled on ranks other than 0): a tick per step, stats per log line."""

    def __init__(self, progress: Progress, total: int, completed: int) -> None:
        self.progress = progress
        self.task = progress.add_task("train", total=total, completed=completed, stats="")

    def advance(self) -> None:
        self.progress.advance(self.task)

    def show(self, stats: str) -> None:
        self.progress.update(self.task, stats=stats)

    def print(self, text: str) -> None:
        self.progress.console.print(text)


def progress_text(line: dict[str, Any]) -> str:
    """The bar's stats from a 'train' line: loss, lr, images/s and, where measured, the stall and a straggler."""
    stall = line["stall_fraction"]
    stall_text = f"  stall {stall:.0%}" if stall is not None else ""
    rate = f"loss {line['loss']:.4f}  lr {line['lr']:.2e}  {line['images_per_s']:.1f} img/s"
    return rate + stall_text + straggler_text(line)

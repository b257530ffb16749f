"""Data stall: how long each step waited for its batch, measured where the wait happens, with no new sync.

    meter = StallMeter(device)
    batch = meter.next(batches)        # host time blocked in next() (MMSegmentation's data_time)
    with meter.step():                 # on a GPU: CUDA events on the compute stream around the step
        train_step(state, batch)
    stats = meter.take()               # where the caller has just synchronised: a log interval's `.item()`,
    stats.metrics()                    # the end of a timed region; data_wait_ms_p50/p99, stall_fraction

- On the CPU the step cannot start before next() returns: the host time blocked in next() is the wait.
- On a GPU the host runs ahead of the device, so time in next() can hide behind queued work. What the
  device lost is its idle time between step k's end event and step k+1's start event on the compute
  stream: it waited for the host (the batch, plus the Python between steps). `take` reads only events the
  device has already passed (`Event.query()`), so it never waits, wherever it is called.
Both give a per-step `data_wait` and `stall_fraction` = waiting time / wall time of the measured steps.
`restart()` marks a break (evaluation, a checkpoint): time across it is neither waiting nor wall.
Training and every benchmark use this one meter (engine/train.py, bench/runners.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def segment_stall(
    starts: Sequence[float], ends: Sequence[float], waits: Sequence[float] | None = None
) -> tuple[list[float], float]:
    """(per-step waits, wall) of one unbroken run of steps, from each step's start and end time.

    waits=None (a GPU's event timestamps): the wait before step k is its start minus step k-1's end
    (the first step's is unknown), and the wall runs from the first start to the last end.
    waits given (the host time in next() before each step, on the CPU): the wall also covers the first
    wait, from when the first next() began. Pure arithmetic, in any one time unit."""
    if len(starts) != len(ends) or (waits is not None and len(waits) != len(starts)):
        raise ValueError(f"{len(starts)} starts, {len(ends)} ends, {len(waits or ())} waits: one of each per step")
    if not starts:
        return [], 0.0
    if waits is None:
        gaps = [max(0.0, s - e) for s, e in zip(starts[1:], ends[:-1], strict=True)]
        return gaps, ends[-1] - starts[0]
    return list(waits), ends[-1] - (starts[0] - waits[0])


@dataclass
class StallStats:
    """The waits and wall time of the steps one `take` covered, in seconds."""

    waits_s: list[float] = field(default_factory=list)  # per-step data wait (device idle gap on a GPU)
    wall_s: float = 0.0
    host_wait_s: list[float] = field(default_factory=list)  # host time blocked in next(), per step
    step_s: list[float] = field(default_factory=list)  # each step's own time, start to end (engine/ranks.py)

    @property
    def stall_fraction(self) -> float | None:
        return sum(self.waits_s) / self.wall_s if self.waits_s and self.wall_s > 0 else None

    def metrics(self) -> dict[str, float | None]:
        """data_wait_ms_p50 / _p99 / _mean, stall_fraction, data_time_ms_mean (host, in next())."""
        ms = np.asarray(self.waits_s) * 1e3
        p50, p99 = (float(v) for v in np.percentile(ms, [50, 99])) if ms.size else (None, None)
        host = float(np.mean(self.host_wait_s)) * 1e3 if self.host_wait_s else None
        return {
            "data_wait_ms_p50": p50,
            "data_wait_ms_p99": p99,
            "data_wait_ms_mean": float(ms.mean()) if ms.size else None,
            "stall_fraction": self.stall_fraction,
            "data_time_ms_mean": host,
        }


@dataclass
class _Step:
    host_wait: float  # seconds blocked in next() before this step
    start: Any  # perf_counter seconds (CPU) or a recorded torch.cuda.Event (GPU)
    end: Any = None


class StallMeter:
    """Measures each step's data wait (see the module docstring); `cuda` picks events over the host clock."""

    def __init__(self, device: Any) -> None:
        import torch

        self.cuda = torch.device(device).type == "cuda"
        self._segments: list[list[_Step]] = [[]]
        self._wait = 0.0  # host wait of the next() whose step has not started yet
        self.total_wait_s = 0.0  # over every take: the run's mean stall fraction
        self.total_wall_s = 0.0

    def next(self, items: Iterator[Any]) -> Any:
        t0 = time.perf_counter()
        item = next(items)
        self._wait = time.perf_counter() - t0
        return item

    @contextmanager
    def step(self) -> Iterator[None]:
        rec = _Step(self._wait, self._mark())
        self._wait = 0.0
        yield
        rec.end = self._mark()
        self._segments[-1].append(rec)

    def _mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        import torch

        ev = torch.cuda.Event(enable_timing=True)
        ev.record()  # on the current (compute) stream: enqueued, the host does not wait
        return ev

    def restart(self) -> None:
        """A break: the next step starts a new run of steps (the time across is not counted)."""
        if self._segments[-1]:
            self._segments.append([])

    def reset(self) -> None:
        """Forget every step so far (a benchmark's warm-up)."""
        self._segments, self._wait = [[]], 0.0

    def take(self) -> StallStats:
        """The stats of the steps measured since the last take, and forget them. On a GPU only steps whose
        end event the device has passed are read (query, never a wait); later ones stay for the next take."""
        stats, keep = StallStats(), []
        for seg in self._segments:
            done = seg
            if self.cuda:
                n = next((i for i, r in enumerate(seg) if not r.end.query()), len(seg))
                done, rest = seg[:n], seg[n:]
                keep += [rest] if rest else []
            waits, wall = self._segment(done)
            stats.waits_s += waits
            stats.wall_s += wall
            stats.host_wait_s += [r.host_wait for r in done]
            stats.step_s += [self._duration(r) for r in done]
        self._segments = keep or [[]]
        if stats.stall_fraction is not None:
            self.total_wait_s += sum(stats.waits_s)
            self.total_wall_s += stats.wall_s
        return stats

    def _segment(self, steps: list[_Step]) -> tuple[list[float], float]:
        if not steps:
            return [], 0.0
        if not self.cuda:
            return segment_stall([r.start for r in steps], [r.end for r in steps], [r.host_wait for r in steps])
        ref = steps[0].start  # timestamps relative to the first start, in seconds (elapsed_time: ms)
        starts = [ref.elapsed_time(r.start) / 1e3 for r in steps]
        ends = [ref.elapsed_time(r.end) / 1e3 for r in steps]
        return segment_stall(starts, ends)

    def _duration(self, r: _Step) -> float:
        return r.start.elapsed_time(r.end) / 1e3 if self.cuda else r.end - r.start

    def mean_stall_fraction(self) -> float | None:
        """Waiting time over wall time of every step taken so far (the run's stall)."""
        return self.total_wait_s / self.total_wall_s if self.total_wall_s > 0 else None

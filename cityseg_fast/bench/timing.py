"""Step timing for benchmarks: warm-up excluded, CUDA events on a GPU, perf_counter on the CPU, robust stats.

    times = time_steps(step, iters=50, warmup=10, device=device)   # StepTimes
    stats = summarize(times.step_s, warmup=0)                       # median / p90 / p99 / IQR in ms

Rules this module keeps (and the scenarios rely on):
- warm-up iterations are run but never enter the statistics; the first one (where `torch.compile` and
  cuDNN autotuning happen) is reported on its own as `first_step_s`, and `compile_s` is that minus
  the steady-state median;
- on a GPU, each step is bracketed by CUDA events recorded on the current stream, so the host never
  waits inside the timed region; the device is synchronised only at the two measurement boundaries;
- throughput comes from wall-clock time between those two synchronised boundaries, so host gaps
  (a starving loader, a hidden `.item()`) count against it, as they would in training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cityseg_fast.results.scenarios import (
    LATENCY_MS_IQR,
    LATENCY_MS_MEDIAN,
    LATENCY_MS_P50,
    LATENCY_MS_P90,
    LATENCY_MS_P99,
    VARIANCE_WARNING,
)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default 'linear' method) of an already sorted sequence."""
    if not sorted_values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q={q} outside 0..100")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


def summarize(
    times_s: Sequence[float], warmup: int = 0, variance_warn: float | None = None
) -> dict[str, Any]:
    """Statistics of per-iteration times (seconds) after dropping the first `warmup`, in milliseconds.

    Returns n, mean_ms, median_ms, p90_ms, p99_ms, iqr_ms (p75 - p25), min_ms, max_ms, and
    `variance_warning` (IQR / median above `variance_warn`; False when no threshold is given).
    """
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    kept = list(times_s)[warmup:]
    if not kept:
        raise ValueError(f"no timed iterations left: {len(times_s)} times, warmup {warmup}")
    ms = sorted(t * 1e3 for t in kept)
    median = percentile(ms, 50)
    iqr = percentile(ms, 75) - percentile(ms, 25)
    return {
        "n": len(ms),
        "mean_ms": sum(ms) / len(ms),
        "median_ms": median,
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "iqr_ms": iqr,
        "min_ms": ms[0],
        "max_ms": ms[-1],
        "variance_warning": bool(variance_warn is not None and median > 0 and iqr / median > variance_warn),
    }


def latency_metrics(stats: dict[str, Any]) -> dict[str, Any]:
    """A `summarize` result as the row's latency metrics (the only maker of these keys): latency_ms_p50 /
    median / p90 / p99 / iqr and variance_warning."""
    return {
        LATENCY_MS_P50: stats["median_ms"],
        LATENCY_MS_MEDIAN: stats["median_ms"],
        LATENCY_MS_P90: stats["p90_ms"],
        LATENCY_MS_P99: stats["p99_ms"],
        LATENCY_MS_IQR: stats["iqr_ms"],
        VARIANCE_WARNING: stats["variance_warning"],
    }


def synchronize(device: Any) -> None:
    """Wait for all queued work on `device` (a no-op on the CPU, where every op already ran)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


class StepTimer:
    """Per-step times without host syncs in the loop: CUDA events on a GPU, perf_counter on the CPU.

    timer = StepTimer(device)
    for _ in range(n):
        with timer.step():
            work()
    times_s = timer.times_s()     # synchronises once (a measurement boundary)
    """

    def __init__(self, device: Any):
        import torch

        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._events: list[tuple[Any, Any]] = []
        self._cpu: list[float] = []

    def step(self) -> _StepContext:
        return _StepContext(self)

    def _start(self) -> Any:
        if self.cuda:
            import torch

            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def _stop(self, start: Any) -> None:
        if self.cuda:
            import torch

            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events.append((start, end))
        else:
            self._cpu.append(time.perf_counter() - start)

    def times_s(self) -> list[float]:
        if not self.cuda:
            return list(self._cpu)
        # Measurement boundary: event timestamps are only readable once the GPU has reached them.
        synchronize(self.device)
        return [s.elapsed_time(e) / 1e3 for s, e in self._events]

    def __len__(self) -> int:
        return len(self._events) if self.cuda else len(self._cpu)


class _StepContext:
    def __init__(self, timer: StepTimer):
        self.timer = timer

    def __enter__(self) -> None:
        self.start = self.timer._start()

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.timer._stop(self.start)


@dataclass
class StepTimes:
    """What `time_steps` measured. `step_s`: the timed steps only (warm-up already removed)."""

    step_s: list[float]
    wall_s: float  # wall clock over the timed steps, device synchronised at both ends
    warmup_s: list[float] = field(default_factory=list)  # host wall time of each warm-up step (synchronised)
    items_per_step: int = 1

    @property
    def first_step_s(self) -> float | None:
        return self.warmup_s[0] if self.warmup_s else None

    @property
    def items_per_s(self) -> float:
        return self.items_per_step * len(self.step_s) / self.wall_s if self.wall_s > 0 else float("nan")

    def compile_s(self, steady_median_s: float) -> float | None:
        """Time the first step spent beyond a steady-state step: compilation + autotuning + lazy init."""
        if self.first_step_s is None:
            return None
        return max(0.0, self.first_step_s - steady_median_s)


def time_steps(
    step: Callable[[], Any],
    iters: int,
    warmup: int,
    device: Any,
    items_per_step: int = 1,
    barrier: Callable[[], None] | None = None,
    on_timed_start: Callable[[], None] | None = None,
) -> StepTimes:
    """Run `step` warmup + iters times; time the last `iters` per step and over the whole (wall clock).

    `barrier` (e.g. torch.distributed.barrier) runs at both boundaries so DDP ranks start and stop
    the timed region together; `on_timed_start` runs once, after warm-up, just before the timed region
    (e.g. to snapshot compile counters so recompiles in the steady state can be told apart).
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    warm: list[float] = []
    for _ in range(warmup):
        t0 = time.perf_counter()
        step()
        # Measurement boundary: attribute each warm-up step's device work (compile, autotune) to it.
        synchronize(device)
        warm.append(time.perf_counter() - t0)
    timer = StepTimer(device)
    # Measurement boundary: the timed region starts with an idle device.
    synchronize(device)
    if on_timed_start is not None:
        on_timed_start()
    if barrier is not None:
        barrier()
    t0 = time.perf_counter()
    for _ in range(iters):
        with timer.step():
            step()
    # Measurement boundary: the wall clock stops when the device has finished the last step.
    synchronize(device)
    if barrier is not None:
        barrier()
    wall = time.perf_counter() - t0
    return StepTimes(step_s=timer.times_s(), wall_s=wall, warmup_s=warm, items_per_step=items_per_step)

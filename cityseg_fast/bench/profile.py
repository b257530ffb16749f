"""Inside a step: torch.profiler over a few steady steps of a point, run after its timed region.

    metrics = profile_steps(step, steps=3, device=device, trace=trace_path(cfg, "model"))
    # profile_trace (a Chrome trace: chrome://tracing or ui.perfetto.dev), profile_steps, profile_sort,
    # profile_top_ops: the 10 ops with the most self device time (self CPU time on the CPU), per step

The profiler adds overhead and syncs of its own, so it runs only after the measurement (`bench.profile`,
in bench/runners.py: after the timed steps and after the memory readings), on the same step function.
Where the trace goes: `bench.trace_dir`; `cityseg bench --append FILE` sets it to FILE's folder/traces
(for a sweep's child, the sweep's points/traces), else runs/traces. The row records the path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cityseg_fast.config import Config
from cityseg_fast.results import point_for, point_id

TOP_N = 10
DEFAULT_TRACE_DIR = "runs/traces"


def trace_path(cfg: Config, scenario: str, world_size: int = 1, rank: int = 0, kind: str = ".pt.trace.json") -> Path:
    """bench.trace_dir (or runs/traces) / SCENARIO-POINT_ID[-rankR]KIND: one file per point (and per rank under
    torchrun: every rank runs the profiled steps, their collectives need it). `kind`: the trace's suffix, or
    another file that goes beside the row (bench/memory.py's allocator snapshot, .memory.pickle)."""

    pid = point_id(scenario, point_for(scenario, cfg, world_size))
    suffix = f"-rank{rank}" if rank else ""
    return Path(cfg.bench.trace_dir or DEFAULT_TRACE_DIR) / f"{scenario}-{pid}{suffix}{kind}"


def profile_steps(step: Callable[[], Any], steps: int, device: Any, trace: Path) -> dict[str, Any]:
    """Profile `steps` calls of `step`, write the Chrome trace to `trace`, return the profile metrics."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    trace.parent.mkdir(parents=True, exist_ok=True)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize(device)  # after the measurement: every profiled kernel has run
    prof.export_chrome_trace(str(trace))
    return {
        "profile_trace": str(trace.resolve()),
        "profile_steps": steps,
        "profile_sort": "self_device_time" if cuda else "self_cpu_time",
        "profile_top_ops": top_ops(prof.key_averages(), steps, on_device=cuda),
    }


def top_ops(averages: Iterable[Any], steps: int, on_device: bool, n: int = TOP_N) -> list[dict[str, Any]]:
    """The `n` host-side ops (aten::...) with the most self time, per step: self device time (the kernels
    each launched itself) on a GPU, self CPU time on the CPU; `share` of all the profiled self time.
    `averages`: torch.profiler's key_averages() (FunctionEventAvg: key, count, device_type, ...)."""
    from torch.autograd import DeviceType

    events = [a for a in averages if not getattr(a, "is_user_annotation", False)]
    attr = "self_device_time_total" if on_device else "self_cpu_time_total"
    if on_device:  # the device's total: kernels and copies themselves (Kineto gives them their own events)
        total = sum(a.self_device_time_total for a in events if a.device_type != DeviceType.CPU)
    else:
        total = sum(a.self_cpu_time_total for a in events)
    ops = sorted((a for a in events if a.device_type == DeviceType.CPU), key=lambda a: -getattr(a, attr))
    return [
        {
            "op": a.key,
            "calls_per_step": a.count / steps,
            "self_ms_per_step": getattr(a, attr) / 1e3 / steps,  # the profiler's times are microseconds
            "share": getattr(a, attr) / total if total > 0 else None,
        }
        for a in ops[:n]
        if getattr(a, attr) > 0
    ]

"""Memory, power and utilisation of one benchmark point: torch peaks, NVML samples, host peak RSS, CPU use.

    with MemoryMonitor(device, sample_interval_s=0.1) as mon:
        run_the_point()
    metrics = mon.metrics()   # mem_torch_peak_allocated_mib, mem_nvml_used_mib, gpu_power_w, ...

- torch peaks (allocated / reserved) are reset on entry, so they belong to this point only, after
  `release_pools`: the blocks an earlier point of the same process left cached in DALI's and torch's
  pools are given back first, so NVML's reading is this point's;
- NVML (device memory used, power, SM clock, utilisation, and where the GPU has NVJPG engines their
  utilisation: is the hardware JPEG decoder saturated?) is sampled in a daemon thread; without NVML or a
  GPU the thread never starts and those metrics are None (never an error);
- host peak RSS is the larger of getrusage's ru_maxrss and /proc/self/status VmHWM; VmHWM is reset
  on entry where the kernel allows it (/proc/self/clear_refs), otherwise it is the process's peak,
  which for a sweep point (one fresh process per point) is the same thing;
- cpu_util is this process's CPU time (plus reaped children) over wall time x usable cores (0..1).

`MemorySnapshot` (bench.memory_snapshot on a GPU) records torch's allocator history for pytorch.org/memory_viz.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from cityseg_fast.data.dali.memory import release_unused_memory
from cityseg_fast.hardware import cpu_count, init_cuda
from cityseg_fast.memstats import MIB, NvmlDevice, host_peak_rss_mib, reset_host_peak
from cityseg_fast.results.scenarios import MEMORY_SNAPSHOT, MEMORY_SNAPSHOT_NVML_USED_MIB

__all__ = ["MIB", "MemoryMonitor", "MemorySnapshot", "NvmlSampler", "host_peak_rss_mib", "release_pools",
           "reset_host_peak"]  # fmt: skip


def release_pools(device: Any) -> None:
    """Give back the cached blocks nothing uses any more: DALI's pools (device and pinned host, if DALI
    was imported at all) and, on a GPU, torch's caching allocator. Before a point's memory baseline."""
    import torch

    release_unused_memory()
    if torch.device(device).type == "cuda" and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class NvmlSampler:
    """Background thread sampling one GPU through NVML; `start()` returns False (and does nothing) without
    NVML, or when no NVML device is the CUDA device (matched by UUID: `hardware.match_nvml_device`)."""

    def __init__(self, device: Any, interval_s: float = 0.1):
        self.device = device
        self.interval_s = interval_s
        self.samples: list[dict[str, float]] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dev: NvmlDevice | None = None
        self._nvml: Any = None
        self._handle: Any = None
        self._jpg = True  # NVJPG utilisation asked for until the GPU says it has none (NVMLError_NotSupported)

    def start(self) -> bool:
        self._dev = NvmlDevice.open(self.device)
        if self._dev is None:  # no pynvml, no driver, or no NVML device with this GPU's UUID: metrics stay None
            self.error = f"no NVML device matches {self.device}"
            return False
        self._nvml, self._handle = self._dev.nvml, self._dev.handle
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)
        self._thread.start()
        return True

    def _sample(self) -> dict[str, float]:
        n, h = self._nvml, self._handle
        s: dict[str, float] = {"mem_used_mib": self._dev.used_mib()}
        for key, fn in (
            ("power_w", lambda: n.nvmlDeviceGetPowerUsage(h) / 1000.0),
            ("sm_clock_mhz", lambda: float(n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM))),
            ("util", lambda: n.nvmlDeviceGetUtilizationRates(h).gpu / 100.0),
        ):
            try:
                s[key] = fn()
            except Exception:  # some GPUs / MIG slices do not report every field
                pass
        if self._jpg:
            try:  # [utilisation %, sampling period us] of the JPEG decoder engines (A100: 1 NVJPG, H100: 7)
                s["jpg_util"] = n.nvmlDeviceGetJpgUtilization(h)[0] / 100.0
            except Exception:  # no NVJPG engine, or a driver / pynvml without the call: not asked again
                self._jpg = False
        return s

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self._sample())
            except Exception as e:
                self.error = f"{type(e).__name__}: {e}"
                return
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._thread = None
        self._dev.close()

    def summary(self) -> dict[str, float | None]:
        def agg(key: str, fn) -> float | None:
            vals = [s[key] for s in self.samples if key in s]
            return fn(vals) if vals else None

        mean = lambda v: sum(v) / len(v)  # noqa: E731
        return {
            "mem_nvml_used_mib": agg("mem_used_mib", max),
            "gpu_power_w": agg("power_w", mean),
            "gpu_sm_clock_mhz": agg("sm_clock_mhz", mean),
            "gpu_util": agg("util", mean),
            "gpu_jpg_util": agg("jpg_util", mean),  # None where the GPU has no NVJPG engine
            "nvml_samples": len(self.samples),
        }


class MemoryMonitor:
    """Context manager measuring one point's memory, power and CPU use (see the module docstring)."""

    def __init__(self, device: Any = "cpu", sample_interval_s: float = 0.1):
        import torch

        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda" and torch.cuda.is_available()
        self.sample_interval_s = sample_interval_s
        self.nvml: NvmlSampler | None = None
        self._t0 = 0.0
        self._cpu0 = 0.0
        self._wall = 0.0
        self._cpu = 0.0

    @staticmethod
    def _cpu_time() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def __enter__(self) -> MemoryMonitor:
        import torch

        if self.cuda:
            init_cuda(self.device)  # idempotent; the allocator must exist before its peaks are reset
            release_pools(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.nvml = NvmlSampler(self.device, self.sample_interval_s)
            self.nvml.start()
        reset_host_peak()
        self._t0 = time.perf_counter()
        self._cpu0 = self._cpu_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._wall = time.perf_counter() - self._t0
        self._cpu = self._cpu_time() - self._cpu0
        if self.nvml is not None:
            self.nvml.stop()

    def metrics(self) -> dict[str, Any]:
        import torch

        m: dict[str, Any] = {
            "mem_torch_peak_allocated_mib": None,
            "mem_torch_peak_reserved_mib": None,
            "mem_nvml_used_mib": None,
            "gpu_power_w": None,
            "gpu_sm_clock_mhz": None,
            "gpu_util": None,
            "mem_host_peak_rss_mib": round(host_peak_rss_mib(), 1),
            "cpu_util": (self._cpu / (self._wall * cpu_count())) if self._wall > 0 else None,
        }
        if self.cuda:
            m["mem_torch_peak_allocated_mib"] = torch.cuda.max_memory_allocated(self.device) / MIB
            m["mem_torch_peak_reserved_mib"] = torch.cuda.max_memory_reserved(self.device) / MIB
        if self.nvml is not None:
            m.update(self.nvml.summary())
        return m


class MemorySnapshot:
    """bench.memory_snapshot on a GPU: what the caching allocator holds and which Python line allocated it,
    for pytorch.org/memory_viz (torch.cuda.memory._record_memory_history / _dump_snapshot).

        snap = MemorySnapshot(device, path)      # path: beside the row (profile.trace_path, .memory.pickle)
        snap.start()      # from the point's start through its warm-up, where memory first peaks (and an OOM
                          # happens): an out-of-memory then writes PATH-oom.memory.pickle, the allocator's state
        snap.pause()      # before the timed steps: recording costs host time on every allocation
        snap.record_step(step)   # after the measurement: one more step recorded, written to PATH; its metrics

    Beside each file, NVML's used memory at that moment: the snapshot sees torch's allocator only, not NCCL's
    buffers nor DALI's pools, which NVML counts (their difference is theirs). The out-of-memory observer stays
    attached for the process's life (torch has no detach): a benchmark point is one process."""

    MAX_ENTRIES = 100_000  # allocation / free events kept: a few steps of a segmentation model

    def __init__(self, device: Any, path: Path) -> None:
        import torch

        self.device, self.path = torch.device(device), Path(path)
        self.oom_path = self.path.with_name(self.path.name.replace(".memory.pickle", "") + "-oom.memory.pickle")
        self.oom_nvml_used_mib: float | None = None
        self._nvml = NvmlDevice.open(self.device)  # None without NVML

    def _record(self, on: bool) -> None:
        import torch

        if on:  # python stacks: C++ unwinding on every allocation would cost far more
            torch.cuda.memory._record_memory_history("all", max_entries=self.MAX_ENTRIES, stacks="python")
        else:
            torch.cuda.memory._record_memory_history(enabled=None)

    def start(self) -> None:
        import torch

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._record(True)
        torch._C._cuda_attach_out_of_memory_observer(self._on_oom)

    def _on_oom(self, device: int, alloc: int, device_alloc: int, device_free: int) -> None:
        """The allocator's observer, called before the OutOfMemoryError unwinds (nothing freed yet)."""
        import torch

        torch.cuda.memory._dump_snapshot(str(self.oom_path))
        self.oom_nvml_used_mib = self._nvml.used_mib() if self._nvml is not None else None

    def pause(self) -> None:
        self._record(False)

    def record_step(self, step: Any) -> dict[str, Any]:
        """One more `step()` recorded and written to `path`; the row's memory_snapshot metrics."""
        import torch

        self._record(True)
        try:
            step()
            torch.cuda.synchronize(self.device)  # after the measurement: the step's frees are in the history
            torch.cuda.memory._dump_snapshot(str(self.path))
            used = self._nvml.used_mib() if self._nvml is not None else None
        finally:
            self._record(False)
        return {MEMORY_SNAPSHOT: str(self.path.resolve()), MEMORY_SNAPSHOT_NVML_USED_MIB: used,
                "memory_snapshot_torch_reserved_mib": torch.cuda.memory_reserved(self.device) / MIB}  # fmt: skip

    def oom_metrics(self) -> dict[str, Any]:
        """An out-of-memory row's: where the allocator's state at the OOM went, NVML's used memory then."""
        if not self.oom_path.exists():
            return {}
        return {MEMORY_SNAPSHOT: str(self.oom_path.resolve()), MEMORY_SNAPSHOT_NVML_USED_MIB: self.oom_nvml_used_mib}

    def close(self) -> None:
        if self._nvml is not None:
            self._nvml.close()

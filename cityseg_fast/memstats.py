"""Memory readings any layer may take: host RSS / PSS of a process and its workers, torch's allocator
figures, NVML's device memory used. None of them synchronises the device.

    host_rss_mib()                       # this process now (VmRSS)
    host_peak_rss_mib()                  # this process's peak (VmHWM / ru_maxrss)
    tree_memory_mib()                    # its descendants too (DataLoader workers are processes)
    torch_memory_mib(device)             # max allocated / reserved on a GPU, None on the CPU
    nv = NvmlDevice.open(device)         # None without NVML or a matching GPU; nv.used_mib(), nv.close()

Training logs them at its log intervals (engine/train.py), benchmarks per point (bench/memory.py,
bench/loader_bench.py); so they live below both.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Any

from cityseg_fast.hardware import nvml_handle

MIB = 2**20
_HWM_NOT_RESET = [True]  # once clear_refs worked, VmHWM (not the lifetime ru_maxrss) is the point's peak


def proc_status_kib(field_name: str, pid: int | str = "self") -> float | None:
    """A 'kB' field of /proc/PID/status (VmRSS, VmHWM, ...), or None where unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def host_rss_mib() -> float | None:
    kib = proc_status_kib("VmRSS")
    return None if kib is None else kib / 1024.0


def host_peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (ru_maxrss is KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    hwm = proc_status_kib("VmHWM")
    if hwm is not None:
        peak = max(peak, hwm / 1024.0) if _HWM_NOT_RESET[0] else hwm / 1024.0
    return peak


def reset_host_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    _HWM_NOT_RESET[0] = False
    return True


def descendants(pid: int) -> list[int]:
    """All live descendants (DataLoader workers hang under a forkserver, so grandchildren too)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _pss_kib(pid: int | str) -> float | None:
    """Proportional set size (shared pages split among their users) from /proc/PID/smaps_rollup."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def tree_memory_mib(pid: int | None = None) -> dict[str, Any]:
    """This process's descendants (workers, a forkserver) now: how many, the sum of their peak RSS, and
    the PSS of the whole tree (itself included: shared memory, e.g. batches in /dev/shm, counted once).
    PSS is None where any process's smaps_rollup is unreadable (Linux < 4.14, another user)."""
    me = os.getpid() if pid is None else pid
    kids = descendants(me) if Path("/proc/self/stat").exists() else []
    peaks = [proc_status_kib("VmHWM", k) for k in kids]
    pss = [_pss_kib(p) for p in [me, *kids]]
    return {
        "workers": len(kids),
        "workers_peak_rss_mib": sum(p for p in peaks if p is not None) / 1024.0,
        "tree_pss_mib": None if any(p is None for p in pss) else sum(pss) / 1024.0,
    }


def torch_memory_mib(device: Any) -> dict[str, float | None]:
    """Allocator figures of a CUDA device (host-side counters, no device sync); None on the CPU."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return {"mem_torch_max_allocated_mib": None, "mem_torch_max_reserved_mib": None,
                "mem_torch_reserved_mib": None}  # fmt: skip
    return {
        "mem_torch_max_allocated_mib": torch.cuda.max_memory_allocated(dev) / MIB,
        "mem_torch_max_reserved_mib": torch.cuda.max_memory_reserved(dev) / MIB,
        "mem_torch_reserved_mib": torch.cuda.memory_reserved(dev) / MIB,
    }


class NvmlDevice:
    """One GPU (or MIG slice) through NVML, matched to a CUDA device by UUID (hardware.nvml_handle)."""

    def __init__(self, nvml: Any, handle: Any) -> None:
        self.nvml, self.handle = nvml, handle

    @classmethod
    def open(cls, device: Any) -> NvmlDevice | None:
        """None without pynvml, a driver, or an NVML device with this CUDA device's UUID (or on the CPU)."""
        import torch

        if torch.device(device).type != "cuda":
            return None

        found = nvml_handle(torch.device(device))
        return None if found is None else cls(*found)

    def used_mib(self) -> float:
        """Device memory in use by every process on this GPU (NVML's view, not torch's)."""
        return self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used / MIB

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except Exception:
            pass

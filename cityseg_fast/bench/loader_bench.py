"""The data loader alone (`cityseg bench loader`): images/s, batch latency percentiles, CPU time per image.

    metrics = measure_loader(cfg, iters=50, warmup=10)     # loader.decode_only=true: the decode limit

The loop only pulls batches (the consumer does no work), so the numbers are the loader's ceiling
at this setting. `--decode-only` runs the same backend over the same files with the same decoder
but decodes full frames and does nothing else: the rate a loader is compared with.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Any

from cityseg_fast.config import Config

# -- CPU time of this process and its worker processes ------------------------------------------


def _descendants(pid: int) -> list[int]:
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


def _proc_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def cpu_seconds() -> dict[int, float]:
    """CPU seconds so far: key 0 = this process (all threads) + reaped children, then live descendants."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = {0: me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime}
    if Path("/proc/self/stat").exists():
        for pid in _descendants(os.getpid()):
            out[pid] = _proc_cpu_s(pid)
    return out


def _cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(after[k] - before.get(k, 0.0) for k in after)


# -- measurement --------------------------------------------------------------------------------


def _percentiles(lat_s: list[float], variance_warn: float) -> dict[str, Any]:
    import numpy as np

    ms = np.asarray(lat_s) * 1e3
    q25, q50, q75, q90, q99 = np.percentile(ms, [25, 50, 75, 90, 99])
    return {
        "latency_ms_p50": float(q50),
        "latency_ms_p90": float(q90),
        "latency_ms_p99": float(q99),
        "latency_ms_median": float(q50),
        "latency_ms_iqr": float(q75 - q25),
        "variance_warning": bool(q50 > 0 and (q75 - q25) / q50 > variance_warn),
    }


MIN_CPU_WINDOW_S = 0.5  # shortest timed window whose CPU utilisation is reported


def measure_loader(cfg: Config, iters: int, warmup: int) -> dict[str, Any]:
    """Pull warmup + iters batches from the training loader of data.train_split (loader.decode_only:
    the decode limit); metrics as in the result schema.

    Also returns "description" (which backend and device ran) and "batch_size".
    """
    import torch

    from cityseg_fast.data.factory import build_loader
    from cityseg_fast.data.plan import endless
    from cityseg_fast.hardware import cpu_count

    if iters < 1 or warmup < 0:
        from cityseg_fast.errors import UserError

        raise UserError(f"bench loader: --iters must be >= 1 and --warmup >= 0 (got {iters}, {warmup})")
    loader = build_loader(cfg, cfg.data.train_split, train=True)
    on_gpu = loader_device(loader).type == "cuda"
    batches = (b for _, b in endless(loader))
    n_images, lat = 0, []
    try:
        for _ in range(warmup):
            next(batches)
        if on_gpu:
            torch.cuda.synchronize()  # start the clock with no copies still in flight
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        last = t0
        for _ in range(iters):
            b = next(batches)
            if on_gpu:
                torch.cuda.synchronize()  # a batch counts when its data is on the device, not when queued
            now = time.perf_counter()
            lat.append(now - last)
            last = now
            n_images += b.image.shape[0]
        wall = time.perf_counter() - t0
        cpu1 = cpu_seconds()
    finally:
        batches.close()
        loader.close()
    cores = cpu_count() or os.cpu_count() or 1
    cpu = _cpu_used(cpu0, cpu1)
    # /proc CPU times tick at 10 ms: over a window this short (the synthetic loader) a ratio is noise.
    busy = cpu / wall if wall >= MIN_CPU_WINDOW_S else None
    metrics: dict[str, Any] = {
        "images_per_s": n_images / wall,
        **_percentiles(lat, cfg.bench.variance_warn),
        "cpu_util": busy / cores if busy is not None else None,
        "cpu_cores_used": busy,
        # CPU time per image: steadier than images/s on a shared machine (other load takes cores, not cycles)
        "cpu_ms_per_image": 1e3 * _cpu_used(cpu0, cpu1) / max(1, n_images),
        "mem_host_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "wall_s": wall,
        "loader_description": loader.description,
        "batch_size": int(b.image.shape[0]),
    }
    return metrics


def loader_device(loader) -> Any:
    import torch

    dev = getattr(loader, "device", None)
    return dev if isinstance(dev, torch.device) else torch.device("cpu")

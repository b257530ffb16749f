"""The data loader alone (`cityseg bench loader`): images/s, batch latency percentiles, CPU time per image.

    metrics = measure_loader(cfg, iters=50, warmup=10)     # loader.decode_only=true: the decode limit

The loop only pulls batches (the consumer does no work), so the numbers are the loader's ceiling
at this setting. `--decode-only` runs the same backend over the same files with the same decoder
but decodes full frames and does nothing else: the rate a loader is compared with. On a GPU a batch
counts once the consumer's stream has it (an event on that stream, not a device-wide sync, which would
also wait for the loader's own prefetching). Loaders that time their stages (handoff.StageTimes: the
torch backends) split the CPU ms per image into decode, transform and hand-off. Memory baselines start
from released pools (bench.memory.release_pools) and a reset host peak, so a point measured after
another in the same process does not inherit its pools or its peak.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Any

from cityseg_fast.bench.memory import NvmlSampler, release_pools
from cityseg_fast.bench.timing import latency_metrics, summarize
from cityseg_fast.config import Config
from cityseg_fast.data.factory import build_loader
from cityseg_fast.data.handoff import STAGES
from cityseg_fast.data.plan import endless
from cityseg_fast.errors import UserError
from cityseg_fast.hardware import cpu_count, resolve_device
from cityseg_fast.memstats import (
    NvmlDevice,
    descendants,
    host_peak_rss_mib,
    reset_host_peak,
    torch_memory_mib,
    tree_memory_mib,
)
from cityseg_fast.results.scenarios import (
    CPU_MS_BY_STAGE,
    GPU_JPG_UTIL,
    GPU_UTIL,
    HW_DECODER,
    HW_DECODER_ENGINES,
    LOADER_DECODER,
    NVJPEG_VERSION,
)

# -- CPU time of this process and its worker processes ------------------------------------------


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
        for pid in descendants(os.getpid()):
            out[pid] = _proc_cpu_s(pid)
    return out


def _cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(after[k] - before.get(k, 0.0) for k in after)


# -- measurement --------------------------------------------------------------------------------


MIN_CPU_WINDOW_S = 0.5  # shortest timed window whose CPU utilisation is reported


def measure_loader(cfg: Config, iters: int, warmup: int) -> dict[str, Any]:
    """Pull warmup + iters batches from the training loader of data.train_split (loader.decode_only:
    the decode limit); metrics as in the result schema.

    Also returns "description" (which backend and device ran) and "batch_size".
    """

    if iters < 1 or warmup < 0:
        raise UserError(f"bench loader: --iters must be >= 1 and --warmup >= 0 (got {iters}, {warmup})")
    device = resolve_device()  # CUDA initialised first: its context is in the GPU memory baseline
    release_pools(device)  # an earlier point's cached blocks (DALI's, torch's) are not this loader's
    reset_host_peak()
    gpu = GpuMemory.before_loader(device)
    try:
        loader = build_loader(cfg, cfg.data.train_split, train=True, device=device)
        try:
            metrics = _sampled_pull(loader, iters, warmup, cfg, device)
            # After the timed region, the workers and the pipeline still alive: what they hold now.
            metrics.update(host_memory())
            metrics.update(gpu.while_loader_runs() if gpu else {})
        finally:
            loader.close()
    finally:
        if gpu:
            gpu.close()
    return metrics


def _sampled_pull(loader: Any, iters: int, warmup: int, cfg: Config, device: Any) -> dict[str, Any]:
    """`_timed_pull`, with the GPU's utilisation and its NVJPG engines' (the hardware JPEG decoder: does a
    hw_decoder_load sweep saturate it?) sampled by NVML meanwhile, where there is a GPU with NVML."""
    sampler = NvmlSampler(device, cfg.bench.sample_interval_s)
    sampling = sampler.start()  # False on the CPU or without NVML: no thread, no metrics
    try:
        metrics = _timed_pull(loader, iters, warmup, cfg.bench.variance_warn)
    finally:
        sampler.stop()
    if sampling:
        summary = sampler.summary()
        metrics.update({GPU_UTIL: summary[GPU_UTIL], GPU_JPG_UTIL: summary[GPU_JPG_UTIL]})
    return metrics


def _timed_pull(loader: Any, iters: int, warmup: int, variance_warn: float) -> dict[str, Any]:
    arrived = _arrival(loader_device(loader))
    batches = (b for _, b in endless(loader))
    n_images, lat = 0, []
    try:
        for _ in range(warmup):
            b = next(batches)
        if warmup:
            arrived(b)  # start the clock with no copy of the warm-up still in flight
        stages0 = getattr(loader, "stages", None)
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        last = t0
        for _ in range(iters):
            b = next(batches)
            arrived(b)
            now = time.perf_counter()
            lat.append(now - last)
            last = now
            n_images += b.image.shape[0]
        wall = time.perf_counter() - t0
        cpu1 = cpu_seconds()
        stages = loader.stages.per_image_ms(stages0) if stages0 is not None else {}
    finally:
        batches.close()
    cores = cpu_count() or os.cpu_count() or 1
    cpu = _cpu_used(cpu0, cpu1)
    # /proc CPU times tick at 10 ms: over a window this short (the synthetic loader) a ratio is noise.
    busy = cpu / wall if wall >= MIN_CPU_WINDOW_S else None
    return {
        "images_per_s": n_images / wall,
        **latency_metrics(summarize(lat, variance_warn=variance_warn)),
        "cpu_util": busy / cores if busy is not None else None,
        "cpu_cores_used": busy,
        # CPU time per image: steadier than images/s on a shared machine (other load takes cores, not cycles)
        "cpu_ms_per_image": 1e3 * cpu / max(1, n_images),
        **({} if not stages else dict(zip(CPU_MS_BY_STAGE, (stages[k] for k in STAGES), strict=True))),
        "wall_s": wall,
        "loader_description": loader.description,
        LOADER_DECODER: getattr(loader, "decoder", None),
        **decode_metrics(loader),
        "batch_size": int(b.image.shape[0]),
    }


def decode_metrics(loader: Any) -> dict[str, Any]:
    """A DALI loader's decoding as row metrics, once it has run a batch: the nvJPEG it ran on and whether
    the hardware decoder took a share (data/dali/nvjpeg.GpuDecode); {} for other loaders."""
    ran = getattr(loader, "gpu_decode", None)
    if ran is None:
        return {}
    return {NVJPEG_VERSION: ran.nvjpeg_version, HW_DECODER: ran.hw_decoder, HW_DECODER_ENGINES: ran.hw_engines}


def _arrival(device: Any) -> Any:
    """A function that returns once a batch's data is on the device for its consumer: on a GPU, an event
    recorded on the consumer's (current) stream and waited for: the loader's copies and kernels for this
    batch are ordered before it on that stream, while its prefetching of later batches on its own streams
    is not waited for (torch.cuda.synchronize() would wait for those too and understate the rate)."""
    if device.type != "cuda":
        return lambda batch: None
    import torch

    def arrived(batch: Any) -> None:
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(device))
        done.synchronize()  # the measurement boundary: a batch counts when its data is on the device

    return arrived


def host_memory() -> dict[str, Any]:
    """Host memory of the loader: this process's peak RSS plus each worker's (DataLoader workers and
    their forkserver are processes of their own), and the tree's PSS (shared memory counted once)."""

    tree = tree_memory_mib()
    return {
        "mem_host_peak_rss_mib": host_peak_rss_mib() + tree["workers_peak_rss_mib"],
        "mem_host_workers_peak_rss_mib": tree["workers_peak_rss_mib"],
        "mem_host_pss_mib": tree["tree_pss_mib"],
        "loader_processes": tree["workers"],
    }


class GpuMemory:
    """The loader's own GPU memory: (NVML used - torch reserved) while it runs, minus the same before it
    was built (the CUDA context, other processes on the GPU). DALI allocates outside torch's allocator,
    so NVML sees its buffers and torch does not."""

    def __init__(self, device: Any, nvml: Any) -> None:
        self.device, self.nvml = device, nvml
        self.used0 = nvml.used_mib()
        self.reserved0 = torch_memory_mib(device)["mem_torch_reserved_mib"] or 0.0

    @classmethod
    def before_loader(cls, device: Any) -> GpuMemory | None:
        nvml = NvmlDevice.open(device)  # None on the CPU or without NVML
        return None if nvml is None else cls(device, nvml)

    def while_loader_runs(self) -> dict[str, float | None]:
        used, torch_mem = self.nvml.used_mib(), torch_memory_mib(self.device)
        reserved = torch_mem["mem_torch_reserved_mib"] or 0.0
        return {
            "mem_nvml_used_mib": used,
            "mem_nvml_before_loader_mib": self.used0,
            "mem_torch_reserved_mib": reserved,
            "mem_torch_peak_reserved_mib": torch_mem["mem_torch_max_reserved_mib"],
            "loader_gpu_mem_mib": (used - self.used0) - (reserved - self.reserved0),
        }

    def close(self) -> None:
        self.nvml.close()


def loader_device(loader) -> Any:
    import torch

    dev = getattr(loader, "device", None)
    return dev if isinstance(dev, torch.device) else torch.device("cpu")

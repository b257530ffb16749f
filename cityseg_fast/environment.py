"""The environment a result was measured in: host, CPU, GPUs (via NVML), library versions, git commit.

`collect_env()` is cheap enough for every result row and every run's env.json; `cityseg doctor` adds
the slower capability probes. Nothing here raises because a GPU, NVML, DALI or git is missing: those
are reported as absent.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

from cityseg_fast import __version__
from cityseg_fast.data.dali import dali_version
from cityseg_fast.hardware import bf16_support_why, cpu_count, cuda_bf16_from_capability


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def nvml_gpus() -> tuple[list[dict[str, Any]], str | None]:
    """[{index, name, memory_total_mib, driver, compute_capability}], and the NVML error if it failed."""
    try:
        import pynvml
    except ImportError:
        return [], "pynvml (nvidia-ml-py) is not installed"
    try:
        pynvml.nvmlInit()
    except Exception as e:  # pynvml.NVMLError_LibraryNotFound etc.: no driver on this machine
        return [], f"NVML unavailable: {e}"
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else driver
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            gpus.append(
                {
                    "index": i,
                    "name": name.decode() if isinstance(name, bytes) else name,
                    "memory_total_mib": pynvml.nvmlDeviceGetMemoryInfo(h).total // 2**20,
                    "driver": driver,
                    "compute_capability": f"{major}.{minor}",
                }
            )
        return gpus, None
    finally:
        pynvml.nvmlShutdown()


@lru_cache(maxsize=1)
def git_commit(path: str | None = None) -> str | None:
    """The commit of the checkout the package runs from (with '-dirty' if modified), or None."""
    where = path or str(Path(__file__).resolve().parents[1])  # cityseg_fast/environment.py -> the checkout
    try:
        out = subprocess.run(
            ["git", "-C", where, "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def compiler() -> str | None:
    """The C++ compiler torch.compile's inductor would use on the CPU, or None."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def bf16_why(gpus: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """{"cpu": (native | emulated, why)} and "cuda" for the first GPU, from NVML's compute capability
    (no CUDA initialisation: a sweep's parent process must not touch the GPU)."""
    out = {"cpu": bf16_support_why("cpu")}
    if gpus:
        major, minor = (int(v) for v in gpus[0]["compute_capability"].split("."))
        out["cuda"] = cuda_bf16_from_capability(major, minor)
    return out


def collect_env() -> dict[str, Any]:
    """The fields recorded on every result row."""
    import torch
    import torchvision

    gpus, _ = nvml_gpus()
    cuda = torch.cuda.is_available()
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cityseg_fast": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "dali": dali_version(),
        "cuda_runtime": torch.version.cuda,
        "cuda_available": cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cpu": cpu_model(),
        "cpu_cores": cpu_count(),
        "gpu": gpus[0]["name"] if gpus else None,
        "gpu_count": len(gpus),
        "driver": gpus[0]["driver"] if gpus else None,
        # emulated bf16 is far slower than fp32: a bf16 row means little without this
        "bf16": {dev: support for dev, (support, _) in bf16_why(gpus).items()},
        "git_commit": git_commit(),
    }

"""What this process may use: its CPU cores, its compute device, and which NVML GPU that device is.

The one place the package resolves a device (every command, loader and benchmark asks here):
    device = resolve_device()          # cuda:LOCAL_RANK (initialised) or cpu
    cores = cores_per_rank()           # CPU cores this rank may keep busy (loader threads)
    where = loader_device("auto")      # where DALI runs for loader.device=auto: "gpu" | "cpu"
    rank_cpus(device)                  # the CPUs this rank may run on, and NVML's ideal set for its GPU

`resolve_device` also initialises CUDA on that device (set_device, then the caching allocator), so
the first CUDA call anywhere after it, e.g. `torch.cuda.reset_peak_memory_stats`, finds torch ready
("Invalid device argument ... did you call init?" is what it raises otherwise).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def cpu_count() -> int:
    """Cores this process may use (affinity / cgroup aware where the OS says), not the host's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() else default


def local_world_size() -> int:
    """Processes on this node: torchrun's LOCAL_WORLD_SIZE, else 1."""
    return max(1, _env_int("LOCAL_WORLD_SIZE", 1))


def cores_per_rank() -> int:
    """The CPU cores one rank of this node may keep busy: usable cores / ranks on the node (>= 1)."""
    return max(1, cpu_count() // local_world_size())


def resolve_device(requested: str = "auto") -> torch.device:
    """This rank's device: "auto" -> cuda:(LOCAL_RANK mod GPUs) when CUDA is available, else cpu;
    "cpu" -> cpu; "cuda" / "cuda:N" -> that GPU. A CUDA device is made current and initialised."""
    import torch

    if requested == "cpu" or (requested == "auto" and _auto_device_type() == "cpu"):
        return torch.device("cpu")
    if requested == "auto":
        device = torch.device("cuda", _env_int("LOCAL_RANK", 0) % torch.cuda.device_count())
    else:
        device = torch.device(requested)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", _env_int("LOCAL_RANK", 0) % max(1, torch.cuda.device_count()))
    if device.type == "cuda":
        init_cuda(device)
    return device


def _auto_device_type() -> str:
    """The type of device resolve_device("auto") gives, without creating a CUDA context (is_available only
    counts the devices), so a sweep's parent process can ask before it forks its points."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def loader_device(requested: str, device: torch.device | None = None) -> str:
    """Where the DALI loader runs, "gpu" | "cpu", for loader.device `requested` (auto | gpu | cpu): auto follows
    the device the batches go to, `device`, or without one (results/scenarios.py's point ids, asked before any
    device is resolved) the one resolve_device() gives. Whether a "gpu" can run here is the loader's check."""
    if requested != "auto":
        return requested
    kind = device.type if device is not None else _auto_device_type()
    return "gpu" if kind == "cuda" else "cpu"


def init_cuda(device: torch.device) -> None:
    """Make `device` current and initialise CUDA and its caching allocator (idempotent, cheap after the
    first call). Until this ran, allocator queries such as reset_peak_memory_stats raise."""
    import torch

    torch.cuda.set_device(device)
    torch.cuda.init()


# ---------------------------------------------------------------------------------------------
# which NVML device a CUDA device is


def _uuid_hex(uuid: Any) -> str:
    """A GPU / MIG UUID in any of its spellings ("GPU-58b5...", "MIG-...", bare hex with dashes) as
    32 lowercase hex digits, or "" if it is not one."""
    text = str(uuid).strip().lower()
    text = re.sub(r"^(gpu|mig)-", "", text)
    digits = text.replace("-", "")
    return digits if re.fullmatch(r"[0-9a-f]{32}", digits) else ""


def match_nvml_device(cuda_uuid: Any, nvml_devices: Sequence[tuple[Any, str]]) -> Any | None:
    """The NVML handle (or index: whatever the first element of each pair is) whose UUID is the CUDA
    device's, from [(handle, uuid), ...]; None if none matches or the CUDA UUID is unknown.

    Matching by UUID is the only mapping that survives every way CUDA can renumber GPUs: a
    CUDA_VISIBLE_DEVICES list of indices or of UUIDs, MIG slices, or CUDA_DEVICE_ORDER=FASTEST_FIRST
    (CUDA's default, which need not be NVML's PCI order)."""
    want = _uuid_hex(cuda_uuid)
    if not want:
        return None
    for handle, uuid in nvml_devices:
        if _uuid_hex(uuid) == want:
            return handle
    return None


def cuda_uuid(device: torch.device) -> str | None:
    """The UUID CUDA reports for `device` (a MIG slice's own UUID on MIG), or None if torch has none."""
    import torch

    try:
        return str(torch.cuda.get_device_properties(device).uuid)
    except (AttributeError, RuntimeError, AssertionError):
        return None


def nvml_handle(device: torch.device) -> tuple[Any, Any] | None:
    """(pynvml module, NVML handle) of the GPU (or MIG slice) that `device` is, after nvmlInit; None
    without NVML or when no NVML device has its UUID. The caller calls nvmlShutdown."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no pynvml, no driver
        return None
    uuid = cuda_uuid(device)
    found = None
    try:
        found = match_nvml_device(uuid, list(_nvml_devices(pynvml)))
    except Exception:
        found = None
    if found is None:
        pynvml.nvmlShutdown()
        return None
    return pynvml, found


def _nvml_devices(pynvml: Any):
    """(handle, uuid) of every GPU NVML sees and of every MIG slice on it."""
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        yield h, _text(pynvml.nvmlDeviceGetUUID(h))
        try:
            n_mig = pynvml.nvmlDeviceGetMaxMigDeviceCount(h)
        except Exception:  # not MIG-capable
            continue
        for k in range(n_mig):
            try:
                m = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h, k)
            except Exception:  # an empty slot
                continue
            yield m, _text(pynvml.nvmlDeviceGetUUID(m))


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


# ---------------------------------------------------------------------------------------------
# which CPUs a rank runs on, and which ones its GPU is close to


def cpu_affinity() -> list[int]:
    """The CPUs this process may run on (its affinity mask), in order; every CPU where the OS cannot say."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return list(range(os.cpu_count() or 1))


def cpus_from_mask(words: Sequence[int], bits: int = 64) -> list[int]:
    """The CPUs set in an NVML CPU set: an array of `bits`-bit words, CPU i being bit i % bits of word
    i // bits (nvmlDeviceGetCpuAffinity's form)."""
    return [w * bits + b for w, word in enumerate(words) for b in range(bits) if int(word) >> b & 1]


def cpu_list_text(cpus: Sequence[int]) -> str:
    """[0, 1, 2, 3, 8, 10, 11] -> '0-3,8,10-11' (how taskset and /proc write CPU lists)."""
    runs: list[list[int]] = []
    for c in sorted(cpus):
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)


def nvml_ideal_cpus(device: torch.device) -> list[int] | None:
    """NVML's ideal CPU set for `device` (nvmlDeviceGetCpuAffinity: the CPUs of the GPU's NUMA node), or None
    on the CPU, without NVML, or where the driver does not say."""
    if device.type != "cuda":
        return None
    found = nvml_handle(device)
    if found is None:
        return None
    nvml, handle = found
    try:
        words = nvml.nvmlDeviceGetCpuAffinity(handle, -(-(os.cpu_count() or 1) // 64))
        return cpus_from_mask(list(words)) or None
    except Exception:  # an old driver, a MIG slice: no answer is no warning
        return None
    finally:
        nvml.nvmlShutdown()


def rank_cpus(device: torch.device) -> dict[str, Any]:
    """{cpu_affinity, nvml_ideal_cpus}: the CPUs this rank may run on and NVML's ideal set for its GPU
    (None on the CPU or without NVML), each as a CPU list text ('0-31,64-95')."""
    ideal = nvml_ideal_cpus(device)
    return {"cpu_affinity": cpu_list_text(cpu_affinity()), "nvml_ideal_cpus": None if ideal is None else cpu_list_text(ideal)}


def affinity_warning(ranks: Sequence[dict[str, Any]]) -> str | None:
    """One line naming the ranks whose CPU affinity is not NVML's ideal set for their GPU (DeepLearningExamples
    pins each rank to it: loader threads on the far socket cross the interconnect for every batch); None
    when every rank runs on its GPU's set or there is no set to compare with. `ranks`: rank_cpus() + rank."""
    off = [r for r in ranks if r.get("nvml_ideal_cpus") and r["cpu_affinity"] != r["nvml_ideal_cpus"]]
    if not off:
        return None
    shown = "; ".join(f"rank {r['rank']} runs on CPUs {r['cpu_affinity']}, its GPU's are {r['nvml_ideal_cpus']}"
                      for r in off[:4])  # fmt: skip
    more = f"; and {len(off) - 4} more" if len(off) > 4 else ""
    return (f"{len(off)} of {len(ranks)} rank(s) outside NVML's ideal CPU set for their GPU ({shown}{more}): pin "
            "each rank to its GPU's CPUs (srun --cpu-bind, numactl or taskset), as env.json's 'ranks' records")


# ---------------------------------------------------------------------------------------------
# bf16: native or emulated
#
# Without bf16 instructions torch still runs bf16 (autocast included), through fallback kernels that
# emulate it: correct, but far slower than fp32 (tests/test_models.py skips the big bf16 forwards
# there for that reason). So "is bf16 supported" is the wrong question; "is it native" is the one a test
# or a benchmark needs. torch.cuda.is_bf16_supported() says True for emulated GPUs too.

_X86_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # Sapphire Rapids+ AMX; Cooper Lake / Zen 4 AVX512-BF16


def cpu_bf16_from_cpuinfo(cpuinfo: str) -> tuple[str, str]:
    """("native" | "emulated", why) from the text of /proc/cpuinfo: the x86 `flags` line (amx_bf16 or
    avx512_bf16) or the aarch64 `Features` line (bf16). No such line -> emulated (unknown)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key, words = key.strip(), set(value.split())
        if key == "flags":
            found = [f for f in _X86_BF16_FLAGS if f in words]
            if found:
                return "native", f"CPU flag {found[0]}"
            return "emulated", "no amx_bf16 / avx512_bf16 CPU flag"
        if key == "Features":
            if "bf16" in words:
                return "native", "CPU feature bf16"
            return "emulated", "no bf16 CPU feature"
    return "emulated", "CPU flags unknown (no flags line in /proc/cpuinfo)"


def cuda_bf16_from_capability(major: int, minor: int) -> tuple[str, str]:
    """("native" | "emulated", why): bf16 tensor cores came with sm 8.0 (Ampere)."""
    support = "native" if (major, minor) >= (8, 0) else "emulated"
    return support, f"compute capability {major}.{minor}" + ("" if support == "native" else " < 8.0")


def _read_cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:  # not Linux
        return ""


def bf16_support_why(device: torch.device | str) -> tuple[str, str]:
    """("native" | "emulated", the flag or compute capability that says so) for a device."""
    import torch

    device = torch.device(device)
    if device.type == "cpu":
        return cpu_bf16_from_cpuinfo(_read_cpuinfo())
    if device.type == "cuda":
        return cuda_bf16_from_capability(*torch.cuda.get_device_capability(device))
    return "emulated", f"unknown for device type {device.type!r}"


def bf16_support(device: torch.device | str) -> str:
    """Whether `device` runs bf16 "native" (it has bf16 instructions) or "emulated" (slow; see above)."""
    return bf16_support_why(device)[0]

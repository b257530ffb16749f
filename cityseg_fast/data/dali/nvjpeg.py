"""Whether DALI's `mixed` decoder really decodes on the GPU: the nvJPEG it loaded, and the hardware decoder.

A `mixed` decoder that cannot load nvJPEG (a bundled `libnvjpeg.so.N` that is not found) decodes on the
CPU and still runs: a row that only echoes loader.device would say "gpu" over a CPU decode. And without
the GPU's JPEG engines (NVJPG: 1 on an A100, 7 on an H100/H200; none in some VMs) `hw_decoder_load`
sends nothing to hardware. So, once DALI has run a mixed decode in this process:

- nvJPEG: DALI (through nvImageCodec's nvjpeg extension, which looks in the wheel's nvidia/cu13/lib, then
  /usr/local/cuda) dlopens `libnvjpeg.so.N` as it builds a decoder (DALI 2.4: a CPU pipeline's build maps it
  too); if it is mapped into this process (/proc/self/maps) it was found, and its version is asked of it
  (`nvjpegGetProperty`). DALI 2.4's `backend.GetNvjpegVersion()` says nothing here: DALI no longer links
  nvJPEG itself and it returns -1. torchvision maps its own renamed copy (`libnvjpeg.<hash>.so.N`), which
  is not DALI's and is not matched. The library is opened with RTLD_NOLOAD: this module never loads a
  library DALI did not load, so it cannot hide a fallback.
- the hardware decoder: an nvJPEG handle created with NVJPEG_BACKEND_HARDWARE on the current GPU (what
  nvImageCodec's hardware decoder does), and `nvjpegGetHardwareDecoderInfo`'s engine count; the
  decoder takes a share of the JPEGs when there are engines and hw_decoder_load > 0.

No DALI import here (ctypes and /proc only), so the parsing and the wording are tested on any machine.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

# DALI's nvJPEG is `libnvjpeg.so.N` (torchvision's renamed copy `libnvjpeg.<hash>.so.N` is not matched).
DALI_NVJPEG = re.compile(r"(/\S*/libnvjpeg\.so\.\d+)\s*$")
NVJPEG_BACKEND_HARDWARE = 3  # nvjpegBackend_t
NVJPEG_STATUS = {  # nvjpegStatus_t, for the note when the hardware backend cannot be created
    1: "NOT_INITIALIZED", 2: "INVALID_PARAMETER", 5: "ALLOCATOR_FAILURE", 6: "EXECUTION_FAILED",
    7: "ARCH_MISMATCH", 8: "INTERNAL_ERROR", 9: "IMPLEMENTATION_NOT_SUPPORTED",
}  # fmt: skip


@dataclass(frozen=True)
class GpuDecode:
    """What a DALI loader's JPEG decoding ran on. nvjpeg_version: of the libnvjpeg DALI loaded (None:
    not loaded: a CPU decode, or a mixed decoder's CPU fallback); hw_engines: the GPU's JPEG engines
    (None: not asked); hw_decoder: the hardware decoder takes a share of the JPEGs; note: why not."""

    nvjpeg_version: str | None = None
    hw_engines: int | None = None
    hw_decoder: bool = False
    note: str = ""

    def words(self) -> str:
        """For the loader's description: 'nvjpeg 13.0.2, hardware JPEG decode on 7 engines', or what is
        missing. (Never "decoder <name>": the report reads a torch loader's decoder from those words.)"""
        if self.nvjpeg_version is None:
            return f"NO nvjpeg ({self.note})" if self.note else "NO nvjpeg"
        if self.hw_decoder:
            engines = "" if self.hw_engines is None else f" on {self.hw_engines} engines"
            return f"nvjpeg {self.nvjpeg_version}, hardware JPEG decode{engines}"
        return f"nvjpeg {self.nvjpeg_version}, NO hardware JPEG decode ({self.note})"

    def decoder(self) -> str:
        """The row's decoder name (LOADER_DECODER): DALI's CPU decoder, nvJPEG, or the mixed decoder's CPU
        fallback."""
        if self == CPU_DECODE:
            return "DALI CPU"
        return "DALI nvJPEG" if self.nvjpeg_version else "DALI CPU fallback (no nvJPEG)"


CPU_DECODE = GpuDecode(note="cpu decode")
NO_GPU = GpuDecode(note="no GPU")


def loaded_nvjpeg(maps: str) -> str | None:
    """The path of DALI's libnvjpeg among the mappings of /proc/<pid>/maps text, or None."""
    for line in maps.splitlines():
        m = DALI_NVJPEG.search(line)
        if m:
            return m.group(1)
    return None


def _maps() -> str:
    try:
        return Path("/proc/self/maps").read_text()
    except OSError:
        return ""


def _opened(path: str) -> ctypes.CDLL | None:
    """The already-loaded library at `path` (RTLD_NOLOAD: never a new load), or None."""
    try:
        return ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    except OSError:
        return None


def version(lib: ctypes.CDLL) -> str | None:
    """'major.minor.patch' from nvjpegGetProperty (MAJOR_VERSION 0, MINOR_VERSION 1, PATCH_LEVEL 2)."""
    parts = []
    for prop in range(3):
        value = ctypes.c_int(-1)
        if lib.nvjpegGetProperty(prop, ctypes.byref(value)) != 0:
            return None
        parts.append(str(value.value))
    return ".".join(parts)


def hardware_engines(lib: ctypes.CDLL) -> tuple[bool, int | None, str]:
    """(the hardware backend exists on the current GPU, its JPEG engines (None: this nvJPEG cannot say),
    "" or why not): creates and destroys an nvJPEG handle on the hardware backend, as nvImageCodec's
    hardware decoder does."""
    handle = ctypes.c_void_p()
    status = lib.nvjpegCreateEx(NVJPEG_BACKEND_HARDWARE, None, None, 0, ctypes.byref(handle))
    if status != 0:
        return False, 0, f"hardware backend: {NVJPEG_STATUS.get(status, status)}"
    try:
        if not hasattr(lib, "nvjpegGetHardwareDecoderInfo"):  # an nvJPEG older than the query
            return True, None, ""
        engines, cores = ctypes.c_uint(0), ctypes.c_uint(0)
        if lib.nvjpegGetHardwareDecoderInfo(handle, ctypes.byref(engines), ctypes.byref(cores)) != 0:
            return True, None, ""
        return engines.value > 0, int(engines.value), "" if engines.value else "0 hardware engines"
    finally:
        lib.nvjpegDestroy(handle)


def gpu_decode(hw_decoder_load: float, device_index: int = 0) -> GpuDecode:
    """What DALI's mixed decoding in this process ran on; call it after a mixed decode ran (DALI loads
    nvJPEG on first use). Asked once per process and GPU (the handle costs an engine context). Never
    raises: a training run does not stop over what it is only recording."""
    path = loaded_nvjpeg(_maps())
    if path is None:
        return GpuDecode(note="libnvjpeg not loaded: a CPU fallback")
    try:
        return _facts(path, device_index, hw_decoder_load > 0)
    except Exception as e:  # a symbol missing from an odd nvJPEG, a CUDA error
        return GpuDecode(note=f"{type(e).__name__}: {e}"[:200])


@functools.cache
def _facts(path: str, device_index: int, wants_hw: bool) -> GpuDecode:
    lib = _opened(path)
    if lib is None:
        return GpuDecode(note=f"{path} could not be opened")
    import torch  # lazy: this module stays light

    # nvJPEG asks the runtime's current device (no CUDA: the backend cannot be created, and says so)
    on = torch.cuda.device(device_index) if torch.cuda.is_available() else contextlib.nullcontext()
    with on:
        available, engines, why = hardware_engines(lib)
    if available and not wants_hw:
        why = "hw_decoder_load=0"
    return GpuDecode(version(lib), engines, available and wants_hw, why)

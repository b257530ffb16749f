"""What a DALI decode ran on (data/dali/nvjpeg.py), the parts that need no GPU: finding DALI's nvJPEG among
a process's mappings, the nvJPEG calls against stand-ins, the words a loader row and doctor record, and
the GPU session's doctor step refusing a machine without GPU decoding. tests/gpu/ covers the GPU side."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from engine_fixtures import REPO

from cityseg_fast.data.dali import dali_available, nvjpeg
from cityseg_fast.data.dali.nvjpeg import GpuDecode

SITE = "/venv/lib/python3.12/site-packages"
MAPS = f"""\
7f1c2a000000-7f1c2a200000 r-xp 00000000 08:01 1234 {SITE}/torchvision.libs/libnvjpeg.36e11081.so.13
7f1c2b000000-7f1c2b400000 r-xp 00000000 08:01 1235 {SITE}/nvidia/cu13/lib/libnvjpeg.so.13
7f1c2c000000-7f1c2c100000 r-xp 00000000 08:01 1236 {SITE}/nvidia/nvimgcodec/extensions/libnvjpeg_ext.so.0.9.0
"""


def test_dalis_nvjpeg_is_found_among_the_mappings_and_torchvisions_copy_is_not():
    assert nvjpeg.loaded_nvjpeg(MAPS) == f"{SITE}/nvidia/cu13/lib/libnvjpeg.so.13"
    only_torchvision = MAPS.splitlines()[0] + "\n" + MAPS.splitlines()[2]
    assert nvjpeg.loaded_nvjpeg(only_torchvision) is None, "torchvision's renamed copy is not DALI's"
    assert nvjpeg.loaded_nvjpeg("") is None


def test_a_mixed_decode_without_nvjpeg_loaded_is_a_cpu_fallback(monkeypatch):
    monkeypatch.setattr(nvjpeg, "_maps", lambda: MAPS.splitlines()[0])
    ran = nvjpeg.gpu_decode(0.65)
    assert ran.nvjpeg_version is None and ran.hw_decoder is False and "CPU fallback" in ran.note
    assert ran.words() == "NO nvjpeg (libnvjpeg not loaded: a CPU fallback)"


class FakeNvjpeg:
    """nvJPEG's C entry points as ctypes would call them (out-parameters through byref)."""

    def __init__(self, create_status: int, engines: int = 0) -> None:
        self.create_status, self.engines, self.destroyed = create_status, engines, 0

    def nvjpegGetProperty(self, prop: int, value) -> int:
        value._obj.value = (13, 0, 2)[prop]
        return 0

    def nvjpegCreateEx(self, backend: int, dev, pinned, flags: int, handle) -> int:
        assert backend == nvjpeg.NVJPEG_BACKEND_HARDWARE
        handle._obj.value = 0xABC if self.create_status == 0 else None
        return self.create_status

    def nvjpegGetHardwareDecoderInfo(self, handle, engines, cores) -> int:
        engines._obj.value, cores._obj.value = self.engines, 4
        return 0

    def nvjpegDestroy(self, handle) -> int:
        self.destroyed += 1
        return 0


class OldNvjpeg(FakeNvjpeg):
    """An nvJPEG older than nvjpegGetHardwareDecoderInfo: the hardware backend, no engine count."""

    @property
    def nvjpegGetHardwareDecoderInfo(self):
        raise AttributeError("undefined symbol: nvjpegGetHardwareDecoderInfo")


@pytest.mark.parametrize(
    "lib,load,want",
    [
        (FakeNvjpeg(0, 7), 0.65, GpuDecode("13.0.2", 7, True, "")),
        (FakeNvjpeg(0, 7), 0.0, GpuDecode("13.0.2", 7, False, "hw_decoder_load=0")),
        (FakeNvjpeg(7, 0), 0.65, GpuDecode("13.0.2", 0, False, "hardware backend: ARCH_MISMATCH")),
        (FakeNvjpeg(0, 0), 0.65, GpuDecode("13.0.2", 0, False, "0 hardware engines")),
        (OldNvjpeg(0), 0.65, GpuDecode("13.0.2", None, True, "")),
    ],
)
def test_the_hardware_decoder_is_asked_of_the_loaded_nvjpeg(monkeypatch, lib, load, want):
    nvjpeg._facts.cache_clear()
    monkeypatch.setattr(nvjpeg, "_maps", lambda: MAPS)
    monkeypatch.setattr(nvjpeg, "_opened", lambda path: lib)
    try:
        assert nvjpeg.gpu_decode(load) == want
    finally:
        nvjpeg._facts.cache_clear()
    assert lib.destroyed == (lib.create_status == 0), "a created handle is destroyed, once"


def test_the_words_a_row_records():
    assert GpuDecode("13.0.2", 7, True).words() == "nvjpeg 13.0.2, hardware JPEG decode on 7 engines"
    assert GpuDecode("13.0.2", None, True).words() == "nvjpeg 13.0.2, hardware JPEG decode"
    no_hw = GpuDecode("13.0.2", 0, False, "hardware backend: ARCH_MISMATCH")
    assert no_hw.words() == "nvjpeg 13.0.2, NO hardware JPEG decode (hardware backend: ARCH_MISMATCH)"
    assert GpuDecode("13.0.2", 7, True).decoder() == no_hw.decoder() == "DALI nvJPEG"
    assert nvjpeg.CPU_DECODE.decoder() == "DALI CPU"
    assert GpuDecode(note="libnvjpeg not loaded: a CPU fallback").decoder() == "DALI CPU fallback (no nvJPEG)"


NO_DALI = pytest.mark.skipif(not dali_available(), reason="nvidia.dali not installed")


@NO_DALI
def test_a_gpu_loaders_description_says_what_its_decode_ran_on():
    from cityseg_fast.data.dali.graphs import Decoder
    from cityseg_fast.data.dali.loader import Mode
    from cityseg_fast.report.runs import row_decoder
    from cityseg_fast.results import Row

    mode = Mode("train", "gpu", Decoder("mixed", 0.75), "slice", True, False)
    assert mode.describe(8) == "dali (gpu mixed decode, hw_decoder_load=0.75, 8 threads, train)"
    ran = mode.describe(8, GpuDecode("13.0.2", 7, True))
    want = "dali (gpu mixed decode, nvjpeg 13.0.2, hardware JPEG decode on 7 engines, hw_decoder_load=0.75, 8 threads, train)"
    assert ran == want
    fallback = mode.describe(8, GpuDecode(note="libnvjpeg not loaded: a CPU fallback"))
    assert "NO nvjpeg" in fallback and "CPU fallback" in fallback
    # the report names an e2e row's decoder from its description: these words must not read as one
    for desc in (ran, fallback, mode.describe(8, GpuDecode("13.0.2", 0, False, "0 hardware engines"))):
        row = Row(scenario="e2e", status="ok", error=None, point_id="p", point={"loader": "dali", "loader_device": "gpu"},
                  metrics={"loader_description": desc}, config={}, config_hash="c", env={}, time="t")  # fmt: skip
        assert row_decoder(row) == "DALI nvJPEG", desc


BUNDLED = next(Path(p) / "nvidia" / "cu13" / "lib" / "libnvjpeg.so.13" for p in sys.path if "site-packages" in p)


@pytest.mark.skipif(not BUNDLED.is_file() or torch.cuda.is_available(), reason="needs the bundled nvJPEG, no GPU")
def test_the_real_nvjpeg_answers_the_calls_without_a_gpu():
    """The ctypes signatures against the real library: a version, and no hardware backend without a GPU.
    In a child process: loading nvJPEG here would put it among this test process's mappings."""
    import subprocess

    code = (
        "import ctypes; from cityseg_fast.data.dali import nvjpeg; "
        f"lib = ctypes.CDLL({str(BUNDLED)!r}); print(nvjpeg.version(lib), nvjpeg.hardware_engines(lib))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    version, hw = out.stdout.strip().split(" ", 1)
    assert len(version.split(".")) == 3 and all(p.isdigit() for p in version.split("."))
    assert hw.startswith("(False, 0, 'hardware backend: ")


# -- the GPU session's doctor step ---------------------------------------------------------------------------


def _doctor(cuda: bool = True, **probe) -> dict:
    d = {"version": "2.4.0", "gpu_decode": True, "nvjpeg_version": "13.0.2", "hw_decoder": True,
         "hw_decoder_engines": 7, "gpu_decode_note": ""}  # fmt: skip
    return {"cuda_available": cuda, "dali_probe": {**d, **probe}}


def test_the_sessions_doctor_step_fails_without_gpu_decoding():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_session as gs

    assert gs.gpu_decoding_missing(_doctor()) is None
    assert "CUDA is not available" in gs.gpu_decoding_missing(_doctor(cuda=False, gpu_decode_note="no GPU"))
    fallback = _doctor(nvjpeg_version=None, gpu_decode_note="libnvjpeg not loaded: a CPU fallback")
    assert "without nvJPEG (libnvjpeg not loaded: a CPU fallback)" in gs.gpu_decoding_missing(fallback)
    no_engines = _doctor(hw_decoder=False, hw_decoder_engines=0, gpu_decode_note="hardware backend: ARCH_MISMATCH")
    assert "no hardware JPEG decoder here (hardware backend: ARCH_MISMATCH)" in gs.gpu_decoding_missing(no_engines)
    assert "did not run" in gs.gpu_decoding_missing(_doctor(gpu_decode=False))


@NO_DALI
def test_a_dali_cpu_loader_row_says_no_nvjpeg(tmp_path):
    from loader_fixtures import loader_cfg, write_prepared

    from cityseg_fast.bench.loader_bench import measure_loader
    from cityseg_fast.results.scenarios import HW_DECODER, HW_DECODER_ENGINES, NVJPEG_VERSION

    cfg = loader_cfg(write_prepared(tmp_path, {"train": 4}), "dali")
    m = measure_loader(cfg, iters=2, warmup=1)
    assert m[NVJPEG_VERSION] is None and m[HW_DECODER] is False and m[HW_DECODER_ENGINES] is None
    assert m["loader_decoder"] == "DALI CPU"
    assert "cpu decode" in m["loader_description"]


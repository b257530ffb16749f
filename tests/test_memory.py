"""MemoryMonitor on the CPU: host peak RSS sees an allocation, CPU use is measured, GPU fields are None."""

from __future__ import annotations

import pytest
import torch

from cityseg_fast.bench.memory import MemoryMonitor, NvmlSampler, host_peak_rss_mib
from cityseg_fast.hardware import match_nvml_device


def test_host_peak_rss_sees_a_big_allocation():
    with MemoryMonitor("cpu") as mon:
        before = host_peak_rss_mib()
        blob = bytearray(200 * 2**20)  # 200 MiB, touched so it is resident
        for i in range(0, len(blob), 4096):
            blob[i] = 1
        del blob
        x = 0
        for i in range(200_000):  # some CPU time
            x += i * i
    m = mon.metrics()
    assert m["mem_host_peak_rss_mib"] >= before + 150
    assert m["mem_torch_peak_allocated_mib"] is None and m["mem_nvml_used_mib"] is None
    assert m["gpu_power_w"] is None
    assert 0.0 < m["cpu_util"] <= 1.0


def test_nvml_sampler_noops_without_a_gpu():
    s = NvmlSampler(torch.device("cuda", 99), interval_s=0.01)
    assert s.start() is False  # no NVML here, or no GPU 99 anywhere: never an exception
    s.stop()
    assert s.error
    assert s.summary()["mem_nvml_used_mib"] is None


# NVML lists GPUs in PCI order with UUIDs "GPU-<hex>" (MIG slices "MIG-<hex>"); torch reports a device's
# UUID as bare hex (or "GPU-..."), whatever CUDA_VISIBLE_DEVICES or CUDA_DEVICE_ORDER renumbered.
NVML = [
    ("h0", "GPU-11111111-2222-3333-4444-555555555555"),
    ("h1", "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"),
    ("h1-mig0", "MIG-0f0f0f0f-1e1e-2d2d-3c3c-4b4b4b4b4b4b"),
]


@pytest.mark.parametrize(
    "cuda_uuid,expected",
    [
        ("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", "h1"),  # CUDA_VISIBLE_DEVICES=1: CUDA's 0 is NVML's 1
        ("GPU-11111111-2222-3333-4444-555555555555", "h0"),  # CUDA_VISIBLE_DEVICES=GPU-1111...
        ("0F0F0F0F-1E1E-2D2D-3C3C-4B4B4B4B4B4B", "h1-mig0"),  # a MIG slice, any case
        ("MIG-0f0f0f0f-1e1e-2d2d-3c3c-4b4b4b4b4b4b", "h1-mig0"),
        ("99999999-2222-3333-4444-555555555555", None),  # no such GPU: no samples, not the wrong GPU
        (None, None),
        ("not a uuid", None),
    ],
)
def test_nvml_device_is_matched_by_uuid(cuda_uuid, expected):
    assert match_nvml_device(cuda_uuid, NVML) == expected


class _FakeNvml:
    """What NvmlSampler asks pynvml, for one GPU: memory, power, clock, utilisation and, where `jpg` is not
    None, the NVJPG engines' utilisation (else NotSupported, as on a GPU without them)."""

    NVML_CLOCK_SM = 1

    def __init__(self, jpg: int | None) -> None:
        self.jpg, self.jpg_calls = jpg, 0

    def nvmlDeviceGetMemoryInfo(self, h):
        return type("Mem", (), {"used": 2 * 2**30})()

    def nvmlDeviceGetPowerUsage(self, h):
        return 300_000

    def nvmlDeviceGetClockInfo(self, h, kind):
        return 1980

    def nvmlDeviceGetUtilizationRates(self, h):
        return type("Util", (), {"gpu": 90})()

    def nvmlDeviceGetJpgUtilization(self, h):
        self.jpg_calls += 1
        if self.jpg is None:
            raise RuntimeError("NVMLError_NotSupported")
        return [self.jpg, 166_666]  # [utilisation %, sampling period us]


@pytest.mark.parametrize("jpg", [40, None])
def test_nvml_sampler_samples_the_jpeg_engines_where_the_gpu_has_them(jpg):
    from cityseg_fast.memstats import NvmlDevice

    nvml = _FakeNvml(jpg)
    s = NvmlSampler("cpu")
    s._dev, s._nvml, s._handle = NvmlDevice(nvml, "h0"), nvml, "h0"  # what start() sets up on a GPU
    for _ in range(3):
        s.samples.append(s._sample())
    summary = s.summary()
    assert summary["gpu_util"] == pytest.approx(0.9) and summary["mem_nvml_used_mib"] == pytest.approx(2048)
    if jpg is None:
        assert summary["gpu_jpg_util"] is None and nvml.jpg_calls == 1  # NotSupported once: not asked again
    else:
        assert summary["gpu_jpg_util"] == pytest.approx(0.4) and nvml.jpg_calls == 3


def test_a_memory_snapshot_on_the_cpu_is_one_line():
    from cityseg_fast.bench.runners import run_scenario
    from cityseg_fast.config import load_config
    from cityseg_fast.errors import UserError

    cfg = load_config([], ["model.name=unet_s16", "model.base_width=4", "data.crop=[32,64]", "loader.batch_size=2",
                           "bench.memory_snapshot=true"])  # fmt: skip
    with pytest.raises(UserError, match=r"bench\.memory_snapshot.*CPU"):
        run_scenario("model", cfg)

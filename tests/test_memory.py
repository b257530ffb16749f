"""MemoryMonitor on the CPU: host peak RSS sees an allocation, CPU use is measured, GPU fields are None."""

from __future__ import annotations

from cityseg_fast.bench.memory import MemoryMonitor, NvmlSampler, host_peak_rss_mib


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
    s = NvmlSampler(gpu_index=99, interval_s=0.01)
    assert s.start() is False  # no NVML here, or no GPU 99 anywhere: never an exception
    s.stop()
    assert s.error
    assert s.summary()["mem_nvml_used_mib"] is None

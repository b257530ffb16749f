"""Data stall (engine/stall.py): the gap arithmetic a GPU's event timestamps go through, the meter on the
CPU, and e2e rows whose data wait matches a loader slowed by a known sleep; the synthetic loader barely waits."""

from __future__ import annotations

import statistics
import time

import pytest
from loader_fixtures import slow_loaders

from cityseg_fast.bench.runners import run_scenario
from cityseg_fast.config import load_config
from cityseg_fast.engine.stall import StallMeter, StallStats, segment_stall

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["model.name=unet_s16", "model.base_width=4", "data.crop=[32,64]", "loader.batch_size=2",
        "loader.backend=synthetic", "bench.warmup=2"]  # fmt: skip
SLEEP_S = 0.03


def test_gaps_from_device_timestamps():
    """A GPU's steps as event timestamps (ms): the device idles 2 ms before step 2 and 5 ms before step 3."""
    waits, wall = segment_stall([0.0, 10.0, 25.0], [8.0, 20.0, 30.0])
    assert waits == [2.0, 5.0] and wall == 30.0
    assert segment_stall([0.0, 5.0], [6.0, 9.0])[0] == [0.0]  # overlapping (queued) steps never count negative
    # the CPU: each step's host wait in next() is given; the wall starts when the first next() began
    waits, wall = segment_stall([3.0, 10.0], [8.0, 12.0], waits=[3.0, 2.0])
    assert waits == [3.0, 2.0] and wall == 12.0
    assert segment_stall([], []) == ([], 0.0)
    with pytest.raises(ValueError):
        segment_stall([0.0], [1.0, 2.0])
    stats = StallStats(waits_s=[0.002, 0.005], wall_s=0.030, host_wait_s=[0.001, 0.001])
    m = stats.metrics()
    assert m["stall_fraction"] == pytest.approx(7 / 30) and m["data_wait_ms_p50"] == pytest.approx(3.5)
    assert m["data_time_ms_mean"] == pytest.approx(1.0)
    assert StallStats().metrics()["stall_fraction"] is None  # nothing measured: no number


def test_meter_on_the_cpu_counts_time_in_next_and_not_across_a_break():
    def slow(n: int):
        for _ in range(n):
            time.sleep(0.01)
            yield 1

    meter, items = StallMeter("cpu"), slow(4)
    for k in range(4):
        meter.next(items)
        with meter.step():
            time.sleep(0.01)
        if k == 1:
            meter.restart()
            time.sleep(0.2)  # an evaluation: neither waiting nor wall
    stats = meter.take()
    assert len(stats.waits_s) == 4 and all(w >= 0.009 for w in stats.waits_s)
    assert 0.07 <= stats.wall_s < 0.2  # 4 x (10 ms wait + 10 ms step), the break left out
    assert 0.3 < stats.stall_fraction < 0.7
    assert meter.take().waits_s == [] and meter.mean_stall_fraction() == pytest.approx(stats.stall_fraction)


def test_e2e_data_wait_matches_a_known_sleep_per_batch(monkeypatch):
    made = slow_loaders(monkeypatch, SLEEP_S)
    iters = 8
    m = run_scenario("e2e", load_config([], [*TINY, f"bench.iters={iters}"]))
    slept_ms = 1e3 * statistics.median(made[0].slept[-iters:])  # the timed steps' sleeps, measured
    assert abs(m["data_wait_ms_p50"] - slept_ms) <= max(0.2 * slept_ms, 5.0), (m["data_wait_ms_p50"], slept_ms)
    assert m["data_wait_ms_p99"] >= m["data_wait_ms_p50"] and m["stall_fraction"] > 0.1  # vs < 0.05 unslowed


def test_the_synthetic_loader_barely_stalls():
    m = run_scenario("e2e", load_config([], [*TINY, "bench.iters=8"]))
    assert m["stall_fraction"] < 0.05 and m["data_wait_ms_p50"] < 5.0

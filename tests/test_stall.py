"""Data stall (engine/stall.py): the gap arithmetic a GPU's event timestamps go through, and the meter on the CPU."""

from __future__ import annotations

import time

import pytest

from cityseg_fast.engine.stall import StallMeter, StallStats, segment_stall


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

"""Timer maths on known sequences: percentiles, IQR, warm-up exclusion, variance warning, step timing."""

from __future__ import annotations

import time

import pytest

from cityseg_fast.bench.timing import StepTimer, latency_metrics, percentile, summarize, time_steps


def test_percentile_matches_linear_interpolation():
    xs = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert percentile(xs, 0) == 1.0
    assert percentile(xs, 50) == 3.0
    assert percentile(xs, 100) == 5.0
    assert percentile(xs, 25) == 2.0
    assert percentile(xs, 90) == pytest.approx(4.6)  # numpy.percentile(xs, 90) == 4.6
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summarize_known_sequence_in_ms():
    times = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    s = summarize(times)
    assert s["n"] == 100
    assert s["median_ms"] == pytest.approx(50.5)
    assert s["p90_ms"] == pytest.approx(90.1)  # numpy: 90.1
    assert s["p99_ms"] == pytest.approx(99.01)
    assert s["iqr_ms"] == pytest.approx(75.25 - 25.75)
    assert s["min_ms"] == pytest.approx(1.0) and s["max_ms"] == pytest.approx(100.0)


def test_warmup_is_excluded():
    # Two huge warm-up steps (a compile) must not move any statistic.
    times = [5.0, 3.0] + [0.010] * 9 + [0.020]
    s = summarize(times, warmup=2)
    assert s["n"] == 10
    assert s["max_ms"] == pytest.approx(20.0)
    assert s["median_ms"] == pytest.approx(10.0)
    with pytest.raises(ValueError):
        summarize([0.1, 0.2], warmup=2)


def test_variance_warning_threshold():
    steady = [0.010, 0.010, 0.0101, 0.0099, 0.010]
    noisy = [0.010, 0.020, 0.005, 0.030, 0.012, 0.011]
    assert not summarize(steady, variance_warn=0.15)["variance_warning"]
    assert summarize(noisy, variance_warn=0.15)["variance_warning"]
    m = latency_metrics(summarize(noisy, variance_warn=0.15))
    assert m["latency_ms_p50"] == m["latency_ms_median"] and m["variance_warning"] is True


def test_step_timer_and_time_steps_on_cpu():
    calls = []

    def step():
        calls.append(1)
        time.sleep(0.002)

    t = time_steps(step, iters=5, warmup=3, device="cpu", items_per_step=4)
    assert len(calls) == 8
    assert len(t.step_s) == 5 and len(t.warmup_s) == 3
    assert all(x >= 0.0019 for x in t.step_s)
    assert t.wall_s >= sum(t.step_s) * 0.99
    assert t.items_per_s == pytest.approx(4 * 5 / t.wall_s)
    assert t.compile_s(t.step_s[0]) >= 0.0
    timer = StepTimer("cpu")
    with timer.step():
        time.sleep(0.001)
    assert len(timer) == 1 and timer.times_s()[0] >= 0.0009

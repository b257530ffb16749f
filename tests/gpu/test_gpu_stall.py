"""Where the time goes, on a GPU: the data wait from CUDA events (a loader slowed by a known sleep, the
synthetic loader), the stall meter adding no sync, DALI's own GPU memory and hw_decoder_load in the loader
rows and the tuning section, training logs with device memory, and a profile ranked by device time."""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from engine_fixtures import run_cli, tiny_overrides, write_tiny_cityscapes
from gpu_fixtures import gpu_cfg
from loader_fixtures import slow_loaders

from cityseg_fast.config import load_config

pytestmark = pytest.mark.gpu
SMALL = ["model.name=unet_s16", "model.base_width=16", "data.crop=[256,512]", "loader.batch_size=8",
         "precision.dtype=bf16", "loader.backend=synthetic", "bench.warmup=3", "bench.iters=10"]  # fmt: skip
# A launch-bound step (the device finishes each kernel as soon as it is queued): the device then idles for
# the whole sleep. Behind a long queued step part of the sleep would hide, as it would in training; the
# events measure the idle time, which is what they are for.
TINY = [*SMALL, "model.base_width=4", "data.crop=[64,128]", "loader.batch_size=2"]
SLEEP_S = 0.03


def test_event_gaps_match_a_known_sleep_and_the_synthetic_loader_does_not_stall(cuda, monkeypatch):
    from cityseg_fast.bench.runners import run_scenario

    made = slow_loaders(monkeypatch, SLEEP_S)
    m = run_scenario("e2e", load_config([], TINY))
    slept_ms = 1e3 * statistics.median(made[0].slept[-10:])
    assert abs(m["data_wait_ms_p50"] - slept_ms) <= max(0.2 * slept_ms, 5.0), (m["data_wait_ms_p50"], slept_ms)
    assert m["stall_fraction"] > 0.3
    monkeypatch.undo()
    fast = run_scenario("e2e", load_config([], TINY))
    assert fast["stall_fraction"] < 0.05, fast["stall_fraction"]


def test_the_stall_meter_adds_no_host_sync(cuda):
    from cityseg_fast.data.factory import build_loader
    from cityseg_fast.engine.stall import StallMeter
    from cityseg_fast.engine.step import build_train_state, train_step

    cfg = load_config([], SMALL)
    state = build_train_state(cfg, cuda)
    batches = iter(build_loader(cfg, "train", device=cuda))
    meter = StallMeter(cuda)
    train_step(state, next(batches))  # lazy initialisation may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            batch = meter.next(batches)
            with meter.step():
                train_step(state, batch)
        early = meter.take()  # no sync yet: only the steps the device has finished, never a wait
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        late = meter.take()  # elapsed_time and query on finished events: no sync either
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert len(early.host_wait_s) + len(late.host_wait_s) == 5  # every step once, whichever take read it
    assert early.wall_s + late.wall_s > 0


def test_dali_gpu_loader_rows_record_its_gpu_memory_and_the_tuning_section(datasets, tmp_path):
    from cityseg_fast.bench.loader_bench import measure_loader
    from cityseg_fast.report.build import build_report
    from cityseg_fast.results import append_row, row_for

    results = tmp_path / "run" / "results.jsonl"
    for hw in ("0.0", "0.65", "1.0"):
        cfg = gpu_cfg(datasets["npy"], "dali", "loader.device=gpu", "loader.num_threads=0", f"loader.hw_decoder_load={hw}")
        m = measure_loader(cfg, iters=5, warmup=2)
        assert m["mem_nvml_used_mib"] >= m["mem_nvml_before_loader_mib"] > 0, m
        assert m["mem_torch_reserved_mib"] is not None and m["loader_gpu_mem_mib"] > 0, m
        row = row_for("loader", cfg, m, env={})
        assert ("hw_decoder_load" in row.point) == (hw != "0.65")  # named only when not the default
        append_row(results, row)
    md = build_report([results.parent], tmp_path / "report").read_text()
    section = md.split("## Loader tuning")[1]
    assert "hw_decoder_load=1" in section and "(default)" in section and "★" in section and "GPU mem" in section


def test_training_logs_device_memory_and_stall_on_a_gpu(tmp_path):
    data, out = write_tiny_cityscapes(tmp_path / "data", size=(128, 256)), tmp_path / "run"
    run_cli("train", *tiny_overrides(data, out, iters=10, **{"train.log_interval": 5}), timeout=300)
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["event"] == "train"]
    assert len(train) == 2
    for r in train:
        assert r["mem_torch_max_allocated_mib"] > 0 and r["mem_torch_max_reserved_mib"] > 0
        assert r["mem_nvml_used_mib"] is None or r["mem_nvml_used_mib"] > r["mem_torch_max_allocated_mib"]
        assert 0 <= r["stall_fraction"] <= 1 and r["data_time"] >= 0
    assert 0 <= rows[-1]["stall_fraction_mean"] <= 1


def test_profile_on_a_gpu_ranks_ops_by_device_time(cuda, tmp_path):
    from cityseg_fast.bench.runners import run_scenario

    cfg = load_config([], [*SMALL, "bench.profile=true", f"bench.trace_dir={tmp_path}"])
    m = run_scenario("model", cfg)
    assert m["profile_sort"] == "self_device_time" and m["profile_top_ops"], m.get("profile_top_ops")
    assert all(o["self_ms_per_step"] > 0 for o in m["profile_top_ops"])
    assert json.loads(open(m["profile_trace"]).read())["traceEvents"]

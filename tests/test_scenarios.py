"""Scenarios run for real on a tiny model: every row validates, keys are the schema's, points are stable."""

from __future__ import annotations

import json

import pytest

from cityseg_fast.bench.scenarios import point_from_config, run_scenario
from cityseg_fast.config import load_config, to_dict
from cityseg_fast.report.schema import make_row

TINY = ["model.name=unet_s16", "data.crop=[32,64]", "loader.batch_size=2", "bench.iters=2", "bench.warmup=1"]


def _row(scenario, cfg, metrics):
    return make_row(scenario, point_from_config(scenario, cfg), metrics, config=to_dict(cfg))


def test_model_scenario_times_train_step_inference_and_phases():
    cfg = load_config([], TINY + ["bench.split_phases=true"])
    m = run_scenario("model", cfg)
    _row("model", cfg, m)  # validates
    assert m["images_per_s"] > 0 and m["timed_iters"] == 2 and m["warmup_iters"] == 1
    assert m["latency_ms_p50"] <= m["latency_ms_p90"] <= m["latency_ms_p99"]
    assert m["infer_images_per_s"] > 0 and m["loader_description"]
    assert m["fwd_ms"] > 0 and m["bwd_ms"] > 0 and m["opt_ms"] > 0
    assert m["compile_s"] is None and m["steady_recompiles"] == 0
    assert m["mem_host_peak_rss_mib"] > 0 and m["mem_torch_peak_allocated_mib"] is None  # CPU run
    assert m["mfu"] is None  # no honest CPU peak
    json.dumps(m)


def test_e2e_on_the_synthetic_loader_and_infer_rows_validate():
    cfg = load_config([], TINY + ["loader.backend=synthetic"])
    m = run_scenario("e2e", cfg)
    _row("e2e", cfg, m)
    assert m["images_per_s"] > 0 and m["device"] == "cpu"
    i = run_scenario("infer", cfg)
    _row("infer", cfg, i)
    assert i["latency_ms_p50"] > 0 and i["images_per_s_batch1"] > 0 and i["images_per_s"] > 0


def test_points_keep_only_what_changes_the_measurement():
    a = load_config([], TINY + ["loader.backend=torch"])
    b = load_config([], TINY + ["loader.backend=dali", "loader.device=cpu"])
    assert point_from_config("model", a) == point_from_config("model", b)
    assert point_from_config("e2e", a) != point_from_config("e2e", b)
    assert point_from_config("e2e", b)["loader_device"] == "cpu"
    assert point_from_config("e2e", a)["loader_device"] is None
    assert point_from_config("infer", a)["resolution"] == [32, 64]
    acc = point_from_config("accuracy", load_config([], TINY + ["train.lr=0.05", "train.optimizer=adamw"]))
    assert acc["lr"] == 0.05 and acc["optimizer"] == "adamw"
    with pytest.raises(ValueError):
        point_from_config("nope", a)

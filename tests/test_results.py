"""results: derived metrics from exact companions (e2e efficiency, scaling), one row per point, schema-1
rows upgraded on read."""

from __future__ import annotations

import dataclasses
import json

import pytest

from cityseg_fast.config import dataset_root_or_none, load_config
from cityseg_fast.results import (
    Row,
    append_row,
    e2e_limit,
    latest_per_point,
    merge,
    read_rows,
    row_for,
    scan_rows,
    split_unresolved,
    unresolved,
    variables_in,
)

BASE = ["model.name=unet_s16", "data.crop=[64,128]", "loader.batch_size=4", "loader.backend=dali",
        "loader.device=cpu"]  # fmt: skip


def row(scenario: str, ips: float | None, *extra: str, world: int = 1, device: str = "cpu", error=None, **more):
    cfg = load_config([], [*BASE, *extra])
    metrics = {} if ips is None else {"images_per_s": ips, "device": device, **more}
    return row_for(scenario, cfg, metrics, error=error, world_size=world, env={})


def derived(rows, target):
    return next(r for r in merge(rows) if r.point_id == target.point_id).derived


def test_e2e_efficiency_divides_by_its_own_loader_and_model_rows_only():
    loader, model = row("loader", 100.0), row("model", 50.0)
    others = [
        row("loader", 1.0, "data.crop=[128,256]"),  # another crop
        row("loader", 5000.0, "loader.decode_only=true"),  # decode-only is not the loader e2e runs
        row("loader", 2.0, "loader.backend=torch"),  # another backend
        row("model", 3.0, "precision.dtype=bf16"),  # another precision
        row("model", 9999.0, "loader.batch_size=8"),
        row("loader", 7.0, "loader.num_threads=1"),  # another DALI setting: another point
    ]
    e2e = row("e2e", 30.0)
    d = derived([*others, loader, model, e2e], e2e)
    shared = 1 / (1 / 100 + 1 / 50)  # both on the same CPU cores
    assert d["e2e_limit_kind"] == "shared_cpu" and d["e2e_efficiency"] == pytest.approx(30.0 / shared)
    assert d["e2e_loader_point_id"] == loader.point_id and d["e2e_model_point_id"] == model.point_id
    gpu = row("e2e", 30.0, device="cuda")
    assert derived([loader, model, gpu], gpu)["e2e_efficiency"] == pytest.approx(30.0 / 50.0)  # min
    alone = row("e2e", 30.0, "data.crop=[32,64]")
    assert derived([loader, model, alone], alone) == {}  # no companions measured: no number
    failed = row("model", None, error="boom")
    assert derived([loader, failed, e2e], e2e) == {}  # a failed companion gives no number either
    assert e2e_limit(10.0, 10.0, model_on_gpu=False)[0] == pytest.approx(5.0)
    assert e2e_limit(10.0, 20.0, model_on_gpu=True) == (10.0, "min")


def test_cores_to_feed_the_model_from_the_loader_row():
    """CPU ms per image of the loader alone x the model-only rate / 1000: the cores it needs to keep up."""
    loader = row("loader", 100.0, cpu_ms_per_image=25.0, loader_gpu_mem_mib=640.0)
    model, e2e = row("model", 300.0), row("e2e", 90.0)
    d = derived([loader, model, e2e], e2e)
    assert d["e2e_cores_to_feed"] == pytest.approx(25.0 * 300.0 / 1000) and d["e2e_loader_cpu_ms_per_image"] == 25.0
    assert d["e2e_loader_gpu_mem_mib"] == 640.0
    bare = row("loader", 100.0)  # no CPU time recorded: no cores number, the efficiency still
    d = derived([bare, model, e2e], e2e)
    assert "e2e_cores_to_feed" not in d and "e2e_efficiency" in d


def test_scaling_efficiency_against_world_size_one():
    one, four = row("model", 100.0), row("model", 360.0, world=4)
    assert derived([one, four], four)["scaling_efficiency"] == pytest.approx(0.9)
    assert derived([one, four], one) == {}
    assert derived([four], four) == {}  # no world-size-1 row yet


def test_merge_keeps_the_latest_ok_row_of_each_point():
    a, b = row("model", None, error="killed"), row("model", 10.0)
    c = row("model", 12.0, "loader.batch_size=2")
    merged = merge([a, b, c, row("model", None, error="again")])
    assert [r.status for r in merged] == ["ok", "ok"] and merged[0].metrics["images_per_s"] == 10.0


def test_schema_1_rows_are_upgraded_on_read(tmp_path):
    """Rows written before the results module: crop -> resolution, iou -> per_class_iou, mIoU in percent
    -> a fraction, and the efficiency their sweep stored kept as their derived metrics."""
    old = {
        "schema": 1, "scenario": "e2e", "status": "ok", "error": None, "point_id": "x",
        "point": {"model": "unet", "crop": [64, 128], "batch_size": 4}, "config": {}, "config_hash": "",
        "env": {}, "time": "2026-11-24T18:00:00+00:00",
        "metrics": {"images_per_s": 30.0, "e2e_efficiency": 0.8, "miou": 31.5, "iou": [0.5]},
    }  # fmt: skip
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(old) + "\n")
    append_row(path, row("model", 1.0))
    first, second = read_rows(path)
    assert first.point == {"model": "unet", "resolution": [64, 128], "batch_size": 4}
    assert first.metrics["per_class_iou"] == [0.5] and first.metrics["miou"] == pytest.approx(0.315)
    assert first.point_id != "x" and second.schema == 2
    assert merge([first])[0].derived == {"e2e_efficiency": 0.8}


def test_rows_under_an_unresolved_variable_are_never_merged_with_real_ones():
    """An older sweep recorded infer rows with data.root=${CITYSCAPES_QUICK} unset: their point (infer reads
    no data) is that of a real row, but they are left out, never chosen over or derived from."""
    real = row("infer", 10.0)
    ghost = row("infer", 99.0, "data.root=${CITYSCAPES_QUICK}")
    assert ghost.point_id == real.point_id and unresolved(ghost) == ["CITYSCAPES_QUICK"]
    assert unresolved(real) == [] and variables_in({"a": ["$A/x", "${B}", 3, "$A"]}) == ["A", "B"]
    merged = merge([real, ghost])
    assert len(merged) == 1 and merged[0].metrics["images_per_s"] == 10.0
    assert latest_per_point([ghost]) == ([], 0) and split_unresolved([ghost, real]) == ([real], [ghost])
    loader, model = row("loader", 100.0), row("model", 50.0)
    e2e, ghost_e2e = row("e2e", 30.0), row("e2e", 90.0, "model.name=${M}")
    assert {r.point_id for r in merge([loader, ghost_e2e, model])} == {loader.point_id, model.point_id}
    assert derived([loader, model, ghost_e2e, e2e], e2e)["e2e_efficiency"] == pytest.approx(30.0 / (100 / 3))


def test_a_row_round_trips_through_json_and_stores_no_derived_metrics(tmp_path):
    loader, model = row("loader", 100.0), row("model", 50.0)
    e2e = row_for("e2e", load_config([], BASE), {"images_per_s": 30.0, "per_class_iou": [0.5, None]}, env={"cpu": "x"},
                  sweep={"point_wall_s": 12.5})  # fmt: skip
    for r in (loader, e2e, row("model", None, error="boom")):
        assert Row.from_json(json.loads(json.dumps(r.to_json()))) == r
    merged = merge([loader, model, e2e])[2]
    assert merged.derived and "derived" not in merged.to_json()  # computed on read, never stored
    append_row(tmp_path / "r.jsonl", merged)
    (back,), bad = scan_rows(tmp_path / "r.jsonl")
    assert bad == [] and back == e2e and back.sweep == {"point_wall_s": 12.5}


def test_a_row_cannot_change_after_it_is_built():
    r = row("model", 10.0)
    with pytest.raises(TypeError):
        r.metrics["images_per_s"] = 99.0  # read-only views: row_for's checked values stay as they are
    with pytest.raises(TypeError):
        r.point["model"] = "other"
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.status = "error"
    with pytest.raises(ValueError, match="non-ok row needs an error"):
        dataclasses.replace(r, status="error")  # a changed row is a new one, checked again
    merged = merge([r])[0]
    assert r.derived == {} and merged is not r and merged == dataclasses.replace(r, derived={})


def test_a_sweeps_record_stored_among_the_metrics_is_read_into_sweep(tmp_path):
    """Sweeps before Row.sweep stored point_wall_s and max_batch_search_from among the metrics."""
    old = row("model", 10.0).to_json()
    del old["sweep"]
    old["metrics"] = {**old["metrics"], "point_wall_s": 41.0, "max_batch_search_from": 16}
    (tmp_path / "r.jsonl").write_text(json.dumps(old) + "\n")
    (r,) = read_rows(tmp_path / "r.jsonl")
    assert r.sweep == {"point_wall_s": 41.0, "max_batch_search_from": 16}
    assert "point_wall_s" not in r.metrics and r.metrics["images_per_s"] == 10.0


def test_the_dataset_root_falls_back_to_the_environment_in_one_place(monkeypatch):
    monkeypatch.delenv("CITYSCAPES_DATASET", raising=False)
    assert dataset_root_or_none(load_config()) is None
    assert row("loader", 1.0).point.get("data_root") is None  # no data root: no dataset tags
    monkeypatch.setenv("CITYSCAPES_DATASET", "/data/cs")
    assert dataset_root_or_none(load_config()) == "/data/cs"
    assert dataset_root_or_none(load_config([], ["data.root=/other"])) == "/other"
    assert row("loader", 1.0).point["data_root"] == "/data/cs"  # the point names what it read

"""Sweeps: expansion, failure isolation, kill-and-resume without duplicates, derived efficiencies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cityseg_fast.bench.sweep import (
    derive_metrics,
    e2e_efficiency,
    e2e_limit,
    load_spec,
    run_sweep,
    scaling_efficiency,
)
from cityseg_fast.errors import UserError
from cityseg_fast.report.schema import make_row, read_rows, validate_row

ROOT = Path(__file__).resolve().parents[1]
# A cheap real point: eval-mode forward of the smallest U-Net at 32x64, 2 timed iterations.
CHEAP = {"bench.iters": 2, "bench.warmup": 1, "data.crop": [32, 64], "precision.compile": "off"}


def _spec(tmp_path: Path, grid: dict, scenarios=("infer",), **top) -> Path:
    p = tmp_path / "sweep.yaml"
    p.write_text(
        yaml.safe_dump(
            {
                "name": "t",
                "overrides": CHEAP,
                "timeout_s": 240,
                **top,
                "runs": [{"scenarios": list(scenarios), "grid": grid}],
            }
        )
    )
    return p


def test_spec_expansion_folds_axes_a_scenario_ignores(tmp_path, monkeypatch):
    monkeypatch.setenv("NGPU", "4")
    spec = load_spec(
        _spec(
            tmp_path,
            {
                "loader.backend": ["torch", "synthetic"],
                "loader.batch_size": [2, 4],
                "world_size": [1, "${NGPU}"],
            },
            scenarios=("model", "e2e"),
        )
    )
    model = [p for p in spec.points if p.scenario == "model"]
    e2e = [p for p in spec.points if p.scenario == "e2e"]
    assert len(model) == 4 and len(e2e) == 8  # the loader axis does not multiply model points
    assert spec.skipped_duplicates == 4
    assert [p.scenario for p in spec.points] == ["model"] * 4 + ["e2e"] * 8  # model rows exist before e2e
    assert {p.world_size for p in model} == {1, 4}
    assert all(p.point["crop"] == [32, 64] for p in spec.points)


def test_spec_errors_are_one_line_user_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("NOPE_GPUS", raising=False)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nrunz: []\n")
    with pytest.raises(UserError, match="unknown sweep key"):
        load_spec(bad)
    with pytest.raises(UserError, match="world_size"):
        load_spec(_spec(tmp_path, {"world_size": ["${NOPE_GPUS}"]}))
    with pytest.raises(UserError, match="precision.dtyp"):
        load_spec(_spec(tmp_path, {"precision.dtyp": ["bf16"]}))
    with pytest.raises(UserError, match="scenarios"):
        load_spec(_spec(tmp_path, {}, scenarios=("traning",)))


def test_failing_point_is_recorded_and_the_sweep_continues(tmp_path):
    spec = load_spec(_spec(tmp_path, {"model.name": ["no_such_model", "unet_s16"]}), tmp_path / "out")
    counts = run_sweep(spec, tmp_path / "out", live=False)
    assert counts == {"ok": 1, "oom": 0, "error": 1, "skipped": 0}
    rows = list(read_rows(tmp_path / "out" / "results.jsonl"))
    for r in rows:
        validate_row(r)
    err = next(r for r in rows if r["status"] == "error")
    assert "no_such_model" in err["error"] and "\n" not in err["error"]
    ok = next(r for r in rows if r["status"] == "ok")
    assert ok["point"]["model"] == "unet_s16" and ok["metrics"]["images_per_s"] > 0
    assert ok["metrics"]["latency_ms_p50"] > 0 and ok["env"]["torch"]
    # Rerun: the ok point is skipped, the failed one is retried (and fails again, recorded again).
    counts = run_sweep(spec, tmp_path / "out", live=False)
    assert counts == {"ok": 0, "oom": 0, "error": 1, "skipped": 1}
    rows = list(read_rows(tmp_path / "out" / "results.jsonl"))
    assert sum(r["status"] == "ok" for r in rows) == 1 and len(rows) == 3


def test_killed_sweep_resumes_without_lost_or_duplicate_rows(tmp_path):
    spec_path = _spec(tmp_path, {"model.name": ["unet_s16"], "loader.batch_size": [1, 2]})
    out = tmp_path / "out"
    results = out / "results.jsonl"
    cmd = [sys.executable, "-m", "cityseg_fast", "sweep", str(spec_path), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and not (results.exists() and results.read_text().count("\n") >= 1):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: the worst case
    proc.wait()
    first = list(read_rows(results))
    assert len(first) == 1, "the sweep should have been killed while measuring its second point"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(read_rows(results))
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    assert len({r["point_id"] for r in rows}) == 2
    assert sorted(r["point"]["batch_size"] for r in rows) == [1, 2]
    assert rows[0]["point_id"] == first[0]["point_id"]


# ---------------------------------------------------------------------------------------------
# derived metrics on real rows built by the schema


def _row(scenario, ips, status="ok", device="cpu", **point):
    base = {"crop": [64, 128], "batch_size": 4, "world_size": 1}
    if scenario in ("model", "e2e"):
        base.update(model="unet_s16", dtype="fp32", channels_last=True, compile="off")
    if scenario in ("loader", "e2e"):
        base.update(loader="dali", loader_device="cpu")
    if scenario == "loader":
        base.pop("world_size")
    base.update(point)
    metrics = {"images_per_s": ips, "device": device} if status == "ok" else {}
    return make_row(scenario, base, metrics, status=status, error=None if status == "ok" else "boom")


def test_e2e_efficiency_uses_matching_points_only():
    rows = [
        _row("loader", 100.0),
        _row("loader", 1.0, crop=[128, 256]),  # another crop: must not be used
        _row("loader", 5000.0, decode_only=True),  # decode-only: not the loader e2e runs
        _row("loader", 2.0, loader="torch", loader_device=None),  # another backend
        _row("model", 50.0),
        _row("model", 3.0, dtype="bf16"),  # another precision
        _row("model", 9999.0, batch_size=8),
        _row("model", 1.0, status="error"),
    ]
    e2e = _row("e2e", 30.0)
    d = e2e_efficiency(e2e, rows)
    shared = 1 / (1 / 100 + 1 / 50)  # both on the same CPU cores
    assert d["e2e_limit_kind"] == "shared_cpu"
    assert d["e2e_efficiency"] == pytest.approx(30.0 / shared)
    assert d["e2e_loader_point_id"] == rows[0]["point_id"] and d["e2e_model_point_id"] == rows[4]["point_id"]
    gpu = _row("e2e", 30.0, device="cuda")
    assert e2e_efficiency(gpu, rows)["e2e_efficiency"] == pytest.approx(30.0 / 50.0)  # min(loader, model)
    assert e2e_efficiency(_row("e2e", 30.0, crop=[32, 64]), rows) == {}  # no matching pair: no number
    assert e2e_efficiency(_row("e2e", 30.0, loader="synthetic", loader_device=None), rows) == {}
    assert e2e_limit(10.0, 10.0, model_on_gpu=False)[0] == pytest.approx(5.0)
    assert e2e_limit(10.0, 20.0, model_on_gpu=True) == (10.0, "min")


def test_scaling_efficiency_against_world_size_one():
    one = _row("model", 100.0)
    four = _row("model", 360.0, world_size=4)
    other = _row("model", 10.0, batch_size=8)
    assert scaling_efficiency(four, [other, one, four])["scaling_efficiency"] == pytest.approx(0.9)
    assert scaling_efficiency(one, [one, four]) == {}
    assert scaling_efficiency(_row("model", 50.0, world_size=2, dtype="bf16"), [one]) == {}
    d = derive_metrics(
        [one, four, _row("loader", 100.0), _row("model", 50.0, batch_size=2), _row("e2e", 30.0)]
    )
    assert d[four["point_id"]]["scaling_efficiency"] == pytest.approx(0.9)

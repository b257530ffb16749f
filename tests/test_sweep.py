"""Sweeps: expansion, failure isolation, kill-and-resume without duplicates (derived metrics: test_results.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cityseg_fast.bench.sweep import run_sweep
from cityseg_fast.bench.sweep_spec import load_spec
from cityseg_fast.errors import UserError
from cityseg_fast.results import read_rows, validate_row

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
    assert all(p.point["resolution"] == [32, 64] for p in spec.points)


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

"""`cityseg demo`: its plan, its sweep spec, its refusal to clobber a foreign folder, and (slow) the whole run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cityseg_fast.cli import main
from cityseg_fast.commands import demo
from cityseg_fast.report.schema import read_rows


def test_quick_plan_is_smaller_everywhere():
    for cuda in (False, True):
        q, f = demo.make_plan(True, cuda), demo.make_plan(False, cuda)
        assert q.train_frames < f.train_frames
        assert all(qi <= fi for (_, qi, _), (_, fi, _) in zip(q.train_runs, f.train_runs, strict=True))
        assert len(q.sweep_batch_sizes) * len(q.sweep_dtypes) <= len(f.sweep_batch_sizes) * len(
            f.sweep_dtypes
        )
        models = [m for m, _, _ in f.train_runs]
        assert any(m.startswith("fcn") for m in models) and any(m.startswith("unet") for m in models)
        assert all(b >= 1 for b in f.sweep_batch_sizes) and f.crop[0] <= f.frame_size[0]


def test_loader_variants_cover_the_comparison():
    cpu = [label for label, _ in demo.loader_variants(cuda=False)]
    assert cpu == ["dali (cpu)", "torch", "synthetic", "dali (cpu) decode-only"]
    gpu = [label for label, _ in demo.loader_variants(cuda=True)]
    assert gpu[0] == "dali (gpu)" and set(cpu) < set(gpu)


def test_refuses_a_folder_that_is_not_a_demo_output(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a demo output folder" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_sweep_spec_expands_to_model_and_e2e_points(tmp_path):
    sweep = pytest.importorskip("cityseg_fast.bench.sweep")
    import yaml

    d = demo.Demo(out=tmp_path, plan=demo.make_plan(True, False), cuda=False, console=None)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(demo.sweep_spec(d)))
    spec = sweep.load_spec(path, tmp_path)
    scenarios = [sp.scenario for sp in spec.points]
    assert scenarios.count("e2e") == 2 and "model" in scenarios
    for sp in spec.points:
        assert sp.cfg.data.root == str(d.data)
        assert list(sp.cfg.data.crop) == list(d.plan.crop)


def test_json_safe_turns_nan_into_null():
    assert demo._json_safe({"iou": [0.5, float("nan")], "x": float("inf")}) == {"iou": [0.5, None], "x": None}


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    for module in (
        "cityseg_fast.bench.sweep",
        "cityseg_fast.bench.loader_bench",
        "cityseg_fast.engine.train",
    ):
        pytest.importorskip(module)
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    rows = list(read_rows(out / "results.jsonl"))
    scen = {r["scenario"] for r in rows}
    assert {"loader", "model", "e2e", "accuracy"} <= scen
    acc = [r for r in rows if r["scenario"] == "accuracy"]
    assert len(acc) == 2 and all(r["status"] == "ok" for r in acc), [r.get("error") for r in acc]
    assert all(0.0 <= r["metrics"]["miou"] <= 1.0 for r in acc)
    md = (out / "report" / "REPORT.md").read_text()
    for heading in [
        "## Environment",
        "## Accuracy",
        "## Bottleneck",
        "## Demo timeline",
        "### Loaders alone",
    ]:
        assert heading in md
    assert (out / "report" / "loaders.png").is_file()
    timings = json.loads((out / "demo_timings.json").read_text())
    assert len(timings["steps"]) == 6
    # A rerun with the same --out replaces, never appends to, the earlier results.
    assert Path(out / ".cityseg-demo").is_file()

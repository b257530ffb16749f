"""`cityseg demo`: its two sweep files (what it measures), its refusal to clobber a foreign folder, and the
whole quick run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cityseg_fast.bench.sweep_spec import load_spec
from cityseg_fast.cli import main
from cityseg_fast.commands import demo
from cityseg_fast.results import read_rows

SPECS = Path(__file__).resolve().parents[1] / "configs" / "sweeps"


@pytest.mark.parametrize("name", ["demo_cpu", "demo_gpu"])
def test_demo_sweeps_measure_the_whole_product(name, tmp_path, monkeypatch):
    """Every loader alone (and the decode limit), the model alone, end to end, the colour baseline and
    an FCN and a U-Net trained: the full spec and its --quick variant, the quick one smaller."""
    import yaml

    path = SPECS / f"{name}.yaml"
    sizes = {}
    for quick in (False, True):
        frames, sweep = demo.demo_plan(path, quick, tmp_path / "prepared")
        (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
        spec = load_spec(tmp_path / "sweep.yaml", tmp_path)
        by = {s: [p for p in spec.points if p.scenario == s] for s in ("loader", "model", "e2e", "accuracy", "baseline")}
        assert all(by.values()), {k: len(v) for k, v in by.items()}
        assert any(p.point.get("decode_only") for p in by["loader"])
        models = sorted(p.point["model"] for p in by["accuracy"])
        assert len(models) == 2 and models[0].startswith("fcn") and models[1].startswith("unet")
        assert all(p.cfg.data.root == str(tmp_path / "prepared") for p in spec.points)
        if name == "demo_cpu":  # a CPU without native bf16 emulates it: the CPU demo never times it
            assert {p.cfg.precision.dtype for p in spec.points} == {"fp32"}
        if name == "demo_cpu" and not quick:  # both train whole frames at batch 2, as their recipes say
            trained = {(p.cfg.data.crop, p.cfg.loader.batch_size) for p in by["accuracy"]}
            assert trained == {((128, 256), 2)}, trained  # (the sweep-wide crop and batch once leaked in)
        sizes[quick] = (frames["train"] * frames["size"][0] * frames["size"][1], [p.cfg.train.iters for p in by["accuracy"]])
    assert sizes[True][0] <= sizes[False][0] and all(q < f for q, f in zip(sizes[True][1], sizes[False][1], strict=True))


def test_refuses_a_folder_that_is_not_a_demo_output(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a demo output folder" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "precious.txt").read_text() == "keep me"


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    rows = list(read_rows(out / "results.jsonl"))
    assert {r.scenario for r in rows} == {"loader", "model", "e2e", "accuracy", "baseline"}
    assert all(r.status == "ok" for r in rows), [r.error for r in rows if r.status != "ok"]
    acc = [r for r in rows if r.scenario == "accuracy"]
    assert len(acc) == 2 and all(0.0 <= r.metrics["miou"] <= 1.0 for r in acc)
    md = (out / "report" / "REPORT.md").read_text()
    for heading in ["## Environment", "## Accuracy", "## Bottleneck", "## Demo timeline", "### Loaders alone"]:
        assert heading in md
    assert "| colour_baseline |" in md and (out / "report" / "loaders.png").is_file()
    timings = json.loads((out / "demo_timings.json").read_text())
    assert [s["step"].split(" (")[0] for s in timings["steps"]][-1] == "Build the report"
    assert len(timings["steps"]) == 4
    assert Path(out / ".cityseg-demo").is_file()

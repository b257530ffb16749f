"""Repeated points: a sweep's `repeats` makes interleaved rounds, the child records its round, the report shows
the median over rounds with their range."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import yaml

from cityseg_fast.bench.sweep import run_sweep
from cityseg_fast.bench.sweep_point import point_command
from cityseg_fast.bench.sweep_spec import load_spec
from cityseg_fast.cli import main
from cityseg_fast.config import load_config
from cityseg_fast.errors import UserError
from cityseg_fast.report.build import build_report
from cityseg_fast.report.format import fmt_num
from cityseg_fast.report.runs import load_run
from cityseg_fast.results import merge, point_for, point_id, read_rows, row_for
from cityseg_fast.results.rounds import collapse_rounds

CHEAP = {"bench.iters": 2, "bench.warmup": 1, "data.crop": [32, 64], "precision.compile": "off"}
BASE = ["model.name=unet_s16", "data.crop=[64,128]", "loader.batch_size=4", "loader.backend=dali", "loader.device=cpu"]


def _spec(tmp_path: Path, runs: list[dict], **top) -> Path:
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump({"name": "r", "overrides": CHEAP, **top, "runs": runs}))
    return p


def test_repeats_make_one_point_per_round_interleaved_round_by_round(tmp_path):
    runs = [
        {"scenarios": ["model", "infer"], "grid": {"loader.batch_size": [1, 2]}},
        {"scenarios": ["infer"], "grid": {"loader.batch_size": [8]}, "repeats": 1},  # a block of its own
    ]
    spec = load_spec(_spec(tmp_path, runs, repeats=3))
    repeated = [sp for sp in spec.points if sp.round is not None]
    single = [sp for sp in spec.points if sp.round is None]
    assert len(repeated) == 4 * 3 and len(single) == 1 and "round" not in single[0].point
    assert len({sp.id for sp in spec.points}) == len(spec.points)  # each round is its own point
    # Every point once before any point twice; within a round, the table's order (model before infer).
    assert [sp.round or 0 for sp in spec.points] == sorted(sp.round or 0 for sp in spec.points)
    first = [sp.scenario for sp in spec.points if sp.round == 0]
    assert first == ["model", "model", "infer", "infer"]
    for sp in repeated:  # a round differs from the unrepeated point only by its round key
        assert sp.point == {**point_for(sp.scenario, sp.cfg, sp.world_size), "round": sp.round}
        assert f"round={sp.round}" in sp.label
    assert point_command(repeated[0], Path("p.yaml"), Path("r.jsonl"))[-2:] == ["--round", "0"]
    assert "--round" not in point_command(single[0], Path("p.yaml"), Path("r.jsonl"))
    for bad in (0, "three", True):
        with pytest.raises(UserError, match="repeats"):
            load_spec(_spec(tmp_path, runs, repeats=bad))


def test_the_child_records_its_round_in_the_point(tmp_path):
    out = tmp_path / "rows.jsonl"
    overrides = ["model.name=unet_s16", "data.crop=[32,64]", "bench.iters=2", "bench.warmup=1"]
    assert main(["bench", "infer", *overrides, "--round", "2", "--append", str(out)]) == 0
    (row,) = read_rows(out)
    cfg = load_config([], overrides)
    assert row.point == {**point_for("infer", cfg), "round": 2}
    assert row.point_id == point_id("infer", row.point) != point_id("infer", point_for("infer", cfg))


def _row(scenario: str, ips: float | None, r: int | None, **more):
    cfg = load_config([], BASE)
    metrics = {} if ips is None else {"images_per_s": ips, "device": "cpu", **more}
    return row_for(scenario, cfg, metrics, error=None if ips else "boom", env={},
                   point=None if r is None else {"round": r})  # fmt: skip


def test_rounds_fold_into_the_median_with_their_range_and_the_unrepeated_id():
    loader = [_row("loader", v, r, cpu_ms_per_image=c) for r, (v, c) in enumerate([(100.0, 9.0), (140.0, 7.0), (90.0, 8.0)])]
    model = [_row("model", v, r) for r, v in enumerate([50.0, 40.0, 60.0])]
    e2e = [_row("e2e", v, r) for r, v in enumerate([30.0, 20.0, 25.0])]
    acc = [_row("accuracy", 5.0, r, miou=m, per_class_iou=pc)
           for r, (m, pc) in enumerate([(0.1, [0.1, None]), (0.3, [0.3, None]), (0.2, [0.5, None])])]  # fmt: skip
    failed = [_row("infer", None, 0), _row("infer", None, 1)]
    plain = _row("infer", 7.0, None)
    rows = collapse_rounds([*loader, *model, *e2e, *acc, *failed, plain])
    by = {r.scenario: r for r in rows if r is not plain}
    assert len(rows) == 6 and plain in rows  # a row without a round passes through as it is
    lo = by["loader"]
    assert "round" not in lo.point and lo.point_id == point_id("loader", lo.point)
    assert lo.point_id == point_id("loader", point_for("loader", load_config([], BASE)))
    assert lo.metrics["images_per_s"] == 100.0 and lo.metrics["cpu_ms_per_image"] == 8.0
    assert lo.metrics["images_per_s_rounds"] == [100.0, 140.0, 90.0]
    assert lo.metrics["rounds"] == lo.metrics["rounds_total"] == 3
    assert by["accuracy"].metrics["miou"] == pytest.approx(0.2)
    assert by["accuracy"].metrics["per_class_iou"] == [pytest.approx(0.3), None]  # class by class
    assert by["infer"].status != "ok" and by["infer"].metrics["rounds"] == 0  # no ok round: a failure
    # The e2e row's companions are the unrepeated ids: e2e efficiency comes from the three medians.
    d = next(r for r in merge(rows) if r.scenario == "e2e").derived
    assert d["e2e_efficiency"] == pytest.approx(25.0 * (1 / 100.0 + 1 / 50.0))


class Stub:
    """Stands in for start_point: records the row a child would, round included; images/s from the id."""

    def __call__(self, sp, work, timeout_s, devices):
        metrics = {"images_per_s": float(int(sp.id[:4], 16) % 97 + 1), "device": "cpu"}
        return lambda: [row_for(sp.scenario, sp.cfg, metrics, world_size=sp.world_size, env={}, point=sp.extra)]


def test_a_repeated_sweep_resumes_by_round_and_reports_the_median(tmp_path):
    spec_path = _spec(tmp_path, [{"scenarios": ["model"], "grid": {"loader.batch_size": [1, 2]}}], repeats=3)
    out = tmp_path / "out"
    assert run_sweep(load_spec(spec_path), out, live=False, runner=Stub())["ok"] == 6
    rows = list(read_rows(out / "results.jsonl"))
    assert sorted((r.point["batch_size"], r.point["round"]) for r in rows) == [
        (b, r) for b in (1, 2) for r in range(3)
    ]
    assert run_sweep(load_spec(spec_path), out, live=False, runner=Stub())["skipped"] == 6  # nothing again
    run = load_run(out)
    assert len(run.rows) == 2 and run.superseded == 0
    for folded in run.rows:
        mine = [r.metrics["images_per_s"] for r in rows if r.point["batch_size"] == folded.point["batch_size"]]
        assert folded.metrics["images_per_s"] == statistics.median(mine)
    md = build_report([out], tmp_path / "report").read_text()
    assert "| rounds: img/s range |" in md
    assert "| round |" not in md  # rounds are folded, not a column
    ips = sorted(r.metrics["images_per_s"] for r in rows if r.point["batch_size"] == 1)
    assert f"| 3: {fmt_num(ips[0])}–{fmt_num(ips[-1])} |" in md


ROOT = Path(__file__).resolve().parents[1]


def test_the_sweeps_that_replaced_benchmark_scripts_expand_to_their_points(tmp_path, monkeypatch):
    """loaders_cpu and models_cpu (once benchmarks/run_loaders.py and run_models.py, with rounds of their own)
    measure each of their points in 3 interleaved rounds; accuracy_cpu the colour baseline and two configs."""
    for var in ("CITYSEG_LOADER_PNG", "CITYSEG_LOADER_NPY", "CITYSEG_ACC_DATA"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    loaders = load_spec(ROOT / "configs" / "sweeps" / "loaders_cpu.yaml")
    assert len(loaders.points) == 10 * 3 and {sp.round for sp in loaders.points} == {0, 1, 2}
    first = [sp.point for sp in loaders.points if sp.round == 0]
    assert {(p["loader"], p.get("decode_only", False)) for p in first} == {
        (b, d) for b in ("dali", "torch") for d in (False, True)
    }
    assert any(p.get("resampler") == "dali" for p in first) and any(p.get("roi") == "resize" for p in first)
    npy = [p for p in first if p["data_root"].endswith("cityseg_loader_npy")]
    assert sorted(p["loader"] for p in npy) == ["dali", "torch"]
    assert all(p["resolution"] == [512, 1024] and p["batch_size"] == 8 for p in first)
    models = load_spec(ROOT / "configs" / "sweeps" / "models_cpu.yaml")
    variants = {(p["model"], p["dtype"], p["channels_last"], p["compile"]) for p in (sp.point for sp in models.points)}
    assert len(models.points) == 10 * 3 and len(variants) == 10
    assert {v[1:] for v in variants} == {("fp32", False, "off"), ("bf16", False, "off"), ("fp32", True, "off"),
                                         ("fp32", False, "default"), ("bf16", True, "default")}  # fmt: skip
    acc = load_spec(ROOT / "configs" / "sweeps" / "accuracy_cpu.yaml")
    assert sorted(sp.point["model"] for sp in acc.points) == ["colour_baseline", "fcn_resnet50", "unet_s16"]

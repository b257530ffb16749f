"""Sweeps: expansion, failure isolation, kill-and-resume without duplicates (derived metrics: test_results.py)."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from engine_fixtures import PY, REPO, env, kill_after_first_row, run_cli, write_tiny_cityscapes

from cityseg_fast.bench.sweep import run_sweep
from cityseg_fast.bench.sweep_spec import SweepSpec, load_spec
from cityseg_fast.errors import EXIT_PREEMPTED, UserError
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
        validate_row(r.to_json())
    err = next(r for r in rows if r.status == "error")
    assert "no_such_model" in err.error and "\n" not in err.error
    ok = next(r for r in rows if r.status == "ok")
    assert ok.point["model"] == "unet_s16" and ok.metrics["images_per_s"] > 0
    assert ok.metrics["latency_ms_p50"] > 0 and ok.env["torch"]
    # The sweep appends the row its child built with row_for, unchanged, its own record beside it.
    (child,) = read_rows(tmp_path / "out" / "points" / f"infer-{ok.point_id}.jsonl")
    assert ok.sweep["point_wall_s"] > 0 and "point_wall_s" not in ok.metrics
    assert ok == dataclasses.replace(child, sweep={"point_wall_s": ok.sweep["point_wall_s"]})
    assert err.sweep["point_wall_s"] > 0 and err.metrics == {}  # a failed child's row: built by the sweep
    # Rerun: the ok point is skipped, the failed one is retried (and fails again, recorded again).
    counts = run_sweep(spec, tmp_path / "out", live=False)
    assert counts == {"ok": 0, "oom": 0, "error": 1, "skipped": 1}
    rows = list(read_rows(tmp_path / "out" / "results.jsonl"))
    assert sum(r.status == "ok" for r in rows) == 1 and len(rows) == 3


def test_killed_sweep_resumes_without_lost_or_duplicate_rows(tmp_path):
    spec_path = _spec(tmp_path, {"model.name": ["unet_s16"], "loader.batch_size": [1, 2]})
    out = tmp_path / "out"
    results = out / "results.jsonl"
    args = ("sweep", str(spec_path), "--out", str(out))
    kill_after_first_row(results, *args)
    first = list(read_rows(results))
    assert len(first) == 1, "the sweep should have been killed while measuring its second point"
    done = run_cli(*args, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(read_rows(results))
    assert len(rows) == 2 and all(r.status == "ok" for r in rows)
    assert len({r.point_id for r in rows}) == 2
    assert sorted(r.point["batch_size"] for r in rows) == [1, 2]
    assert rows[0].point_id == first[0].point_id


def _stop_sweep_once_training(args: tuple[str, ...], runs: Path, timeout: float = 180) -> tuple[int, str]:
    """Start `cityseg ARGS`, SIGTERM it (it alone, as `sbatch --signal=B:TERM` does) once a training point
    under `runs` has logged; (exit status, last stderr line)."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([PY, "-m", "cityseg_fast", *args], cwd=REPO, env=env(),
                                stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)  # fmt: skip
        try:
            deadline = time.time() + timeout
            while time.time() < deadline and proc.poll() is None:
                if any('"train"' in p.read_text() for p in runs.glob("*/metrics.jsonl")):
                    break
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err.seek(0)
        return code, err.read().strip().splitlines()[-1]


def test_sigterm_stops_a_sweep_and_a_rerun_loses_or_duplicates_no_row(tmp_path):
    """A benchmark point, then a training point that is SIGTERMed with the sweep: it saves and exits 75, the
    sweep writes no row for it and exits 75; the rerun skips the finished point and resumes the training."""
    data = write_tiny_cityscapes(tmp_path / "data", {"train": 4, "val": 2})
    train = {"data.root": str(data), "model.name": "unet_s16", "model.base_width": 4, "loader.backend": "torch",
             "loader.num_workers": 0, "loader.batch_size": 2, "train.iters": 200, "train.log_interval": 2,
             "train.eval_interval": 200, "train.ckpt_interval": 200, "train.optimizer": "adamw"}  # fmt: skip
    spec_path = _spec(tmp_path, {}, scenarios=("infer", "accuracy"), overrides={**CHEAP, **train})
    out = tmp_path / "out"
    results, args = out / "results.jsonl", ("sweep", str(spec_path), "--out", str(out))
    code, last = _stop_sweep_once_training(args, out / "runs")
    assert code == EXIT_PREEMPTED, last
    assert last.startswith("cityseg sweep: stopped by SIGTERM: 1 point(s) stopped before they finished"), last
    (first,) = read_rows(results)  # the finished point's row; none, not even an error row, for the stopped one
    assert first.scenario == "infer" and first.ok
    (run_dir,) = (out / "runs").iterdir()
    stopped = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert stopped["event"] == "preempted" and stopped["saved"] is True  # the child saved where it stopped

    done = run_cli(*args, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(read_rows(results))
    assert [r.scenario for r in rows] == ["infer", "accuracy"] and all(r.ok for r in rows)
    assert rows[0] == first and len({r.point_id for r in rows}) == 2
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    (resume,) = [e for e in events if e["event"] == "resume"]
    assert resume["iter"] == stopped["iter"] and events[-1]["event"] == "end" and events[-1]["iters"] == 200


# -- variables, paths, shards (no point runs) ------------------------------------------------------


def _write(path: Path, spec: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec))
    return path


def test_an_unset_variable_fails_at_load_unless_only_points_without_data_use_it(tmp_path, monkeypatch):
    """data.root=${NODATA} unset: the loader points need it (one error naming it and the spec); the infer
    and model points run without a dataset, with the point ids they have with one."""
    monkeypatch.delenv("NODATA", raising=False)
    spec = {"name": "v", "overrides": {**CHEAP, "data.root": "${NODATA}"},
            "runs": [{"scenarios": ["loader", "model", "infer"], "grid": {"loader.batch_size": [1, 2]}}]}  # fmt: skip
    path = _write(tmp_path / "v.yaml", spec)
    with pytest.raises(UserError, match=r"v\.yaml: \$\{NODATA\} is not set; data\.root of 2 point\(s\) \(loader\)"):
        load_spec(path)
    without = load_spec(path, only=["model", "infer"])
    assert len(without.points) == 4 and all(sp.cfg.data.root == "" for sp in without.points)
    monkeypatch.setenv("NODATA", str(tmp_path / "some_dataset"))
    with_data = load_spec(path, only=["model", "infer"])
    assert [sp.id for sp in with_data.points] == [sp.id for sp in without.points]
    assert {sp.cfg.data.root for sp in with_data.points} == {str(tmp_path / "some_dataset")}
    monkeypatch.setenv("NODATA", "")  # empty is as good as unset
    with pytest.raises(UserError, match=r"v\.yaml: \$\{NODATA\} is empty; data\.root of 2 point"):
        load_spec(path)
    monkeypatch.delenv("NODATA")
    other = {**spec, "runs": [{"scenarios": ["infer"], "grid": {"model.name": ["${NODATA}"]}}]}
    with pytest.raises(UserError, match=r"\$\{NODATA\} is not set \(used in runs\[0\]\.grid\.model\.name\[0\]\)"):
        load_spec(_write(tmp_path / "w.yaml", other), only=["infer"])


def test_spec_paths_resolve_beside_the_spec_or_under_the_repo_never_the_cwd(tmp_path, monkeypatch):
    (tmp_path / "configs" / "bench").mkdir(parents=True)
    (tmp_path / "configs" / "bench" / "cpu.yaml").write_text("bench:\n  iters: 99\n")  # a trap in the cwd
    (tmp_path / "mine.yaml").write_text("bench:\n  iters: 5\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CITYSCAPES_QUICK", str(tmp_path / "quick"))
    shipped = load_spec(ROOT / "configs" / "sweeps" / "cpu_quick.yaml")  # configs/bench/cpu.yaml: the repo's
    assert shipped.points and {sp.cfg.bench.iters for sp in shipped.points} == {8}
    assert load_spec("configs/sweeps/cpu_quick.yaml").source == str(ROOT / "configs/sweeps/cpu_quick.yaml")
    beside = _write(tmp_path / "specs" / "s.yaml", {"config": ["../mine.yaml"], "runs": [{"scenarios": ["infer"]}]})
    assert load_spec(beside).points[0].cfg.bench.iters == 5
    missing = _write(tmp_path / "specs" / "m.yaml", {"config": ["configs/bench/nope.yaml"], "runs": [{"scenarios": ["infer"]}]})
    with pytest.raises(UserError, match=r"m\.yaml: config: config file 'configs/bench/nope\.yaml' not found"):
        load_spec(missing)


def test_shards_are_disjoint_complete_and_stable_when_the_spec_grows(tmp_path, monkeypatch):
    from cityseg_fast.bench.sweep_spec import select_shard

    monkeypatch.setenv("CITYSCAPES_JPEG", "/data/cityscapes_jpeg95")
    monkeypatch.setenv("GPUS", "8")
    full = load_spec(ROOT / "configs" / "sweeps" / "gpu_full.yaml")
    ids = [sp.id for sp in full.points]
    assert len(ids) > 200 and len(set(ids)) == len(ids)

    def shards(spec: SweepSpec, n: int) -> list[set[str]]:
        out = []
        for i in range(n):
            part = dataclasses.replace(spec)
            select_shard(part, i, n)
            assert part.results_file == f"results.shard-{i}-of-{n}.jsonl" and part.shard == (i, n)
            out.append({sp.id for sp in part.points})
        return out

    for n in (1, 3, 8):
        parts = shards(full, n)
        assert sum(map(len, parts)) == len(ids) and set().union(*parts) == set(ids)  # disjoint, complete
        assert min(map(len, parts)) > len(ids) / n / 2  # about even
    more = load_spec(_spec(tmp_path, {"model.name": ["unet_s16", "unet_s32"], "loader.batch_size": [1, 3]}))
    grown = dataclasses.replace(full, points=more.points[:2] + full.points + more.points[2:])
    for before, after in zip(shards(full, 4), shards(grown, 4), strict=True):
        assert before <= after  # points added anywhere in the spec move no other point between shards


# -- the scheduler, with a stub for the child ------------------------------------------------------


class Stub:
    """Stands in for start_point: each point 'runs' for `seconds` and records its devices like a child
    does; batch sizes above `fits` are out of memory. Remembers what ran when, on which devices."""

    def __init__(self, seconds: float = 0.05, fits: int = 1 << 30):
        import threading

        self.seconds, self.fits, self.lock = seconds, fits, threading.Lock()
        self.running: dict[str, tuple[str, ...]] = {}
        self.overlaps: list[dict[str, tuple[str, ...]]] = []  # who ran alongside whom, at each start
        self.started: list[tuple[str, tuple[str, ...]]] = []

    def __call__(self, sp, work, timeout_s, devices):
        from cityseg_fast.results import row_for

        self.started.append((sp.id, devices))

        def wait():
            with self.lock:
                self.running[sp.id] = devices
                self.overlaps.append(dict(self.running))
            time.sleep(self.seconds)
            with self.lock:
                del self.running[sp.id]
            metrics = {"images_per_s": float(int(sp.id[:4], 16) % 97 + 1), "device": "cpu",
                       "visible_devices": ",".join(devices)}  # fmt: skip
            ran = {"point_wall_s": 0.0}
            if sp.cfg.loader.batch_size > self.fits:
                return [row_for(sp.scenario, sp.cfg, error="CUDA out of memory", world_size=sp.world_size, env={},
                                sweep=ran)]  # fmt: skip
            return [row_for(sp.scenario, sp.cfg, metrics, world_size=sp.world_size, env={}, sweep=ran)]

        return wait


def test_devices_run_single_points_side_by_side_and_wide_points_on_n_of_them(tmp_path):
    path = _spec(tmp_path, {"loader.batch_size": [1, 2, 3, 4, 5], "world_size": [1, 2]}, scenarios=("model",))
    spec = load_spec(path)
    stub = Stub(seconds=0.2)
    counts = run_sweep(spec, tmp_path / "out", live=False, devices=["3", "5", "7"], runner=stub)
    assert counts == {"ok": 10, "oom": 0, "error": 0, "skipped": 0}
    rows = list(read_rows(tmp_path / "out" / "results.jsonl"))
    assert len(rows) == 10 and {r.point_id for r in rows} == {sp.id for sp in spec.points}
    assert max(len(o) for o in stub.overlaps) == 3  # three single-device points at once
    for overlap in stub.overlaps:  # never two points on one device
        used = [d for devs in overlap.values() for d in devs]
        assert len(used) == len(set(used)) <= 3
    by_id = {sp.id: sp for sp in spec.points}
    for pid, devs in stub.started:
        assert len(devs) == by_id[pid].world_size and set(devs) <= {"3", "5", "7"}
    for r in rows:
        assert len(r.metrics["visible_devices"].split(",")) == r.point["world_size"]


def test_max_batch_search_halves_on_oom_under_the_scheduler(tmp_path):
    from cityseg_fast.bench.sweep_spec import halved

    path = _spec(tmp_path, {"loader.batch_size": [8, 1]}, scenarios=("model",), max_batch_search=True)
    counts = run_sweep(load_spec(path), tmp_path / "out", live=False, devices=["0", "1"], runner=Stub(fits=2))
    assert counts == {"ok": 2, "oom": 2, "error": 0, "skipped": 0}  # 8 oom, 4 oom, 2 ok; 1 ok
    rows = list(read_rows(tmp_path / "out" / "results.jsonl"))
    assert sorted((r.point["batch_size"], r.status) for r in rows) == [(1, "ok"), (2, "ok"), (4, "oom"), (8, "oom")]
    acc = load_spec(_spec(tmp_path, {"loader.batch_size": [4]}, scenarios=("accuracy",)), tmp_path / "o").points[0]
    assert Path(halved(acc).cfg.train.out_dir) == tmp_path / "o" / "runs" / f"accuracy-{halved(acc).id}"


def _report_parts(report: Path) -> tuple[str, list[str]]:
    """REPORT.md without the lines that name files, runs or times; results.csv rows without run and time."""
    md = report.read_text().split("## Best configuration", 1)[1]
    md = re.sub(r"\n## Plots.*", "", md, flags=re.S)
    with open(report.parent / "results.csv", newline="") as f:
        recs = [{k: v for k, v in r.items() if k not in ("run", "time")} for r in csv.DictReader(f)]
    return md, sorted(json.dumps(r, sort_keys=True) for r in recs)


def test_shards_merged_report_equals_the_unsharded_one(tmp_path):
    from cityseg_fast.bench.sweep_spec import select_shard
    from cityseg_fast.cli import main
    from cityseg_fast.report.runs import load_run

    grid = {"loader.backend": ["torch", "synthetic"], "loader.batch_size": [2, 4], "world_size": [1, 2]}
    path = _spec(tmp_path, grid, scenarios=("loader", "model", "e2e"))
    run_sweep(load_spec(path), tmp_path / "whole", live=False, runner=Stub(seconds=0))
    for i in range(3):
        spec = load_spec(path)
        select_shard(spec, i, 3)
        run_sweep(spec, tmp_path / "shared", live=False, runner=Stub(seconds=0))  # one folder, three files
        run_sweep(spec, tmp_path / f"node{i}", live=False, runner=Stub(seconds=0))  # a folder per node
    whole = load_run(tmp_path / "whole")
    assert any(r.derived.get("e2e_efficiency") for r in whole.rows)
    assert any(r.derived.get("scaling_efficiency") for r in whole.rows)

    def merged(run):
        return sorted(json.dumps([r.point_id, dict(r.metrics), dict(r.derived)], sort_keys=True) for r in run.rows)

    nodes = [str(tmp_path / f"node{i}") for i in range(3)]
    assert merged(load_run(tmp_path / "shared")) == merged(load_run(nodes)) == merged(whole)
    assert main(["report", str(tmp_path / "whole"), "--out", str(tmp_path / "r_whole")]) == 0
    assert main(["report", "--merge", *nodes, "--out", str(tmp_path / "r_nodes")]) == 0
    assert _report_parts(tmp_path / "r_nodes" / "REPORT.md") == _report_parts(tmp_path / "r_whole" / "REPORT.md")
    (tmp_path / "shared" / "results.shard-1-of-3.jsonl").unlink()  # a node that never ran is named
    assert "shard file(s) missing: results.shard-1-of-3.jsonl" in load_run(tmp_path / "shared").notes()


# -- real children on a device list, with no dataset --------------------------------------------------


def test_devices_give_each_child_its_own_and_points_without_data_need_no_dataset(tmp_path, monkeypatch, capsys):
    """Two infer points on --devices 0,1 with data.root=${NODATA} unset: each child gets one device (and
    records what it saw), no dataset is needed, and an ok row an older sweep recorded under the unset
    variable (same point id: infer reads no data) is not taken as this point done."""
    from cityseg_fast.cli import main
    from cityseg_fast.config import load_config
    from cityseg_fast.results import append_row, row_for

    monkeypatch.delenv("NODATA", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # --devices may name any device then
    over = {**CHEAP, "bench.iters": 1, "bench.warmup": 0, "data.root": "${NODATA}"}
    path = _write(tmp_path / "d.yaml", {"name": "d", "overrides": over, "timeout_s": 240,
                                         "runs": [{"scenarios": ["infer"], "grid": {"loader.batch_size": [1, 2]}}]})  # fmt: skip
    out = tmp_path / "out"
    old_cfg = load_config([], ["data.crop=[32,64]", "loader.batch_size=1", "data.root=${NODATA}", "bench.iters=1",
                               "bench.warmup=0", "precision.compile='off'"])  # fmt: skip
    ghost = row_for("infer", old_cfg, {"images_per_s": 1.0}, env={})
    append_row(out / "results.jsonl", ghost)
    assert main(["sweep", str(path), "--out", str(out), "--devices", "0,1", "--only", "infer"]) == 0
    rows = list(read_rows(out / "results.jsonl"))[1:]
    assert len(rows) == 2 and all(r.status == "ok" for r in rows), [r.error for r in rows]
    assert ghost.point_id in {r.point_id for r in rows}  # run again, not skipped
    assert sorted(r.metrics["visible_devices"] for r in rows) == ["0", "1"]  # each child saw its own
    assert all(r.config["data"]["root"] == "" for r in rows)
    assert "on devices 0,1" in capsys.readouterr().err

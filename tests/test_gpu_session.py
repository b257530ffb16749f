"""benchmarks/gpu_session.py, which has to work the first time it meets a GPU: its flow at toy sizes on the
CPU (--smoke), the budgets it plans (--dry-run), a rerun that resumes without measuring anything twice, and
the suite's progress log read back (which tests passed, failed, or were cut by a hard time-out)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from engine_fixtures import REPO, env

SCRIPT = REPO / "benchmarks" / "gpu_session.py"


def session(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env(), capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


STEP_LINE = re.compile(r"^  (\S+)\s+(\d+) s  ")


def test_dry_run_lists_every_step_within_nine_minutes():
    """The headline steps first, sweeps and the suite after them; every step has a budget, the sum fits 540 s
    (the default), each says how it was sized."""
    p = session("--dry-run")
    assert p.returncode == 0, p.stderr
    steps = [m.groups() for m in map(STEP_LINE.match, p.stdout.splitlines()) if m]
    names = [n for n, _ in steps]
    assert names == ["doctor", "data", "dali", "torch-gpu", "torch-cpu", "model", "e2e", "sweeps", "suite",
                     "suite-slow", "report"]  # fmt: skip
    budgets = [float(b) for _, b in steps]
    assert all(b > 0 for b in budgets) and sum(budgets) <= 540, budgets
    assert p.stdout.count("sized: ") == len(steps)
    assert dict(steps)["doctor"] == "60"  # a cold start of torch, DALI and CUDA with 4 pipeline builds


def test_smoke_session_measures_reports_and_resumes(tmp_path: Path):
    out, work = tmp_path / "out", tmp_path / "work"
    args = ("--smoke", "--out", str(out), "--work", str(work), "--budget-s", "900", "--only", "data,dali,e2e,report")
    p = session(*args)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    from cityseg_fast.results import merge, read_rows

    rows = merge(read_rows(out / "results.jsonl"))
    assert {r.status for r in rows} == {"ok"}
    assert {r.scenario for r in rows} == {"loader", "model", "e2e"}
    assert any(r.point.get("decode_only") for r in rows)  # the grid's decode-only points
    assert all(r.derived.get("e2e_efficiency") for r in rows if r.scenario == "e2e")
    record = json.loads((out / "session.json").read_text())
    assert {k: v["status"] for k, v in record["steps"].items()} == dict.fromkeys(("data", "dali", "e2e", "report"), "done")
    summary = (out / "SESSION.md").read_text()
    assert "## Goals" in summary and "| dali | " in summary and (out / "REPORT.md").is_file()
    n_lines = len((out / "results.jsonl").read_text().splitlines())
    again = session(*args)
    assert again.returncode == 0, again.stdout[-3000:]
    assert len((out / "results.jsonl").read_text().splitlines()) == n_lines  # nothing measured twice
    assert "[dali]" not in again.stdout and "[e2e]" not in again.stdout  # finished steps are skipped


def test_the_suites_progress_log_is_read_back(tmp_path):
    """tests/conftest.py's log, as a killed run leaves it: one test passed, one failed in setup, one started
    and never reported (cut by the hard time-out), a torn last line; a second attempt collected fewer."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from gpu_session import collected, outcomes, suite_records

    a, b, c, d = (f"tests/gpu/test_x.py::test_{k}" for k in "abcd")
    lines = [
        {"event": "collected", "nodeids": [a, b, c, d]},
        {"event": "start", "nodeid": a},
        *({"event": "report", "nodeid": a, "when": w, "outcome": "passed"} for w in ("setup", "call", "teardown")),
        {"event": "start", "nodeid": b},
        {"event": "report", "nodeid": b, "when": "setup", "outcome": "failed"},
        {"event": "report", "nodeid": b, "when": "teardown", "outcome": "passed"},
        {"event": "start", "nodeid": c},
        {"event": "report", "nodeid": c, "when": "setup", "outcome": "passed"},
        {"event": "collected", "nodeids": [d]},
    ]
    log = tmp_path / "suite.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"event": "sta')
    records = suite_records(log)
    assert collected(records) == [a, b, c, d]
    assert outcomes(records) == {a: "passed", b: "failed", c: "cut"}  # d never started


def test_no_point_starts_without_the_time_to_finish_and_unused_time_rolls_forward(tmp_path, monkeypatch):
    """A point whose estimated cost does not fit what its step has left is not started (it would be killed
    halfway) but left for a rerun; a step gets its own budget plus what earlier steps left, never what the
    steps after it are owed."""
    import time

    import pytest

    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_session as gs

    ctx = gs.Ctx(out=tmp_path, work=tmp_path, smoke=True, env={}, deadline=time.time() + gs.SMOKE_POINT_S - 1)
    ran = []
    monkeypatch.setattr("cityseg_fast.bench.runners.run_scenario", lambda *a: ran.append(a) or {})
    with pytest.raises(gs.Budget, match="0 points measured, 3 left"):
        gs.measure_points(ctx, gs.points_for("e2e", smoke=True))
    assert ran == [] and not (tmp_path / "results.jsonl").exists()

    plan = {s.name: s.budget_s for s in gs.STEPS}
    owed_after_dali = sum(s.budget_s for s in gs.STEPS[3:])
    t_end = time.time() + 300 + owed_after_dali  # 300 s left for 'dali', whose own budget is smaller
    assert abs(gs._deadline(gs.STEPS[2], plan, gs.STEPS[2:], t_end) - (t_end - owed_after_dali)) < 1
    late = time.time() + owed_after_dali  # nothing unused: the step keeps exactly its own budget
    assert abs(gs._deadline(gs.STEPS[2], plan, gs.STEPS[2:], late) - time.time() - plan["dali"]) < 1

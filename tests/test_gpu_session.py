"""benchmarks/gpu_session.py, which has to work the first time it meets a GPU: its flow at toy sizes on the
CPU (--smoke), the budgets it plans (--dry-run), and a rerun that resumes without measuring anything twice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from engine_fixtures import REPO, env

SCRIPT = REPO / "benchmarks" / "gpu_session.py"


def session(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env(), capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def test_dry_run_lists_every_step_within_the_budget():
    p = session("--dry-run", "--budget-s", "480")
    assert p.returncode == 0, p.stderr
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("  ")]
    names = [ln.split()[0] for ln in lines]
    assert names == ["doctor", "suite", "data", "dali", "torch", "e2e", "models", "suite-slow", "report"]
    assert sum(float(ln.split()[1]) for ln in lines) <= 480


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

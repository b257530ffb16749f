"""Build a report directory from results.jsonl files: REPORT.md, PNG plots, results.csv, comparison.csv.

    build_report(["runs/a", "runs/b"], "reports/x")  ->  reports/x/REPORT.md

Reads nothing but the result rows (cityseg_fast/results/), so a report can be rebuilt
anywhere from committed JSONL files.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cityseg_fast.diskio import atomic_path
from cityseg_fast.paths import check_out_dir
from cityseg_fast.report import bottleneck, compare, plots, scaling, steps, tables, tuning
from cityseg_fast.report.runs import Run, load_runs, tagged_rows
from cityseg_fast.results import SCENARIOS

REPORT_FILE = "REPORT.md"



def write_csv(runs: Sequence[Run], path: Path) -> None:
    columns, records = flat_records(runs)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for rec in records:
            w.writerow(rec)


def _section(title: str, body: str, missing: str) -> str:
    return f"## {title}\n\n{body.strip() if body.strip() else '_' + missing + '_'}\n\n"


def _skipped_lines(runs: Sequence[Run]) -> str:
    """A warning paragraph naming the lines of the results files that were left out ('' when none)."""
    notes = [f"- `{src.path}`: {src.skipped_note()}\n" for run in runs for src in run.sources if src.bad_lines]
    if not notes:
        return ""
    head = "**Warning: lines of these results files are unreadable (torn, or not a valid row) and left out:**"
    return head + "\n\n" + "".join(notes) + "\n"


def _run_warnings(runs: Sequence[Run]) -> str:
    """A warning paragraph for rows left out as unresolved and shard files missing ('' when none)."""
    notes = [f"- `{run.path}`: {note}\n" for run in runs for note in run.warnings()]
    return "**Warning: these runs are incomplete or partly left out:**\n\n" + "".join(notes) + "\n" if notes else ""


def render_markdown(
    runs: Sequence[Run],
    figures: Sequence[plots.Plot],
    title: str = "cityseg_fast benchmark report",
    extra: Sequence[tuple[str, str]] = (),
) -> str:
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    parts = [
        f"# {title}\n\n",
        f"Built {now} by `cityseg report` from {len(runs)} results file(s). Every number below comes from "
        "those JSON lines; `results.csv` holds the same rows flattened (one column per point key and metric).\n\n",
        _skipped_lines(runs),
        _run_warnings(runs),
        _section("Runs", tables.runs_section(runs), "no runs"),
        _section("Environment", tables.env_section(runs), "no environment recorded"),
        _section(
            "Best configuration per resolution",
            tables.best_section(runs),
            "no ok throughput measurements",
        ),
        _section(
            "Bottleneck: loader vs model vs end to end",
            bottleneck.bottleneck_section(runs),
            "no end-to-end (e2e) rows: run `cityseg bench e2e` (or a sweep with e2e points) to see where the time goes",
        ),
    ]
    optional = (
        ("Scaling across ranks", scaling.scaling_section(runs)),
        ("Failures", tables.failures_section(runs)),
        ("Loader tuning", tuning.tuning_section(runs)),
        ("Inside a step", steps.step_section(runs)),
    )
    parts += [_section(heading, body, "") for heading, body in optional if body]  # only where the rows have it
    parts.append("## Throughput, latency, memory and MFU per point\n\n")
    parts.append(
        "img/s is images per second over the timed iterations (warm-up excluded); p50/p90/p99 are per-batch latency "
        "percentiles; spread is IQR ÷ median of the batch times (⚠ = above the benchmark's variance threshold).\n\n"
    )
    any_scenario = False
    for s in (s for s in SCENARIOS.values() if s.kind == "speed"):
        body = tables.scenario_section(runs, s.name)
        if body:
            any_scenario = True
            parts.append(f"### {s.title}\n\n{body}\n")
    if not any_scenario:
        parts.append("_No loader, model, inference or end-to-end rows._\n\n")
    parts.append(
        _section(
            "Accuracy",
            tables.accuracy_section(runs),
            "no accuracy rows (`cityseg bench accuracy` or `cityseg demo`)",
        )
    )
    parts.append("## Plots\n\n")
    for fig in figures:
        if fig.path is not None:
            parts.append(f"### {fig.title}\n\n![{fig.title}]({fig.name})\n\n{fig.caption}\n\n")
    skipped = [f for f in figures if f.path is None and not f.optional]
    if skipped:
        parts.append("Not drawn (no data for them in these results):\n\n")
        parts += [f"- {f.title} (`{f.name}`): {f.reason}.\n" for f in skipped]
        parts.append("\n")
    if len(runs) > 1:
        parts.append(_section("Comparison", compare.compare_section(runs), "nothing to compare"))
    parts += [_section(heading, body, "") for heading, body in extra]
    return "".join(parts)


def build_report(
    run_dirs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    title: str | None = None,
    warn: Callable[[str], None] | None = None,
    extra: Sequence[tuple[str, str]] = (),
    merge: bool = False,
) -> Path:
    """Write OUT/REPORT.md, OUT/*.png, OUT/results.csv (and OUT/comparison.csv for 2+ runs); return REPORT.md.

    `warn` gets one line per results file with unreadable lines, and per run with rows left out as
    unresolved or shard files missing (REPORT.md lists them too); `extra`: (heading, Markdown) sections
    appended at the end (the demo's timeline); merge: all of `run_dirs` are one run (a sweep's shards)."""
    out = check_out_dir(out, "--out")
    runs = load_runs(run_dirs, merge_all=merge)
    for run in runs:
        for src in run.sources:
            if src.bad_lines and warn is not None:
                good = src.lines - len(src.bad_lines)
                warn(f"{src.path}: {src.skipped_note()}; the report keeps its {good} good rows")
        for note in run.warnings():
            if warn is not None:
                warn(f"{run.path}: {note}")
    out.mkdir(parents=True, exist_ok=True)
    # Plots from an earlier build of this directory would be linked by nothing and mislead: remove ours.
    for name in plots.PLOT_FILES:
        (out / name).unlink(missing_ok=True)
    figures = plots.make_plots(runs, out)
    write_csv(runs, out / "results.csv")
    if len(runs) > 1:
        changes, _ = compare.compare_runs(runs)
        compare.write_comparison_csv(changes, out / "comparison.csv")
    else:
        (out / "comparison.csv").unlink(missing_ok=True)
    report = out / REPORT_FILE
    with atomic_path(report) as tmp:
        tmp.write_text(render_markdown(runs, figures, title or "cityseg_fast benchmark report", extra))
    return report


def flat_records(runs: Sequence[Run]) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, records) for results.csv: run, scenario, status, error, point keys, metric keys, the sweep's keys."""
    base = ["run", "scenario", "status", "error", "point_id", "time", "config_hash"]
    pkeys: list[str] = []
    mkeys: list[str] = []
    records = []
    for row in tagged_rows(runs):
        p = dict(row.point)
        rec = {"run": row.run, **{k: getattr(row, k) for k in base[1:]}}
        for k, v in p.items():
            if k not in pkeys:
                pkeys.append(k)
            rec[k] = v
        for k, v in sorted({**row.metrics, **row.sweep}.items()):  # the sweep's keys sit among the metrics
            col = k if k not in p and k not in base else f"metric.{k}"
            if col not in mkeys:
                mkeys.append(col)
            rec[col] = v
        records.append(rec)
    for rec in records:
        for k, v in rec.items():
            if isinstance(v, (list, dict)):
                rec[k] = json.dumps(v)
    return base + pkeys + mkeys, records

"""Run a study: every point of a study config once per seed, one fresh process each, then OUT/report/STUDY.md.

A study config (configs/studies/*.yaml) is a sweep spec of `accuracy` (and `baseline`) points plus a
`study:` block: the seeds, the data to make, a time estimate's prior. The command

  1. makes the data (synthesizes and prepares each image format under OUT/data; skipped where present),
  2. runs every point not already done, once per seed (OUT/results.jsonl, one row per run; train.seed and
     loader.seed both take the seed), one process each, resumable: a killed study goes on where it
     stopped, never repeating a finished run; a run killed half-way restarts from iteration 0,
  3. builds OUT/report/STUDY.md from the rows only: methodology, a table per axis (mIoU mean ± std over
     seeds, img/s, memory), the speed/accuracy front, effect plots, learning curves, per-class IoU,
     example predictions, and conclusions that call a difference a difference only when Welch's t-test
     says it exceeds the seed spread (p < 0.05); where the study has them, a precision table (each dtype
     against fp32), the inference-resolution table and curves (bench.eval_scales) and whether the speed
     settings (torch.compile, channels_last) moved mIoU.

The dry run prices each precision by the config's measured ratio, and bf16 by its emulation cost where the
device emulates it (`cityseg doctor`), and says so.

  cityseg study configs/studies/cpu_synth.yaml --dry-run        # every run, its seed and estimated time
  cityseg study configs/studies/cpu_synth.yaml --out runs/study # run it (rerun the same to resume)
  cityseg study configs/studies/cpu_synth.yaml --out runs/study --report-only

Exit status: 0 when every run is ok, 1 when any failed (the report still shows the rest), 2 when another
process is writing OUT, 75 when SIGTERM / SIGUSR1 stopped it (the runs in flight are stopped, finished rows
kept, no report yet; rerun the same command to resume: a stopped run trains again from iteration 0).
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from cityseg_fast import dirlock
from cityseg_fast.bench.study_runs import (
    Study,
    load_study,
    make_data,
    plan,
    speed_notes,
    total_s,
    write_sweep,
)
from cityseg_fast.bench.sweep import run_sweep
from cityseg_fast.hardware import bf16_support_why, resolve_device
from cityseg_fast.paths import check_out_dir
from cityseg_fast.report.format import fmt_s
from cityseg_fast.report.study_report import build_study_report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="STUDY.yaml", help="study config (see configs/studies/)")
    p.add_argument("--out", metavar="DIR", help="data, results and report (default runs/studies/<name>)")
    p.add_argument(
        "--dry-run", action="store_true", help="list every run with its seed and estimated time; run nothing"
    )
    p.add_argument(
        "--report-only", action="store_true", help="rebuild OUT/report/STUDY.md from OUT/results.jsonl only"
    )


def print_plan(study, console) -> None:
    bf16, why = bf16_support_why(resolve_device())
    runs = plan(study, bf16)
    t = Table(title=f"study '{study.name}': {len(runs)} runs, seeds {study.seeds}")
    for col in ("#", "scenario", "point", "seed", "estimate", "status"):
        t.add_column(col, justify="right" if col in ("#", "seed", "estimate") else "left")
    for r in runs:
        seed = "-" if r.seed is None else str(r.seed)
        est = fmt_s(r.estimate_s) + ("" if r.calibrated else "*")
        t.add_row(str(r.index), r.scenario, r.label, seed, est, "[green]done[/]" if r.done else "to run")
    console.print(t)
    done, prior = sum(r.done for r in runs), study.estimate
    console.print(
        f"{done}/{len(runs)} done; {fmt_s(total_s(runs))} estimated for the rest "
        f"({fmt_s(total_s(runs, todo_only=False))} for all). * = at the config's prior "
        f"({prior.gflop_per_s:g} GFLOP/s + {prior.overhead_s:g} s per run); the others at the rate that "
        "this study's finished runs of the same model measured."
    )
    for line in speed_notes(study, runs, bf16, why):
        console.print(line)


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    study = load_study(args.config, args.out)
    check_out_dir(study.out, "--out")
    if args.dry_run:
        print_plan(study, console)
        return 0
    with dirlock.held(study.out, "cityseg study"):  # one study writes OUT at a time (its sweep nests in it)
        counts = {} if args.report_only else _run_study(study, console)
        report = build_study_report(
            study.out, study.out / "report", title=study.title, description=study.description
        )
    console.print(f"report: {report}")
    return 1 if counts.get("error") else 0


def _run_study(study: Study, console: Console) -> dict[str, int]:
    """Make the data and run every point not done; the sweep's counts. A stop signal ends it with
    Preempted (exit 75) before the report: a rerun resumes."""
    write_sweep(study)
    for line in make_data(study, progress=console.is_terminal):
        console.print(line)
    console.print(f"study '{study.name}': {len(study.spec.points)} runs -> {study.out}/results.jsonl")
    counts = run_sweep(study.spec, study.out, live=console.is_terminal)
    console.print("runs: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return counts

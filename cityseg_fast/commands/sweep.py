"""Run a benchmark grid from a sweep YAML: one fresh subprocess per point, rows appended to OUT/results.jsonl.

Rerunning the same command skips points already measured (ok, or oom unless --retry-oom), so a
sweep stopped by Ctrl-C or a kill resumes where it was, with no duplicate rows. Failed points are
recorded as `error` rows with their one-line message and the sweep goes on. Exit status: 0 when
every point is ok / oom / skipped, 1 when any point failed.

  cityseg sweep configs/sweeps/cpu_quick.yaml --out runs/cpu_quick
  cityseg sweep configs/sweeps/gpu_full.yaml --dry-run          # list the points only
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SWEEP.yaml", help="sweep spec (see configs/sweeps/)")
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/sweeps/<name>)")
    p.add_argument("--dry-run", action="store_true", help="print the expanded points and exit")
    p.add_argument("--retry-oom", action="store_true", help="re-measure points recorded as oom")
    p.add_argument(
        "--time-budget",
        type=float,
        metavar="S",
        help="start no new point after S seconds; a rerun resumes with the rest",
    )
    p.add_argument(
        "--only",
        metavar="SCENARIO",
        action="append",
        default=[],
        help="run only these scenarios (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from cityseg_fast.bench.sweep import default_out_dir, load_spec, run_sweep
    from cityseg_fast.errors import UserError
    from cityseg_fast.results import SCENARIOS

    unknown = [s for s in args.only if s not in SCENARIOS]
    if unknown:
        raise UserError(f"--only {unknown[0]}: unknown scenario; valid: {', '.join(SCENARIOS)}")
    spec = load_spec(args.spec)
    out = args.out or str(default_out_dir(spec))
    spec = load_spec(args.spec, out)
    if args.only:
        spec.points = [sp for sp in spec.points if sp.scenario in args.only]
    console = Console(stderr=True)
    if args.dry_run:
        for i, sp in enumerate(spec.points, 1):
            console.print(f"{i:4d}  {sp.scenario:9s} {sp.point}")
        console.print(f"{len(spec.points)} points ({spec.skipped_duplicates} duplicate combinations folded)")
        return 0
    console.print(f"sweep '{spec.name}': {len(spec.points)} points -> {out}/results.jsonl")
    counts = run_sweep(spec, out, retry_oom=args.retry_oom, time_budget_s=args.time_budget)
    console.print("done: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f"  ({out}/results.jsonl)")
    return 1 if counts.get("error") else 0

"""Run a benchmark grid from a sweep YAML: one fresh subprocess per point, rows appended to OUT/results.jsonl.

Rerunning the same command skips points already measured (ok, or oom unless --retry-oom), so a
sweep stopped by Ctrl-C or a kill resumes where it was, with no duplicate rows. Failed points are
recorded as `error` rows with their one-line message and the sweep goes on. SIGTERM or SIGUSR1 (a
cluster's time limit) stops the points running, without a row for them (a training point saves first),
and exits 75: rerun the same command to resume. Exit status: 0 when every point is ok / oom / skipped, 1
when any point failed, 2 for a bad spec or option, or another sweep writing the same results file in OUT
(nothing run), 75 when stopped by a signal.

Every ${VAR} of the spec is resolved before anything runs: an unset one is an error, unless it only
feeds data.root of points that read no data (model, infer), which then run without a dataset. Config
files a spec names are found beside it or under the repository root, from any working directory.

Many GPUs, many nodes:
  --devices 0,1,2,3   single-GPU points run side by side, one per device (CUDA_VISIBLE_DEVICES); a
                      world-size-N point waits for N free devices and runs on them (torchrun). Each row
                      records its devices (metrics.visible_devices). `--devices all`: every visible GPU
                      (those of CUDA_VISIBLE_DEVICES when it is set, as in a Slurm job). Points side by
                      side share the host's CPU cores: measure loader and e2e points alone (without
                      --devices, or in a sweep of their own) when their absolute speed matters.
  --shard I/N         run only shard I (0-based) of N: a point belongs to shard int(point_id, 16) % N, so
                      the N shards are disjoint and complete and a point's shard depends on its id alone. Rows go to
                      OUT/results.shard-I-of-N.jsonl, so shards can share OUT (or be copied into one);
                      `cityseg report OUT` reads every results file of OUT as one run, and
                      `cityseg report --merge DIR1 DIR2 ...` merges shards kept in separate folders.

  cityseg sweep configs/sweeps/cpu_quick.yaml --out runs/cpu_quick
  cityseg sweep configs/sweeps/gpu_full.yaml --dry-run          # list the points only
  cityseg sweep configs/sweeps/gpu_full.yaml --devices 0,1,2,3,4,5,6,7 --out runs/gpu_full
  cityseg sweep configs/sweeps/gpu_full.yaml --shard $SLURM_ARRAY_TASK_ID/4 --devices all --out runs/gpu_full
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from rich.console import Console

from cityseg_fast.bench.sweep import check_devices, run_sweep
from cityseg_fast.bench.sweep_spec import default_out_dir, load_spec, place_accuracy_runs, select_shard
from cityseg_fast.errors import UserError
from cityseg_fast.results import SCENARIOS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SWEEP.yaml", help="sweep spec (see configs/sweeps/); relative paths are also looked up under the repository root")
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/sweeps/<name>)")
    p.add_argument("--dry-run", action="store_true", help="print the expanded points (of this shard) and exit")
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
    p.add_argument("--devices", metavar="IDS", help="comma-separated GPU ids (or UUIDs) to run points on side by side, e.g. 0,1,2,3; all: every visible GPU")
    p.add_argument("--shard", metavar="I/N", help="run shard I (0..N-1) of N into OUT/results.shard-I-of-N.jsonl")


def parse_devices(text: str | None) -> list[str] | None:
    """'0,1,2' -> ['0', '1', '2'] (ids or GPU-/MIG- UUIDs, each once), 'all' -> every visible device; None
    when not given. Under a CUDA_VISIBLE_DEVICES of its own (a Slurm job's GPUs) the sweep may use only
    those: a child's CUDA_VISIBLE_DEVICES replaces it, so an id outside it would reach another job's GPU."""
    if text is None:
        return None

    visible = [t for t in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if t.strip()]
    if text == "all":
        ids = visible or _cuda_ids()
        if not ids:
            raise UserError("--devices all: no CUDA device is visible here")
        return ids
    ids = [t.strip() for t in text.split(",")]
    if not all(re.fullmatch(r"[A-Za-z0-9_-]+", t) for t in ids):
        raise UserError(f"--devices '{text}': expected comma-separated device ids, e.g. 0,1,2,3 (or all)")
    twice = sorted({t for t in ids if ids.count(t) > 1})
    if twice:
        raise UserError(f"--devices '{text}': device {twice[0]} is listed twice")
    outside = [t for t in ids if visible and t not in visible]
    if outside:
        raise UserError(
            f"--devices '{text}': device {outside[0]} is not in CUDA_VISIBLE_DEVICES={','.join(visible)} "
            "(the devices this process may use)"
        )
    return ids


def _cuda_ids() -> list[str]:
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'1/4' -> (1, 4): shard index 0..N-1 of N; None when not given."""
    if text is None:
        return None

    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise UserError(f"--shard '{text}': expected I/N with 0 <= I < N (shard I of N, e.g. 0/4 ... 3/4)")
    return int(m.group(1)), int(m.group(2))


def run(args: argparse.Namespace) -> int:
    unknown = [s for s in args.only if s not in SCENARIOS]
    if unknown:
        raise UserError(f"--only {unknown[0]}: unknown scenario; valid: {', '.join(SCENARIOS)}")
    devices, shard = parse_devices(args.devices), parse_shard(args.shard)
    spec = load_spec(args.spec, only=args.only)
    total = len(spec.points)
    if shard is not None:
        select_shard(spec, *shard)
    check_devices(spec, devices)
    out = args.out or str(default_out_dir(spec))
    place_accuracy_runs(spec, Path(out))
    console = Console(stderr=True)
    where = f"shard {shard[0]}/{shard[1]}: {len(spec.points)} of {total} points" if shard else f"{total} points"
    if args.dry_run:
        for i, sp in enumerate(spec.points, 1):
            console.print(f"{i:4d}  {sp.scenario:9s} {sp.point}")
        console.print(f"{where} ({spec.skipped_duplicates} duplicate combinations folded)")
        return 0
    on = f" on devices {','.join(devices)}" if devices else ""
    console.print(f"sweep '{spec.name}' {where}{on} -> {out}/{spec.results_file}")
    counts = run_sweep(spec, out, retry_oom=args.retry_oom, time_budget_s=args.time_budget, devices=devices)
    console.print("done: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f"  ({out}/{spec.results_file})")
    return 1 if counts.get("error") else 0

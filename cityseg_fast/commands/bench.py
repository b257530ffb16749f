"""Benchmark one point of a scenario and print (or --json) its result row.

Scenarios (the table in cityseg_fast/results/scenarios.py):
  loader    the data loader alone: images/s, batch latency percentiles, CPU ms per image
  model     engine.step.train_step on synthetic on-device batches, then eval-mode inference
  infer     eval-mode forward: latency at batch 1, throughput at loader.batch_size
  e2e       the real loader (loader.backend) feeding the same train step
  accuracy  train train.iters iterations, then val mIoU
  baseline  the per-pixel colour classifier on the same data (what colour alone can do)

Every option is a shortcut for a config override (`--crop 512x1024` is data.crop=[512,1024]), so a
sweep can express any point a command line can. `--append FILE` appends the row to a results.jsonl
(checked before measuring); with bench.profile=true the profile's trace goes to FILE's folder/traces/
(unless bench.trace_dir says otherwise; without --append, runs/traces/). Exit status: 0 ok, 3 out of
memory (the row says oom), 2 bad input. An accuracy point with bench.eval_scales records (and prints) its
row, then one row per scale (results.rows_for).

  cityseg bench loader --data DIR --loader dali --decode-only --json
  cityseg bench model --config configs/bench/gpu.yaml precision.dtype=bf16 --append runs/x/results.jsonl
  cityseg bench model bench.profile=true bench.split_phases=true --append runs/x/results.jsonl
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cityseg_fast import jsonsafe
from cityseg_fast.bench.runners import run_scenario
from cityseg_fast.commands.common import add_config_args, config_from_args
from cityseg_fast.config import CHOICES, parse_hw, replace
from cityseg_fast.engine.dist import cleanup
from cityseg_fast.errors import Preempted
from cityseg_fast.paths import check_append_file
from cityseg_fast.results import SCENARIOS, Row, append_row, rows_for

# --flag -> (config key, how the value is written); a flag left out sets nothing
SHORTCUTS: dict[str, tuple[str, Any]] = {
    "data": ("data.root", str),
    "loader": ("loader.backend", str),
    "device": ("loader.device", str),
    "batch_size": ("loader.batch_size", int),
    "iters": ("bench.iters", int),
    "warmup": ("bench.warmup", int),
    "split": ("data.train_split", str),
    "roi": ("loader.roi", str),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="scenario", metavar="SCENARIO", required=True)
    for s in SCENARIOS.values():
        sp = sub.add_parser(s.name, help=s.what, description=f"{s.title}: {s.what}.")
        _scenario_arguments(sp)


def _scenario_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="DIR", help="dataset root (raw Cityscapes or prepared); sets data.root")
    p.add_argument("--loader", choices=CHOICES["loader.backend"], help="sets loader.backend")
    p.add_argument("--device", choices=CHOICES["loader.device"], help="where decode runs (dali; torch: gpu = its nvJPEG loader); sets loader.device")
    p.add_argument("--crop", metavar="HxW", help="training crop / input size, e.g. 512x1024; sets data.crop")
    p.add_argument("--batch-size", type=int, metavar="N", help="sets loader.batch_size")
    p.add_argument("--iters", type=int, metavar="K", help="timed iterations; sets bench.iters")
    p.add_argument("--warmup", type=int, metavar="W", help="untimed iterations first; sets bench.warmup")
    p.add_argument("--split", help="the split the training loader reads; sets data.train_split")
    p.add_argument("--decode-only", action="store_true", help="full-frame decode only; sets loader.decode_only=true")
    p.add_argument("--roi", choices=CHOICES["loader.roi"], help="dali: decode the crop window or the frame; sets loader.roi")
    p.add_argument("--json", action="store_true", help="print the result row as one JSON line")
    p.add_argument("--append", "--out", dest="append", metavar="FILE", help="append the result row to this results.jsonl")
    p.add_argument("--round", type=int, metavar="R",
                   help="this measurement's round (a sweep's `repeats`): part of the point's identity")  # fmt: skip
    add_config_args(p)


def shortcut_overrides(args: argparse.Namespace) -> list[str]:
    """The overrides the shortcut flags stand for (after the positional ones: the flags win)."""
    out = []
    for name, (key, kind) in SHORTCUTS.items():
        value = getattr(args, name, None)
        if value is not None:  # `is not None`: a 0 must reach the config's range check
            out.append(f"{key}={kind(value)}")
    if getattr(args, "crop", None):
        h, w = parse_hw(args.crop, "--crop")
        out.append(f"data.crop=[{h},{w}]")
    if getattr(args, "decode_only", False):
        out.append("loader.decode_only=true")
    return out


def run(args: argparse.Namespace) -> int:
    scenario = args.scenario
    if args.append:  # before measuring: a point measured and then not written is time thrown away
        check_append_file(args.append, "--append")
    cfg = config_from_args(args, shortcut_overrides(args))
    if cfg.bench.profile and args.append and not cfg.bench.trace_dir:  # the trace beside the rows it explains
        cfg = replace(cfg, bench={"trace_dir": str(Path(args.append).resolve().parent / "traces")})
    if scenario == "accuracy" and cfg.train.out_dir == "runs/default":
        cfg = replace(cfg, train={"out_dir": tempfile.mkdtemp(prefix="cityseg-accuracy-")})
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    metrics, failure = {}, None
    try:
        metrics = run_scenario(scenario, cfg)
    except Preempted:  # an accuracy point stopped by SIGTERM / SIGUSR1 after saving: no row, a rerun resumes
        raise
    except Exception as e:  # a failure is a result too: recorded, printed, then reported by exit status
        failure = e
    cleanup(failed=failure is not None)  # under torchrun: leave the process group before exiting
    extra = None if args.round is None else {"round": args.round}
    metrics = metrics or getattr(failure, "row_metrics", None) or {}  # what a failure left (an OOM's snapshot)
    rows = rows_for(scenario, cfg, metrics, error=failure, world_size=world, point=extra)  # + one per eval scale
    if rank == 0:
        for r in rows:
            if args.append:
                append_row(args.append, r)
            print(jsonsafe.dumps(r.to_json(), sort_keys=True, default=str)) if args.json else print_row(r)
    row = rows[0]
    if failure is None:
        return 0
    if row.status == "oom":
        print(f"cityseg bench {scenario}: out of memory: {row.error}", file=sys.stderr)
        return 3
    raise failure  # a UserError becomes one line in cli.main; anything else keeps its traceback


def print_row(row: Row) -> None:
    """The row as a two-column table: the point, then the scenario's own metrics, then the rest."""

    t = Table(title=f"cityseg bench {row.scenario}  [{row.status}]", show_header=False)
    for k, v in row.point.items():
        t.add_row(f"[dim]{k}[/dim]", str(v))
    if row.error:
        t.add_row("[red]error[/red]", row.error)
    first = [k for k in SCENARIOS[row.scenario].metrics if k in row.metrics]
    for k in first + [k for k in row.metrics if k not in first]:
        v = row.metrics[k]
        if v is not None and not isinstance(v, (list, dict)):
            t.add_row(f"[bold]{k}[/bold]" if k in first else k, f"{v:.4g}" if isinstance(v, float) else str(v))
    Console(file=sys.stdout).print(t)

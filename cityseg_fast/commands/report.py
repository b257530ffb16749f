"""Build a Markdown report with PNG plots from one or more run directories (their results files only).

  cityseg report runs/sweep --out reports/mine
  cityseg report runs/before runs/after --out reports/compare   # adds a comparison, first run = baseline
  cityseg report --merge node0/gpu_full node1/gpu_full --out reports/gpu_full   # shards kept apart: one run

A run directory is one run, whatever results files it holds: its results.jsonl and the
results.shard-I-of-N.jsonl files of a sharded sweep (`cityseg sweep --shard I/N`) are merged (the
latest row per point), and a shard file missing from a complete set is named on stderr and in the
report. Several directories are a comparison, unless --merge makes them one run (shards written on
separate nodes); a merged report equals the one an unsharded sweep gives (same rows, same derived
metrics). Rows recorded under an unset ${VAR} by older sweeps are left out, and counted.

Writes OUT/REPORT.md (environment, throughput / latency / memory / MFU tables, best configuration per
resolution, loader-vs-model-vs-e2e bottlenecks, accuracy), OUT/*.png, OUT/results.csv, and with two or
more runs OUT/comparison.csv: ratios per matching point with regressions beyond noise marked.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cityseg_fast.report.build import build_report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR",
        help="a directory holding results.jsonl and/or results.shard-I-of-N.jsonl files (or one file)",
    )
    p.add_argument(
        "--out", metavar="DIR", default=None, help="report directory (default: FIRST_RUN_DIR/report)"
    )
    p.add_argument("--title", default=None, help="report title")
    p.add_argument(
        "--merge", action="store_true", help="the run directories are one run (a sweep's shards), not a comparison"
    )


def run(args: argparse.Namespace) -> int:
    first = Path(args.runs[0])
    out = Path(args.out) if args.out else (first if first.is_dir() else first.parent) / "report"
    report = build_report(
        args.runs,
        out,
        title=args.title,
        warn=lambda line: print(f"warning: {line}", file=sys.stderr),
        merge=args.merge,
    )
    print(f"report: {report}")
    return 0

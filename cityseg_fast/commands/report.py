"""Build a Markdown report with PNG plots from one or more run directories (their results.jsonl only).

  cityseg report runs/sweep --out reports/mine
  cityseg report runs/before runs/after --out reports/compare   # adds a comparison, first run = baseline

Writes OUT/REPORT.md (environment, throughput / latency / memory / MFU tables, best configuration per
resolution, loader-vs-model-vs-e2e bottlenecks, accuracy), OUT/*.png, OUT/results.csv, and with two or
more runs OUT/comparison.csv: ratios per matching point with regressions beyond noise marked.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="a directory holding results.jsonl (or the file itself)"
    )
    p.add_argument(
        "--out", metavar="DIR", default=None, help="report directory (default: FIRST_RUN_DIR/report)"
    )
    p.add_argument("--title", default=None, help="report title")


def run(args: argparse.Namespace) -> int:
    import sys

    from cityseg_fast.report.build import build_report

    first = Path(args.runs[0])
    out = Path(args.out) if args.out else (first if first.is_dir() else first.parent) / "report"
    report = build_report(
        args.runs, out, title=args.title, warn=lambda line: print(f"warning: {line}", file=sys.stderr)
    )
    print(f"report: {report}")
    return 0

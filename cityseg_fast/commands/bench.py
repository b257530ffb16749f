"""Benchmark one scenario and print (or --json) its measurements.

loader    the data loader alone: images/s, batch latency percentiles, CPU utilisation
model     train step (and inference) on a synthetic on-device batch
e2e       the real loader feeding the same train step
infer     latency at batch 1 and throughput at batch N
accuracy  train K iterations, then evaluate mIoU

Every scenario takes `--append FILE`: the result row is appended to that results.jsonl (checked before
measuring: a directory, or a file that is not JSON lines, is refused).
"""

from __future__ import annotations

import argparse
import importlib

# scenario -> (module defining add_arguments(p) and run(args), help)
SCENARIOS: dict[str, tuple[str, str]] = {
    "loader": (
        "cityseg_fast.bench.loader_bench",
        "loader-only throughput and latency (dali | torch | synthetic)",
    ),
    "model": ("cityseg_fast.bench.scenarios", "model-only train step and inference on a synthetic batch"),
    "e2e": ("cityseg_fast.bench.scenarios", "end to end: the real loader and the same train step"),
    "infer": ("cityseg_fast.bench.scenarios", "inference latency (batch 1) and throughput (batch N)"),
    "accuracy": ("cityseg_fast.bench.scenarios", "train K iterations and evaluate mIoU"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="scenario", metavar="SCENARIO", required=True)
    for name, (module, help_text) in SCENARIOS.items():
        mod = importlib.import_module(module)
        sp = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(sp)
        sp.set_defaults(scenario_func=mod.run)


def run(args: argparse.Namespace) -> int:
    from cityseg_fast.paths import check_append_file

    if args.append:  # before measuring: a point measured and then not written is time thrown away
        check_append_file(args.append, "--append/--out" if args.scenario == "loader" else "--append")
    return args.scenario_func(args)

"""Honesty check: does the harness's images/s agree with an outside, whole-process measurement?

For one fixed point, run `cityseg bench e2e` under /usr/bin/time with N and with 2N timed iterations
(same warm-up). Everything that does not scale with the iteration count (interpreter and torch
start-up, model build, warm-up, FLOP counting, result writing) cancels in the difference, so

    external images/s = N x batch / (wall(2N) - wall(N))

measures the steady state from outside the process, with no trust in the harness's own clocks. The
harness's images/s (from its synchronised wall clock over the timed region) should agree within 10%.
Each length is run `--repeats` times, alternating, and medians are compared (the machine is shared).
The bench rows go to OUT/results.jsonl, the run's summary to OUT/honesty.jsonl (one line per run).

    python benchmarks/run_honesty.py --iters 150 --out reports/cpu-honesty
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_once(overrides: list[str], iters: int, rows: Path) -> tuple[float, float]:
    """(external wall seconds from /usr/bin/time, harness images/s) of one whole `cityseg bench e2e` process."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        cmd = [
            sys.executable,
            "-m",
            "cityseg_fast",
            "bench",
            "e2e",
            *overrides,
            f"bench.iters={iters}",
            "--json",
            "--append",
            str(rows),
        ]
        timed = ["/usr/bin/time", "-f", "%e", "-o", tf.name, *cmd] if Path("/usr/bin/time").exists() else cmd
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        t0 = time.perf_counter()
        out = subprocess.run(timed, capture_output=True, text=True, env=env, check=False)
        wall = time.perf_counter() - t0
        if out.returncode != 0:
            raise SystemExit(f"bench failed ({out.returncode}): {out.stderr.strip().splitlines()[-1:]}")
        if timed is not cmd:
            wall = float(Path(tf.name).read_text().strip().splitlines()[-1])
    row = json.loads(out.stdout.strip().splitlines()[-1])
    return wall, row["metrics"]["images_per_s"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=20, help="N: the short run's timed iterations (long run: 2N)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each length (alternating)")
    p.add_argument("--out", default="reports/cpu-honesty", help="folder for honesty.jsonl and results.jsonl")
    p.add_argument(
        "overrides", nargs="*", help="config overrides of the point (defaults: tiny U-Net, synthetic)"
    )
    args = p.parse_args(argv)
    point = [
        "model.name=unet_s16",
        "data.crop=[64,128]",
        "loader.batch_size=4",
        "loader.backend=synthetic",
        "precision.dtype=fp32",
        "bench.warmup=3",
        *args.overrides,
    ]
    batch = int(next(o for o in reversed(point) if o.startswith("loader.batch_size=")).split("=")[1])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = out / "results.jsonl"
    short, long_, harness = [], [], []
    for r in range(args.repeats):
        for n, sink in ((args.iters, short), (2 * args.iters, long_)):
            wall, ips = run_once(point, n, rows)
            sink.append(wall)
            harness.append(ips)
            print(
                f"repeat {r}: iters={n:4d}  process wall {wall:7.2f} s  harness {ips:8.2f} img/s", flush=True
            )
    extra_s = statistics.median(long_) - statistics.median(short)
    external = args.iters * batch / extra_s if extra_s > 0 else float("nan")
    h = statistics.median(harness)
    # Per-pair estimates show how much the machine moved between runs (the spread to read the ratio against).
    pairs = [args.iters * batch / (b - a) if b > a else None for a, b in zip(short, long_, strict=True)]
    result = {
        "point": point,
        "n_iters": args.iters,
        "repeats": args.repeats,
        "wall_s_n": short,
        "wall_s_2n": long_,
        "harness_images_per_s": harness,
        "harness_median_images_per_s": h,
        "external_images_per_s": external,
        "external_images_per_s_per_pair": pairs,
        "ratio_harness_over_external": h / external,
        "agree_within_10pct": abs(h / external - 1) <= 0.10,
        "measured_with": "/usr/bin/time -f %e"
        if Path("/usr/bin/time").exists()
        else "perf_counter around the process",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with open(out / "honesty.jsonl", "a") as f:  # one line per run: earlier runs stay beside it
        f.write(json.dumps(result) + "\n")
    print(
        f"harness {h:.2f} img/s vs external {external:.2f} img/s: ratio {h / external:.3f} "
        f"({'agree' if result['agree_within_10pct'] else 'DISAGREE'} within 10%)"
    )
    return 0 if result["agree_within_10pct"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

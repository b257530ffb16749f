"""How `cityseg report` scales: N distinct rows made from the CPU demo's, timed with their peak memory.

    python benchmarks/report_scale.py --rows 10000                          # this checkout
    python benchmarks/report_scale.py --rows 10000 --baseline-rev ca54266   # and that revision, side by side

The rows are the loader, model and e2e rows of reports/cpu-demo/results.jsonl, copied until there are N, each
copy a distinct point of a sweep as a real one would vary it: resolution x (the data's JPEG quality and size
for loader and e2e points, model.base_width for model and e2e points), the e2e rows' companions
renamed with them (so every e2e row still finds its loader and model rows), images/s and latencies scaled
by a fixed pseudo-random factor per copy. Each revision builds the report from the same file in a fresh
process (`python -m cityseg_fast report`, the revision checked out with `git worktree` into a temporary
folder); the table gives its wall time, its peak RSS (the child's own, from wait4), the largest PNG and the
size of REPORT.md. Not a test: numbers measured while other work runs are noise (run it on a quiet machine).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "reports" / "cpu-demo" / "results.jsonl"
SCENARIOS = ("loader", "model", "e2e")
RESOLUTIONS = ([64, 128], [128, 256], [256, 512], [384, 768], [512, 1024], [768, 1536])
MODEL_KEYS = ("model", "base_width", "dtype", "channels_last", "compile")


def _copy_point(scenario: str, point: dict, i: int) -> dict:
    """Copy `i` of a point: its own resolution and (data tags / model width), so every copy is a new point and
    an e2e copy's loader and model companions are the same copy of theirs."""
    p = dict(point)
    k = i // len(RESOLUTIONS)
    p["resolution"] = RESOLUTIONS[i % len(RESOLUTIONS)]
    if scenario in ("loader", "e2e"):
        p["quality"] = 95 - k % 45
        p["data_size"] = [1024, 2048 - 16 * (k // 45)]  # a dataset tag: after 45 qualities, another size
    if scenario in ("model", "e2e"):
        p["base_width"] = 4 + k
    return p


def make_rows(n: int, out: Path) -> Path:
    """Write `n` rows to out/results.jsonl (see the module docstring); returns the file."""
    sys.path.insert(0, str(REPO))
    from cityseg_fast.results.schema import point_id

    base = [json.loads(line) for line in DEMO.read_text().splitlines() if line.strip()]
    base = [r for r in base if r["scenario"] in SCENARIOS]
    rng = random.Random(0)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.jsonl"
    with open(path, "w") as f:
        written, i = 0, 0
        while written < n:
            factor = rng.lognormvariate(0, 0.5)
            new_ids = {}
            rows = []
            for r in base:
                point = _copy_point(r["scenario"], r["point"], i)
                new_ids[r["point_id"]] = point_id(r["scenario"], point)
                metrics = {k: (v * factor if k == "images_per_s" else v / factor if k.startswith("latency_ms")
                               else v) if isinstance(v, float) else v for k, v in r["metrics"].items()}  # fmt: skip
                rows.append({**r, "point": point, "point_id": new_ids[r["point_id"]], "metrics": metrics})
            for r in rows:
                r["companions"] = {role: new_ids.get(pid, pid) for role, pid in (r.get("companions") or {}).items()}
                if written < n:
                    f.write(json.dumps(r, sort_keys=True) + "\n")
                    written += 1
            i += 1
    return path


def time_report(checkout: Path, results: Path, out: Path) -> dict:
    """`python -m cityseg_fast report` from `checkout` on `results`: wall s, peak RSS MiB, output sizes."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "MPLBACKEND": "Agg"}
    cmd = [sys.executable, "-m", "cityseg_fast", "report", str(results.parent), "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=checkout, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{checkout}: cityseg report failed ({proc.returncode}):\n{err[-2000:]}")
    pngs = sorted(out.glob("*.png"), key=lambda p: p.stat().st_size)
    return {
        "wall_s": wall,
        "peak_rss_mib": usage.ru_maxrss / 1024,  # KiB on Linux
        "largest_png": f"{pngs[-1].name} {pngs[-1].stat().st_size / 2**20:.2f} MiB" if pngs else "-",
        "report_md_kib": (out / "REPORT.md").stat().st_size / 1024,
    }


def baseline_checkout(rev: str, where: Path) -> Path:
    """`rev` checked out (detached) in a git worktree under `where`."""
    path = where / f"rev-{rev}"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--force", str(path), rev],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[10_000], help="row counts to time (default 10000)")
    p.add_argument("--baseline-rev", metavar="REV", help="also time this git revision on the same rows")
    p.add_argument("--keep", metavar="DIR", help="keep the rows and reports here (default: a temporary folder)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="report-scale-") as tmp:
        work = Path(args.keep or tmp)
        checkouts = [("this checkout", REPO)]
        try:
            if args.baseline_rev:
                checkouts.append((args.baseline_rev, baseline_checkout(args.baseline_rev, Path(tmp))))
            print(f"{'revision':<16} {'rows':>6} {'wall s':>8} {'peak RSS MiB':>13} {'REPORT.md KiB':>14}  largest PNG")
            for n in args.rows:
                results = make_rows(n, work / f"rows-{n}")
                for name, checkout in checkouts:
                    r = time_report(checkout, results, work / f"report-{n}-{checkout.name}")
                    print(f"{name:<16} {n:>6} {r['wall_s']:>8.1f} {r['peak_rss_mib']:>13.0f} "
                          f"{r['report_md_kib']:>14.0f}  {r['largest_png']}", flush=True)  # fmt: skip
        finally:
            for _, checkout in checkouts[1:]:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(checkout)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""reports/cpu-scaling/: gloo at world size 1 and 2 on this machine, and one point with a rank slowed on purpose.

    python benchmarks/run_scaling.py --out reports/cpu-scaling          # ~8 min on 2 quiet cores; resumable

1. A small prepared dataset under --work (`cityseg synth` + `cityseg prepare`, 32 train frames of 256x512,
   JPEG q95), unless it is there.
2. `cityseg sweep configs/sweeps/scaling_cpu.yaml` into --work/runs with OMP_NUM_THREADS=1: the model scenario
   (unet_s16, fcn8s_vgg16) and e2e with the torch DataLoader at world size 1 and 2, 3 rounds (see the spec).
3. The sweep's e2e point at world size 2 once more, with rank 1's loader slowed by --sleep per batch
   (benchmarks/slow_rank.py): its row gets `slowed_rank` and `rank_sleep_ms` in its point (another point,
   the same world-size-1 base), so the scaling table shows it beside the plain one, its straggler named.
4. The rows copied to --out/results.jsonl, and `cityseg report` of that file into --out (so the committed
   file rebuilds the committed report).

A rerun skips what is done (the sweep's points, the slowed row). Numbers measured while other work runs are
noise: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "configs" / "sweeps" / "scaling_cpu.yaml"
SLOW = REPO / "benchmarks" / "slow_rank.py"
sys.path.insert(0, str(REPO))

from cityseg_fast.bench.sweep_spec import load_spec  # noqa: E402
from cityseg_fast.config import dump_config  # noqa: E402
from cityseg_fast.results import Row, append_row, point_id, read_rows  # noqa: E402


def _cityseg(*args: str, env: dict[str, str]) -> None:
    print("+ cityseg " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "cityseg_fast", *args], cwd=REPO, env=env, check=True)


def make_data(work: Path, env: dict[str, str]) -> Path:
    data = work / "data"
    if not (data / "manifest.json").exists():
        _cityseg("synth", "--out", str(work / "synth"), "--train", "32", "--val", "4", "--test", "0",
                 "--size", "256x512", env=env)  # fmt: skip
        _cityseg("prepare", "--src", str(work / "synth"), "--out", str(data), "--image-format", "jpeg",
                 "--quality", "95", env=env)  # fmt: skip
    return data


def slowed_row(runs: Path, sleep_s: float, env: dict[str, str]) -> None:
    """The spec's e2e point at world size 2 with rank 1's loader slowed by `sleep_s`, appended as its own point."""
    extra = {"slowed_rank": 1, "rank_sleep_ms": round(sleep_s * 1e3)}
    results = runs / "results.jsonl"
    sp = next(p for p in load_spec(SPEC).points if p.scenario == "e2e" and p.world_size == 2 and not p.round)
    done = [r for r in read_rows(results) if r.ok and all(r.point.get(k) == v for k, v in extra.items())]
    if done:
        print(f"slowed point already measured: {done[-1].point_id}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "e2e.yaml"
        dump_config(sp.cfg, cfg)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SLOW),
               "--rank", "1", "--sleep", str(sleep_s), "--", "bench", "e2e", "--config", str(cfg), "--json"]  # fmt: skip
        print("+ " + " ".join(cmd), flush=True)
        out = subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, text=True).stdout
    row = Row.from_json(json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1]))
    point = {**row.point, **extra}
    append_row(results, dataclasses.replace(row, point=point, point_id=point_id("e2e", point)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="reports/cpu-scaling", help="the report folder (default reports/cpu-scaling)")
    p.add_argument("--work", default="/tmp/cityseg_scaling", help="data and runs (default /tmp/cityseg_scaling)")
    p.add_argument("--sleep", type=float, default=0.25, help="seconds added to each of rank 1's batches (0.25)")
    args = p.parse_args(argv)
    work = Path(args.work)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env["CITYSEG_SCALING_DATA"] = os.environ["CITYSEG_SCALING_DATA"] = str(make_data(work, env))  # the spec reads it
    _cityseg("sweep", str(SPEC), "--out", str(work / "runs"), env=env)
    slowed_row(work / "runs", args.sleep, env)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(work / "runs" / "results.jsonl", out / "results.jsonl")
    _cityseg("report", str(out / "results.jsonl"), "--out", str(out), "--title",
             "cityseg_fast on 2 CPU cores: scaling from 1 to 2 gloo ranks", env=env)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

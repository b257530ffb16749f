"""Accuracy on the synthetic scenes: train the shipped CPU configs, report val mIoU and wall time, and
compare with the best per-pixel colour classifier (what colour alone can reach).

    PYTHONPATH=. python benchmarks/run_accuracy.py --out reports/cpu-accuracy
    PYTHONPATH=. python benchmarks/run_accuracy.py --configs configs/train/unet_cpu_synth.yaml train.iters=50

Writes OUT/results.jsonl (schema rows, scenario "accuracy"; the colour baseline is a row too).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# One intra-op thread: on a shared 2-core machine, 2 OpenMP threads per process run several times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from cityseg_fast.bench.runners import run_scenario  # noqa: E402
from cityseg_fast.config import load_config  # noqa: E402
from cityseg_fast.environment import collect_env  # noqa: E402
from cityseg_fast.results import append_row, row_for  # noqa: E402

DEFAULT_CONFIGS = ["configs/train/unet_cpu_synth.yaml", "configs/train/fcn_cpu_synth.yaml"]


def ensure_data(root: Path, size: tuple[int, int], train: int, val: int, seed: int) -> Path:
    from cityseg_fast.data.synthetic import write_synthetic

    if not (root / "gtFine" / "val").is_dir():
        write_synthetic(root, train=train, val=val, test=0, size=size, seed=seed, progress=False)
    return root


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="reports/cpu-accuracy")
    p.add_argument(
        "--data", default="/tmp/cityseg_synth_acc", help="synthetic data root (written if missing)"
    )
    p.add_argument("--size", default="128x256")
    p.add_argument("--train", type=int, default=40)
    p.add_argument("--val", type=int, default=10)
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    p.add_argument("--runs", default="/tmp/cityseg_acc_runs", help="where the training runs go")
    p.add_argument("overrides", nargs="*", help="section.key=value applied to every config")
    args = p.parse_args()

    from cityseg_fast.config import parse_hw

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    data = ensure_data(Path(args.data), parse_hw(args.size), args.train, args.val, seed=0)
    env = collect_env()

    base_cfg = load_config([], [f"data.root={data}"])
    base = row_for("baseline", base_cfg, run_scenario("baseline", base_cfg), env=env)
    append_row(results, base)
    print(f"colour baseline: mIoU {100 * base['metrics']['miou']:.2f}")

    for f in args.configs:
        name = Path(f).stem
        run_dir = Path(args.runs) / name
        cfg = load_config(
            [f], [f"data.root={data}", f"train.out_dir={run_dir}", "train.resume=never", *args.overrides]
        )
        metrics, failure = {}, None
        try:
            metrics = run_scenario("accuracy", cfg)
        except Exception as e:  # a failed config is a result too (status error), the others still run
            failure = e
            print(f"{name}: error {e}", file=sys.stderr)
        row = row_for("accuracy", cfg, metrics, error=failure, env=env, point={"config": name})
        append_row(results, row)
        if failure is None:
            print(
                f"{name}: mIoU {100 * metrics['miou']:.2f} in {metrics['train_wall_s']:.0f} s "
                f"({metrics['iters_done']} iterations); colour baseline {100 * base['metrics']['miou']:.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

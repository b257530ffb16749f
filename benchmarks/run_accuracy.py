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

from cityseg_fast.bench.env import collect_env  # noqa: E402
from cityseg_fast.config import config_hash, load_config, to_dict  # noqa: E402
from cityseg_fast.report.schema import append_row, make_row  # noqa: E402

DEFAULT_CONFIGS = ["configs/train/unet_cpu_synth.yaml", "configs/train/fcn_cpu_synth.yaml"]


def ensure_data(root: Path, size: tuple[int, int], train: int, val: int, seed: int) -> Path:
    from cityseg_fast.data.synthetic import write_synthetic

    if not (root / "gtFine" / "val").is_dir():
        write_synthetic(root, train=train, val=val, test=0, size=size, seed=seed, progress=False)
    return root


def colour_baseline(root: Path) -> dict:
    from cityseg_fast.data.cityscapes import find_samples, read_pair
    from cityseg_fast.data.labels import TRAINID_TO_ID
    from cityseg_fast.data.synthetic import colour_baseline_miou

    def frames(split):
        for s in find_samples(root, split):
            rgb, train_ids = read_pair(s)
            yield rgb, TRAINID_TO_ID[train_ids]  # the baseline takes labelIds (255 -> 0, ignored)

    return colour_baseline_miou(frames("train"), frames("val"))


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
    from cityseg_fast.engine.train import train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    data = ensure_data(Path(args.data), parse_hw(args.size), args.train, args.val, seed=0)
    env = collect_env()

    base = colour_baseline(data)
    point = {"model": "colour_baseline", "resolution": list(parse_hw(args.size)), "world_size": 1}
    append_row(
        results, make_row("accuracy", point, {"miou": base["miou"], "per_class_iou": base["iou"]}, env=env)
    )
    print(f"colour baseline: mIoU {100 * base['miou']:.2f}")

    for f in args.configs:
        name = Path(f).stem
        run_dir = Path(args.runs) / name
        cfg = load_config(
            [f], [f"data.root={data}", f"train.out_dir={run_dir}", "train.resume=never", *args.overrides]
        )
        point = {
            "model": cfg.model.name,
            "config": name,
            "crop": list(cfg.data.crop),
            "batch_size": cfg.loader.batch_size,
            "dtype": cfg.precision.dtype,
            "loader": cfg.loader.backend,
            "optimizer": cfg.train.optimizer,
            "lr": cfg.train.lr,
            "iters": cfg.train.iters,
            "world_size": 1,
        }
        try:
            s = train(cfg)
        except Exception as e:  # a failed config is a result too (status error), the others still run
            append_row(
                results,
                make_row(
                    "accuracy",
                    point,
                    {},
                    status="error",
                    error=f"{type(e).__name__}: {e}",
                    config=to_dict(cfg),
                    config_hash=config_hash(cfg),
                    env=env,
                ),
            )
            print(f"{name}: error {e}", file=sys.stderr)
            continue
        metrics = {"miou": s["miou"], "per_class_iou": s["per_class_iou"], "train_wall_s": s["wall_s"]}
        append_row(
            results,
            make_row("accuracy", point, metrics, config=to_dict(cfg), config_hash=config_hash(cfg), env=env),
        )
        print(
            f"{name}: mIoU {100 * s['miou']:.2f} in {s['wall_s']:.0f} s ({s['iters']} iterations); "
            f"colour baseline {100 * base['miou']:.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Train a model, in one process or under torchrun (DDP): iteration-based, periodic eval, checkpoints.

  cityseg train --config configs/train/unet_cpu_synth.yaml --data data/synth --out runs/unet
  cityseg train --config configs/train/fcn_r50_d8_512x1024_40k.yaml train.iters=1000 loader.batch_size=4
  torchrun --nproc_per_node=8 -m cityseg_fast train --config configs/train/fcn_r50_d8_512x1024_80k.yaml

A run directory holds config.yaml, env.json, metrics.jsonl and ckpt_*.pt; running the same command again
resumes from its latest readable checkpoint (train.resume=auto), also with a higher train.iters to train
on (the poly lr then jumps back up and decays to the new length: see the README). A rerun with another config
(another model, lr, crop...) is refused, naming the keys that differ; --fresh starts afresh there instead,
removing the previous run's checkpoints and metrics. Keys that do not change what is trained may differ:
train.iters, the log/eval/checkpoint intervals, keep_ckpts, data.root, loader workers/threads/queue depth.

SIGTERM or SIGUSR1 (a cluster's time limit or preemption) stops the run at the next log interval with a
checkpoint there, and exits 75: rerun the same command to resume (README, "Running on a cluster"). A second
`cityseg train` into a run directory that a live run is writing is refused, naming it (exit 2).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict

from cityseg_fast import jsonsafe
from cityseg_fast.commands.common import add_config_args, config_from_args
from cityseg_fast.engine.train import train


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--data", metavar="DIR", help="dataset root (shortcut for data.root=DIR)")
    p.add_argument("--out", metavar="DIR", help="run directory (shortcut for train.out_dir=DIR)")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--resume", metavar="PATH", help="resume from this checkpoint (shortcut for train.resume=PATH)"
    )
    g.add_argument(
        "--fresh",
        action="store_true",
        help="start afresh in --out even if it holds a run (of this or another config): its checkpoints "
        "and metrics.jsonl are removed (shortcut for train.resume=never)",
    )
    p.add_argument("--json", action="store_true", help="print the final summary as one JSON line")


def run(args: argparse.Namespace) -> int:
    extra = []
    if args.data:
        extra.append(f"data.root={args.data}")
    if args.out:
        extra.append(f"train.out_dir={args.out}")
    if args.resume:
        extra.append(f"train.resume={args.resume}")
    if args.fresh:
        extra.append("train.resume=never")
    cfg = config_from_args(args, extra)
    summary = train(cfg)
    if summary.world_size == 1 or _is_rank0():
        if args.json:
            print(jsonsafe.dumps(asdict(summary)))
        else:
            stall = summary.stall_fraction_mean
            waited = f", waited for data {stall:.0%} of the time" if stall is not None else ""
            print(
                f"done: {summary.iters} iterations, val mIoU {100 * summary.miou:.2f}, "
                f"{summary.wall_s:.1f} s{waited}, run in {summary.out_dir}"
            )
    return 0


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"

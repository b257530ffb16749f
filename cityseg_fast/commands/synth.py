"""Write a learnable synthetic dataset in the exact Cityscapes layout.

    OUT/leftImg8bit/{split}/{city}/{city}_{seq:06d}_{frame:06d}_leftImg8bit.png
    OUT/gtFine/{split}/{city}/..._gtFine_labelIds.png   (uint8 labelIds, as the real data)
    OUT/gtFine/{split}/{city}/..._gtFine_color.png

Procedural street scenes with all 19 evaluated classes and the non-evaluated ids; colour alone is a
weak cue, so models must use context. Deterministic for a seed, whatever the number of workers.
Test frames are labelled too (unlike the real test split). Example:

    cityseg synth --out data/synth --train 40 --val 10 --size 256x512
"""

from __future__ import annotations

import argparse

from cityseg_fast import jsonsafe
from cityseg_fast.config import parse_hw
from cityseg_fast.data.synthetic import write_synthetic
from cityseg_fast.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output root (becomes a Cityscapes root, i.e. CITYSCAPES_DATASET)")
    p.add_argument("--train", type=int, default=30, metavar="N", help="train frames (default 30)")
    p.add_argument("--val", type=int, default=10, metavar="M", help="val frames (default 10)")
    p.add_argument("--test", type=int, default=5, metavar="K", help="test frames (default 5)")
    p.add_argument("--size", default="1024x2048", metavar="HxW", help="frame size (default 1024x2048, as Cityscapes)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="processes (default: all usable cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def run(args: argparse.Namespace) -> int:
    size = parse_hw(args.size, "--size")
    if min(size) < 16:
        raise UserError(f"--size {args.size}: frames must be at least 16x16")
    for name in ("train", "val", "test"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name} must be >= 0")
    summary = write_synthetic(args.out, args.train, args.val, args.test, size, args.seed,
                              workers=args.workers, progress=not args.no_progress)
    if args.json:
        print(jsonsafe.dumps(summary, sort_keys=True))
    else:
        c = summary["counts"]
        print(f"wrote {c['train']} train, {c['val']} val, {c['test']} test frames of {size[0]}x{size[1]} to "
              f"{summary['out']} in {summary['wall_s']:.1f} s ({summary['frames_per_s']:.2f} frames/s, "
              f"{summary['workers']} workers)")
    return 0

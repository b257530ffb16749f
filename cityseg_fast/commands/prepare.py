"""Convert a Cityscapes-layout dataset to fast formats: JPEG (or PNG) images, uint8 trainId labels.

    OUT/{split}/images/{stem}.jpg|png   OUT/{split}/labels/{stem}.png   OUT/manifest.json (written last)

Images are downscaled with an antialiasing filter, labels with nearest neighbour. Every file is
written to a temporary name and renamed, so an interrupted run can simply be run again: finished
pairs are skipped. Bad input (unreadable/truncated file, size mismatch, invalid label ids, 16-bit
label) stops with one line naming the file; so does a second prepare into an OUT that a live one is
writing. Example:

    cityseg prepare --src $CITYSCAPES_DATASET --out data/cs_512 --size 512x1024
"""

from __future__ import annotations

import argparse
import os

from cityseg_fast import jsonsafe
from cityseg_fast.config import parse_hw
from cityseg_fast.data.prepare import prepare_dataset
from cityseg_fast.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--src", default=None, help="Cityscapes root (default: $CITYSCAPES_DATASET)")
    p.add_argument("--out", required=True, help="output directory (new, empty, or an earlier prepare's output)")
    p.add_argument("--image-format", choices=["jpeg", "png"], default="jpeg", help="image format (default jpeg)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality 1..100 (default 95)")
    p.add_argument(
        "--label-format",
        choices=["png", "npy"],
        default=None,
        help="npy (default for a new --out): raw uint8 arrays (2 MB per 1024x2048 frame), a crop reads "
        "only its window: the cheapest label path for every loader, on the CPU and feeding a GPU; "
        "png: 100x smaller on disk, decoded on the CPU every time. A rerun keeps the earlier format",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--size", default=None, metavar="HxW", help="resize every frame to HxW")
    g.add_argument("--scale", type=float, default=None, metavar="F", help="resize every frame by F (e.g. 0.5)")
    p.add_argument("--splits", default="train,val", help="comma-separated splits (default train,val)")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="processes (default: all usable cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def run(args: argparse.Namespace) -> int:
    src = args.src or os.environ.get("CITYSCAPES_DATASET")
    if not src:
        raise UserError("no source dataset: pass --src DIR or set CITYSCAPES_DATASET")
    splits = tuple(s for s in args.splits.split(",") if s)
    if not splits:
        raise UserError("--splits is empty")
    summary = prepare_dataset(
        src, args.out, image_format=args.image_format, quality=args.quality,
        size=parse_hw(args.size, "--size") if args.size else None, scale=args.scale, splits=splits,
        workers=args.workers, progress=not args.no_progress, label_format=args.label_format,
    )
    if args.json:
        print(jsonsafe.dumps(summary, sort_keys=True))
    else:
        rate = f", {summary['pairs_per_s']:.2f} pairs/s" if summary["pairs_per_s"] else ""
        print(f"prepared {summary['pairs']} pairs ({summary['written']} written, {summary['skipped']} already done) "
              f"into {summary['out']} in {summary['wall_s']:.1f} s{rate}, {summary['workers']} workers")
    return 0

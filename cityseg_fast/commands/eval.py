"""Evaluate a checkpoint: mIoU and per-class IoU, optionally exporting official-format predictions.

  cityseg eval --checkpoint runs/unet/ckpt_00002000.pt --data data/synth
  cityseg eval --checkpoint C --export-dir preds --json      # labelId PNGs for cityscapesscripts
  cityseg eval --checkpoint C --scales 0.5,0.75,1.0           # per input scale: mIoU, pixel acc, inference img/s
  torchrun --nproc_per_node=2 -m cityseg_fast eval --checkpoint C

The model and data settings come from the checkpoint's config; --data, --split and section.key=value
overrides change them. Exported files are named {city}_{seq}_{frame}_leftImg8bit.png under a folder per
city, as cityscapesscripts' evalPixelLevelSemanticLabeling expects ($CITYSCAPES_RESULTS=EXPORT_DIR).

--scales evaluates the same model with its input resized to each scale of the evaluated frame (labels at
full resolution, logits upsampled: bench/inference.py), one row per scale with its inference images/s,
timed as `cityseg bench infer` times (loader.eval_batch_size images per step). Scale 1.0 is plain eval.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from cityseg_fast import jsonsafe
from cityseg_fast.bench.inference import evaluate_at_scales, inference_model, parse_scales
from cityseg_fast.config import Config, build_config, data_root, format_hw, load_config
from cityseg_fast.data.cityscapes import find_samples
from cityseg_fast.data.factory import build_loader
from cityseg_fast.engine import checkpoint as ckpt_io
from cityseg_fast.engine import dist
from cityseg_fast.engine.evaluate import evaluate, iou_table
from cityseg_fast.errors import UserError
from cityseg_fast.labels import CLASS_NAMES
from cityseg_fast.paths import check_out_dir
from cityseg_fast.results.scenarios import (
    ACC,
    EVAL_SCALE,
    EVAL_SIZE,
    INFER_IMAGES_PER_S,
    INFER_LATENCY_MS_P50,
    MIOU,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint", required=True, metavar="PATH", help="checkpoint written by `cityseg train`"
    )
    p.add_argument("--data", metavar="DIR", help="dataset root (default: the checkpoint's data.root)")
    p.add_argument("--split", default=None, help="split to evaluate (default: the config's data.val_split)")
    p.add_argument("--export-dir", metavar="DIR", help="write predictions as Cityscapes labelId PNGs here")
    p.add_argument("--json", action="store_true", help="print one JSON line: miou (0..1), per-class IoU, acc")
    p.add_argument("--scales", metavar="S,S,...", help="evaluate at these input scales, e.g. 0.5,0.75,1.0: "
                   "one row each (with --json, one line each) with its inference images/s")  # fmt: skip
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="config overrides, e.g. loader.backend=torch",
    )


def load_for_inference(path: str, overrides: list[str], device):
    """(cfg, model) from a checkpoint: the config it was trained with (plus overrides), weights loaded."""

    ck = ckpt_io.load_checkpoint(path)
    try:
        base = build_config(ck["config"])
    except UserError as e:
        raise UserError(f"{path}: its config: {e}") from None
    cfg = load_config([], overrides, base=base)
    return cfg, inference_model(cfg, ck["model"], path, device)


def dataset_root(cfg, args: argparse.Namespace):
    """data.root, checked: if it came from the checkpoint's config, an error says so and how to override."""

    root = data_root(cfg)
    given = args.data or any(o.split("=", 1)[0].strip() == "data.root" for o in args.overrides)
    if cfg.data.root and not given and not root.is_dir():
        relative = "" if root.is_absolute() else ", read relative to the current directory"
        raise UserError(
            f"{root}: dataset root does not exist (it is data.root from the checkpoint's config{relative}); "
            "pass --data DIR to name the dataset"
        )
    return root


def run(args: argparse.Namespace) -> int:
    if args.export_dir:
        check_out_dir(args.export_dir, "--export-dir")
    scales = parse_scales(args.scales) if args.scales is not None else None
    if scales is not None and args.export_dir:
        raise UserError("--export-dir writes one set of predictions: use it without --scales")
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.root={args.data}")
    if args.split:
        overrides.append(f"data.val_split={args.split}")
    info = dist.init_distributed()
    try:
        cfg, model = load_for_inference(args.checkpoint, overrides, info.device)
        find_samples(dataset_root(cfg, args), cfg.data.val_split)  # a missing split: an error before any work
        if scales is None:
            results = [_evaluate(model, cfg, info, args.export_dir)]
        else:
            results = evaluate_at_scales(model, cfg, info.device, scales, info.rank, info.world_size)
    except BaseException:
        dist.cleanup(failed=True)
        raise
    dist.cleanup()
    if info.is_main:
        _show(results, cfg, args, scaled=scales is not None)
    return 0


def _evaluate(model: Any, cfg: Config, info: dist.DistInfo, export_dir: str | None) -> dict[str, Any]:
    loader = build_loader(cfg, cfg.data.val_split, info.rank, info.world_size, train=False, device=info.device)
    try:
        return evaluate(model, loader, cfg, info.device, export_dir=export_dir)
    finally:
        loader.close()


def _show(results: list[dict[str, Any]], cfg: Config, args: argparse.Namespace, scaled: bool) -> None:
    """One JSON line per result (--json), else the per-class table (one evaluation) or the per-scale table."""
    if args.json:
        for r in results:
            print(jsonsafe.dumps({**r, "classes": list(CLASS_NAMES), "checkpoint": args.checkpoint,
                                  "split": cfg.data.val_split}))  # fmt: skip
    elif not scaled:
        r = results[0]
        Console().print(iou_table(r, title=f"{cfg.model.name} on {cfg.data.val_split} ({r['images']} images)"))
    else:
        Console().print(scales_table(results, f"{cfg.model.name} on {cfg.data.val_split}, {cfg.precision.dtype}"))


def scales_table(results: list[dict[str, Any]], title: str) -> Table:
    """Per scale: the input size, mIoU, pixel accuracy and inference speed."""
    t = Table(title=f"{title} ({results[0]['images']} images per scale)")
    for col in ("scale", "input HxW", "mIoU %", "pixel acc %", "inference img/s", "p50 ms/batch"):
        t.add_column(col, justify="left" if col == "scale" else "right")
    for r in results:
        t.add_row(f"{r[EVAL_SCALE]:g}", format_hw(r[EVAL_SIZE]), f"{100 * r[MIOU]:.2f}", f"{100 * r[ACC]:.2f}",
                  f"{r[INFER_IMAGES_PER_S]:.1f}", f"{r[INFER_LATENCY_MS_P50]:.1f}")  # fmt: skip
    return t

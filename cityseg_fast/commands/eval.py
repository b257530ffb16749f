"""Evaluate a checkpoint: mIoU and per-class IoU, optionally exporting official-format predictions.

  cityseg eval --checkpoint runs/unet/ckpt_00002000.pt --data data/synth
  cityseg eval --checkpoint C --export-dir preds --json      # labelId PNGs for cityscapesscripts
  torchrun --nproc_per_node=2 -m cityseg_fast eval --checkpoint C

The model and data settings come from the checkpoint's config; --data, --split and section.key=value
overrides change them. Exported files are named {city}_{seq}_{frame}_leftImg8bit.png under a folder per
city, as cityscapesscripts' evalPixelLevelSemanticLabeling expects ($CITYSCAPES_RESULTS=EXPORT_DIR).
"""

from __future__ import annotations

import argparse

from rich.console import Console

from cityseg_fast import jsonsafe
from cityseg_fast.config import build_config, data_root, load_config
from cityseg_fast.data.cityscapes import find_samples
from cityseg_fast.data.factory import build_loader
from cityseg_fast.engine import checkpoint as ckpt_io
from cityseg_fast.engine import dist, precision
from cityseg_fast.engine.evaluate import evaluate, iou_table
from cityseg_fast.errors import UserError
from cityseg_fast.labels import CLASS_NAMES
from cityseg_fast.models import model_from_config
from cityseg_fast.paths import check_out_dir


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint", required=True, metavar="PATH", help="checkpoint written by `cityseg train`"
    )
    p.add_argument("--data", metavar="DIR", help="dataset root (default: the checkpoint's data.root)")
    p.add_argument("--split", default=None, help="split to evaluate (default: the config's data.val_split)")
    p.add_argument("--export-dir", metavar="DIR", help="write predictions as Cityscapes labelId PNGs here")
    p.add_argument("--json", action="store_true", help="print one JSON line: miou (0..1), per-class IoU, acc")
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
    model = model_from_config(cfg)
    ckpt_io.load_model_state(model, ck["model"], path)
    precision.setup_precision(cfg.precision.dtype, cfg.precision.cudnn_benchmark)
    model = precision.prepare_model(model, cfg.precision, device)
    model.eval()
    return cfg, model


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
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.root={args.data}")
    if args.split:
        overrides.append(f"data.val_split={args.split}")
    info = dist.init_distributed()
    try:
        cfg, model = load_for_inference(args.checkpoint, overrides, info.device)
        find_samples(dataset_root(cfg, args), cfg.data.val_split)  # a missing split: an error before any work
        loader = build_loader(
            cfg, cfg.data.val_split, info.rank, info.world_size, train=False, device=info.device
        )
        result = evaluate(model, loader, cfg, info.device, export_dir=args.export_dir)
        loader.close()
    except BaseException:
        dist.cleanup(failed=True)
        raise
    dist.cleanup()
    if info.is_main:
        if args.json:
            row = {
                "miou": result["miou"],
                "per_class_iou": result["per_class_iou"],
                "classes": list(CLASS_NAMES),
                "acc": result["acc"],
                "images": result["images"],
                "pixels": result["pixels"],
                "checkpoint": args.checkpoint,
                "split": cfg.data.val_split,
            }
            print(jsonsafe.dumps(row))
        else:
            Console().print(
                iou_table(
                    result, title=f"{cfg.model.name} on {cfg.data.val_split} ({result['images']} images)"
                )
            )
    return 0

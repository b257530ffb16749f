"""Segment images with a checkpoint: a colour overlay PNG and a Cityscapes labelId PNG per image.

  cityseg predict --checkpoint runs/unet/ckpt_00002000.pt street.jpg more/*.png --out preds/

Any PNG or JPEG works (RGB, RGBA, greyscale, palette; any size): images are converted to RGB, padded to
a multiple of 32 for the network (resized to data.eval_size first if the model was trained that way),
and the prediction is brought back to the original size. Writes OUT/{name}_overlay.png (the image
blended with the class colours) and OUT/{name}_labelIds.png (uint8 Cityscapes label ids).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cityseg_fast.commands.eval import load_for_inference
from cityseg_fast.engine.evaluate import predict_image
from cityseg_fast.errors import UserError
from cityseg_fast.hardware import resolve_device
from cityseg_fast.labels import TRAINID_TO_ID, train_palette
from cityseg_fast.paths import check_out_dir


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint", required=True, metavar="PATH", help="checkpoint written by `cityseg train`"
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG or JPEG files")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the class colours (0..1)")


def read_rgb(path: Path):
    """H x W x 3 uint8 from any PNG/JPEG mode (RGBA drops alpha, L/P/I are converted); UserError if unreadable."""

    if not path.is_file():
        raise UserError(f"{path}: image not found")
    try:
        with Image.open(path) as im:
            if im.mode in ("I", "I;16", "I;16B", "F"):  # 16-bit / float greyscale: scale to 8 bits
                a = np.asarray(im, dtype=np.float64)
                a = (255 * (a - a.min()) / max(a.max() - a.min(), 1e-9)).astype(np.uint8)
                return np.repeat(a[..., None], 3, axis=2)
            return np.array(im.convert("RGB"))  # a writable copy for torch.from_numpy
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{path}: not a readable image ({type(e).__name__})") from None


def unique_inputs(paths: list[Path]) -> list[Path]:
    """The inputs, each file once; two files whose outputs would share a name are a UserError naming both."""

    by_stem: dict[str, Path] = {}
    kept = []
    for p in paths:
        seen = by_stem.setdefault(p.stem, p)
        if seen is p:
            kept.append(p)
        elif seen.resolve() != p.resolve():
            raise UserError(
                f"{seen} and {p}: both would be written as {p.stem}_overlay.png / {p.stem}_labelIds.png; "
                "rename one or predict them into separate --out folders"
            )
    return kept


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.alpha <= 1:
        raise UserError(f"--alpha {args.alpha}: must be between 0 and 1")
    paths = unique_inputs([Path(p) for p in args.images])
    for p in paths:  # fail before loading the model if any input is missing
        if not p.is_file():
            raise UserError(f"{p}: image not found")
    check_out_dir(args.out, "--out")
    device = resolve_device()
    cfg, model = load_for_inference(args.checkpoint, [], device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    palette = train_palette().astype(np.float32)
    for p in paths:
        rgb = read_rgb(p)
        pred = predict_image(model, rgb, cfg, device).cpu().numpy()  # host copy to write the PNGs
        colours = palette[pred]
        overlay = (1 - args.alpha) * rgb.astype(np.float32) + args.alpha * colours
        Image.fromarray(overlay.round().clip(0, 255).astype(np.uint8)).save(out / f"{p.stem}_overlay.png")
        Image.fromarray(TRAINID_TO_ID[pred].astype(np.uint8), mode="L").save(out / f"{p.stem}_labelIds.png")
        print(f"{p} -> {out / (p.stem + '_overlay.png')}, {out / (p.stem + '_labelIds.png')}")
    return 0

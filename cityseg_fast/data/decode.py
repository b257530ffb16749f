"""Decoding for the torch loaders: `torchvision.io` straight to a tensor, or PIL (`loader.decoder`).

    img = decode_image(path, "torchvision")    # uint8 H x W x 3 tensor (a view of torchvision's 3 x H x W)
    img = decode_image(path, "pil")            # a decoded PIL image (crop it, then export only the window)
    lab = decode_label(path, "torchvision")    # uint8 H x W tensor, a PIL image, or a memory-mapped .npy array
    window(img, y, x, h, w) / whole(img)       # -> uint8 tensor, whichever of the three `img` is

Why torchvision.io is the default: it decodes JPEG with libjpeg-turbo as PIL does, but into a tensor,
while PIL's array export copies slowly. The torch loader on one core of a 2-core AMD EPYC (in-process,
batch 4, the 1024x2048 JPEG q95 frames of `cityseg synth --train 16 --seed 3` + `prepare`, median of 3,
CPU ms per image): decode-only 8.8 (torchvision.io) vs 10.7 (PIL), training crops to 512x1024 11.8 vs
13.0, of which decoding 7.5 vs 8.1 and the transform 2.3 vs 3.0. What torchvision.io does not
decode as PIL does goes to PIL, which the loaders used before: a palette label (its indices are its ids,
as cityscapes.read_label; torchvision's GRAY mode would map them through the palette), 16-bit and
other PNGs. JPEGs and 8-bit PNGs are recognised by their first bytes, not by their file names.

Errors are DecodeError with a one-line message naming the file (the torch DataLoader's workers send it to
the main process as text, which raises a UserError).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cityseg_fast.data.cityscapes import load_label_array
from cityseg_fast.errors import UserError

DECODER_NAMES = {"torchvision": "torchvision.io", "pil": "PIL"}  # CHOICES["loader.decoder"] -> how rows name it
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# torchvision 0.29 deprecates its image codecs in favour of TorchCodec (not a dependency here) and warns
# at every call; 0.26 (the GPU machine's) does not. The functions are the same in both.
_TV_DEPRECATION = "The image decoding and encoding capabilities of TorchVision are deprecated"


class DecodeError(Exception):
    """A file the loader could not decode; the message names it."""


def torchvision_io() -> Any:
    """torchvision.io, imported on first use, its deprecation warning silenced (see _TV_DEPRECATION)."""
    import torchvision.io as tvio  # lazy: torchvision is heavy (cli.py's rule)

    warnings.filterwarnings("ignore", message=_TV_DEPRECATION, category=DeprecationWarning)
    return tvio


def read_bytes(path: str | Path) -> torch.Tensor:
    """The file's bytes as a uint8 CPU tensor (what torchvision's decoders take)."""
    try:
        return torch.from_numpy(np.fromfile(path, dtype=np.uint8))
    except OSError as e:
        raise DecodeError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None


def is_jpeg(data: torch.Tensor) -> bool:
    return data.numel() > 3 and int(data[0]) == 0xFF and int(data[1]) == 0xD8


def png_header(data: torch.Tensor) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR chunk, or None if `data` is no PNG."""
    if data.numel() < 26 or bytes(data[:8].tolist()) != PNG_MAGIC:
        return None
    return int(data[24]), int(data[25])


def decode_jpeg_or_png(data: torch.Tensor, path: str | Path, gray: bool = False) -> torch.Tensor | None:
    """torchvision.io's decode of JPEG or 8-bit non-palette PNG bytes (3 x H x W, or 1 x H x W with
    `gray`), or None where PIL must decode the file instead."""
    png = png_header(data)
    if not is_jpeg(data) and (png is None or png[0] != 8 or png[1] == 3):  # 3: palette
        return None
    tvio = torchvision_io()
    mode = tvio.ImageReadMode.GRAY if gray else tvio.ImageReadMode.RGB
    try:
        return tvio.decode_jpeg(data, mode=mode) if png is None else tvio.decode_png(data, mode=mode)
    except RuntimeError as e:
        raise DecodeError(f"{path}: cannot decode ({str(e).splitlines()[0][:120] if str(e) else 'RuntimeError'})") from None


def _pil(path: str | Path, label: bool) -> Image.Image:
    try:
        im = Image.open(path)
        im.load()  # decode now, so a corrupt file fails here and is named
    except Exception as e:
        raise DecodeError(f"{path}: cannot decode ({type(e).__name__})") from None
    if label:
        # a palette label's indices are its ids (as read_label); NEAREST resizing keeps them
        return im if im.mode in ("P", "L") else im.convert("L")
    return im if im.mode == "RGB" else im.convert("RGB")


def decode_image(path: str | Path, decoder: str) -> torch.Tensor | Image.Image:
    """An RGB frame: a uint8 H x W x 3 tensor view (torchvision) or a decoded PIL image."""
    if decoder == "torchvision":
        chw = decode_jpeg_or_png(read_bytes(path), path)
        if chw is not None:
            return chw.permute(1, 2, 0)
    return _pil(path, label=False)


def decode_label(path: str | Path, decoder: str) -> torch.Tensor | Image.Image | np.ndarray:
    """A label: a memory-mapped array (.npy: a crop reads its window's rows only), a uint8 H x W tensor
    (torchvision, 8-bit greyscale PNG) or a PIL image (palette, 16-bit, or decoder pil)."""
    if Path(path).suffix == ".npy":
        try:
            return load_label_array(path)
        except UserError as e:
            raise DecodeError(str(e)) from None
    if decoder == "torchvision":
        data = read_bytes(path)
        if png_header(data) == (8, 0):  # 8-bit greyscale: the ids as they are
            return decode_jpeg_or_png(data, path, gray=True)[0]
    return _pil(path, label=True)


def size_of(img: torch.Tensor | Image.Image | np.ndarray) -> tuple[int, int]:
    """(H, W) of a decoded frame or label, whichever kind it is."""
    if isinstance(img, Image.Image):
        return img.height, img.width
    return int(img.shape[0]), int(img.shape[1])


def window(img: torch.Tensor | Image.Image | np.ndarray, y: int, x: int, h: int, w: int) -> torch.Tensor:
    """Rows [y, y+h) x cols [x, x+w) as a uint8 tensor: only the window is exported (PIL) or read (.npy)."""
    if isinstance(img, Image.Image):
        return torch.from_numpy(np.array(img.crop((x, y, x + w, y + h))))
    if isinstance(img, np.ndarray):
        return torch.from_numpy(np.array(img[y : y + h, x : x + w]))
    return img[y : y + h, x : x + w]


def whole(img: torch.Tensor | Image.Image | np.ndarray) -> torch.Tensor:
    """The whole frame as a uint8 tensor (a tensor stays as it is: the batch's collate copies it once)."""
    if isinstance(img, torch.Tensor):
        return img
    return torch.from_numpy(np.array(img))  # np.array, not asarray: PIL's buffer and a memmap are read-only

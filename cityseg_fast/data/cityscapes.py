"""Find image/label pairs of a split, in the raw Cityscapes layout or the `prepare`d layout.

Raw Cityscapes (as downloaded):
    ROOT/leftImg8bit/{split}/{city}/{city}_{seq:06d}_{frame:06d}_leftImg8bit.png
    ROOT/gtFine/{split}/{city}/{city}_{seq:06d}_{frame:06d}_gtFine_labelIds.png       (labelIds)
                                                          ..._gtFine_labelTrainIds.png  (trainIds)
Prepared (`cityseg prepare`, see prepare.py):
    ROOT/manifest.json
    ROOT/{split}/images/{stem}.jpg|png      ROOT/{split}/labels/{stem}.png (trainIds)

`find_samples` checks the structure (directories, pairing) cheaply; pixel-level checks are in
`validate_samples`. Every problem is a one-line UserError naming the file.

Decoding is shared with `prepare` and the loaders: `read_image_rgb` (any PNG/JPEG mode -> RGB uint8),
`read_label(path, kind)` (labelIds or trainIds -> uint8 trainIds, 255 = ignore, values checked) and
`read_pair(sample)` (both, plus the size check).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cityseg_fast import labels
from cityseg_fast.errors import UserError

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIXES = {"labelIds": "_gtFine_labelIds.png", "trainIds": "_gtFine_labelTrainIds.png"}
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Sample:
    image: Path
    label: Path
    stem: str  # "{city}_{seq:06d}_{frame:06d}": names exported predictions
    label_kind: str  # "labelIds" (needs the id -> trainId LUT) or "trainIds"


def dataset_format(root: Path) -> str:
    """'prepared' if ROOT/manifest.json exists, 'raw' if ROOT/leftImg8bit exists; else a UserError."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: dataset root does not exist")
    if (root / MANIFEST).is_file():
        return "prepared"
    if (root / "leftImg8bit").is_dir():
        return "raw"
    raise UserError(f"{root}: neither a Cityscapes root (no leftImg8bit/) nor a prepared dataset (no {MANIFEST})")


def read_manifest(root: Path) -> dict:
    path = Path(root) / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable manifest ({type(e).__name__})") from None


def find_samples(root: str | Path, split: str) -> list[Sample]:
    """All samples of `split`, sorted by stem (a stable order every rank agrees on)."""
    root = Path(root)
    fmt = dataset_format(root)
    samples = _find_prepared(root, split) if fmt == "prepared" else _find_raw(root, split)
    if not samples:
        raise UserError(f"{root}: split '{split}' is empty")
    return samples


def _find_raw(root: Path, split: str) -> list[Sample]:
    img_dir, gt_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    for d in (img_dir, gt_dir):
        if not d.is_dir():
            raise UserError(f"{d}: missing directory (split '{split}')")
        _check_listable(d, depth=1)
    images = {p.name[: -len(IMAGE_SUFFIX)]: p for p in sorted(img_dir.glob(f"*/*{IMAGE_SUFFIX}"))}
    labels: dict[str, dict[str, Path]] = {k: {} for k in LABEL_SUFFIXES}
    for kind, suffix in LABEL_SUFFIXES.items():
        for p in sorted(gt_dir.glob(f"*/*{suffix}")):
            labels[kind][p.name[: -len(suffix)]] = p
    kind = "labelIds" if labels["labelIds"] else "trainIds"
    found = labels[kind]
    for stem, img in images.items():
        if stem not in found:
            expected = gt_dir / img.parent.name / f"{stem}{LABEL_SUFFIXES[kind]}"
            raise UserError(f"{img}: image has no label (expected {expected})")
    for stem, lab in found.items():
        if stem not in images:
            raise UserError(f"{lab}: label has no image (expected {img_dir / lab.parent.name / (stem + IMAGE_SUFFIX)})")
    return [Sample(images[s], found[s], s, kind) for s in sorted(images)]


def _check_listable(d: Path, depth: int = 0) -> None:
    """`glob` silently skips a directory it may not read, which would turn a permission problem into "image
    has no label": name the directory instead (its subdirectories too, `depth` levels down)."""
    if not os.access(d, os.R_OK | os.X_OK):
        raise UserError(f"{d}: cannot read this directory (permission denied)")
    if depth > 0:
        for sub in sorted(c for c in d.iterdir() if c.is_dir()):
            _check_listable(sub, depth - 1)


def _find_prepared(root: Path, split: str) -> list[Sample]:
    manifest = read_manifest(root)
    split_info = manifest.get("splits", {}).get(split)
    if split_info is None:
        raise UserError(f"{root / MANIFEST}: split '{split}' was not prepared (have: {', '.join(manifest.get('splits', {})) or 'none'})")
    ext = ".jpg" if manifest.get("image_format") == "jpeg" else ".png"
    lab_ext = ".npy" if manifest.get("label_format") == "npy" else ".png"
    for d in (root / split / "images", root / split / "labels"):
        if d.is_dir():
            _check_listable(d)
    out = []
    for stem in split_info["files"]:
        img = root / split / "images" / f"{stem}{ext}"
        lab = root / split / "labels" / f"{stem}{lab_ext}"
        if not img.is_file():
            raise UserError(f"{img}: listed in the manifest but missing")
        if not lab.is_file():
            raise UserError(f"{lab}: listed in the manifest but missing")
        out.append(Sample(img, lab, stem, "trainIds"))
    return sorted(out, key=lambda s: s.stem)


# ----------------------------------------------------------------------------------------------
# Pixel-level reading and validation, shared by `validate_samples`, `prepare` and the loaders.
# ----------------------------------------------------------------------------------------------

_TRAIN_ID_OK = np.zeros(256, bool)
_TRAIN_ID_OK[: labels.NUM_CLASSES] = True
_TRAIN_ID_OK[labels.IGNORE_INDEX] = True
_LABEL_ID_OK = np.zeros(256, bool)
_LABEL_ID_OK[sorted(labels.VALID_LABEL_IDS)] = True
_ID_TO_TRAINID_LIST = labels.ID_TO_TRAINID.tolist()
_SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


def _open_decoded(path: Path) -> Image.Image:
    """Open and fully decode an image; unreadable or truncated files become a one-line UserError."""
    try:
        im = Image.open(path)
        im.load()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # Pillow raises OSError("image file is truncated ...") / UnidentifiedImageError (an OSError).
        raise UserError(f"{path}: unreadable or truncated image ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return im


def load_label_array(path: str | Path, mmap: bool = True) -> np.ndarray:
    """A prepared `.npy` label: uint8 H x W trainIds, memory-mapped (a crop window reads only its
    rows); anything else is a one-line UserError naming the file."""
    try:
        with open(path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise UserError(f"{path}: not a .npy file (no NumPy header)")
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable .npy label ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if arr.dtype != np.uint8 or arr.ndim != 2:
        raise UserError(f"{path}: label array is {arr.dtype} with shape {arr.shape}, expected uint8 H x W")
    return arr


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the file header only (cheap); a UserError if the header is unreadable."""
    if Path(path).suffix == ".npy":
        return tuple(load_label_array(path).shape)
    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: unreadable image ({type(e).__name__})") from None
    return h, w


def open_image_rgb(path: str | Path) -> Image.Image:
    """Decode an image to a PIL RGB image; palette, greyscale (8/16-bit) and RGBA inputs are converted."""
    path = Path(path)
    im = _open_decoded(path)
    if im.mode in _SIXTEEN_BIT_MODES:  # 16-bit greyscale: keep the top 8 bits
        arr = np.asarray(im).astype(np.uint32)
        arr = (arr >> 8).astype(np.uint8) if arr.max(initial=0) > 255 else arr.astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")  # P (palette), L, LA, RGBA, CMYK, ...


def read_image_rgb(path: str | Path) -> np.ndarray:
    """Decode an image to a writable uint8 H x W x 3 RGB array (see `open_image_rgb` for the conversions)."""
    return np.array(open_image_rgb(path))  # np.array, not asarray: PIL's buffer is read-only


def open_label(path: str | Path, kind: str, check_values: bool = True) -> Image.Image:
    """Decode a label PNG to an 8-bit PIL image of trainIds (255 = ignore); see `read_label`.

    Works on PIL images on purpose: the value check is a 256-bin histogram and the id -> trainId
    mapping a 256-entry `point` table, both C loops without numpy temporaries (prepare's hot path);
    a min/max scan comes first and settles most checks alone.
    """
    path = Path(path)
    if kind not in ("labelIds", "trainIds"):
        raise ValueError(f"label kind must be 'labelIds' or 'trainIds', got {kind!r}")
    if path.suffix == ".npy":  # a prepared raw label array
        im = Image.fromarray(np.ascontiguousarray(load_label_array(path)), "L")
    else:
        im = _open_decoded(path)
    if im.mode in _SIXTEEN_BIT_MODES:
        raise UserError(f"{path}: 16-bit label (mode {im.mode}); Cityscapes labels are 8-bit single-channel PNGs")
    if im.mode == "P":  # the indices are the ids (a palette only changes how it looks): drop it
        im = Image.frombuffer("L", im.size, im.tobytes(), "raw", "L", 0, 1)
    elif im.mode != "L":
        raise UserError(f"{path}: label has mode {im.mode}, expected an 8-bit single-channel PNG")
    ok = _LABEL_ID_OK if kind == "labelIds" else _TRAIN_ID_OK
    lo, hi = im.getextrema()
    if check_values and not ok[lo : hi + 1].all():  # min/max settle it for labelIds (0..33 contiguous)
        bad = np.flatnonzero((np.asarray(im.histogram()) > 0) & ~ok)
        if bad.size:
            shown = ", ".join(str(int(v)) for v in bad[:8]) + (" ..." if len(bad) > 8 else "")
            what = "Cityscapes labelIds (0..33)" if kind == "labelIds" else "trainIds (0..18, 255)"
            raise UserError(f"{path}: label values {shown} are not {what}")
    return im.point(_ID_TO_TRAINID_LIST) if kind == "labelIds" else im


def read_label(path: str | Path, kind: str, check_values: bool = True) -> np.ndarray:
    """Decode a label PNG to a writable uint8 H x W array of trainIds (255 = ignore).

    kind "labelIds": Cityscapes ids 0..33, mapped with the official table; "trainIds": 0..18 and 255.
    Rejected with a UserError naming the file: 16-bit or multi-channel labels and, with
    `check_values`, values that are not valid for `kind`. Palette ("P") labels use their indices.
    """
    return np.array(open_label(path, kind, check_values))


def label_size_error(label, label_hw, image, image_hw) -> str:
    """The one-line message for a label whose size differs from its image's (sizes as (H, W))."""
    (hl, wl), (hi, wi) = label_hw, image_hw
    return f"{label}: label is {hl}x{wl} but its image {Path(image).name} is {hi}x{wi} (HxW)"


def open_pair(sample: Sample, check_values: bool = True) -> tuple[Image.Image, Image.Image]:
    """(RGB image, trainId label) of one sample as PIL images, with every per-file check."""
    img = open_image_rgb(sample.image)
    lab = open_label(sample.label, sample.label_kind, check_values)
    if img.size != lab.size:
        raise UserError(label_size_error(sample.label, lab.size[::-1], sample.image, img.size[::-1]))
    return img, lab


def read_pair(sample: Sample, check_values: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 HxWx3, trainIds uint8 HxW) writable arrays of one sample, with every per-file check."""
    img, lab = open_pair(sample, check_values)
    return np.array(img), np.array(lab)


def validate_samples(samples: list[Sample], *, check_values: bool = True) -> None:
    """Decode every file of `samples` and check it; the first problem is a one-line UserError naming the file.

    Checks: readable and not truncated, image and label the same size, 8-bit single-channel labels,
    and (with `check_values`) label values valid for the sample's label kind. This decodes every
    pixel: run it once per dataset (prepare does), not per epoch.
    """
    for s in samples:
        if check_values:
            open_pair(s, check_values=True)
        else:  # headers only, plus a full decode to catch truncation
            hw_i, hw_l = image_size(s.image), image_size(s.label)
            if hw_i != hw_l:
                raise UserError(label_size_error(s.label, hw_l, s.image, hw_i))
            _open_decoded(s.image)
            read_label(s.label, s.label_kind, check_values=False)

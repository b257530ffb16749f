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
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

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


def _find_prepared(root: Path, split: str) -> list[Sample]:
    manifest = read_manifest(root)
    split_info = manifest.get("splits", {}).get(split)
    if split_info is None:
        raise UserError(f"{root / MANIFEST}: split '{split}' was not prepared (have: {', '.join(manifest.get('splits', {})) or 'none'})")
    ext = ".jpg" if manifest.get("image_format") == "jpeg" else ".png"
    out = []
    for stem in split_info["files"]:
        img = root / split / "images" / f"{stem}{ext}"
        lab = root / split / "labels" / f"{stem}.png"
        if not img.is_file():
            raise UserError(f"{img}: listed in the manifest but missing")
        if not lab.is_file():
            raise UserError(f"{lab}: listed in the manifest but missing")
        out.append(Sample(img, lab, stem, "trainIds"))
    return sorted(out, key=lambda s: s.stem)

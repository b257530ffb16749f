"""Tiny datasets for loader tests, in the raw Cityscapes layout and the `prepare`d layout.

Each sample's identity is encoded in its content so pairing can be checked after augmentation:
sample k's image is one flat colour (`color_of(k)`), and its label holds only the trainIds
`classes_of(k)` plus ignore pixels (a band of non-evaluated labelIds in the raw layout). A
"texture" pattern instead gives images with detail, for decoder comparisons.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cityseg_fast.labels import TRAINID_TO_ID

CITIES = ("aachen", "bremen")


def color_of(k: int) -> tuple[int, int, int]:
    """Flat colours far apart (>= 40 levels in some channel), robust to JPEG and resizing."""
    return (40 * (k % 6) + 20, 40 * ((k // 6) % 6) + 20, 200 - 30 * (k % 5))


def identify(pixel: np.ndarray, n: int) -> int:
    """The sample whose colour is nearest to an RGB pixel (0..255)."""
    d = [float(np.abs(np.asarray(color_of(k), float) - pixel).sum()) for k in range(n)]
    return int(np.argmin(d))


def classes_of(k: int) -> tuple[int, int]:
    """The two trainIds in sample k's label (distinct for k < 19)."""
    return (k % 19, (k + 7) % 19)


def stem_of(k: int) -> str:
    return f"{CITIES[k % 2]}_{k:06d}_000019"


def _image(k: int, hw: tuple[int, int], pattern: str) -> np.ndarray:
    h, w = hw
    if pattern == "constant":
        return np.broadcast_to(np.array(color_of(k), np.uint8), (h, w, 3)).copy()
    rng = np.random.default_rng(k)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(1, w - 1), yy * 255 // max(1, h - 1), (xx + yy) % 256], -1)
    return np.clip(base + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)


def _train_label(k: int, hw: tuple[int, int]) -> np.ndarray:
    """Top half class a, bottom half class b, a vertical band of ignore (255)."""
    h, w = hw
    a, b = classes_of(k)
    lab = np.full((h, w), a, np.uint8)
    lab[h // 2 :] = b
    lab[:, w // 3 : w // 3 + max(1, w // 8)] = 255
    return lab


def _to_label_ids(train: np.ndarray) -> np.ndarray:
    """trainIds -> labelIds; ignore pixels become a mix of non-evaluated ids (0 unlabeled, 1 ego, 4 static)."""
    ids = np.asarray(TRAINID_TO_ID, np.uint8)[np.minimum(train, 18)]
    ign = train == 255
    rows = np.arange(train.shape[0])[:, None] % 3 + np.zeros((1, train.shape[1]), np.int64)
    filler = np.array([0, 1, 4], np.uint8)[rows]
    ids[ign] = filler[ign]
    return ids


def write_raw(root: Path, splits: dict[str, int], hw=(64, 128), pattern: str = "constant") -> Path:
    """ROOT/leftImg8bit/{split}/{city}/..._leftImg8bit.png and gtFine/..._gtFine_labelIds.png."""
    root = Path(root)
    k0 = 0
    for split, n in splits.items():
        for k in range(k0, k0 + n):
            stem, city = stem_of(k), CITIES[k % 2]
            d_img = root / "leftImg8bit" / split / city
            d_gt = root / "gtFine" / split / city
            d_img.mkdir(parents=True, exist_ok=True)
            d_gt.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_image(k, hw, pattern)).save(d_img / f"{stem}_leftImg8bit.png")
            Image.fromarray(_to_label_ids(_train_label(k, hw))).save(d_gt / f"{stem}_gtFine_labelIds.png")
        k0 += n
    return root


def write_prepared(
    root: Path,
    splits: dict[str, int],
    hw=(64, 128),
    pattern: str = "constant",
    quality: int = 95,
    label_format: str = "png",
) -> Path:
    """ROOT/manifest.json, ROOT/{split}/images/{stem}.jpg, ROOT/{split}/labels/{stem}.png|npy (trainIds)."""
    root = Path(root)
    manifest = {
        "format_version": 1,
        "source": "tests/loader_fixtures.py",
        "image_format": "jpeg",
        "quality": quality,
        "label_encoding": "trainIds",
        "label_format": label_format,
        "size": list(hw),
        "scale": None,
        "splits": {},
    }
    k0 = 0
    for split, n in splits.items():
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "labels").mkdir(parents=True, exist_ok=True)
        stems = []
        for k in range(k0, k0 + n):
            stem = stem_of(k)
            Image.fromarray(_image(k, hw, pattern)).save(
                root / split / "images" / f"{stem}.jpg", quality=quality
            )
            if label_format == "npy":
                np.save(root / split / "labels" / f"{stem}.npy", _train_label(k, hw))
            else:
                Image.fromarray(_train_label(k, hw)).save(root / split / "labels" / f"{stem}.png")
            stems.append(stem)
        manifest["splits"][split] = {"count": n, "files": sorted(stems)}
        k0 += n
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return root


def loader_cfg(root, backend: str, *extra: str):
    """The loader tests' config: tiny crop and batches, one worker / thread; `extra` overrides win."""
    from cityseg_fast.config import load_config

    return load_config(
        [],
        [
            f"data.root={root}",
            f"loader.backend={backend}",
            "data.crop=[32,64]",
            "loader.batch_size=2",
            "loader.num_workers=1",
            "loader.num_threads=1",
            *extra,
        ],
    )


def sample_number(stem: str) -> int:
    """k back from stem_of(k)."""
    return int(stem.split("_")[1])


class Slowed:
    """A real loader whose every batch comes `sleep_s` late; `slept` holds each sleep as it really was."""

    def __init__(self, inner, sleep_s: float) -> None:
        self.inner, self.sleep_s, self.slept = inner, sleep_s, []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        for batch in self.inner:
            t0 = time.perf_counter()
            time.sleep(self.sleep_s)
            self.slept.append(time.perf_counter() - t0)
            yield batch


def slow_loaders(monkeypatch, sleep_s: float) -> list[Slowed]:
    """Every loader built from now on (data.factory.build_loader) is Slowed by `sleep_s`; the list fills
    with them as they are built. The package imports build_loader by name, so every module that holds it
    is patched."""
    import sys

    from cityseg_fast.data import factory

    made, real = [], factory.build_loader

    def slowed(*args, **kwargs):
        made.append(Slowed(real(*args, **kwargs), sleep_s))
        return made[-1]

    for name, module in list(sys.modules.items()):
        if name.startswith("cityseg_fast") and getattr(module, "build_loader", None) is real:
            monkeypatch.setattr(module, "build_loader", slowed)
    return made

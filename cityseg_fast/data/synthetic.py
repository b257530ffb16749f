"""Procedural street scenes written in the exact Cityscapes layout: a learnable, login-free stand-in.

Each frame is a perspective street: sky, a skyline of buildings with windows, a road with lane
markings running to a vanishing point, sidewalks, terrain/vegetation verges, walls, fences and guard
rails, trees, poles carrying signs and traffic lights, and cars, trucks, buses, trains, people and
riders on bicycles or motorcycles, sized by their distance. Labels are Cityscapes *labelIds* as the
real gtFine files store them, including ids that are not evaluated (ego vehicle, rectification
border, out of roi, static, dynamic, ground, parking, rail track, guard rail, bridge, tunnel,
polegroup, caravan, trailer) so the id -> trainId mapping is exercised.

Colour alone is a weak cue by design: road, sidewalk and terrain share greys and browns, building,
wall and fence share one palette, overcast skies are grey like façades, vehicles and clothes take
any colour, and every frame has its own brightness, tint, side light, cast shadows, noise and blur.
Spatial context (above/below the horizon, shapes, position relative to the road) is what separates
the classes, so a small CNN beats the best per-pixel colour classifier (`colour_baseline_miou`).

Determinism: frame i of split s in a dataset with seed S is rendered from `frame_seed(S, s, i)` by
the pure function `render_frame`, so the bytes do not depend on the number of workers.
Test-split frames carry full labels too (the real test split's labels are blank); that lets the
synthetic test split be evaluated.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from cityseg_fast import labels as L
from cityseg_fast.data.parallel import run_parallel
from cityseg_fast.data.scene import render_frame
from cityseg_fast.diskio import atomic_path, make_dirs
from cityseg_fast.hardware import cpu_count
from cityseg_fast.paths import check_out_dir

# Real Cityscapes city names per split (the synthetic frames cycle through them).
CITIES: dict[str, tuple[str, ...]] = {
    "train": (
        "aachen", "bochum", "bremen", "cologne", "darmstadt", "dusseldorf", "erfurt", "hamburg", "hanover",
        "jena", "krefeld", "monchengladbach", "strasbourg", "stuttgart", "tubingen", "ulm", "weimar", "zurich",
    ),
    "val": ("frankfurt", "lindau", "munster"),
    "test": ("berlin", "bielefeld", "bonn", "leverkusen", "mainz", "munich"),
}
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
ANNOTATED_FRAME = 19  # gtFine annotates the 20th frame of each 30-frame snippet: *_000019_*

# PNG zlib level: 1 keeps synthesis fast; decoding cost (what loaders pay) barely depends on it.
PNG_COMPRESS_LEVEL = 1

ID = L.NAME_TO_LABEL_ID


def stem_for(split: str, index: int) -> tuple[str, str]:
    """(city, stem) of frame `index` of `split`: "{city}_{seq:06d}_{frame:06d}"."""
    cities = CITIES[split]
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_{ANNOTATED_FRAME:06d}"


def frame_seed(seed: int, split: str, index: int) -> int:
    """The render seed of one frame: a function of (dataset seed, split, index) only."""
    return int(np.random.SeedSequence([seed, SPLIT_CODES[split], index]).generate_state(1, np.uint64)[0])


# ----------------------------------------------------------------------------------------------
# Writing a dataset.
# ----------------------------------------------------------------------------------------------


def frame_paths(out: Path, split: str, index: int) -> dict[str, Path]:
    city, stem = stem_for(split, index)
    gt = Path(out) / "gtFine" / split / city
    return {
        "image": Path(out) / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
        "labelIds": gt / f"{stem}_gtFine_labelIds.png",
        "color": gt / f"{stem}_gtFine_color.png",
        "instanceIds": gt / f"{stem}_gtFine_instanceIds.png",
    }


def _save_png(img: Image.Image, path: Path) -> None:
    """Write to a temporary name, then rename: a killed run never leaves a half-written PNG, a full disk
    is one line naming the file (diskio.py)."""
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


_COLOR_PAL = None


def _write_frame(task: tuple[str, str, int, int, tuple[int, int]]) -> str:
    global _COLOR_PAL
    out, split, index, seed, size = task
    rgb, lab = render_frame(frame_seed(seed, split, index), size)
    paths = frame_paths(Path(out), split, index)
    for p in paths.values():
        make_dirs(p.parent)
    if _COLOR_PAL is None:
        _COLOR_PAL = L.label_id_palette()
    _save_png(Image.fromarray(rgb, "RGB"), paths["image"])
    _save_png(Image.fromarray(lab, "L"), paths["labelIds"])
    # gtFine colour images are RGBA in the real dataset.
    colour = np.concatenate([_COLOR_PAL[lab], np.full(lab.shape + (1,), 255, np.uint8)], axis=2)
    _save_png(Image.fromarray(colour, "RGBA"), paths["color"])
    # 16-bit like the real files. Every pixel carries its class id (< 1000), which is how Cityscapes marks
    # regions without an instance annotation: the official evaluation script reads these files.
    _save_png(Image.fromarray(lab.astype(np.uint16)), paths["instanceIds"])
    return split


def _frame_name(task: tuple[str, str, int, int, tuple[int, int]]) -> str:
    out, split, index = task[:3]
    return str(frame_paths(Path(out), split, index)["image"])


def write_synthetic(
    out: Path,
    train: int,
    val: int,
    test: int,
    size: tuple[int, int],
    seed: int,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Write train/val/test frames under `out` in the Cityscapes layout; returns a summary dict."""

    out = check_out_dir(out, "--out")
    counts = {"train": train, "val": val, "test": test}
    if any(n < 0 for n in counts.values()):
        raise ValueError(f"frame counts must be >= 0, got {counts}")
    tasks = [(str(out), s, i, seed, tuple(size)) for s, n in counts.items() for i in range(n)]
    workers = max(1, min(workers or cpu_count(), len(tasks) or 1))
    t0 = time.perf_counter()
    run_parallel(_write_frame, tasks, workers, progress, "synth", _frame_name)
    wall = time.perf_counter() - t0
    return {
        "out": str(out),
        "counts": counts,
        "size": list(size),
        "seed": seed,
        "workers": workers,
        "wall_s": wall,
        "frames_per_s": len(tasks) / wall if wall > 0 else None,
        "test_labels": "full (synthetic test frames are labelled, unlike the real test split)",
    }


# ----------------------------------------------------------------------------------------------
# The per-pixel colour baseline: what colour alone can do on these scenes.
# ----------------------------------------------------------------------------------------------


def colour_baseline_miou(
    train: Iterable[tuple[np.ndarray, np.ndarray]], val: Iterable[tuple[np.ndarray, np.ndarray]], bins: int = 32
) -> dict:
    """Fit the Bayes-optimal per-pixel colour classifier (class histogram per quantised RGB cell,
    argmax) on `train` (rgb, labelIds) frames; return {"miou", "per_class_iou", "acc"} on `val` over
    the 19 classes (fractions; None for a class in neither labels nor predictions).

    With `bins` levels per channel this is the best any classifier that sees one pixel's colour
    can do (up to quantisation), so a model that beats it is using spatial context.
    """
    q = 256 // bins
    n_cells = bins**3
    counts = np.zeros((n_cells, L.NUM_CLASSES), np.int64)

    def cells(rgb: np.ndarray) -> np.ndarray:
        c = (rgb // q).astype(np.int64)
        return (c[..., 0] * bins + c[..., 1]) * bins + c[..., 2]

    for rgb, lab in train:
        t = L.ID_TO_TRAINID[lab].ravel()
        keep = t < L.NUM_CLASSES
        flat = cells(rgb).ravel()[keep] * L.NUM_CLASSES + t[keep].astype(np.int64)
        counts += np.bincount(flat, minlength=n_cells * L.NUM_CLASSES).reshape(n_cells, L.NUM_CLASSES)
    # Cells never seen in training predict the most common class overall.
    predict = np.where(counts.sum(1) > 0, counts.argmax(1), counts.sum(0).argmax())
    conf = np.zeros((L.NUM_CLASSES, L.NUM_CLASSES), np.int64)
    for rgb, lab in val:
        t = L.ID_TO_TRAINID[lab].ravel()
        keep = t < L.NUM_CLASSES
        p = predict[cells(rgb).ravel()[keep]]
        conf += np.bincount(t[keep].astype(np.int64) * L.NUM_CLASSES + p, minlength=L.NUM_CLASSES**2).reshape(
            L.NUM_CLASSES, L.NUM_CLASSES
        )
    inter = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - inter
    present = conf.sum(1) > 0
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    return {
        "miou": float(np.nanmean(np.where(present, iou, np.nan))),
        "per_class_iou": [None if np.isnan(v) else float(v) for v in iou],
        "acc": float(inter.sum() / max(1, conf.sum())),
    }

"""The painter's kit of the synthetic scenes: a canvas that keeps pixels and labels together, and the
colour families (greys, buildings, grounds, vegetation, vivid objects) that make colour a weak cue."""

from __future__ import annotations

import numpy as np
from PIL import Image

from cityseg_fast import labels as L

ID = L.NAME_TO_LABEL_ID


class _Canvas:
    """Label (labelIds) and float RGB layers painted together, far to near."""

    def __init__(self, h: int, w: int, rng: np.random.Generator):
        self.h, self.w, self.rng = h, w, rng
        self.label = np.zeros((h, w), np.uint8)
        self.rgb = np.zeros((h, w, 3), np.float32)

    def _box(self, x0: float, y0: float, x1: float, y1: float):
        ix0, iy0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
        ix1, iy1 = min(int(np.ceil(x1)), self.w), min(int(np.ceil(y1)), self.h)
        if ix1 <= ix0 or iy1 <= iy0:
            return None
        return slice(iy0, iy1), slice(ix0, ix1)

    def paint(self, mask_sl, mask: np.ndarray | None, label_id: int, colour, shade: float = 0.0) -> None:
        """Set label and colour on `mask` (None = whole box) inside box `mask_sl`; `shade` darkens downwards."""
        ys, xs = mask_sl
        col = np.asarray(colour, np.float32)
        n = ys.stop - ys.start
        if shade:
            ramp = (1.0 - shade * np.linspace(0.0, 1.0, n, dtype=np.float32))[:, None, None]
            patch = np.broadcast_to(col * ramp, (n, xs.stop - xs.start, 3))
        else:
            patch = np.broadcast_to(col, (n, xs.stop - xs.start, 3))
        if mask is None:
            self.label[ys, xs] = label_id
            self.rgb[ys, xs] = patch
        else:
            self.label[ys, xs][mask] = label_id
            self.rgb[ys, xs][mask] = patch[mask]

    def rect(self, x0, y0, x1, y1, label_id, colour, shade=0.0) -> None:
        b = self._box(x0, y0, x1, y1)
        if b is not None:
            self.paint(b, None, label_id, colour, shade)

    def ellipse(self, cx, cy, rx, ry, label_id, colour, ring: float = 0.0, ragged: float = 0.0) -> None:
        """Filled ellipse; `ring` > 0 keeps only the outer band of that relative width; `ragged` frays the edge."""
        b = self._box(cx - rx, cy - ry, cx + rx + 1, cy + ry + 1)
        if b is None:
            return
        ys, xs = b
        yy = (np.arange(ys.start, ys.stop, dtype=np.float32)[:, None] - cy) / max(ry, 0.5)
        xx = (np.arange(xs.start, xs.stop, dtype=np.float32)[None, :] - cx) / max(rx, 0.5)
        r2 = xx * xx + yy * yy
        if ragged:
            r2 = r2 + ragged * self.rng.standard_normal(r2.shape, dtype=np.float32)
        mask = r2 <= 1.0
        if ring:
            mask &= r2 >= (1.0 - ring) ** 2
        self.paint(b, mask, label_id, colour)


def _lowfreq(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth noise field (H x W float32, ~N(0,1)) from a coarse grid upsampled bilinearly."""
    gh, gw = max(2, cells * h // max(h, w) + 2), cells + 2
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((w, h), Image.BILINEAR))


def _grey(rng, lo, hi, tint=8.0):
    g = rng.uniform(lo, hi)
    return np.clip(g + rng.uniform(-tint, tint, 3), 0, 255)


def _building_colour(rng):
    kind = rng.integers(4)
    if kind == 0:
        return _grey(rng, 70, 210)
    base = ((190, 170, 140), (150, 85, 65), (215, 210, 200))[kind - 1]
    return np.clip(np.asarray(base) * rng.uniform(0.6, 1.15) + rng.uniform(-15, 15, 3), 0, 255)


def _ground_colour(rng, kind: str):
    """Road, sidewalk and terrain draw from overlapping grey/brown ranges on purpose."""
    if kind == "road":
        return _grey(rng, 60, 150, 10)
    if kind == "sidewalk":
        if rng.random() < 0.35:  # red/brown pavers
            return np.clip(np.asarray((150, 115, 100)) * rng.uniform(0.7, 1.2), 0, 255)
        return _grey(rng, 85, 175, 12)
    # terrain: dry grass, dirt, gravel
    base = ((125, 120, 75), (120, 100, 80), (110, 110, 100))[rng.integers(3)]
    return np.clip(np.asarray(base) * rng.uniform(0.7, 1.25) + rng.uniform(-15, 15, 3), 0, 255)


def _vegetation_colour(rng):
    return np.clip(np.asarray((70, 105, 45)) * rng.uniform(0.55, 1.35) + rng.uniform(-20, 20, 3), 0, 255)


def _vivid(rng):
    """Vehicle paint / clothing: anything, biased to the greys, black and white of real traffic."""
    if rng.random() < 0.5:
        return _grey(rng, 15, 235, 6)
    return rng.uniform(10, 240, 3)

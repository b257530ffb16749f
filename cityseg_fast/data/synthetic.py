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

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from cityseg_fast.data import labels as L
from cityseg_fast.data.parallel import run_parallel
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
# Rendering. Coordinates: H x W image, horizon row `hz`, vanishing column `vx`. A ground point at
# lateral offset u (pixels per pixel below the horizon) and row y sits at x = vx + u * (y - hz).
# ----------------------------------------------------------------------------------------------


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


class _Scene:
    def __init__(self, rng: np.random.Generator, h: int, w: int):
        self.rng, self.h, self.w = rng, h, w
        self.c = _Canvas(h, w, rng)
        self.hz = h * rng.uniform(0.36, 0.5)  # horizon row
        self.vx = w * rng.uniform(0.4, 0.6)  # vanishing column
        depth = h - self.hz
        self.rl = w * rng.uniform(0.3, 0.55) / depth  # road half-widths (lateral slope units)
        self.rr = w * rng.uniform(0.3, 0.55) / depth
        self.sl = self.rl * rng.uniform(0.25, 0.6)  # sidewalk widths
        self.sr = self.rr * rng.uniform(0.25, 0.6)
        # pixels per metre at row y: the road (about 9 m across) spans (rl + rr) * (y - hz) pixels.
        self.ppm_k = (self.rl + self.rr) / 9.0

    def ppm(self, y: float) -> float:
        return max(y - self.hz, 0.5) * self.ppm_k

    def ground_x(self, u: float, y: float) -> float:
        return self.vx + u * (y - self.hz)

    # --- background -------------------------------------------------------------------------
    def background(self) -> None:
        rng, h, w, c = self.rng, self.h, self.w, self.c
        hz = int(round(self.hz))
        # Sky: blue or overcast grey (as bright as pale façades), brighter towards the horizon.
        sky = _grey(rng, 165, 235, 5) if rng.random() < 0.4 else np.asarray((105, 150, 215)) * rng.uniform(0.8, 1.15)
        ramp = np.linspace(0.85, 1.08, max(hz, 1), dtype=np.float32)[:, None, None]
        c.label[:hz] = ID["sky"]
        c.rgb[:hz] = np.clip(np.asarray(sky, np.float32) * ramp, 0, 255)

        y = np.arange(hz, h, dtype=np.float32)[:, None]
        x = np.arange(w, dtype=np.float32)[None, :]
        u = (x - self.vx) / np.maximum(y - self.hz, 0.5)  # lateral slope of every ground pixel
        zone = np.full(u.shape, 3, np.uint8)  # 0 road, 1 sidewalk left, 2 sidewalk right, 3 beyond
        zone[(u > -self.rl - self.sl) & (u < -self.rl)] = 1
        zone[(u >= self.rr) & (u < self.rr + self.sr)] = 2
        zone[(u >= -self.rl) & (u < self.rr)] = 0
        sub_lab = c.label[hz:]
        sub_rgb = c.rgb[hz:]
        road_c = _ground_colour(rng, "road")
        sub_lab[zone == 0], sub_rgb[zone == 0] = ID["road"], road_c
        for z, lab_name in ((1, "sidewalk"), (2, "sidewalk")):
            lab = ID["ground"] if rng.random() < 0.08 else ID[lab_name]
            sub_lab[zone == z], sub_rgb[zone == z] = lab, _ground_colour(rng, "sidewalk")
        # Beyond the sidewalks: building fronts, terrain or vegetation, one choice per side.
        for side in (-1, 1):
            mask = (zone == 3) & ((u < 0) if side < 0 else (u > 0))
            kind = rng.choice(["building", "terrain", "vegetation"], p=[0.55, 0.3, 0.15])
            colour = {"building": _building_colour, "vegetation": _vegetation_colour}.get(
                kind, lambda r: _ground_colour(r, "terrain")
            )(rng)
            sub_lab[mask], sub_rgb[mask] = ID[kind], colour
        self._road_details(u, y, sub_lab, sub_rgb, road_c)

    def _road_details(self, u, y, sub_lab, sub_rgb, road_c) -> None:
        rng = self.rng
        inv_depth = 1.0 / np.maximum(y - self.hz, 0.5)  # ~ distance along the road
        period = rng.uniform(0.012, 0.03)
        dash = (inv_depth / period) % 1.0 < 0.5
        # Lane markings: white/yellow dashes along a line of constant u (labelled road, as in gtFine).
        mark_c = np.asarray((235, 235, 225) if rng.random() < 0.8 else (225, 200, 90), np.float32)
        centre = (self.rr - self.rl) / 2
        for uc in (centre, centre - self.rl * 0.5, centre + self.rr * 0.5)[: rng.integers(1, 4)]:
            line = (np.abs(u - uc) < 0.012 * (self.rl + self.rr)) & dash & (sub_lab == ID["road"])
            sub_rgb[line] = mark_c
        # Parking strip along one kerb, sometimes a rail track down the middle.
        if rng.random() < 0.3:
            band = (u > self.rr * 0.75) & (u < self.rr) & (inv_depth < rng.uniform(0.01, 0.05))
            sub_lab[band], sub_rgb[band] = ID["parking"], np.clip(road_c * rng.uniform(0.9, 1.2), 0, 255)
        if rng.random() < 0.1:
            band = np.abs(u - centre) < self.rl * 0.15
            sub_lab[band] = ID["rail track"]
            sub_rgb[band] = _grey(rng, 70, 120)
        # Sidewalk tiles: a grid in (u, 1/depth) ground coordinates darkens the joints.
        walk = (sub_lab == ID["sidewalk"]) & (((inv_depth / (period * 0.25)) % 1.0 < 0.12) | ((u * 8.0) % 1.0 < 0.06))
        sub_rgb[walk] *= 0.8

    def skyline(self) -> None:
        """Buildings above the horizon: blocks of random widths, taller towards the image sides."""
        rng, c, hz = self.rng, self.c, self.hz
        x = 0.0
        while x < self.w:
            bw = self.w * rng.uniform(0.04, 0.16)
            if rng.random() < 0.12:  # a gap shows the sky
                x += bw
                continue
            side = min(abs(x + bw / 2 - self.vx) / (self.w / 2), 1.0)
            top = hz - hz * rng.uniform(0.15, 0.5) * (0.35 + 1.1 * side)
            lab = ID["building"] if rng.random() < 0.93 else ID["wall"]
            col = _building_colour(rng)
            c.rect(x, top, x + bw, hz + 1, lab, col, shade=rng.uniform(-0.1, 0.2))
            self._windows(x, top, bw, hz - top, col)
            x += bw

    def _windows(self, x0, top, bw, bh, col) -> None:
        rng, c = self.rng, self.c
        if bh < 8 or bw < 8:
            return
        nx, ny = rng.integers(2, 7), rng.integers(2, 9)
        win = np.clip(np.asarray(col) * rng.uniform(0.3, 0.7) + rng.uniform(-10, 25, 3), 0, 255)
        wx, wy = bw / nx, bh / ny
        for i in range(nx):
            for j in range(ny - 1):
                c.rect(x0 + (i + 0.25) * wx, top + (j + 0.3) * wy, x0 + (i + 0.75) * wx, top + (j + 0.8) * wy,
                       ID["building"], win)

    def barriers(self) -> None:
        """Walls, fences and guard rails standing on the sidewalks' far edges, some stretches per side."""
        rng, c = self.rng, self.c
        for side in (-1, 1):
            edge_u = -(self.rl + self.sl) if side < 0 else self.rr + self.sr
            for _ in range(rng.integers(0, 3)):
                kind = rng.choice(["wall", "fence", "guard rail"], p=[0.4, 0.45, 0.15])
                y_a, y_b = sorted(rng.uniform(self.hz + 0.02 * self.h, self.h, 2))
                height_m = {"wall": rng.uniform(0.8, 2.5), "fence": rng.uniform(1.0, 2.0), "guard rail": 0.8}[kind]
                col = _building_colour(rng) if kind == "wall" else _grey(rng, 60, 170, 20)
                xa, xb = self.ground_x(edge_u, y_a), self.ground_x(edge_u, y_b)
                # Rasterise as vertical strips: ground row and height both follow the perspective.
                n = max(int(abs(xb - xa) / 3), 1)
                for t in np.linspace(0, 1, n, endpoint=False):
                    yg = y_a + (y_b - y_a) * t
                    x0 = xa + (xb - xa) * t
                    top = yg - height_m * self.ppm(yg)
                    x1 = x0 + (xb - xa) / n
                    c.rect(min(x0, x1), top, max(x0, x1) + 1, yg, ID[kind], col * rng.uniform(0.93, 1.07))
                    if kind == "fence" and int(t * n) % 3 == 0:  # see-through gaps between boards
                        c.rect(min(x0, x1), top, max(x0, x1) + 1, yg, ID[kind], col * 0.55)

    # --- objects ------------------------------------------------------------------------------
    def objects(self) -> None:
        rng = self.rng
        hz, h = self.hz, self.h
        items: list[tuple[float, str, float]] = []  # (ground row, kind, lateral u)
        lo = hz + 0.04 * (h - hz)

        def row():
            return hz + (h - hz) * rng.uniform(0.04, 1.0) ** 1.6 + 1  # more far away than near

        for _ in range(rng.integers(2, 8)):
            items.append((row(), "car", rng.uniform(-self.rl * 0.85, self.rr * 0.85)))
        for kind, p in (("truck", 0.45), ("bus", 0.35), ("train", 0.1), ("caravan", 0.08), ("trailer", 0.08)):
            if rng.random() < p:
                items.append((row(), kind, rng.uniform(-self.rl * 0.7, self.rr * 0.7)))
        for _ in range(rng.integers(1, 6)):
            side = rng.choice([-1, 1])
            u = -(self.rl + rng.uniform(0.1, 0.9) * self.sl) if side < 0 else self.rr + rng.uniform(0.1, 0.9) * self.sr
            items.append((row(), "person", u))
        for _ in range(rng.integers(0, 3)):
            items.append((row(), rng.choice(["bicycle", "motorcycle"]),
                          rng.uniform(-self.rl, self.rr) * rng.uniform(0.6, 1.0)))
        for _ in range(rng.integers(2, 7)):
            side = rng.choice([-1, 1])
            u = -(self.rl + 0.05 * self.sl) if side < 0 else self.rr + 0.05 * self.sr
            items.append((row(), rng.choice(["pole", "tree", "tree", "static", "dynamic"]), u))
        items = [it for it in items if it[0] > lo]
        for y, kind, u in sorted(items, key=lambda it: it[0]):
            getattr(self, "_" + kind.replace(" ", "_"))(self.ground_x(u, y), y, self.ppm(y))

    def _car(self, x, y, m, lab="car", size=(1.8, 1.5)) -> None:
        rng, c = self.rng, self.c
        wm = size[0] * rng.uniform(0.95, 2.4)  # rear view .. side view
        bw, bh = wm * m, size[1] * m
        col = _vivid(rng)
        c.rect(x - bw / 2, y - bh * 0.6, x + bw / 2, y - bh * 0.12, ID[lab], col, shade=0.25)
        c.rect(x - bw * 0.38, y - bh, x + bw * 0.34, y - bh * 0.58, ID[lab], col * 0.9)
        c.rect(x - bw * 0.33, y - bh * 0.94, x + bw * 0.29, y - bh * 0.64, ID[lab], _grey(rng, 30, 90))  # glass
        for wx in (x - bw * 0.33, x + bw * 0.33):
            c.ellipse(wx, y - bh * 0.12, bh * 0.14, bh * 0.13, ID[lab], _grey(rng, 10, 40))

    def _truck(self, x, y, m) -> None:
        rng, c = self.rng, self.c
        bw, bh = rng.uniform(2.4, 7.0) * m, rng.uniform(2.8, 3.6) * m
        c.rect(x - bw / 2, y - bh, x + bw / 2, y - 0.35 * m, ID["truck"], _vivid(rng), shade=0.2)
        c.rect(x + bw / 2 - 1.9 * m, y - 0.65 * bh, x + bw / 2, y - 0.35 * m, ID["truck"], _vivid(rng))
        for wx in (x - bw * 0.35, x + bw * 0.35):
            c.ellipse(wx, y - 0.4 * m, 0.45 * m, 0.45 * m, ID["truck"], _grey(rng, 10, 40))

    def _bus(self, x, y, m) -> None:
        rng, c = self.rng, self.c
        bw, bh = rng.uniform(2.5, 11.0) * m, rng.uniform(2.9, 3.3) * m
        col = _vivid(rng)
        c.rect(x - bw / 2, y - bh, x + bw / 2, y - 0.3 * m, ID["bus"], col, shade=0.15)
        n = max(int(bw / (1.4 * m)), 1)
        for i in range(n):  # a band of windows
            wx = x - bw / 2 + (i + 0.1) * bw / n
            c.rect(wx, y - bh * 0.85, wx + 0.8 * bw / n, y - bh * 0.5, ID["bus"], _grey(rng, 25, 80))

    def _train(self, x, y, m) -> None:
        rng, c = self.rng, self.c
        bw, bh = rng.uniform(12, 30) * m, 3.8 * m
        col = _vivid(rng)
        c.rect(x - bw / 2, y - bh, x + bw / 2, y, ID["train"], col, shade=0.1)
        c.rect(x - bw / 2, y - bh * 0.8, x + bw / 2, y - bh * 0.55, ID["train"], _grey(rng, 30, 90))

    def _caravan(self, x, y, m) -> None:
        self._car(x, y, m, "caravan", (2.2, 2.6))

    def _trailer(self, x, y, m) -> None:
        rng = self.rng
        self.c.rect(x - 1.2 * m, y - 1.8 * m, x + rng.uniform(1.2, 4) * m, y - 0.3 * m, ID["trailer"], _vivid(rng))

    def _person(self, x, y, m, lab="person", height=None) -> None:
        rng, c = self.rng, self.c
        hm = (height or rng.uniform(1.5, 1.95)) * m
        w = 0.45 * m
        c.rect(x - w / 2, y - hm * 0.48, x - w * 0.05, y, ID[lab], _vivid(rng) * 0.6)  # legs
        c.rect(x + w * 0.05, y - hm * 0.48, x + w / 2, y, ID[lab], _vivid(rng) * 0.6)
        c.rect(x - w / 2, y - hm * 0.83, x + w / 2, y - hm * 0.45, ID[lab], _vivid(rng))  # torso
        skin = np.asarray((205, 165, 135)) * rng.uniform(0.45, 1.1)
        c.ellipse(x, y - hm * 0.91, w * 0.32, hm * 0.09, ID[lab], skin)

    def _two_wheeler(self, x, y, m, kind: str) -> None:
        rng, c = self.rng, self.c
        r = (0.34 if kind == "bicycle" else 0.32) * m
        span = (1.05 if kind == "bicycle" else 1.4) * m * rng.uniform(0.3, 1.0)  # foreshortened
        frame_c = _grey(rng, 15, 80) if kind == "bicycle" else _vivid(rng)
        for wx in (x - span / 2, x + span / 2):
            c.ellipse(wx, y - r, r, r, ID[kind], _grey(rng, 10, 50), ring=0.25 if kind == "bicycle" else 0.0)
        if kind == "bicycle":
            c.rect(x - span / 2, y - r - 0.06 * m, x + span / 2, y - r + 0.06 * m, ID[kind], frame_c)
            c.rect(x - 0.04 * m, y - 2.4 * r, x + 0.04 * m, y - r, ID[kind], frame_c)
        else:
            c.rect(x - span * 0.4, y - 2.6 * r, x + span * 0.4, y - r, ID[kind], frame_c, shade=0.3)
        if rng.random() < 0.85:  # a rider sits on it
            self._person(x, y - 1.4 * r, m, "rider", height=rng.uniform(1.2, 1.45))

    def _bicycle(self, x, y, m) -> None:
        self._two_wheeler(x, y, m, "bicycle")

    def _motorcycle(self, x, y, m) -> None:
        self._two_wheeler(x, y, m, "motorcycle")

    def _pole(self, x, y, m) -> None:
        rng, c = self.rng, self.c
        hm = rng.uniform(3.0, 7.0) * m
        pw = max(0.14 * m, 1.0)
        lab = ID["polegroup"] if rng.random() < 0.05 else ID["pole"]
        c.rect(x - pw / 2, y - hm, x + pw / 2, y, lab, _grey(rng, 50, 170), shade=-0.2)
        top = y - hm
        if rng.random() < 0.5:  # traffic light: dark box with one lit lamp
            bw, bh = 0.35 * m, 0.95 * m
            c.rect(x - bw / 2, top, x + bw / 2, top + bh, ID["traffic light"], _grey(rng, 15, 60))
            lamp = ((230, 40, 30), (240, 180, 20), (40, 220, 90))[rng.integers(3)]
            c.ellipse(x, top + bh * (0.2 + 0.3 * rng.integers(3)), bw * 0.3, bw * 0.3, ID["traffic light"], lamp)
            top += bh + 0.2 * m
        if rng.random() < 0.7:  # traffic sign: disc or plate
            face = ((200, 30, 30), (30, 80, 190), (235, 200, 30), (235, 235, 235))[rng.integers(4)]
            s = rng.uniform(0.5, 0.8) * m
            if rng.random() < 0.5:
                c.ellipse(x, top + s, s / 2, s / 2, ID["traffic sign"], face)
            else:
                c.rect(x - s / 2, top + s / 2, x + s / 2, top + 1.4 * s, ID["traffic sign"], face)

    def _tree(self, x, y, m) -> None:
        rng, c = self.rng, self.c
        hm = rng.uniform(4.0, 10.0) * m
        tw = max(0.3 * m, 1.0)
        c.rect(x - tw / 2, y - hm * 0.55, x + tw / 2, y, ID["vegetation"], np.asarray((90, 70, 50)) * rng.uniform(0.5, 1.1))
        crown = _vegetation_colour(rng)
        for _ in range(rng.integers(2, 5)):
            r = hm * rng.uniform(0.18, 0.32)
            cx, cy = x + rng.uniform(-0.5, 0.5) * r, y - hm * 0.7 + rng.uniform(-0.4, 0.3) * r
            c.ellipse(cx, cy, r * rng.uniform(0.8, 1.3), r, ID["vegetation"], crown * rng.uniform(0.85, 1.15), ragged=0.08)

    def _static(self, x, y, m) -> None:  # bins, benches, boxes: labelled "static"
        rng = self.rng
        w, hh = rng.uniform(0.5, 2.0) * m, rng.uniform(0.5, 1.2) * m
        self.c.rect(x - w / 2, y - hh, x + w / 2, y, ID["static"], _vivid(rng) * 0.7)

    def _dynamic(self, x, y, m) -> None:  # prams, carts: labelled "dynamic"
        rng = self.rng
        self.c.ellipse(x, y - 0.45 * m, 0.45 * m, 0.4 * m, ID["dynamic"], _vivid(rng))

    # --- frame furniture and camera -------------------------------------------------------------
    def structures(self) -> None:
        """Rare bridges and tunnels spanning the road."""
        rng, c = self.rng, self.c
        r = rng.random()
        if r < 0.06:
            y0 = self.hz * rng.uniform(0.1, 0.6)
            c.rect(0, y0, self.w, y0 + self.h * rng.uniform(0.04, 0.1), ID["bridge"], _building_colour(rng), shade=0.3)
        elif r < 0.09:
            c.rect(0, 0, self.w, self.hz * rng.uniform(0.2, 0.5), ID["tunnel"], _grey(rng, 40, 110), shade=-0.3)

    def ego_vehicle(self) -> None:
        """The car's own bonnet at the bottom (ego vehicle), 'out of roi' corners, a rectification border."""
        rng, c, h, w = self.rng, self.c, self.h, self.w
        depth = h * rng.uniform(0.06, 0.14)
        x = (np.arange(w, dtype=np.float32) - w / 2) / (w * 0.62)
        top = h - depth * np.clip(1.0 - x * x, 0.0, 1.0)  # bonnet outline per column
        rows = np.arange(h, dtype=np.float32)[:, None]
        start = int(h - depth)
        region = rows[start:] >= top[None, :]
        col = _grey(rng, 10, 60)
        c.label[start:][region] = ID["ego vehicle"]
        c.rgb[start:][region] = col
        corners = (rows[start:] >= h - 0.25 * depth) & (np.abs(x)[None, :] > 0.7)  # the image's bottom corners
        c.label[start:][corners] = ID["out of roi"]
        if rng.random() < 0.5:  # a thin rectification border on the left/right edges
            bw = max(int(w * 0.004), 1)
            for sl in (slice(0, bw), slice(w - bw, w)):
                c.label[:, sl] = ID["rectification border"]
                c.rgb[:, sl] = 0.0

    def camera(self) -> np.ndarray:
        """Lighting, shadows, texture, noise and blur; returns the uint8 image."""
        rng, h, w = self.rng, self.h, self.w
        img = self.c.rgb
        # Cast shadows: a random half-plane over the ground darkens road, sidewalk and cars alike.
        light = np.ones((h, w), np.float32)
        if rng.random() < 0.6:
            yy = np.arange(h, dtype=np.float32)[:, None]
            xx = np.arange(w, dtype=np.float32)[None, :]
            a = rng.uniform(-1.5, 1.5)
            light = np.where((xx - rng.uniform(0.2, 0.8) * w) - a * (yy - self.hz) < 0,
                             rng.uniform(0.45, 0.75), 1.0).astype(np.float32)
            if rng.random() < 0.5:
                light = light[:, ::-1]
            light[: int(self.hz * 0.6)] = 1.0
        # Side light + blotchy texture (weathering, leaves, stains), one field for all classes.
        side = 1.0 + rng.uniform(-0.35, 0.35) * (np.arange(w, dtype=np.float32) / w - 0.5)
        light *= side[None, :]
        light *= 1.0 + 0.12 * _lowfreq(rng, h, w, cells=24)
        veg = self.c.label == ID["vegetation"]
        light[veg] *= 1.0 + 0.25 * rng.standard_normal(int(veg.sum()), dtype=np.float32)  # leafy
        gain = rng.uniform(0.55, 1.35) * rng.uniform(0.88, 1.12, 3).astype(np.float32)  # exposure, white balance
        img *= light[:, :, None] * gain.astype(np.float32)  # one pass over the frame
        # Sensor noise: mostly luminance (one field for all channels: a third of the cost) plus a
        # little colour noise at a quarter resolution.
        noise = rng.standard_normal((h, w), dtype=np.float32) * np.float32(rng.uniform(3.0, 9.0))
        chroma = rng.standard_normal((h // 4 + 1, w // 4 + 1, 3), dtype=np.float32) * np.float32(2.0)
        img += noise[:, :, None]
        img += np.repeat(np.repeat(chroma, 4, 0), 4, 1)[:h, :w]
        np.clip(img, 0, 255, out=img)
        out = Image.fromarray(img.astype(np.uint8), "RGB")
        radius = rng.uniform(0.3, 1.0) * max(h, w) / 1024  # optics blur scales with resolution
        return np.asarray(out.filter(ImageFilter.BoxBlur(radius)))  # one box pass: ~3x cheaper than Gaussian


def render_frame(seed: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic frame: (RGB uint8 HxWx3, labelIds uint8 HxW). A pure function of (seed, size)."""
    h, w = size
    if h < 16 or w < 16:
        raise ValueError(f"frame size {h}x{w} is too small (need at least 16x16)")
    rng = np.random.default_rng(seed)
    s = _Scene(rng, h, w)
    s.background()
    s.skyline()
    s.structures()
    s.barriers()
    s.objects()
    s.ego_vehicle()
    return s.camera(), s.c.label


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
    """Write to a temporary name, then rename: a killed run never leaves a half-written PNG."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    img.save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    os.replace(tmp, path)


_COLOR_PAL = None


def _write_frame(task: tuple[str, str, int, int, tuple[int, int]]) -> str:
    global _COLOR_PAL
    out, split, index, seed, size = task
    rgb, lab = render_frame(frame_seed(seed, split, index), size)
    paths = frame_paths(Path(out), split, index)
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
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
    import time

    from cityseg_fast.hardware import cpu_count

    out = check_out_dir(out, "--out")
    counts = {"train": train, "val": val, "test": test}
    if any(n < 0 for n in counts.values()):
        raise ValueError(f"frame counts must be >= 0, got {counts}")
    tasks = [(str(out), s, i, seed, tuple(size)) for s, n in counts.items() for i in range(n)]
    workers = max(1, min(workers or cpu_count(), len(tasks) or 1))
    t0 = time.perf_counter()
    run_parallel(_write_frame, tasks, workers, progress, "synth")
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

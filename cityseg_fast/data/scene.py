"""One synthetic street scene: `render_frame(seed, size)` paints sky, skyline, road, verges, structures,
objects and the ego vehicle, then applies the camera (light, noise, blur). A pure function of its seed.

Coordinates: H x W image, horizon row `hz`, vanishing column `vx`. A ground point at
lateral offset u (pixels per pixel below the horizon) and row y sits at x = vx + u * (y - hz).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from cityseg_fast.data.scene_paint import (
    ID,
    _building_colour,
    _Canvas,
    _grey,
    _ground_colour,
    _lowfreq,
    _vegetation_colour,
    _vivid,
)


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
        return np.asarray(out.filter(ImageFilter.BoxBlur(radius)))  # one box pass: cheaper than a Gaussian


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

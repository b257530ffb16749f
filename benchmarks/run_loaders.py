"""Loader benchmark: dali (CPU) vs its own decode-only rate vs the torch baseline, side by side.

    PYTHONPATH=. python benchmarks/run_loaders.py [--frames DIR] [--out reports/cpu-loaders] [--rounds 3]

Writes DIR (default /tmp/cityseg-loader-frames): 32 street-like 1024x2048 frames as JPEG q95 with
trainId labels in the prepared layout (generated here so the benchmark needs no download). Then,
for each round, measures every point once in turn (so machine load drifts hit all points alike)
and appends one result row per measurement to OUT/results.jsonl; OUT/README.md gets a table of
medians over rounds and the two target ratios: dali train / dali decode-only (>= 0.85) and
dali train / torch train (>= 2).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dali_stages import STAGES, stage_costs  # noqa: E402  (benchmarks/ is on the path)

from cityseg_fast.bench.loader_bench import MIN_CPU_WINDOW_S, measure_loader  # noqa: E402
from cityseg_fast.config import load_config  # noqa: E402
from cityseg_fast.data.plan import crop_geometry, train_batches  # noqa: E402
from cityseg_fast.data.prepare import LABEL_PNG_LEVEL  # noqa: E402
from cityseg_fast.environment import collect_env  # noqa: E402
from cityseg_fast.results import append_row, read_rows, row_for  # noqa: E402

H, W = 1024, 2048
# trainIds: road 0, sidewalk 1, building 2, vegetation 8, sky 10, car 13, person 11, pole 5
PALETTE = {
    0: (128, 64, 128),
    1: (232, 35, 232),
    2: (70, 70, 70),
    8: (107, 142, 35),
    10: (70, 130, 180),
    13: (0, 0, 142),
    11: (220, 20, 60),
    5: (153, 153, 153),
}


def street_frame(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A street-like frame with texture (JPEG size near real Cityscapes frames) and its trainIds."""
    rng = np.random.default_rng(seed)
    lab = np.full((H, W), 10, np.uint8)  # sky
    horizon = int(rng.integers(380, 520))
    lab[horizon:] = 0  # road
    for side in (0, 1):  # sidewalks
        x0 = 0 if side == 0 else W - int(rng.integers(300, 600))
        lab[horizon + 40 :, x0 : x0 + int(rng.integers(300, 600))] = 1
    x = 0
    while x < W:  # buildings and trees along the horizon
        w = int(rng.integers(120, 400))
        top = int(rng.integers(60, horizon - 40))
        lab[top:horizon, x : x + w] = 2 if rng.random() < 0.7 else 8
        x += w
    for _ in range(int(rng.integers(3, 9))):  # cars, people, poles
        cls = int(rng.choice([13, 13, 11, 5]))
        ch, cw = {13: (180, 380), 11: (260, 90), 5: (500, 30)}[cls]
        s = float(rng.uniform(0.5, 1.4))
        h, w = int(ch * s), int(cw * s)
        y1 = int(rng.integers(horizon + 20, H))
        x1 = int(rng.integers(0, W - w))
        lab[max(0, y1 - h) : y1, x1 : x1 + w] = cls
    rgb = np.zeros((H, W, 3), np.float32)
    for cls, col in PALETTE.items():
        rgb[lab == cls] = col
    yy = np.linspace(0.7, 1.2, H, dtype=np.float32)[:, None, None]
    rgb = rgb * yy + rng.normal(0, 14, (H, W, 3)).astype(np.float32)  # shading and sensor noise
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.8))
    return np.asarray(img), lab


FRAMES_VERSION = 2  # 2: labels at prepare's PNG level (1), as `cityseg prepare` writes them


def make_frames(root: Path, n: int = 32, quality: int = 95) -> Path:
    manifest_path = root / "manifest.json"
    if manifest_path.is_file():
        if json.loads(manifest_path.read_text()).get("frames_version") == FRAMES_VERSION:
            return root
        manifest_path.unlink()  # frames from an older generator: write them again
    (root / "train" / "images").mkdir(parents=True, exist_ok=True)
    (root / "train" / "labels").mkdir(parents=True, exist_ok=True)
    stems = []
    for k in range(n):
        stem = f"benchcity_{k:06d}_000019"
        img, lab = street_frame(k)
        Image.fromarray(img).save(root / "train" / "images" / f"{stem}.jpg", quality=quality)
        Image.fromarray(lab).save(root / "train" / "labels" / f"{stem}.png", compress_level=LABEL_PNG_LEVEL)
        stems.append(stem)
    manifest = {
        "format_version": 1,
        "source": "benchmarks/run_loaders.py street_frame()",
        "frames_version": FRAMES_VERSION,
        "image_format": "jpeg",
        "quality": quality,
        "label_encoding": "trainIds",
        "size": [H, W],
        "scale": None,
        "splits": {"train": {"count": n, "files": stems}},
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return root


def npy_frames(frames: Path) -> Path:
    """The same frames with `.npy` labels (as `prepare --label-format npy` writes them); the images
    are hard links to the same JPEG files."""
    root = frames.with_name(frames.name + "-npy")
    manifest = json.loads((frames / "manifest.json").read_text())
    manifest["label_format"] = "npy"
    if (root / "manifest.json").is_file() and json.loads((root / "manifest.json").read_text()) == manifest:
        return root
    for sub in ("images", "labels"):
        (root / "train" / sub).mkdir(parents=True, exist_ok=True)
    for stem in manifest["splits"]["train"]["files"]:
        img = root / "train" / "images" / f"{stem}.jpg"
        if img.exists():
            img.unlink()
        os.link(frames / "train" / "images" / f"{stem}.jpg", img)
        lab = np.asarray(Image.open(frames / "train" / "labels" / f"{stem}.png"))
        np.save(root / "train" / "labels" / f"{stem}.npy", lab)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return root


def points(frames: Path, batch: int, threads: int, workers: int) -> list[tuple[str, list[str]]]:
    base = [f"data.root={frames}", "data.crop=[512,1024]", f"loader.batch_size={batch}"]
    dali = [*base, "loader.backend=dali", "loader.device=cpu", f"loader.num_threads={threads}"]
    torch = [*base, "loader.backend=torch", f"loader.num_workers={workers}"]
    npy = f"data.root={npy_frames(frames)}"
    return [
        ("dali decode-only", [*dali, "loader.decode_only=true"]),
        ("dali train", dali),
        ("dali train (DALI resize)", [*dali, "loader.resampler=dali"]),
        ("dali train (full decode)", [*dali, "loader.roi=resize"]),
        ("torch decode-only", [*torch, "loader.decode_only=true"]),
        ("torch train", torch),
        ("dali train (npy labels)", [*dali, npy]),
        ("torch train (npy labels)", [*torch, npy]),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", default="/tmp/cityseg-loader-frames")
    ap.add_argument("--out", default=str(ROOT / "reports" / "cpu-loaders"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="DALI CPU threads")
    ap.add_argument("--workers", type=int, default=2, help="torch DataLoader workers")
    ap.add_argument(
        "--from-jsonl", action="store_true", help="no new rounds: rebuild README from OUT/results.jsonl"
    )
    args = ap.parse_args()
    frames = make_frames(Path(args.frames))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "results.jsonl"
    env = collect_env()
    results: dict[str, list[dict]] = {}
    if args.from_jsonl:
        for row in read_rows(jsonl):
            results.setdefault(name_of(row.point), []).append(row.metrics)
        args.rounds = max(len(v) for v in results.values())
    for r in range(0 if args.from_jsonl else args.rounds):
        for name, overrides in points(frames, args.batch_size, args.threads, args.workers):
            cfg = load_config([], overrides)
            m = measure_loader(cfg, args.iters, args.warmup)
            append_row(jsonl, row_for("loader", cfg, m, env=env, point={"round": r}))
            results.setdefault(name, []).append(m)
            if m["cpu_cores_used"] is None:
                raise SystemExit(
                    f"{name}: timed window under {MIN_CPU_WINDOW_S} s, no CPU figure: raise --iters"
                )
            print(
                f"round {r} {name:28s} {m['images_per_s']:7.1f} img/s  p50 {m['latency_ms_p50']:6.1f} ms  "
                f"cpu {m['cpu_cores_used']:.2f} cores, {m['cpu_ms_per_image']:.1f} ms/img",
                flush=True,
            )
    images = sorted((frames / "train" / "images").glob("*.jpg"))[:16]
    labels = [frames / "train" / "labels" / (p.stem + ".png") for p in images]
    plan = [it for b in train_batches(len(images), 0, 1, 0, 0, 1, (0.5, 2.0), 0.5) for it in b]
    geometry = [crop_geometry((H, W), (512, 1024), it.aug) for it in plan]  # the training plan's windows
    npy = [npy_frames(frames) / "train" / "labels" / (p.stem + ".npy") for p in images]
    stages = stage_costs(images, labels, geometry, iters=4, batch_size=8, npy_labels=npy)
    write_readme(out, results, args, stages)
    return 0


def name_of(point: dict) -> str:
    npy = " (npy labels)" if point.get("label_format") == "npy" else ""
    if point["loader"] == "torch":
        return "torch decode-only" if point.get("decode_only") else f"torch train{npy}"
    if point.get("decode_only"):
        return "dali decode-only"
    if point.get("resampler") == "dali":
        return "dali train (DALI resize)"
    return "dali train (full decode)" if point.get("roi") == "resize" else f"dali train{npy}"


def write_readme(out: Path, results: dict[str, list[dict]], args, stages: dict[str, float]) -> None:
    med = {k: statistics.median(m["images_per_s"] for m in v) for k, v in results.items()}

    def mid(v: list[dict], key: str) -> float:
        return statistics.median(m[key] for m in v)

    def paired(a: str, b: str) -> float:
        """Median over rounds of a/b measured in the same round (side by side)."""
        return statistics.median(
            x["images_per_s"] / y["images_per_s"] for x, y in zip(results[a], results[b], strict=True)
        )

    rows = [
        f"| {k} | {med[k]:.1f} | {mid(v, 'cpu_ms_per_image'):.1f} | {mid(v, 'latency_ms_p50'):.0f} | "
        f"{mid(v, 'latency_ms_p99'):.0f} | {mid(v, 'cpu_cores_used'):.2f} | "
        + ", ".join(f"{m['images_per_s']:.0f}" for m in v)
        + " |"
        for k, v in results.items()
    ]
    cpu = {k: mid(v, "cpu_ms_per_image") for k, v in results.items()}
    r_dec = paired("dali train", "dali decode-only")
    r_torch = paired("dali train", "torch train")
    r_dali_resize = paired("dali train (DALI resize)", "dali decode-only")
    r_full = paired("dali train (full decode)", "dali decode-only")
    cpu_dec = cpu["dali decode-only"] / cpu["dali train"]
    cpu_torch = cpu["torch train"] / cpu["dali train"]
    n_dec = paired("dali train (npy labels)", "dali decode-only")
    n_torch = paired("dali train (npy labels)", "torch train (npy labels)")
    n_cpu_dec = cpu["dali decode-only"] / cpu["dali train (npy labels)"]
    n_cpu_torch = cpu["torch train (npy labels)"] / cpu["dali train (npy labels)"]

    def verdict(r: float, goal: float) -> str:
        return "met" if r >= goal else "NOT met"

    s = stages
    tail = s["torch resize/flip"] + s["torch normalize"] + s["torch label NN/flip/int64"]
    ops_train = s["slice decode"] + s["label slice decode"] + tail
    dali_tail = (
        s["+ DALI normalize/flip"]
        - s["slice decode"]
        + s["+ DALI label NN/flip/int64"]
        - s["label slice decode"]
    )
    text = f"""# Loader benchmark on the CPU (this 2-core machine)

Generated by `benchmarks/run_loaders.py` on {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}:

    PYTHONPATH=. python benchmarks/run_loaders.py --rounds {args.rounds} --iters {args.iters} --warmup {args.warmup} \\
        --batch-size {args.batch_size} --threads {args.threads} --workers {args.workers}

Data: 32 street-like 1024x2048 frames, JPEG q95 (about {_mean_kb(Path(args.frames)):.0f} KB each), trainId PNG labels
written as `cityseg prepare` writes them (PNG level {LABEL_PNG_LEVEL}), prepared layout. Training points: random scale
0.5-2.0, 512x1024 crop, flip, ImageNet normalization, padding, labels through the same geometry
(nearest), batch {args.batch_size}, delivered as float channels_last / int64 torch tensors. Decode-only points:
the same backend, files and decoder, full frames, no augmentation, no labels. DALI runs on the CPU
with {args.threads} threads; torch with {args.workers} DataLoader workers (PIL decode, torch resize of the crop window,
uint8 crops to the main process, normalization there). Rounds interleave all points, so machine
load drifts hit all of them alike; ratios are medians over rounds of ratios taken within a round.

| point | images/s (median) | CPU ms / image | batch p50 ms | batch p99 ms | CPU cores busy | images/s per round |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

- `dali train`: the default on the CPU (`loader.resampler=auto`): DALI decodes only the crop window
  of the JPEG and the label window; resize, flip, normalization and padding run in torch
  (`cityseg_fast/data/resample.py`) in the consumer thread, into reused batch buffers.
- `dali train (DALI resize)`: the whole transform in DALI operators (`loader.resampler=dali`),
  the graph a GPU runs, here on CPU operators.
- `dali train (full decode)`: as `dali train`, but the whole frame is decoded (`--roi resize`).
- `(npy labels)`: the same, with `.npy` labels instead of PNG (images: the same files).

## Targets

| target | PNG labels (default) | in CPU time | `.npy` labels | in CPU time |
|---|---|---|---|---|
| dali train >= 0.85 x dali decode-only | **{r_dec:.2f}** ({verdict(r_dec, 0.85)}) | {cpu_dec:.2f} | **{n_dec:.2f}** ({verdict(n_dec, 0.85)}) | {n_cpu_dec:.2f} |
| dali train >= 2 x torch train (same labels) | **{r_torch:.2f}** ({verdict(r_torch, 2)}) | {cpu_torch:.2f} | **{n_torch:.2f}** ({verdict(n_torch, 2)}) | {n_cpu_torch:.2f} |

`.npy` labels: the same frames with labels as `cityseg prepare --label-format npy` writes them
(raw uint8, memory-mapped: a crop reads only its window's rows instead of decoding a PNG).

For reference: with DALI's own resize/normalize the first ratio is {r_dali_resize:.2f}; decoding full frames
instead of the crop window gives {r_full:.2f}.

## Where the time goes

CPU ms per image of each operator, alone, on one thread (`benchmarks/dali_stages.py`),
over the windows the training plan draws for 16 of the frames (scale 0.5-2.0: a window is up to
the whole frame when zooming out, 1/16 of it when zooming in). DALI rows are growing prefixes of
the graph:

| stage | CPU ms / image | what |
|---|---|---|
{chr(10).join(f"| {k} | {v:.1f} | {STAGES[k]} |" for k, v in stages.items())}

What this says about the targets:
- Alone, on one thread, a training sample's operators cost {ops_train:.1f} ms: the window decode
  ({s["slice decode"]:.1f}; zooming out, the window is most of the frame), the label PNG ({s["label slice decode"]:.1f}: a PNG is
  decoded whole even for a small crop) and the tail ({tail:.1f}: resize {s["torch resize/flip"]:.1f}, normalize {s["torch normalize"]:.1f}, labels
  {s["torch label NN/flip/int64"]:.1f}), against {s["full decode"]:.1f} ms for a full-frame decode. A `.npy` label window costs {s["npy label window"]:.1f} ms
  instead of the PNG's {s["label slice decode"]:.1f}. End to end the loader adds its own costs (feeding, scheduling, the
  hand-off; decode-only hands over a 6 MB frame per image): {cpu["dali decode-only"]:.1f} ms of CPU per image for
  decode-only, {cpu["dali train"]:.1f} for training (PNG labels). DALI's threads and the tail thread leave part of a
  core idle in training (cores busy above), which is why the wall-clock ratio trails the CPU-time one.
- In DALI's own CPU operators the same tail costs {dali_tail:.1f} ms (resize {s["+ DALI resize"] - s["slice decode"]:.1f}), more than a
  full decode: that is why the CPU pipeline hands the tail to torch; on a GPU these operators are
  nearly free next to the decode and stay in DALI.
- Against torch, the difference is the work DALI avoids (the window decode instead of the frame)
  and the work it does without processes (no pickling, no shared-memory hand-off). Both backends
  use libjpeg-turbo and the same tail kernels, so on 2 CPU cores the gap is bounded by what the
  window decode and the hand-off save. The issue's spike (168 vs 66 images/s) measured decode +
  crop + flip + normalize without a resize and without labels, against a PIL loader that resized
  with PIL; that baseline is gone (see `results_v1.jsonl`: 38 images/s for the old torch backend).

Raw rows (one per measurement, schema in `cityseg_fast/results/schema.py`): `results.jsonl`.
Rows of the earlier implementation (DALI's own CPU resize, PIL resize in the torch baseline) are
kept in `results_v1.jsonl`.
"""
    (out / "README.md").write_text(text)
    print(text)


def _mean_kb(frames: Path) -> float:
    sizes = [p.stat().st_size for p in (frames / "train" / "images").glob("*.jpg")]
    return sum(sizes) / max(1, len(sizes)) / 1024


if __name__ == "__main__":
    raise SystemExit(main())

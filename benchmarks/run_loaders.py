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
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cityseg_fast.bench.env import collect_env  # noqa: E402
from cityseg_fast.bench.loader_bench import measure_loader, point_of  # noqa: E402
from cityseg_fast.config import config_hash, load_config, to_dict  # noqa: E402
from cityseg_fast.data import dali  # noqa: E402
from cityseg_fast.report.schema import append_row, make_row, read_rows  # noqa: E402

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


def make_frames(root: Path, n: int = 32, quality: int = 95) -> Path:
    if (root / "manifest.json").is_file():
        return root
    (root / "train" / "images").mkdir(parents=True, exist_ok=True)
    (root / "train" / "labels").mkdir(parents=True, exist_ok=True)
    stems = []
    for k in range(n):
        stem = f"benchcity_{k:06d}_000019"
        img, lab = street_frame(k)
        Image.fromarray(img).save(root / "train" / "images" / f"{stem}.jpg", quality=quality)
        Image.fromarray(lab).save(root / "train" / "labels" / f"{stem}.png")
        stems.append(stem)
    manifest = {
        "format_version": 1,
        "source": "benchmarks/run_loaders.py street_frame()",
        "image_format": "jpeg",
        "quality": quality,
        "label_encoding": "trainIds",
        "size": [H, W],
        "scale": None,
        "splits": {"train": {"count": n, "files": stems}},
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return root


def points(frames: Path, batch: int, threads: int, workers: int) -> list[tuple[str, list[str], bool, str]]:
    base = [f"data.root={frames}", "data.crop=[512,1024]", f"loader.batch_size={batch}"]
    dali = [*base, "loader.backend=dali", "loader.device=cpu", f"loader.num_threads={threads}"]
    torch = [*base, "loader.backend=torch", f"loader.num_workers={workers}"]
    return [
        ("dali decode-only", dali, True, "slice"),
        ("dali train (slice decode)", dali, False, "slice"),
        ("dali train (roi resize)", dali, False, "resize"),
        ("torch decode-only", torch, True, "slice"),
        ("torch train", torch, False, "slice"),
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
            results.setdefault(name_of(row["point"]), []).append(row["metrics"])
        args.rounds = max(len(v) for v in results.values())
    for r in range(0 if args.from_jsonl else args.rounds):
        for name, overrides, decode_only, roi in points(frames, args.batch_size, args.threads, args.workers):
            cfg = load_config([], overrides)
            m = measure_loader(cfg, args.iters, args.warmup, decode_only, roi=roi)
            m.pop("description")
            point = {
                **point_of(cfg, decode_only, roi),
                "image_format": "jpeg",
                "quality": 95,
                "round": r,
            }
            append_row(
                jsonl,
                make_row("loader", point, m, config=to_dict(cfg), config_hash=config_hash(cfg), env=env),
            )
            results.setdefault(name, []).append(m)
            print(
                f"round {r} {name:28s} {m['images_per_s']:7.1f} img/s  p50 {m['latency_ms_p50']:6.1f} ms  "
                f"cpu {m['cpu_cores_used']:.2f} cores, {m['cpu_ms_per_image']:.1f} ms/img",
                flush=True,
            )
    images = sorted((frames / "train" / "images").glob("*.jpg"))[:16]
    labels = [frames / "train" / "labels" / (p.stem + ".png") for p in images]
    stages = dali.stage_costs(images, labels, (512, 1024), scale=1.25, iters=4, batch_size=8, num_threads=1)
    write_readme(out, results, args, stages)
    return 0


def name_of(point: dict) -> str:
    if point["loader"] == "torch":
        return "torch decode-only" if point.get("decode_only") else "torch train"
    if point.get("decode_only"):
        return "dali decode-only"
    # rows before the loader point was unified carry roi="slice"; now only the non-default "resize" is named
    return "dali train (roi resize)" if point.get("roi") == "resize" else "dali train (slice decode)"


def write_readme(out: Path, results: dict[str, list[dict]], args, stages: dict[str, float]) -> None:
    med = {k: statistics.median(m["images_per_s"] for m in v) for k, v in results.items()}

    def mid(v: list[dict], key: str) -> float:
        return statistics.median(m[key] for m in v)

    rows = [
        f"| {k} | {med[k]:.1f} | {mid(v, 'cpu_ms_per_image'):.1f} | {mid(v, 'latency_ms_p50'):.0f} | "
        f"{mid(v, 'latency_ms_p99'):.0f} | {mid(v, 'cpu_cores_used'):.2f} | "
        + ", ".join(f"{m['images_per_s']:.0f}" for m in v)
        + " |"
        for k, v in results.items()
    ]
    cpu = {k: mid(v, "cpu_ms_per_image") for k, v in results.items()}
    slice_ratio = med["dali train (slice decode)"] / med["dali decode-only"]
    resize_ratio = med["dali train (roi resize)"] / med["dali decode-only"]
    vs_torch = med["dali train (slice decode)"] / med["torch train"]
    cpu_slice = cpu["dali decode-only"] / cpu["dali train (slice decode)"]
    cpu_torch = cpu["torch train"] / cpu["dali train (slice decode)"]
    text = f"""# Loader benchmark on the CPU (this 2-core machine, shared)

Generated by `benchmarks/run_loaders.py` on {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}:

    PYTHONPATH=. python benchmarks/run_loaders.py --rounds {args.rounds} --iters {args.iters} --warmup {args.warmup} \\
        --batch-size {args.batch_size} --threads {args.threads} --workers {args.workers}

Data: 32 street-like 1024x2048 frames, JPEG q95 (about {_mean_kb(Path(args.frames)):.0f} KB each), trainId PNG labels,
prepared layout. Training points: random scale 0.5-2.0, 512x1024 crop, flip, ImageNet normalization,
padding, labels through the same geometry (nearest), batch {args.batch_size}, delivered as float
channels_last / int64 torch tensors. Decode-only points: the same backend, files and decoder, full
frames, no augmentation, no labels. DALI runs on the CPU with {args.threads} threads; torch with
{args.workers} DataLoader workers (uint8 crops from the workers, normalization in the main process).
Rounds interleave all points; the machine is shared with other engineers, so absolute numbers are
noisy: compare the ratios, which are medians measured in the same run.

| point | images/s (median) | CPU ms / image | batch p50 ms | batch p99 ms | CPU cores busy | images/s per round |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Targets (this run):
- dali train / dali decode-only = **{slice_ratio:.2f}** with slice decoding (target >= 0.85:
  {"met" if slice_ratio >= 0.85 else "NOT met"}); {resize_ratio:.2f} when the full frame is decoded and only the crop
  window resized.
- dali train / torch train = **{vs_torch:.2f}** (target >= 2: {"met" if vs_torch >= 2 else "NOT met"}).
- The same two ratios in CPU time per image (what a loaded machine distorts least):
  {cpu_slice:.2f} and {cpu_torch:.2f}.

Why (see the stage table below): slice decoding does make the decode itself cheaper than a
full-frame decode, but on the CPU DALI's bilinear resize of the window to a 512x1024 crop costs
about as much as decoding, and the label decode, normalization and the int64 cast add the rest.
The full-frame decode-only rate is therefore not reachable with the full augmentation on this
CPU; on a GPU these operators are nearly free next to the decode. The earlier spike's 168 vs 66
images/s measured decode + crop + flip + normalize without a resize and without labels.

Where the DALI CPU time goes (`cityseg_fast.data.dali.stage_costs`: CPU ms per image of growing
prefixes of the training graph, 1 thread, one centre crop window at scale 1.25, 16 of the frames):

| stage | CPU ms / image |
|---|---|
{chr(10).join(f"| {k} | {v:.1f} |" for k, v in stages.items())}

Raw rows (one per measurement, schema in `cityseg_fast/report/schema.py`): `results.jsonl`.
"""
    (out / "README.md").write_text(text)
    print(text)


def _mean_kb(frames: Path) -> float:
    sizes = [p.stat().st_size for p in (frames / "train" / "images").glob("*.jpg")]
    return sum(sizes) / max(1, len(sizes)) / 1024


if __name__ == "__main__":
    raise SystemExit(main())

"""Data benchmark: `synth` frames/s at 1024x2048, and `prepare` pairs/s against the per-core limit.

The limit is measured in the same run on the same files: one core's PNG-decode + JPEG-encode time
per frame (the issue's yardstick), and one core's full per-pair work (image and label decode, id ->
trainId, label PNG + image JPEG encode, writes), each times the usable cores. `prepare` running
on all cores is then compared with both.

    PYTHONPATH=. python benchmarks/run_data.py --frames 48 --out reports/cpu-data

Writes OUT/results.jsonl (one JSON line per measurement, with the environment) and prints a summary.
The machine may be shared: medians of repeats are quoted, and the ratios come from one run. When
other processes load the cores, wall-clock ratios mostly measure the share of the CPU this run got;
the CPU-time ratios (single-core CPU per pair / prepare's CPU per pair, workers included) measure
the parallel implementation's own overhead and stay meaningful.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cityseg_fast import labels as L
from cityseg_fast.data.cityscapes import find_samples
from cityseg_fast.data.prepare import _prepare_one, _Task, prepare_dataset
from cityseg_fast.data.synthetic import frame_seed, render_frame, write_synthetic
from cityseg_fast.environment import collect_env, cpu_count

SIZE = (1024, 2048)


def _median_time(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_synth(work: Path, frames: int, cores: int) -> tuple[list[dict], Path]:
    render_s = [_median_time(lambda i=i: render_frame(frame_seed(0, "train", i), SIZE), 1) for i in range(5)]
    src = work / "src"
    t0 = time.perf_counter()
    write_synthetic(src, train=frames, val=0, test=0, size=SIZE, seed=0, workers=cores, progress=False)
    wall = time.perf_counter() - t0
    rows = [
        {"bench": "synth_render_1core", "size": list(SIZE), "frames": 5,
         "render_ms_median": 1000 * statistics.median(render_s), "frames_per_s": 1 / statistics.median(render_s)},
        {"bench": "synth_write", "size": list(SIZE), "frames": frames, "workers": cores, "wall_s": wall,
         "frames_per_s": frames / wall, "note": "render + 3 PNG files per frame, incl. process-pool start"},
    ]
    return rows, src


def bench_single_core(src: Path, work: Path, n: int) -> dict:
    samples = find_samples(src, "train")[:n]
    dec, enc, lab, full, full_cpu, dec_enc_cpu = [], [], [], [], [], []
    out = work / "single"
    (out / "i").mkdir(parents=True)
    (out / "l").mkdir(parents=True)
    for s in samples:
        t0, c0 = time.perf_counter(), time.process_time()
        im = Image.open(s.image)
        im.load()
        t1 = time.perf_counter()
        im.save(io.BytesIO(), format="JPEG", quality=95)
        t2, c2 = time.perf_counter(), time.process_time()
        dec_enc_cpu.append(c2 - c0)
        lb = Image.open(s.label)
        Image.fromarray(L.ID_TO_TRAINID[np.asarray(lb)]).save(io.BytesIO(), format="PNG", compress_level=1)
        t3, c3 = time.perf_counter(), time.process_time()
        _prepare_one(_Task(s, out / "i" / f"{s.stem}.jpg", out / "l" / f"{s.stem}.png", "jpeg", 95, None, None))
        t4, c4 = time.perf_counter(), time.process_time()
        full_cpu.append(c4 - c3)
        dec.append(t1 - t0)
        enc.append(t2 - t1)
        lab.append(t3 - t2)
        full.append(t4 - t3)
    med = statistics.median
    return {"bench": "prepare_1core_parts", "size": list(SIZE), "pairs": len(samples),
            "png_decode_ms": 1000 * med(dec), "jpeg_encode_ms": 1000 * med(enc),
            "label_decode_map_encode_ms": 1000 * med(lab), "full_pair_ms": 1000 * med(full),
            "png_decode_jpeg_encode_cpu_ms": 1000 * med(dec_enc_cpu), "full_pair_cpu_ms": 1000 * med(full_cpu)}


def _cpu_s() -> float:
    """CPU seconds of this process and its reaped children (the pool's workers, once it is closed)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def bench_prepare(src: Path, work: Path, workers: int, repeats: int, scale: float | None = None) -> dict:
    rates, cpu_per_pair = [], []
    for r in range(repeats):
        out = work / f"prep_{workers}_{scale}_{r}"
        cpu0 = _cpu_s()
        s = prepare_dataset(src, out, splits=("train",), workers=workers, scale=scale, progress=False)
        cpu_per_pair.append((_cpu_s() - cpu0) / s["written"])
        rates.append(s["written"] / s["wall_s"])
        shutil.rmtree(out)
    return {"bench": "prepare", "size": list(SIZE), "scale": scale, "workers": workers, "repeats": repeats,
            "pairs": s["written"], "pairs_per_s_median": statistics.median(rates), "pairs_per_s_all": rates,
            "cpu_ms_per_pair_median": 1000 * statistics.median(cpu_per_pair),
            "note": "wall time of prepare_dataset incl. process-pool start"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=48, help="1024x2048 frames to synthesise and prepare")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="reports/cpu-data")
    args = ap.parse_args()
    cores = cpu_count()
    env = collect_env()
    rows = [{"bench": "machine", "loadavg_start": os.getloadavg()}]
    with tempfile.TemporaryDirectory(prefix="cityseg_data_bench_") as tmp:
        work = Path(tmp)
        synth_rows, src = bench_synth(work, args.frames, cores)
        rows += synth_rows
        parts = bench_single_core(src, work, n=16)
        rows.append(parts)
        full_res = bench_prepare(src, work, cores, args.repeats)
        one = bench_prepare(src, work, 1, 1)
        half = bench_prepare(src, work, cores, args.repeats, scale=0.5)
        limit_issue = cores * 1000 / (parts["png_decode_ms"] + parts["jpeg_encode_ms"])
        limit_full = cores * 1000 / parts["full_pair_ms"]
        full_res.update(limit_png_jpeg_pairs_per_s=limit_issue, limit_full_pair_pairs_per_s=limit_full,
                        efficiency_vs_png_jpeg=full_res["pairs_per_s_median"] / limit_issue,
                        efficiency_vs_full_pair=full_res["pairs_per_s_median"] / limit_full,
                        speedup_vs_1_worker=full_res["pairs_per_s_median"] / one["pairs_per_s_median"],
                        cpu_efficiency_vs_full_pair=parts["full_pair_cpu_ms"] / full_res["cpu_ms_per_pair_median"],
                        cpu_efficiency_vs_png_jpeg=(
                            parts["png_decode_jpeg_encode_cpu_ms"] / full_res["cpu_ms_per_pair_median"]))
        rows += [full_res, one, half, {"bench": "machine", "loadavg_end": os.getloadavg()}]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(out / "results.jsonl", "a") as f:
        for r in rows:
            f.write(json.dumps({**r, "cores": cores, "time": stamp, "env": env}, sort_keys=True) + "\n")
    for r in rows:
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}))


if __name__ == "__main__":
    main()

"""`cityseg bench loader`: the data loader alone — images/s, batch latency percentiles, CPU utilisation.

    cityseg bench loader --data DIR --loader dali --device cpu --crop 512x1024 --batch-size 8 --iters 50
    cityseg bench loader --data DIR --loader dali --decode-only --json     # the decode limit

The loop only pulls batches (the consumer does no work), so the numbers are the loader's ceiling
at this setting. `--decode-only` runs the same backend over the same files with the same decoder
but decodes full frames and does nothing else: the rate a loader is compared with.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from cityseg_fast.commands.common import add_config_args, config_from_args
from cityseg_fast.config import Config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="DIR", help="dataset root (raw Cityscapes or prepared); sets data.root")
    p.add_argument("--loader", choices=["dali", "torch", "synthetic"], help="sets loader.backend")
    p.add_argument(
        "--device", choices=["auto", "cpu", "gpu"], help="dali: where decode runs; sets loader.device"
    )
    p.add_argument("--crop", metavar="HxW", help="training crop, e.g. 512x1024; sets data.crop")
    p.add_argument("--batch-size", type=int, metavar="N", help="sets loader.batch_size")
    p.add_argument("--iters", type=int, metavar="K", help="timed batches; sets bench.iters")
    p.add_argument("--warmup", type=int, metavar="W", help="untimed batches first; sets bench.warmup")
    p.add_argument("--split", help="split to read (default data.train_split)")
    p.add_argument(
        "--decode-only",
        action="store_true",
        help="full-frame decode only: no augmentation, no labels; sets loader.decode_only=true",
    )
    p.add_argument(
        "--roi",
        choices=["slice", "resize"],
        help="dali: decode only the crop window (slice) or resize it from the full frame; sets loader.roi",
    )
    p.add_argument(
        "--append", "--out", dest="append", metavar="FILE", help="also append the result row to this .jsonl"
    )
    p.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    add_config_args(p)


def _config(args: argparse.Namespace) -> Config:
    extra = []
    if args.data:
        extra.append(f"data.root={args.data}")
    if args.loader:
        extra.append(f"loader.backend={args.loader}")
    if args.device:
        extra.append(f"loader.device={args.device}")
    if args.crop:
        from cityseg_fast.config import parse_hw

        h, w = parse_hw(args.crop, "--crop")
        extra.append(f"data.crop=[{h},{w}]")
    # `is not None`: a 0 must reach the config's range check, not fall back to the default silently
    given = {"loader.batch_size": args.batch_size, "bench.iters": args.iters, "bench.warmup": args.warmup}
    extra += [f"{key}={value}" for key, value in given.items() if value is not None]
    if args.decode_only:
        extra.append("loader.decode_only=true")
    if args.roi:
        extra.append(f"loader.roi={args.roi}")
    return config_from_args(args, extra)


# -- CPU time of this process and its worker processes ------------------------------------------


def _descendants(pid: int) -> list[int]:
    """All live descendants (DataLoader workers hang under a forkserver, so grandchildren too)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _proc_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def cpu_seconds() -> dict[int, float]:
    """CPU seconds so far: key 0 = this process (all threads) + reaped children, then live descendants."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = {0: me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime}
    if Path("/proc/self/stat").exists():
        for pid in _descendants(os.getpid()):
            out[pid] = _proc_cpu_s(pid)
    return out


def _cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(after[k] - before.get(k, 0.0) for k in after)


# -- measurement --------------------------------------------------------------------------------


def _percentiles(lat_s: list[float], variance_warn: float) -> dict[str, Any]:
    import numpy as np

    ms = np.asarray(lat_s) * 1e3
    q25, q50, q75, q90, q99 = np.percentile(ms, [25, 50, 75, 90, 99])
    return {
        "latency_ms_p50": float(q50),
        "latency_ms_p90": float(q90),
        "latency_ms_p99": float(q99),
        "latency_ms_median": float(q50),
        "latency_ms_iqr": float(q75 - q25),
        "variance_warning": bool(q50 > 0 and (q75 - q25) / q50 > variance_warn),
    }


MIN_CPU_WINDOW_S = 0.5  # shortest timed window whose CPU utilisation is reported


def measure_loader(cfg: Config, iters: int, warmup: int, *, split: str | None = None) -> dict[str, Any]:
    """Pull warmup + iters batches from the training loader of `cfg` (loader.decode_only: the decode
    limit); metrics as in the result schema.

    Also returns "description" (which backend and device ran) and "batch_size".
    """
    import torch

    from cityseg_fast.data.factory import build_loader
    from cityseg_fast.data.plan import endless
    from cityseg_fast.hardware import cpu_count

    if iters < 1 or warmup < 0:
        from cityseg_fast.errors import UserError

        raise UserError(f"bench loader: --iters must be >= 1 and --warmup >= 0 (got {iters}, {warmup})")
    split = split or cfg.data.train_split
    loader = build_loader(cfg, split, train=True)
    on_gpu = loader_device(loader).type == "cuda"
    batches = (b for _, b in endless(loader))
    n_images, lat = 0, []
    try:
        for _ in range(warmup):
            next(batches)
        if on_gpu:
            torch.cuda.synchronize()  # start the clock with no copies still in flight
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        last = t0
        for _ in range(iters):
            b = next(batches)
            if on_gpu:
                torch.cuda.synchronize()  # a batch counts when its data is on the device, not when queued
            now = time.perf_counter()
            lat.append(now - last)
            last = now
            n_images += b.image.shape[0]
        wall = time.perf_counter() - t0
        cpu1 = cpu_seconds()
    finally:
        batches.close()
        loader.close()
    cores = cpu_count() or os.cpu_count() or 1
    cpu = _cpu_used(cpu0, cpu1)
    # /proc CPU times tick at 10 ms: over a window this short (the synthetic loader) a ratio is noise.
    busy = cpu / wall if wall >= MIN_CPU_WINDOW_S else None
    metrics: dict[str, Any] = {
        "images_per_s": n_images / wall,
        **_percentiles(lat, cfg.bench.variance_warn),
        "cpu_util": busy / cores if busy is not None else None,
        "cpu_cores_used": busy,
        # CPU time per image: steadier than images/s on a shared machine (other load takes cores, not cycles)
        "cpu_ms_per_image": 1e3 * _cpu_used(cpu0, cpu1) / max(1, n_images),
        "mem_host_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "wall_s": wall,
        "description": loader.description,
        "batch_size": int(b.image.shape[0]),
    }
    return metrics


def loader_device(loader) -> Any:
    import torch

    dev = getattr(loader, "device", None)
    return dev if isinstance(dev, torch.device) else torch.device("cpu")


def point_of(cfg: Config) -> dict[str, Any]:
    """The loader point: the sweep's own (`scenarios.point_from_config`), so `bench loader`, the sweep and
    the demo name the same measurement the same way and e2e rows find it."""
    from cityseg_fast.bench.scenarios import point_from_config

    return point_from_config("loader", cfg)


def run(args: argparse.Namespace) -> int:
    from cityseg_fast.config import config_hash, to_dict

    cfg = _config(args)
    iters, warmup = cfg.bench.iters, cfg.bench.warmup
    m = measure_loader(cfg, iters, warmup, split=args.split)
    desc = m.pop("description")
    point = point_of(cfg)
    if args.append:
        from cityseg_fast.bench.env import collect_env
        from cityseg_fast.report.schema import append_row, make_row

        row = make_row(
            "loader", point, m, config=to_dict(cfg), config_hash=config_hash(cfg), env=collect_env()
        )
        append_row(args.append, row)
    if args.json:
        print(json.dumps({**point, "decode_only": cfg.loader.decode_only, **m, "description": desc}))
        return 0
    _print_table(point, m, desc, iters, warmup)
    return 0


def _print_table(point: dict, m: dict, desc: str, iters: int, warmup: int) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"loader: {desc}  ({iters} batches after {warmup} warm-up)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("images/s", f"{m['images_per_s']:.1f}")
    for q in ("p50", "p90", "p99"):
        t.add_row(f"batch latency {q} (ms)", f"{m[f'latency_ms_{q}']:.1f}")
    busy = m["cpu_cores_used"]
    t.add_row(
        "CPU cores busy",
        f"{busy:.2f} ({100 * m['cpu_util']:.0f}% of all)" if busy is not None else "n/a (timed window too short)",
    )
    t.add_row("CPU ms per image", f"{m['cpu_ms_per_image']:.1f}")
    t.add_row("host peak RSS (MiB)", f"{m['mem_host_peak_rss_mib']:.0f}")
    t.add_row("crop / batch", f"{point['crop'][0]}x{point['crop'][1]} / {point['batch_size']}")
    Console(file=sys.stdout).print(t)
    if m["variance_warning"]:
        print(
            "warning: batch latency varies a lot (IQR > bench.variance_warn x median); the machine may be busy"
        )

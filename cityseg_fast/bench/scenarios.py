"""Benchmark scenarios `model`, `e2e`, `infer`, `accuracy`: each measures one point and returns schema metrics.

    metrics = run_scenario("model", cfg)             # one process (or one rank under torchrun)
    point = point_from_config("model", cfg)           # the parameters that identify the point

Every training-side scenario times `engine.step.train_step`, the same function `cityseg train` runs:
- model:    synthetic on-device batches (the I/O-free upper bound), then inference on the same batch;
            with bench.split_phases, a separate diagnostic loop times forward / backward / optimizer;
- e2e:      the real loader (cfg.loader) feeding the same train step;
- infer:    eval-mode forward at data.crop: latency at batch 1, throughput at batch loader.batch_size;
- accuracy: engine.train.train for train.iters iterations, then its final evaluation (mIoU).

`cityseg bench model|e2e|infer|accuracy [--config ...] [overrides] [--json] [--append FILE]` is `run`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cityseg_fast.config import Config, config_hash, replace, to_dict

TRAIN_SCENARIOS = ("model", "e2e", "accuracy")
SCENARIOS = ("model", "e2e", "infer", "accuracy")


# ---------------------------------------------------------------------------------------------
# points


def resolved_loader_device(cfg: Config) -> str | None:
    """Where the loader decodes: 'gpu' | 'cpu' for DALI ('auto' resolved as the loader resolves it), else None."""
    if cfg.loader.backend != "dali":
        return None
    if cfg.loader.device != "auto":
        return cfg.loader.device
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def dataset_tags(cfg: Config) -> dict[str, Any]:
    """What identifies the data a point read: a prepared dataset's image_format / quality / size / scale
    (the JPEG study's axes) from its manifest.json, else the root path itself; {} with no data root."""
    root = cfg.data.root or os.environ.get("CITYSCAPES_DATASET", "")
    if not root:
        return {}
    manifest = Path(root) / "manifest.json"
    try:
        m = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError):
        return {"data_root": root}
    tags = {"image_format": m.get("image_format"), "quality": m.get("quality")}
    if m.get("size") is not None:
        tags["data_size"] = m["size"]
    if m.get("scale") is not None:
        tags["data_scale"] = m["scale"]
    if m.get("label_format", "png") != "png":
        tags["label_format"] = m["label_format"]  # named only when not the default
    return tags


def _model_keys(cfg: Config) -> dict[str, Any]:
    p: dict[str, Any] = {"model": cfg.model.name}
    if cfg.model.base_width is not None:
        p["base_width"] = cfg.model.base_width
    if cfg.model.upsample is not None:
        p["upsample"] = cfg.model.upsample
    if cfg.model.aux_loss:
        p["aux_loss"] = True
    p.update(
        dtype=cfg.precision.dtype, channels_last=cfg.precision.channels_last, compile=cfg.precision.compile
    )
    return p


def _loader_keys(cfg: Config) -> dict[str, Any]:
    """The loader and, named only where they differ from the defaults (so existing points keep their
    ids), the settings that change its speed: DALI's resampler, threads, hardware-decoder share (GPU
    only) and queue depth; the torch DataLoader's workers."""
    from cityseg_fast.config import LoaderConfig

    lc, default = cfg.loader, LoaderConfig()
    device = resolved_loader_device(cfg)
    keys: dict[str, Any] = {"loader": lc.backend, "loader_device": device}
    wanted = {
        "dali": ("resampler", "num_threads", "prefetch_queue_depth") + (("hw_decoder_load",) if device == "gpu" else ()),
        "torch": ("num_workers", "prefetch_queue_depth"),
    }.get(lc.backend, ())
    for name in wanted:
        if getattr(lc, name) != getattr(default, name):
            keys[name] = getattr(lc, name)
    return keys


def point_from_config(scenario: str, cfg: Config, world_size: int = 1) -> dict[str, Any]:
    """The swept parameters of a point, flat and JSON-plain (lists, not tuples): what identifies it.

    Only keys that change the scenario's measurement are included, so a sweep grid that varies,
    say, the loader produces one `model` point, not one per loader.
    """
    crop = list(cfg.data.crop)
    bs = cfg.loader.batch_size
    if scenario == "loader":
        point = {**_loader_keys(cfg), "crop": crop, "batch_size": bs, **dataset_tags(cfg)}
        if cfg.loader.decode_only:
            point["decode_only"] = True  # named only when set, like every non-default key below
        elif cfg.loader.backend == "dali" and cfg.loader.roi != "slice":
            point["roi"] = cfg.loader.roi
        return point
    if scenario == "model":
        return {**_model_keys(cfg), "crop": crop, "batch_size": bs, "world_size": world_size}
    if scenario == "e2e":
        return {
            **_model_keys(cfg),
            **_loader_keys(cfg),
            "crop": crop,
            "batch_size": bs,
            "world_size": world_size,
            **dataset_tags(cfg),
        }
    if scenario == "infer":
        return {**_model_keys(cfg), "resolution": crop, "batch_size": bs}
    if scenario == "accuracy":
        t = cfg.train
        return {
            **_model_keys(cfg),
            **_loader_keys(cfg),
            "crop": crop,
            "batch_size": bs,
            "world_size": world_size,
            "iters": t.iters,
            "lr": t.lr,
            "optimizer": t.optimizer,
            "seed": t.seed,
            **dataset_tags(cfg),
        }
    raise ValueError(f"unknown scenario '{scenario}'")


# ---------------------------------------------------------------------------------------------
# helpers


def _device_and_dist(cfg: Config) -> tuple[Any, Any]:
    """(device, DistInfo or None): under torchrun initialise the process group; the device is this
    rank's (hardware.resolve_device: cuda:LOCAL_RANK, initialised, or cpu)."""
    from cityseg_fast.hardware import resolve_device

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from cityseg_fast.engine.dist import init_distributed

        info = init_distributed(cfg.train.dist_timeout_s)
        return info.device, info
    return resolve_device(), None


def _barrier(dist_info: Any) -> Callable[[], None] | None:
    if dist_info is None or dist_info.world_size <= 1:
        return None
    import torch.distributed as dist

    return dist.barrier


def _gpu_name(device: Any) -> str | None:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


def _flops_metrics(
    cfg: Config, device: Any, hw: tuple[int, int], images_per_s: float, world: int, train: bool
) -> dict[str, Any]:
    """FLOPs per image (forward and train step) of a fresh, uncompiled copy of the model; MFU where honest."""

    m: dict[str, Any] = {
        "flops_per_image": None,
        "train_flops_per_image": None,
        "achieved_tflops": None,
        "mfu": None,
    }
    try:
        from cityseg_fast.bench.flops import count_flops, peak_flops
        from cityseg_fast.models import model_from_config

        model = model_from_config(cfg).to(device)
        fc = count_flops(model, hw, batch=1)
    except Exception as e:  # FLOPs are context, not the measurement: say why they are missing
        m["flops_error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        return m
    m["flops_per_image"] = fc.forward_per_image
    m["train_flops_per_image"] = fc.train_step_per_image
    if fc.uncounted_ops:
        m["flops_uncounted_ops"] = list(fc.uncounted_ops)
    per_image = fc.train_step_per_image if train else fc.forward_per_image
    achieved = per_image * images_per_s
    m["achieved_tflops"] = achieved / 1e12
    peak = peak_flops(_gpu_name(device), cfg.precision.dtype)
    m["mfu"] = achieved / (peak * world) if peak else None
    return m


def _compile_counters() -> dict[str, Any]:
    from cityseg_fast.engine.precision import compile_counters

    return dict(compile_counters())


def _timing_metrics(times: Any, cfg: Config, batch: int) -> dict[str, Any]:
    from cityseg_fast.bench.timing import latency_metrics, summarize

    stats = summarize(times.step_s, warmup=0, variance_warn=cfg.bench.variance_warn)
    # Per-step times measure the device's step; per-image throughput uses the synchronised wall clock.
    return {
        "images_per_s": times.items_per_s,
        **latency_metrics(stats),
        "timed_iters": stats["n"],
        "warmup_iters": len(times.warmup_s),
        "first_step_s": times.first_step_s,
        "compile_s": times.compile_s(stats["median_ms"] / 1e3) if cfg.precision.compile != "off" else None,
        "timed_wall_s": times.wall_s,
        "batch_size_measured": batch,
    }


# ---------------------------------------------------------------------------------------------
# scenarios


def _train_point(
    cfg: Config, loader_cfg: Config, device: Any, dist_info: Any, with_inference: bool = False
) -> dict[str, Any]:
    """Time train_step on batches from `loader_cfg`'s loader; the shared body of `model` and `e2e`.

    with_inference (the model scenario): also time eval-mode forward on a batch, after the train loop.
    """

    from cityseg_fast.bench.memory import MemoryMonitor
    from cityseg_fast.bench.timing import time_steps
    from cityseg_fast.data.factory import build_loader
    from cityseg_fast.data.plan import endless
    from cityseg_fast.engine.dist import wrap_ddp
    from cityseg_fast.engine.precision import reset_compile_counters
    from cityseg_fast.engine.step import build_train_state, train_step

    rank = dist_info.rank if dist_info else 0
    world = dist_info.world_size if dist_info else 1
    reset_compile_counters()
    with MemoryMonitor(device, cfg.bench.sample_interval_s) as mon:
        state = build_train_state(cfg, device)
        state.model = wrap_ddp(state.model, device)
        loader = build_loader(loader_cfg, loader_cfg.data.train_split, rank, world, train=True, device=device)
        batches = (b for _, b in endless(loader))
        state.model.train()

        def step() -> None:
            train_step(state, next(batches))

        before = None

        def mark_steady() -> None:
            nonlocal before
            before = _compile_counters()

        times = time_steps(
            step,
            cfg.bench.iters,
            cfg.bench.warmup,
            device,
            items_per_step=cfg.loader.batch_size * world,
            barrier=_barrier(dist_info),
            on_timed_start=mark_steady,
        )
        after = _compile_counters()
        metrics = _timing_metrics(times, cfg, cfg.loader.batch_size)
        metrics["loader_description"] = getattr(loader, "description", cfg.loader.backend)
        metrics["recompiles"] = after.get("recompiles", 0)
        # Recompiles inside the timed region mean the steady state was not steady: report them apart.
        metrics["steady_recompiles"] = after.get("recompiles", 0) - (before or after).get("recompiles", 0)
        metrics["device"] = device.type
        metrics["world_size"] = world
        extra = {}
        if with_inference and cfg.bench.split_phases:
            extra = _split_phases(state, next(batches), cfg, device)
        if with_inference:
            extra.update(_infer_on_batch(state.model, next(batches), cfg, device))
        loader.close()
    metrics.update(mon.metrics())
    metrics.update(extra)
    metrics.update(
        _flops_metrics(cfg, device, tuple(cfg.data.crop), metrics["images_per_s"], world, train=True)
    )
    return metrics


def _split_phases(state: Any, batch: Any, cfg: Config, device: Any) -> dict[str, Any]:
    """Diagnostic: forward / backward / optimizer times of the same model (not the throughput loop).

    Events between phases need no sync; the one synchronize is in StepTimer.times_s (a boundary).
    With fp16 the loss is not scaled here: harmless for timing, and this loop runs after the measurement.
    """
    from cityseg_fast.bench.timing import StepTimer, summarize
    from cityseg_fast.engine.precision import autocast

    timers = {k: StepTimer(device) for k in ("fwd", "bwd", "opt")}
    for _ in range(cfg.bench.warmup + cfg.bench.iters):
        with timers["fwd"].step(), autocast(cfg.precision.dtype, device.type):
            out = state.model(batch.image)
            loss = state.criterion(out, batch.target)
        with timers["bwd"].step():
            loss.backward()
        with timers["opt"].step():
            state.optimizer.step()
            state.optimizer.zero_grad(set_to_none=True)
    return {
        f"{k}_ms": summarize(t.times_s(), warmup=cfg.bench.warmup)["median_ms"] for k, t in timers.items()
    }


def _infer_on_batch(model: Any, batch: Any, cfg: Config, device: Any) -> dict[str, Any]:
    """Eval-mode forward throughput on the training batch (model scenario's inference half)."""
    import torch

    from cityseg_fast.bench.timing import summarize, time_steps
    from cityseg_fast.engine.precision import autocast

    model.eval()
    with torch.inference_mode():

        def fwd() -> None:
            with autocast(cfg.precision.dtype, device.type):
                model(batch.image)

        t = time_steps(fwd, cfg.bench.iters, cfg.bench.warmup, device, items_per_step=batch.image.shape[0])
    model.train()
    s = summarize(t.step_s)
    return {"infer_images_per_s": t.items_per_s, "infer_latency_ms_p50": s["median_ms"]}


def run_model(cfg: Config) -> dict[str, Any]:
    device, dist_info = _device_and_dist(cfg)
    synth = replace(cfg, loader={"backend": "synthetic"})
    return _train_point(cfg, synth, device, dist_info, with_inference=True)


def run_e2e(cfg: Config) -> dict[str, Any]:
    device, dist_info = _device_and_dist(cfg)
    return _train_point(cfg, cfg, device, dist_info)


def run_infer(cfg: Config) -> dict[str, Any]:
    """Latency at batch 1 and throughput at batch N (= loader.batch_size) at data.crop, eval mode."""
    import torch

    from cityseg_fast.bench.memory import MemoryMonitor
    from cityseg_fast.bench.timing import latency_metrics, summarize, time_steps
    from cityseg_fast.engine.precision import autocast, prepare_model, reset_compile_counters, setup_precision
    from cityseg_fast.models import model_from_config

    device, _ = _device_and_dist(cfg)
    h, w = cfg.data.crop
    n = cfg.loader.batch_size
    setup_precision(cfg.precision.dtype, cfg.precision.cudnn_benchmark)
    reset_compile_counters()
    with MemoryMonitor(device, cfg.bench.sample_interval_s) as mon:
        model = prepare_model(model_from_config(cfg), cfg.precision, device).eval()
        metrics: dict[str, Any] = {}
        with torch.inference_mode():
            for bs in (1, n) if n > 1 else (1,):
                x = torch.randn(bs, 3, h, w, device=device).contiguous(memory_format=torch.channels_last)
                if not cfg.precision.channels_last:
                    x = x.contiguous()

                def fwd(x: torch.Tensor = x) -> None:
                    with autocast(cfg.precision.dtype, device.type):
                        model(x)

                t = time_steps(fwd, cfg.bench.iters, cfg.bench.warmup, device, items_per_step=bs)
                s = summarize(t.step_s, variance_warn=cfg.bench.variance_warn)
                if bs == 1:
                    metrics.update(latency_metrics(s))
                    metrics["images_per_s_batch1"] = t.items_per_s
                    metrics["first_step_s"] = t.first_step_s
                    metrics["compile_s"] = (
                        t.compile_s(s["median_ms"] / 1e3) if cfg.precision.compile != "off" else None
                    )
                metrics["images_per_s"] = t.items_per_s  # batch N (or 1 when N == 1)
        metrics["recompiles"] = _compile_counters().get("recompiles", 0)
        metrics["device"] = device.type
    metrics.update(mon.metrics())
    metrics.update(_flops_metrics(cfg, device, (h, w), metrics["images_per_s"], 1, train=False))
    return metrics


def run_accuracy(cfg: Config) -> dict[str, Any]:
    """engine.train.train for train.iters iterations (its out_dir: train.out_dir), then its mIoU."""
    from cityseg_fast.bench.memory import MemoryMonitor
    from cityseg_fast.engine.train import train
    from cityseg_fast.hardware import resolve_device

    device = resolve_device()
    t0 = time.perf_counter()
    with MemoryMonitor(device, cfg.bench.sample_interval_s) as mon:
        summary = train(cfg)
    wall = time.perf_counter() - t0
    per_class = summary.get("per_class_iou", summary.get("iou"))
    metrics = {
        "miou": summary.get("miou"),
        "per_class_iou": list(per_class) if per_class is not None else None,
        "train_wall_s": summary.get("wall_s", wall),
        "process_wall_s": wall,
        "iters_done": summary.get("iters"),
        "out_dir": str(summary.get("out_dir", cfg.train.out_dir)),
        "device": device.type,
    }
    metrics.update(mon.metrics())
    return metrics


RUNNERS: dict[str, Callable[[Config], dict[str, Any]]] = {
    "model": run_model,
    "e2e": run_e2e,
    "infer": run_infer,
    "accuracy": run_accuracy,
}


def run_scenario(name: str, cfg: Config, **kw: Any) -> dict[str, Any]:
    """Measure one point of scenario `name` under `cfg`; returns the schema metrics dict."""
    if name not in RUNNERS:
        raise ValueError(f"unknown scenario '{name}' (have: {', '.join(RUNNERS)})")
    return RUNNERS[name](cfg, **kw)


# ---------------------------------------------------------------------------------------------
# command


def add_arguments(p: argparse.ArgumentParser) -> None:
    from cityseg_fast.commands.common import add_config_args

    add_config_args(p)
    p.add_argument("--data", metavar="DIR", help="dataset root (sets data.root)")
    p.add_argument("--json", action="store_true", help="print the result row as one JSON line")
    p.add_argument("--append", metavar="FILE", help="append the result row to this results.jsonl (atomic)")


def _is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:500]


def run(args: argparse.Namespace) -> int:
    from cityseg_fast.bench.env import collect_env
    from cityseg_fast.commands.common import config_from_args
    from cityseg_fast.report.schema import append_row, make_row

    scenario = args.scenario
    cfg = config_from_args(args, [f"data.root={args.data}"] if args.data else [])
    if scenario == "accuracy" and cfg.train.out_dir == "runs/default":
        cfg = replace(cfg, train={"out_dir": tempfile.mkdtemp(prefix="cityseg-accuracy-")})
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    point = point_from_config(scenario, cfg, world)
    from cityseg_fast.engine.dist import cleanup

    status, error, metrics, exc = "ok", None, {}, None
    try:
        metrics = run_scenario(scenario, cfg)
    except Exception as e:
        exc = e
        status = "oom" if _is_oom(e) else "error"
        error = _one_line(e)
    cleanup(failed=exc is not None)  # under torchrun: leave the process group before the interpreter exits
    row = make_row(
        scenario,
        point,
        _plain(metrics),
        status=status,
        error=error,
        config=to_dict(cfg),
        config_hash=config_hash(cfg),
        env=collect_env(),
    )
    if rank == 0:
        if args.append:
            append_row(args.append, row)
        if args.json:
            print(json.dumps(row, sort_keys=True, default=str))
        else:
            _print_human(row)
    if exc is not None and not isinstance(exc, (KeyboardInterrupt,)):
        if status == "oom":
            print(f"cityseg bench {scenario}: out of memory: {error}", file=sys.stderr)
            return 3
        raise exc
    return 0


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics as JSON-plain values (floats stay floats; NaN becomes None)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, float) and v != v:
            v = None
        elif isinstance(v, tuple):
            v = list(v)
        out[k] = v
    return out


def _print_human(row: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"cityseg bench {row['scenario']}  [{row['status']}]", show_header=False)
    for k, v in row["point"].items():
        t.add_row(f"[dim]{k}[/dim]", str(v))
    if row["error"]:
        t.add_row("[red]error[/red]", row["error"])
    for k, v in row["metrics"].items():
        if v is None or isinstance(v, (list, dict)):
            continue
        t.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    Console().print(t)

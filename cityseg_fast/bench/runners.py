"""The runner of every benchmark scenario: each measures one point and returns its metrics.

    metrics = run_scenario("model", cfg)      # one process (or one rank under torchrun)

What identifies a point, and what each scenario's rows record, is the scenario table's
(cityseg_fast/results/scenarios.py); `RUNNERS` has one entry per row of it (a test checks). Every
training-side scenario times `engine.step.train_step`, the same function `cityseg train` runs:
- loader:   the data loader alone (bench/loader_bench.py);
- model:    synthetic on-device batches (the I/O-free upper bound), then inference on the same batch;
            with bench.split_phases, a separate diagnostic loop times forward / backward / optimizer;
- infer:    eval-mode forward at data.crop: latency at batch 1, throughput at batch loader.batch_size;
- e2e:      the real loader (cfg.loader) feeding the same train step;
- accuracy: engine.train.train for train.iters iterations, then its final evaluation (mIoU);
- baseline: the per-pixel colour classifier on the same data (what colour alone can do).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cityseg_fast.bench import accuracy
from cityseg_fast.bench.inference import evaluate_at_scales, inference_model, time_forward
from cityseg_fast.bench.loader_bench import measure_loader
from cityseg_fast.bench.memory import MemoryMonitor
from cityseg_fast.bench.timing import latency_metrics
from cityseg_fast.bench.train_point import flops_metrics, train_point
from cityseg_fast.config import Config, data_root, replace
from cityseg_fast.data.cityscapes import find_samples, read_pair
from cityseg_fast.data.synthetic import colour_baseline_miou
from cityseg_fast.engine import checkpoint as ckpt_io
from cityseg_fast.engine.dist import init_distributed
from cityseg_fast.engine.precision import (
    compile_counters,
    prepare_model,
    reset_compile_counters,
    setup_precision,
)
from cityseg_fast.engine.train import train
from cityseg_fast.hardware import resolve_device
from cityseg_fast.labels import TRAINID_TO_ID
from cityseg_fast.models import model_from_config
from cityseg_fast.results.scenarios import (
    SCALES,
)


def _device_and_dist(cfg: Config) -> tuple[Any, Any]:
    """(device, DistInfo or None): under torchrun initialise the process group; the device is this
    rank's (hardware.resolve_device: cuda:LOCAL_RANK, initialised, or cpu)."""

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        info = init_distributed(cfg.train.dist_timeout_s)
        return info.device, info
    return resolve_device(), None


# ---------------------------------------------------------------------------------------------
# scenarios


def run_model(cfg: Config) -> dict[str, Any]:
    device, dist_info = _device_and_dist(cfg)
    synth = replace(cfg, loader={"backend": "synthetic"})
    return train_point(cfg, synth, device, dist_info, with_inference=True)


def run_e2e(cfg: Config) -> dict[str, Any]:
    device, dist_info = _device_and_dist(cfg)
    return train_point(cfg, cfg, device, dist_info)


def run_infer(cfg: Config) -> dict[str, Any]:
    """Latency at batch 1 and throughput at batch N (= loader.batch_size) at data.crop, eval mode."""
    device, _ = _device_and_dist(cfg)
    h, w = cfg.data.crop
    n = cfg.loader.batch_size
    setup_precision(cfg.precision.dtype, cfg.precision.cudnn_benchmark)
    reset_compile_counters()
    with MemoryMonitor(device, cfg.bench.sample_interval_s) as mon:
        model = prepare_model(model_from_config(cfg), cfg.precision, device).eval()
        metrics: dict[str, Any] = {}
        for bs in (1, n) if n > 1 else (1,):
            t, s = time_forward(model, cfg, device, (h, w), bs)
            if bs == 1:
                metrics.update(latency_metrics(s))
                metrics["images_per_s_batch1"] = t.items_per_s
                metrics["first_step_s"] = t.first_step_s
                metrics["compile_s"] = t.compile_s(s["median_ms"] / 1e3) if cfg.precision.compile != "off" else None
            metrics["images_per_s"] = t.items_per_s  # batch N (or 1 when N == 1)
        metrics["recompiles"] = compile_counters().get("recompiles", 0)
        metrics["device"] = device.type
    metrics.update(mon.metrics())
    metrics.update(flops_metrics(cfg, device, (h, w), metrics["images_per_s"], 1, train=False))
    return metrics


def run_accuracy(cfg: Config) -> dict[str, Any]:
    """engine.train.train for train.iters iterations (its out_dir: train.out_dir), then its val mIoU
    (a fraction), per-class IoU, pixel accuracy, median training throughput, peak memory, parameters and
    FLOPs per image, its loss and val-mIoU curves (from its metrics.jsonl; with fp16 the loss scale too,
    and the steps the scaler skipped) and, on rank 0, predictions of the first val frames written under
    out_dir/predictions (bench/accuracy.py) and, with bench.eval_scales, the model evaluated and timed at
    each scale (SCALES: rows of their own, record.rows_for)."""

    device = resolve_device()
    t0 = time.perf_counter()
    with MemoryMonitor(device, cfg.bench.sample_interval_s) as mon:
        summary = train(cfg)
    wall = time.perf_counter() - t0
    out = Path(summary.out_dir)
    events = accuracy.read_events(out)
    ips = accuracy.train_images_per_s(events)
    metrics = {
        "miou": summary.miou,
        "per_class_iou": list(summary.per_class_iou),
        "acc": summary.acc,
        "images_per_s": ips,
        "final_loss": summary.final_loss,
        "train_wall_s": summary.wall_s,
        "process_wall_s": wall,
        "iters_done": summary.iters,
        "stall_fraction": summary.stall_fraction_mean,
        "out_dir": str(out),
        "device": device.type,
        "curves": accuracy.curves(events),
        **accuracy.data_counts(events),
    }
    metrics.update(mon.metrics())
    metrics.update(accuracy.scaler_summary(events))
    if int(os.environ.get("RANK", "0")) == 0:
        metrics["val_predictions"] = accuracy.save_predictions(cfg, summary.checkpoint, out)
        if cfg.bench.eval_scales:
            metrics[SCALES] = _scales_of(cfg, summary.checkpoint, device)
    world = summary.world_size
    metrics.update(flops_metrics(cfg, device, tuple(cfg.data.crop), ips, world, train=True))
    return metrics


def _scales_of(cfg: Config, checkpoint: str | None, device: Any) -> list[dict[str, Any]]:
    """The trained model (its last checkpoint: the weights the run's final evaluation saw) evaluated and
    timed at each of bench.eval_scales, here on rank 0 alone (the process group is gone after training)."""
    if checkpoint is None:
        raise RuntimeError("bench.eval_scales: the run saved no checkpoint to evaluate at the scales")
    model = inference_model(cfg, ckpt_io.load_checkpoint(checkpoint)["model"], checkpoint, device)
    return evaluate_at_scales(model, cfg, device, cfg.bench.eval_scales)


def run_loader(cfg: Config) -> dict[str, Any]:
    """The training loader alone for bench.warmup + bench.iters batches (loader.decode_only: its decoder's limit)."""

    return measure_loader(cfg, cfg.bench.iters, cfg.bench.warmup)


def run_baseline(cfg: Config) -> dict[str, Any]:
    """The best per-pixel colour classifier, fitted on the train split, scored on the val split."""

    root = data_root(cfg)

    def frames(split: str):
        for s in find_samples(root, split):
            rgb, train_ids = read_pair(s)
            yield rgb, TRAINID_TO_ID[train_ids]  # the baseline takes labelIds (255 -> 0, ignored)

    t0 = time.perf_counter()
    res = colour_baseline_miou(frames(cfg.data.train_split), frames(cfg.data.val_split))
    return {**res, "wall_s": time.perf_counter() - t0}


RUNNERS: dict[str, Callable[[Config], dict[str, Any]]] = {
    "loader": run_loader,
    "model": run_model,
    "infer": run_infer,
    "e2e": run_e2e,
    "accuracy": run_accuracy,
    "baseline": run_baseline,
}


def run_scenario(name: str, cfg: Config) -> dict[str, Any]:
    """Measure one point of scenario `name` under `cfg`; returns its metrics."""
    if name not in RUNNERS:
        raise ValueError(f"unknown scenario '{name}' (have: {', '.join(RUNNERS)})")
    metrics = RUNNERS[name](cfg)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:  # the devices this point ran on (a sweep with --devices sets it per point)
        metrics["visible_devices"] = visible
    return metrics

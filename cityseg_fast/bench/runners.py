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
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cityseg_fast.bench import accuracy
from cityseg_fast.bench.flops import count_flops, mfu
from cityseg_fast.bench.inference import evaluate_at_scales, inference_model, time_forward
from cityseg_fast.bench.loader_bench import decode_metrics, measure_loader
from cityseg_fast.bench.memory import MemoryMonitor, MemorySnapshot
from cityseg_fast.bench.profile import profile_steps, trace_path
from cityseg_fast.bench.timing import StepTimer, latency_metrics, summarize, time_steps
from cityseg_fast.config import Config, data_root, replace
from cityseg_fast.data.batch import Batch
from cityseg_fast.data.cityscapes import find_samples, read_pair
from cityseg_fast.data.factory import Loader, build_loader
from cityseg_fast.data.plan import endless
from cityseg_fast.data.synthetic import colour_baseline_miou
from cityseg_fast.engine import checkpoint as ckpt_io
from cityseg_fast.engine.dist import init_distributed, wrap_ddp
from cityseg_fast.engine.precision import (
    autocast,
    compile_counters,
    prepare_model,
    reset_compile_counters,
    setup_precision,
)
from cityseg_fast.engine.ranks import AllReduceClock, gather_rank_times, rank_fields, rank_times
from cityseg_fast.engine.stall import StallMeter
from cityseg_fast.engine.step import TrainState, build_train_state, train_step
from cityseg_fast.engine.train import train
from cityseg_fast.errors import UserError
from cityseg_fast.hardware import resolve_device
from cityseg_fast.labels import TRAINID_TO_ID
from cityseg_fast.models import model_from_config
from cityseg_fast.results.scenarios import (
    INFER_COMPILE_S,
    INFER_COMPILES,
    INFER_IMAGES_PER_S,
    INFER_LATENCY_MS_P50,
    SCALES,
)


def _device_and_dist(cfg: Config) -> tuple[Any, Any]:
    """(device, DistInfo or None): under torchrun initialise the process group; the device is this
    rank's (hardware.resolve_device: cuda:LOCAL_RANK, initialised, or cpu)."""

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
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
    cfg: Config, device: Any, hw: tuple[int, int], images_per_s: float | None, world: int, train: bool
) -> dict[str, Any]:
    """Parameters and FLOPs per image (forward and train step) of a fresh, uncompiled copy of the model;
    MFU where honest."""

    m: dict[str, Any] = {
        "params": None,
        "flops_per_image": None,
        "train_flops_per_image": None,
        "achieved_tflops": None,
        "mfu": None,
    }
    try:
        model = model_from_config(cfg).to(device)
        m["params"] = sum(p.numel() for p in model.parameters())
        fc = count_flops(model, hw, batch=1)
    except Exception as e:  # FLOPs are context, not the measurement: say why they are missing
        m["flops_error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        return m
    m["flops_per_image"] = fc.forward_per_image
    m["train_flops_per_image"] = fc.train_step_per_image
    if fc.uncounted_ops:
        m["flops_uncounted_ops"] = list(fc.uncounted_ops)
    if not images_per_s:
        return m
    per_image = fc.train_step_per_image if train else fc.forward_per_image
    achieved = per_image * images_per_s
    m["achieved_tflops"] = achieved / 1e12
    m["mfu"] = mfu(achieved / world, _gpu_name(device), cfg.precision.dtype)  # per GPU
    return m


def _compile_counters() -> dict[str, Any]:
    return dict(compile_counters())


def _timing_metrics(times: Any, cfg: Config, batch: int) -> dict[str, Any]:
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


@dataclass
class _TrainPoint:
    """A training point's steps: train_step on the loader's batches, each one's data wait measured."""

    state: TrainState
    loader: Loader
    batches: Iterator[Batch]
    meter: StallMeter
    clock: AllReduceClock | None = None  # under torchrun: the gradient all-reduce's wait (engine/ranks.py)
    snapshot: MemorySnapshot | None = None  # bench.memory_snapshot: recording during the warm-up
    before: dict[str, Any] | None = None  # the compile counters when the timed steps began

    def step(self) -> None:
        batch = self.meter.next(self.batches)
        with self.meter.step():
            train_step(self.state, batch)

    def mark_steady(self) -> None:
        """time_steps' hook at the first timed step."""
        self.before = _compile_counters()
        self.meter.reset()  # the stall of the timed steps only
        if self.clock is not None:
            self.clock.reset()
        if self.snapshot is not None:
            self.snapshot.pause()  # the timed steps run without the allocator's recording


def _train_point(
    cfg: Config, loader_cfg: Config, device: Any, dist_info: Any, with_inference: bool = False
) -> dict[str, Any]:
    """Time train_step on batches from `loader_cfg`'s loader; the shared body of `model` and `e2e`.

    with_inference (the model scenario): also time eval-mode forward on a batch, after the train loop.
    Each step's data wait is measured as training measures it (engine/stall.py); bench.profile runs
    torch.profiler over a few more steps once everything else is measured (bench/profile.py), and
    bench.memory_snapshot records the allocator over one more (bench/memory.py MemorySnapshot, which also
    records the warm-up and writes its state at an out-of-memory: the error then carries the file in
    `row_metrics`). The loader is closed however the point ends.
    """

    rank = dist_info.rank if dist_info else 0
    world = dist_info.world_size if dist_info else 1
    scenario = "model" if with_inference else "e2e"
    reset_compile_counters()
    with ExitStack() as cleanup:
        snap = _memory_snapshot(cfg, device, scenario, world, rank, cleanup)
        try:
            with MemoryMonitor(device, cfg.bench.sample_interval_s) as mon:
                point = _start_point(cfg, loader_cfg, device, rank, world, cleanup, snap)
                metrics = _time_point(point, cfg, device, dist_info, world)
                extra = _inference_metrics(point, cfg, device) if with_inference else {}
        except Exception as e:
            if snap is not None:  # an out-of-memory's row says where the allocator's state then went
                e.row_metrics = snap.oom_metrics()  # type: ignore[attr-defined]
            raise
        metrics.update(mon.metrics())
        metrics.update(extra)
        if cfg.bench.profile:  # after the timed region and the memory readings: its overhead touches neither
            trace = trace_path(cfg, scenario, world, rank)
            metrics.update(profile_steps(point.step, cfg.bench.profile_steps, device, trace))
        if snap is not None:  # likewise after everything measured
            metrics.update(snap.record_step(point.step))
    metrics.update(
        _flops_metrics(cfg, device, tuple(cfg.data.crop), metrics["images_per_s"], world, train=True)
    )
    return metrics


def _memory_snapshot(cfg: Config, device: Any, scenario: str, world: int, rank: int,
                     cleanup: ExitStack) -> MemorySnapshot | None:  # fmt: skip
    """bench.memory_snapshot's recorder, started (its file beside the row: bench.trace_dir); None when not asked.
    A UserError on the CPU: the allocator history is CUDA's."""
    if not cfg.bench.memory_snapshot:
        return None
    if device.type != "cuda":
        raise UserError("config key 'bench.memory_snapshot': true records torch's CUDA allocator; this point runs "
                        "on the CPU (set it false, or run on a GPU)")  # fmt: skip
    snap = MemorySnapshot(device, trace_path(cfg, scenario, world, rank, kind=".memory.pickle"))
    cleanup.callback(snap.close)
    snap.start()
    return snap


def _start_point(
    cfg: Config, loader_cfg: Config, device: Any, rank: int, world: int, cleanup: ExitStack,
    snapshot: MemorySnapshot | None = None,
) -> _TrainPoint:
    """The model and optimizer (in DDP under torchrun) and the training loader, which `cleanup` closes."""
    state = build_train_state(cfg, device, wrap=lambda m: wrap_ddp(m, device))  # DDP, then compile
    clock = AllReduceClock.install(state.model, device)  # None in one process
    loader = build_loader(loader_cfg, loader_cfg.data.train_split, rank, world, train=True, device=device)
    cleanup.callback(loader.close)
    state.model.train()
    return _TrainPoint(state, loader, (b for _, b in endless(loader)), StallMeter(device), clock, snapshot)


def _time_point(point: _TrainPoint, cfg: Config, device: Any, dist_info: Any, world: int) -> dict[str, Any]:
    """bench.warmup, then bench.iters timed steps: throughput, latency, data wait and recompiles."""
    times = time_steps(
        point.step,
        cfg.bench.iters,
        cfg.bench.warmup,
        device,
        items_per_step=cfg.loader.batch_size * world,
        barrier=_barrier(dist_info),
        on_timed_start=point.mark_steady,
    )
    after = _compile_counters()
    metrics = _timing_metrics(times, cfg, cfg.loader.batch_size)
    stats = point.meter.take()  # time_steps synchronised at its end: every event is readable
    metrics.update(stats.metrics())
    if world > 1:  # every rank's data wait, compute and all-reduce wait, the straggler: one all_gather
        ranks = gather_rank_times(rank_times(stats, point.clock), device)
        metrics.update(rank_fields(ranks, cfg.train.straggler_threshold))
    metrics["loader_description"] = getattr(point.loader, "description", cfg.loader.backend)
    metrics.update(decode_metrics(point.loader))
    metrics["recompiles"] = after.get("recompiles", 0)
    # Recompiles inside the timed region mean the steady state was not steady: report them apart.
    metrics["steady_recompiles"] = after.get("recompiles", 0) - (point.before or after).get("recompiles", 0)
    metrics["device"] = device.type
    metrics["world_size"] = world
    return metrics


def _inference_metrics(point: _TrainPoint, cfg: Config, device: Any) -> dict[str, Any]:
    """The model scenario's extras, each on the loader's next batch: with bench.split_phases the forward /
    backward / optimizer times, then eval-mode inference on the model without DDP (TrainState.eval_model)."""
    extra = _split_phases(point.state, next(point.batches), cfg, device) if cfg.bench.split_phases else {}
    model = point.state.model if point.state.eval_model is None else point.state.eval_model
    extra.update(_infer_on_batch(model, next(point.batches), cfg, device))
    return extra


def _split_phases(state: Any, batch: Any, cfg: Config, device: Any) -> dict[str, Any]:
    """Diagnostic: forward / backward / optimizer times of the same model (not the throughput loop).

    Events between phases need no sync; the one synchronize is in StepTimer.times_s (a boundary).
    With fp16 the loss is not scaled here: harmless for timing, and this loop runs after the measurement.
    """

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
    """Eval-mode forward throughput on the training batch (model scenario's inference half).

    A compiled model compiles its eval-mode graph here, once (dynamo counts it as a recompile of the
    training graph: grad mode and BatchNorm's mode changed); the row keeps that apart from the training
    loop's compile_s and recompiles: infer_compile_s (the first inference step minus a steady one) and
    infer_compiles (graphs compiled for inference: 1 with compile on, 0 off; more would be a recompile)."""
    import torch

    before = _compile_counters()
    model.eval()
    with torch.inference_mode():
        def fwd() -> None:
            with autocast(cfg.precision.dtype, device.type):
                model(batch.image)

        t = time_steps(fwd, cfg.bench.iters, cfg.bench.warmup, device, items_per_step=batch.image.shape[0])
    model.train()
    s = summarize(t.step_s)
    compiled = cfg.precision.compile != "off"
    return {
        INFER_IMAGES_PER_S: t.items_per_s,
        INFER_LATENCY_MS_P50: s["median_ms"],
        INFER_COMPILE_S: t.compile_s(s["median_ms"] / 1e3) if compiled else None,
        INFER_COMPILES: _compile_counters()["unique_graphs"] - before["unique_graphs"],
    }


def run_model(cfg: Config) -> dict[str, Any]:
    device, dist_info = _device_and_dist(cfg)
    synth = replace(cfg, loader={"backend": "synthetic"})
    return _train_point(cfg, synth, device, dist_info, with_inference=True)


def run_e2e(cfg: Config) -> dict[str, Any]:
    device, dist_info = _device_and_dist(cfg)
    return _train_point(cfg, cfg, device, dist_info)


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
        metrics["recompiles"] = _compile_counters().get("recompiles", 0)
        metrics["device"] = device.type
    metrics.update(mon.metrics())
    metrics.update(_flops_metrics(cfg, device, (h, w), metrics["images_per_s"], 1, train=False))
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
    metrics.update(_flops_metrics(cfg, device, tuple(cfg.data.crop), ips, world, train=True))
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

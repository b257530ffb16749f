"""A training-side point (the model and e2e scenarios): `engine.step.train_step` timed on a loader's batches,
with its data wait, compile counts, memory, per-rank figures, FLOPs and MFU, and for the model scenario the
eval-mode forward on the same batch; the metrics every scenario shares (FLOPs, timing) are made here too."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from cityseg_fast.bench.flops import count_flops, mfu
from cityseg_fast.bench.loader_bench import decode_metrics
from cityseg_fast.bench.memory import MemoryMonitor, MemorySnapshot
from cityseg_fast.bench.profile import profile_steps, trace_path
from cityseg_fast.bench.timing import StepTimer, latency_metrics, summarize, time_steps
from cityseg_fast.config import Config
from cityseg_fast.data.batch import Batch
from cityseg_fast.data.factory import Loader, build_loader
from cityseg_fast.data.plan import endless
from cityseg_fast.engine.dist import wrap_ddp
from cityseg_fast.engine.precision import (
    autocast,
    compile_counters,
    reset_compile_counters,
)
from cityseg_fast.engine.ranks import AllReduceClock, gather_rank_times, rank_fields, rank_times
from cityseg_fast.engine.stall import StallMeter
from cityseg_fast.engine.step import TrainState, build_train_state, train_step
from cityseg_fast.errors import UserError
from cityseg_fast.models import model_from_config
from cityseg_fast.results.scenarios import (
    INFER_COMPILE_S,
    INFER_COMPILES,
    INFER_IMAGES_PER_S,
    INFER_LATENCY_MS_P50,
)


def barrier(dist_info: Any) -> Callable[[], None] | None:
    if dist_info is None or dist_info.world_size <= 1:
        return None
    import torch.distributed as dist

    return dist.barrier


def gpu_name(device: Any) -> str | None:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


def flops_metrics(
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
    m["mfu"] = mfu(achieved / world, gpu_name(device), cfg.precision.dtype)  # per GPU
    return m


def timing_metrics(times: Any, cfg: Config, batch: int) -> dict[str, Any]:
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
        self.before = compile_counters()
        self.meter.reset()  # the stall of the timed steps only
        if self.clock is not None:
            self.clock.reset()
        if self.snapshot is not None:
            self.snapshot.pause()  # the timed steps run without the allocator's recording


def train_point(
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
        flops_metrics(cfg, device, tuple(cfg.data.crop), metrics["images_per_s"], world, train=True)
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
        barrier=barrier(dist_info),
        on_timed_start=point.mark_steady,
    )
    after = compile_counters()
    metrics = timing_metrics(times, cfg, cfg.loader.batch_size)
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

    before = compile_counters()
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
        INFER_COMPILES: compile_counters()["unique_graphs"] - before["unique_graphs"],
    }

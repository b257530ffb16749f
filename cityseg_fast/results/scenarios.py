"""The scenario table: every benchmark scenario's name, title, identity, metrics and companions, in one place.

Like timm's `_registry.py`: one table, and everything else asks it. The sweep runs scenarios in table
order (a loader and a model point before the e2e point they explain), the report shows them in that
order with these titles, `cityseg bench` offers these names, and `bench/runners.py` holds one runner
per entry (a test checks both sides agree, and that every scenario's rows carry its metrics).

    SCENARIOS["e2e"].point(cfg, world_size)      -> the keys that identify an e2e point
    point_for("e2e", cfg)                        -> the same, by name
    companions_for("e2e", cfg)                   -> {"loader": point, "model": point}: what derive.py
                                                    divides by to get e2e_efficiency

A point holds only the settings that change that scenario's measurement (a `model` point ignores the
loader), named only where they differ from the default for the optional ones, so points stay stable.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cityseg_fast.config import LoaderConfig, TrainConfig, dataset_root_or_none
from cityseg_fast.hardware import loader_device

if TYPE_CHECKING:
    from cityseg_fast.config import Config

Point = dict[str, Any]


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str  # the report's section title
    what: str  # one line for `cityseg bench --help`
    point: Callable[[Config, int], Point]  # (config, world size) -> identity keys
    metrics: tuple[str, ...]  # recorded by every ok row of this scenario (the report reads them)
    reads_data: bool  # needs a dataset root (model and infer run on synthetic on-device batches)
    companions: Callable[[Config, int], dict[str, Point]] | None = None  # rows derived metrics use
    kind: str = "speed"  # the report section: "speed" (throughput tables) or "accuracy" (mIoU tables)


# ---------------------------------------------------------------------------------------------
# point keys


def resolved_loader_device(cfg: Config) -> str | None:
    """Where the loader decodes: 'gpu' | 'cpu' for DALI ('auto' resolved by the loader's own rule, without
    creating a CUDA context: a sweep's parent asks this before it starts its points), 'gpu' for torch's
    nvJPEG loader (loader.device=gpu; its DataLoader on CPU workers stays None, as before), else None."""
    if cfg.loader.backend == "torch":
        return "gpu" if cfg.loader.device == "gpu" else None
    return loader_device(cfg.loader.device) if cfg.loader.backend == "dali" else None


def dataset_tags(cfg: Config) -> Point:
    """What identifies the data a point read: a prepared dataset's image_format / quality / size / scale
    / label_format (from its manifest.json), else the root path itself; {} with no data root."""
    root = dataset_root_or_none(cfg)
    if root is None:
        return {}
    try:
        m = json.loads((Path(root) / "manifest.json").read_text())
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


def model_keys(cfg: Config) -> Point:
    p: Point = {"model": cfg.model.name}
    if cfg.model.base_width is not None:
        p["base_width"] = cfg.model.base_width
    if cfg.model.upsample is not None:
        p["upsample"] = cfg.model.upsample
    if cfg.model.depth is not None:
        p["depth"] = cfg.model.depth
    if cfg.model.aux_loss:
        p["aux_loss"] = True
    p.update(dtype=cfg.precision.dtype, channels_last=cfg.precision.channels_last, compile=cfg.precision.compile)
    return p


# The knobs a loader is tuned by (the report's loader-tuning section varies these and nothing else).
TUNING_KEYS: dict[str, tuple[str, ...]] = {
    "dali": ("num_threads", "hw_decoder_load", "prefetch_queue_depth"),
    "torch": ("num_workers", "prefetch_factor"),
}


def tuning_knobs(backend: str, device: str | None, num_workers: int) -> tuple[str, ...]:
    """The tuning knobs that change this loader's work: DALI's hardware-decoder share only with GPU
    decoding, torch's prefetch_factor only with worker processes (num_workers=0 loads in the caller)."""
    drop = ({"hw_decoder_load"} if device != "gpu" else set()) | ({"prefetch_factor"} if num_workers == 0 else set())
    return tuple(k for k in TUNING_KEYS.get(backend, ()) if k not in drop)


def tuning_of(point: Point) -> tuple[Point, Point]:
    """(the loader's tuning settings, defaults filled in where the point leaves them out; the rest of the
    point) of a loader or e2e point: what the report's tuning section compares, and what it groups by."""

    backend = point.get("loader", "")
    knobs = tuning_knobs(backend, point.get("loader_device"), point.get("num_workers", LoaderConfig.num_workers))
    setting = {k: point.get(k, getattr(LoaderConfig, k)) for k in knobs}
    rest = {k: v for k, v in point.items() if k not in TUNING_KEYS.get(backend, ())}
    return setting, rest


def loader_keys(cfg: Config) -> Point:
    """The loader and, named only where they differ from the defaults (so existing points keep their
    ids), the settings that change its speed: DALI's resampler and ROI mode, torch's decoder, and each
    backend's tuning knobs (TUNING_KEYS: DALI's threads, hardware-decoder share, queue depth; torch's
    workers and prefetch factor)."""

    lc, default = cfg.loader, LoaderConfig()
    device = resolved_loader_device(cfg)
    keys: Point = {"loader": lc.backend, "loader_device": device}
    own = {"dali": ("resampler", "roi"), "torch": ("decoder",)}.get(lc.backend, ())
    wanted = own + tuning_knobs(lc.backend, device, lc.num_workers)
    for name in wanted:
        if getattr(lc, name) != getattr(default, name):
            keys[name] = getattr(lc, name)
    return keys


def _shape(cfg: Config) -> Point:
    return {"resolution": list(cfg.data.crop), "batch_size": cfg.loader.batch_size}


def _loader(cfg: Config, world_size: int = 1) -> Point:
    p = {**loader_keys(cfg), **_shape(cfg), **dataset_tags(cfg)}
    if cfg.loader.decode_only:
        p["decode_only"] = True
        p.pop("roi", None)  # no crop window is decoded
    return p


def _model(cfg: Config, world_size: int = 1) -> Point:
    return {**model_keys(cfg), **_shape(cfg), "world_size": world_size}


def _infer(cfg: Config, world_size: int = 1) -> Point:
    return {**model_keys(cfg), **_shape(cfg)}


def _e2e(cfg: Config, world_size: int = 1) -> Point:
    return {**model_keys(cfg), **loader_keys(cfg), **_shape(cfg), "world_size": world_size, **dataset_tags(cfg)}


def _accuracy(cfg: Config, world_size: int = 1) -> Point:
    """seed: train.seed (initial weights); loader_seed: loader.seed (data order and augmentation); the
    initial weights (model.pretrained) and the aux head's weight: each named when set (not the default),
    so two runs that differ only in one of them are two points."""

    t = cfg.train
    p = {**_e2e(cfg, world_size), "iters": t.iters, "lr": t.lr, "optimizer": t.optimizer, "seed": t.seed}
    if cfg.loader.seed != 0:
        p["loader_seed"] = cfg.loader.seed
    if cfg.model.pretrained:
        p["pretrained"] = cfg.model.pretrained
    if cfg.model.aux_loss and t.aux_weight != TrainConfig.aux_weight:
        p["aux_weight"] = t.aux_weight
    if cfg.bench.eval_scales:  # the run also records a row per scale (record.rows_for): a different measurement
        p["eval_scales"] = list(cfg.bench.eval_scales)
    return p


def _baseline(cfg: Config, world_size: int = 1) -> Point:
    return {"model": "colour_baseline", **dataset_tags(cfg)}


def _e2e_companions(cfg: Config, world_size: int) -> dict[str, Point]:
    """The loader alone and the model alone at the same point: e2e_efficiency's denominator. Loader
    rows measure one process's loader, so the loader companion is only meaningful at world size 1."""
    out = {"model": _model(cfg, world_size)}
    if world_size == 1:
        out["loader"] = _loader(cfg)
    else:
        out["base"] = _e2e(cfg, 1)
    return out


def _base_companion(point: Callable[[Config, int], Point]) -> Callable[[Config, int], dict[str, Point]]:
    """The same point at world size 1: scaling_efficiency's reference."""
    return lambda cfg, world_size: {"base": point(cfg, 1)} if world_size > 1 else {}


# ---------------------------------------------------------------------------------------------
# metric names: the table's `metrics` tuples are made of these, and every reader of a row (results/derive.py,
# report/, the sweep, the study) names a metric by them, so a renamed metric is one edit and a typo an error

IMAGES_PER_S = "images_per_s"  # over the timed iterations, wall clock between two synchronised boundaries
IMAGES_PER_S_BATCH1 = "images_per_s_batch1"  # infer: at batch 1
LATENCY_MS_P50 = "latency_ms_p50"  # per-batch (per-step) latency percentiles (bench/timing.latency_metrics)
LATENCY_MS_MEDIAN = "latency_ms_median"
LATENCY_MS_P90 = "latency_ms_p90"
LATENCY_MS_P99 = "latency_ms_p99"
LATENCY_MS_IQR = "latency_ms_iqr"
VARIANCE_WARNING = "variance_warning"  # IQR / median above bench.variance_warn
TIMED_ITERS = "timed_iters"
FIRST_STEP_S = "first_step_s"
COMPILE_S = "compile_s"  # the training loop's first step beyond a steady one (model: eval's in infer_compile_s)
RECOMPILES = "recompiles"  # during the training loop (model: eval mode's one compile is infer_compiles, apart)
FWD_MS, BWD_MS, OPT_MS = "fwd_ms", "bwd_ms", "opt_ms"  # bench.split_phases
CPU_UTIL = "cpu_util"
CPU_MS_PER_IMAGE = "cpu_ms_per_image"
# the same CPU time by stage, where the loader times its stages (data/handoff.StageTimes: the torch loaders)
CPU_MS_PER_IMAGE_DECODE = "cpu_ms_per_image_decode"
CPU_MS_PER_IMAGE_TRANSFORM = "cpu_ms_per_image_transform"
CPU_MS_PER_IMAGE_HANDOFF = "cpu_ms_per_image_handoff"
CPU_MS_BY_STAGE = (CPU_MS_PER_IMAGE_DECODE, CPU_MS_PER_IMAGE_TRANSFORM, CPU_MS_PER_IMAGE_HANDOFF)
MEM_HOST_PEAK_RSS_MIB = "mem_host_peak_rss_mib"
MEM_TORCH_PEAK_ALLOCATED_MIB = "mem_torch_peak_allocated_mib"
MEM_TORCH_PEAK_RESERVED_MIB = "mem_torch_peak_reserved_mib"
MEM_NVML_USED_MIB = "mem_nvml_used_mib"
LOADER_GPU_MEM_MIB = "loader_gpu_mem_mib"  # the loader's own: NVML used - torch reserved, less its baseline
DEVICE = "device"  # the torch device type the point ran on: "cuda" | "cpu"
VISIBLE_DEVICES = "visible_devices"  # $CUDA_VISIBLE_DEVICES of the point's process, where set
PARAMS = "params"
FLOPS_PER_IMAGE = "flops_per_image"  # forward
TRAIN_FLOPS_PER_IMAGE = "train_flops_per_image"
ACHIEVED_TFLOPS = "achieved_tflops"
MFU = "mfu"
GPU_UTIL = "gpu_util"
GPU_JPG_UTIL = "gpu_jpg_util"  # NVML's utilisation of the NVJPG engines (hardware JPEG decoding), a fraction
MEMORY_SNAPSHOT = "memory_snapshot"  # bench.memory_snapshot: the allocator history pickle (pytorch.org/memory_viz)
MEMORY_SNAPSHOT_NVML_USED_MIB = "memory_snapshot_nvml_used_mib"  # NVML's used memory when it was taken
GPU_POWER_W = "gpu_power_w"
DATA_WAIT_MS_P50 = "data_wait_ms_p50"  # engine/stall.py: how long each step waited for its batch
DATA_WAIT_MS_P99 = "data_wait_ms_p99"
STALL_FRACTION = "stall_fraction"
# model / e2e rows at world size > 1 (engine/ranks.py makes them, as it makes the 'train' lines'): seconds per
# step across the ranks: each rank's work (its data wait + compute), data wait, compute, and its wait in the
# gradient all-reduce (min / median / max; one list per figure, index = rank), the rank with the most work,
# max / median of the work, and the straggler (that rank when the ratio exceeds train.straggler_threshold).
RANK_WORK_S_MIN, RANK_WORK_S_MEDIAN, RANK_WORK_S_MAX = "rank_work_s_min", "rank_work_s_median", "rank_work_s_max"
RANK_DATA_WAIT_S_MIN, RANK_DATA_WAIT_S_MAX = "rank_data_wait_s_min", "rank_data_wait_s_max"
RANK_COMPUTE_S_MIN, RANK_COMPUTE_S_MAX = "rank_compute_s_min", "rank_compute_s_max"
RANK_ALLREDUCE_WAIT_S_MIN, RANK_ALLREDUCE_WAIT_S_MAX = "rank_allreduce_wait_s_min", "rank_allreduce_wait_s_max"
RANK_DATA_WAIT_S, RANK_COMPUTE_S, RANK_ALLREDUCE_WAIT_S = "rank_data_wait_s", "rank_compute_s", "rank_allreduce_wait_s"
SLOWEST_RANK, STRAGGLER_RATIO, STRAGGLER = "slowest_rank", "straggler_ratio", "straggler"
LOADER_DESCRIPTION = "loader_description"  # which backend ran, where, and (the torch loaders) its decoder
LOADER_DECODER = "loader_decoder"  # loader rows: the decoder the loader ran (torchvision.io, PIL, ...)
# DALI loader and e2e rows (data/dali/nvjpeg.py): the nvJPEG DALI's decoding ran on (None: a CPU decode, or a
# mixed decoder's CPU fallback), whether the GPU's JPEG engines took a share, and how many there are
NVJPEG_VERSION, HW_DECODER, HW_DECODER_ENGINES = "nvjpeg_version", "hw_decoder", "hw_decoder_engines"
PROFILE_TOP_OPS, PROFILE_SORT = "profile_top_ops", "profile_sort"  # bench.profile (bench/profile.py)
PROFILE_STEPS, PROFILE_TRACE = "profile_steps", "profile_trace"
MIOU = "miou"  # a fraction, as are ACC and each PER_CLASS_IOU entry
ACC = "acc"
PER_CLASS_IOU = "per_class_iou"
TRAIN_WALL_S = "train_wall_s"
OUT_DIR = "out_dir"
CURVES = "curves"  # {"train": {iter, loss, wall_s}, "eval": {iter, miou, wall_s}}
VAL_PREDICTIONS = "val_predictions"  # [{stem, size, input, label, pred}]: PNG names relative to OUT_DIR
TRAIN_IMAGES, VAL_IMAGES = "train_images", "val_images"
LOSS_SCALE, SKIPPED_STEPS = "loss_scale", "skipped_steps"  # fp16: the GradScaler's last scale, steps it skipped
# Inference resolution (bench/inference.py): an accuracy run with bench.eval_scales returns SCALES, one entry per
# scale, which record.rows_for makes into rows of their own: the run's point plus EVAL_SCALE, and these metrics.
SCALES = "scales"
EVAL_SCALE = "eval_scale"  # a point key: the input scale of the evaluated frame (1.0 = as plain `cityseg eval`)
EVAL_SIZE = "eval_size"  # [H, W] the model saw at that scale (labels stay at full resolution)
INFER_IMAGES_PER_S = "infer_images_per_s"  # eval-mode forward, timed as `bench infer` times it
INFER_LATENCY_MS_P50 = "infer_latency_ms_p50"
INFER_COMPILE_S = "infer_compile_s"  # model: the eval-mode graph's compile (first inference step beyond a steady one)
INFER_COMPILES = "infer_compiles"  # model: graphs compiled for eval mode (1 with compile on, once; 0 off)

THROUGHPUT = (IMAGES_PER_S, LATENCY_MS_P50, LATENCY_MS_P90, LATENCY_MS_P99, LATENCY_MS_IQR)
MEMORY = (MEM_HOST_PEAK_RSS_MIB, CPU_UTIL)
ACCURACY = (MIOU, PER_CLASS_IOU, ACC)
# What a training run records besides its accuracy (bench/accuracy.py): speed, size, peak memory, its loss and
# val-mIoU curves and example predictions.
TRAINING_RUN = (IMAGES_PER_S, TRAIN_WALL_S, DEVICE, OUT_DIR, PARAMS, FLOPS_PER_IMAGE, TRAIN_FLOPS_PER_IMAGE,
                MEM_HOST_PEAK_RSS_MIB, CURVES, VAL_PREDICTIONS)  # fmt: skip
STALL = (DATA_WAIT_MS_P50, DATA_WAIT_MS_P99, STALL_FRACTION)

_TABLE = (
    Scenario("loader", "Loaders alone", "the data loader alone: images/s, batch latency, CPU ms per image",
             _loader, THROUGHPUT + (CPU_MS_PER_IMAGE, MEM_HOST_PEAK_RSS_MIB), reads_data=True),
    Scenario("model", "Model only (train step on a synthetic on-device batch)",
             "engine.step.train_step on synthetic on-device batches, then eval-mode inference",
             _model, THROUGHPUT + MEMORY + (TIMED_ITERS, FIRST_STEP_S, DEVICE, FLOPS_PER_IMAGE, MFU),
             reads_data=False, companions=_base_companion(_model)),
    Scenario("infer", "Inference", "eval-mode forward: latency at batch 1, throughput at loader.batch_size",
             _infer, THROUGHPUT + MEMORY + (IMAGES_PER_S_BATCH1, DEVICE, FLOPS_PER_IMAGE, MFU),
             reads_data=False),
    Scenario("e2e", "End to end (real loader + the same train step)",
             "the real loader (loader.backend) feeding the same train_step",
             _e2e, THROUGHPUT + MEMORY + STALL + (DEVICE, LOADER_DESCRIPTION), reads_data=True,
             companions=_e2e_companions),
    Scenario("accuracy", "Accuracy runs", "engine.train.train for train.iters iterations, then val mIoU",
             _accuracy, ACCURACY + TRAINING_RUN, reads_data=True, kind="accuracy"),
    Scenario("baseline", "Per-pixel colour baseline",
             "the best per-pixel colour classifier fitted on the train split (what colour alone can do)",
             _baseline, ACCURACY, reads_data=True, kind="accuracy"),
)  # fmt: skip
SCENARIOS: dict[str, Scenario] = {s.name: s for s in _TABLE}


def scenario(name: str) -> Scenario:
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario '{name}' (have: {', '.join(SCENARIOS)})")
    return SCENARIOS[name]


def point_for(name: str, cfg: Config, world_size: int = 1) -> Point:
    """The identity of scenario `name`'s point under `cfg`: flat, JSON-plain (lists, not tuples)."""
    return scenario(name).point(cfg, world_size)


def companions_for(name: str, cfg: Config, world_size: int = 1) -> dict[str, tuple[str, Point]]:
    """{role: (scenario, point)} of the rows this point's derived metrics are computed from."""
    s = scenario(name)
    if s.companions is None:
        return {}
    roles = s.companions(cfg, world_size)
    return {role: ({"loader": "loader", "model": "model"}.get(role, name), p) for role, p in roles.items()}

"""Inference speed and inference resolution: the eval-mode forward timed as `cityseg bench infer` times it,
and one trained model evaluated and timed at several input scales.

    t, stats = time_forward(model, cfg, device, (h, w), batch=8)   # StepTimes and timing.summarize's stats
    scales = parse_scales("0.5,0.75,1.0")                          # (0.5, 0.75, 1.0); bad text: one line
    for r in evaluate_at_scales(model, cfg, device, scales): ...   # {eval_scale, eval_size, miou, acc, ...}

A scale s evaluates every val frame resized to s times its evaluated size (data.eval_size, else the frame's
own) by setting data.eval_size: the loaders resize the image, the labels stay at full resolution and the
logits are upsampled to them before the argmax (engine/step.eval_step). Scale 1.0 leaves the config as it
is, so its mIoU is plain `cityseg eval`'s. Inference images/s at a scale: the eval-mode forward of a
synthetic on-device batch of loader.eval_batch_size images of that size, bench.warmup untimed then
bench.iters timed steps, under the run's autocast: the functions `bench infer` times with.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from cityseg_fast.bench.timing import StepTimes, summarize, time_steps
from cityseg_fast.config import Config, data_root, replace
from cityseg_fast.config_ranges import check_range
from cityseg_fast.data.batch import to_layout
from cityseg_fast.data.cityscapes import find_samples, image_size
from cityseg_fast.data.factory import build_loader
from cityseg_fast.engine import checkpoint as ckpt_io
from cityseg_fast.engine import precision
from cityseg_fast.engine.evaluate import evaluate
from cityseg_fast.errors import UserError
from cityseg_fast.models import model_from_config
from cityseg_fast.results.scenarios import (
    ACC,
    EVAL_SCALE,
    EVAL_SIZE,
    INFER_IMAGES_PER_S,
    INFER_LATENCY_MS_P50,
    MIOU,
    PER_CLASS_IOU,
)


def inference_model(cfg: Config, weights: dict[str, torch.Tensor], path: str, device: torch.device) -> nn.Module:
    """The model of `cfg` with a checkpoint's weights (`path` names it in errors), prepared as it was trained
    (precision, channels_last, compile), in eval mode on `device`."""
    model = model_from_config(cfg)
    ckpt_io.load_model_state(model, weights, path)
    precision.setup_precision(cfg.precision.dtype, cfg.precision.cudnn_benchmark)
    return precision.prepare_model(model, cfg.precision, device).eval()


def time_forward(
    model: nn.Module, cfg: Config, device: torch.device, hw: tuple[int, int], batch: int
) -> tuple[StepTimes, dict[str, Any]]:
    """Eval-mode forward of a random `batch` x 3 x H x W on-device input in the model's memory format and
    autocast: bench.warmup untimed and bench.iters timed steps (timing.time_steps), and their statistics."""
    x = to_layout(torch.randn(batch, 3, *hw, device=device), cfg.precision.channels_last)

    def forward() -> None:
        with precision.autocast(cfg.precision.dtype, device.type):
            model(x)

    with torch.inference_mode():
        t = time_steps(forward, cfg.bench.iters, cfg.bench.warmup, device, items_per_step=batch)
    return t, summarize(t.step_s, variance_warn=cfg.bench.variance_warn)


def parse_scales(text: str, option: str = "--scales") -> tuple[float, ...]:
    """'0.5,0.75,1.0' -> (0.5, 0.75, 1.0); anything else is one line naming `option` (bench.eval_scales' range)."""
    try:
        scales = tuple(float(v) for v in text.split(","))
        if not all(map(math.isfinite, scales)):
            raise ValueError
    except ValueError:
        raise UserError(f"{option} '{text}': expected numbers separated by commas, e.g. 0.5,0.75,1.0") from None
    try:
        check_range("bench.eval_scales", scales)
    except UserError as e:
        raise UserError(f"{option} '{text}': {str(e).split(': ', 1)[1]}") from None
    if len(set(scales)) != len(scales):
        raise UserError(f"{option} '{text}': a scale is repeated")
    return scales


def evaluated_size(cfg: Config) -> tuple[int, int]:
    """(H, W) a plain evaluation feeds the model: data.eval_size, else the first val frame's size."""
    if cfg.data.eval_size is not None:
        return tuple(cfg.data.eval_size)
    return image_size(find_samples(data_root(cfg), cfg.data.val_split)[0].image)


def scaled_size(hw: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(1, round(hw[0] * scale)), max(1, round(hw[1] * scale))


def at_scale(cfg: Config, scale: float, hw: tuple[int, int]) -> Config:
    """`cfg` evaluating `scale` x `hw`: unchanged at 1.0 (plain evaluation), else data.eval_size set."""
    return cfg if scale == 1.0 else replace(cfg, data={"eval_size": list(scaled_size(hw, scale))})


def evaluate_at_scales(
    model: nn.Module, cfg: Config, device: torch.device, scales: tuple[float, ...], rank: int = 0, world: int = 1
) -> list[dict[str, Any]]:
    """Per scale: {eval_scale, eval_size, miou, acc, per_class_iou, images, pixels, infer_images_per_s,
    infer_latency_ms_p50} of `model` over the val split (this rank's shard, reduced across ranks)."""
    hw = evaluated_size(cfg)
    out = []
    for scale in scales:
        cfg_s = at_scale(cfg, scale, hw)
        loader = build_loader(cfg_s, cfg.data.val_split, rank, world, train=False, device=device)
        try:
            r = evaluate(model, loader, cfg_s, device)
        finally:
            loader.close()
        size = scaled_size(hw, scale)
        t, stats = time_forward(model, cfg_s, device, size, cfg.loader.eval_batch_size)
        out.append({EVAL_SCALE: scale, EVAL_SIZE: list(size), MIOU: r["miou"], ACC: r["acc"],
                    PER_CLASS_IOU: r["per_class_iou"], "images": r["images"], "pixels": r["pixels"],
                    INFER_IMAGES_PER_S: t.items_per_s, INFER_LATENCY_MS_P50: stats["median_ms"]})  # fmt: skip
    return out

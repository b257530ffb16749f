"""The one train step and the one eval step: training and every benchmark scenario call these.

Neither pulls a value to the host (no `.item()`, no `.cpu()`, no sync): the caller decides where to
synchronize (the training loop does it only at log intervals; benchmarks only at timing boundaries).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cityseg_fast.config import Config, TrainConfig
from cityseg_fast.data.batch import Batch
from cityseg_fast.engine import precision
from cityseg_fast.engine.precision import autocast
from cityseg_fast.models import model_from_config


class SegLoss(nn.Module):
    """Cross-entropy (ignore_index 255) on the main logits + aux_weight x cross-entropy on the aux logits.

    Logits are cast to fp32 first: under bf16/fp16 autocast a 19-way softmax over ~10^6 pixels loses
    precision in the log-sum-exp, and the mean over that many pixels is best accumulated in fp32.
    """

    def __init__(self, ignore_index: int = 255, aux_weight: float = 0.4) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.aux_weight = aux_weight

    def forward(self, output: torch.Tensor | dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(output, dict):
            loss = F.cross_entropy(output["out"].float(), target, ignore_index=self.ignore_index)
            if "aux" in output and self.aux_weight > 0:
                aux = F.cross_entropy(output["aux"].float(), target, ignore_index=self.ignore_index)
                loss = loss + self.aux_weight * aux
            return loss
        return F.cross_entropy(output.float(), target, ignore_index=self.ignore_index)


@dataclass
class TrainState:
    model: nn.Module  # what train_step calls: placed (device, channels_last), maybe DDP-wrapped, then compiled
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: Any  # precision.ScalerStep
    criterion: nn.Module
    cfg: Config
    device: torch.device
    eval_model: nn.Module | None = None  # what evaluation calls: the compiled model without DDP (None: `model`)


# train.optimizer's words (CHOICES; TrainConfig checked the word when it was made) -> (parameters, config) -> optimizer.
OPTIMIZERS: dict[str, Callable[[list[nn.Parameter], TrainConfig], torch.optim.Optimizer]] = {
    # MMSegmentation's recipe: SGD momentum 0.9, weight decay 5e-4 on every parameter.
    "sgd": lambda params, t: torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay),
    "adamw": lambda params, t: torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay),
}


def build_optimizer(model: nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
    return OPTIMIZERS[t.optimizer]([p for p in model.parameters() if p.requires_grad], t)


def lr_factor(t: TrainConfig) -> Callable[[int], float]:
    """Multiplier of the base lr at iteration i: poly decay to min_lr (MMSegmentation's PolyLR), times a
    linear warm-up from warmup_factor to 1 over the first warmup_iters (mmcv's 'linear' warm-up)."""
    floor = t.min_lr / t.lr if t.lr > 0 else 0.0

    def factor(i: int) -> float:
        progress = min(i, t.iters) / max(1, t.iters)
        f = (1.0 - floor) * (1.0 - progress) ** t.poly_power + floor
        if t.warmup_iters > 0 and i < t.warmup_iters:
            f *= t.warmup_factor + (1.0 - t.warmup_factor) * i / t.warmup_iters
        return f

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, t: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per iteration. A LambdaLR of a closure: its state_dict holds only numbers."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(t))


def build_train_state(
    cfg: Config,
    device: torch.device | str,
    model: nn.Module | None = None,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
) -> TrainState:
    """Model (from the config unless given) on `device` with the precision settings, wrapped by `wrap`
    (DDP under torchrun: dist.wrap_ddp) before it is compiled (precision.prepare_for_training says why),
    optimizer, poly schedule, AMP scaler and loss. SyncBatchNorm conversion, before this, is the caller's."""

    device = torch.device(device)
    precision.setup_precision(cfg.precision.dtype, cfg.precision.cudnn_benchmark)
    if model is None:
        model = model_from_config(cfg)
    model, eval_model = precision.prepare_for_training(model, cfg.precision, device, wrap)
    optimizer = build_optimizer(model, cfg.train)
    return TrainState(
        model=model,
        eval_model=eval_model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, cfg.train),
        scaler=precision.ScalerStep.for_dtype(cfg.precision.dtype, device.type),
        criterion=SegLoss(cfg.data.ignore_index, cfg.train.aux_weight),
        cfg=cfg,
        device=device,
    )


def train_step(state: TrainState, batch: Batch) -> torch.Tensor:
    """Forward, loss, backward, optimizer step (skipped by the fp16 scaler on inf/NaN grads), lr step.

    Returns the detached loss on the device; reading it (`.item()`) is the caller's sync point.
    """

    cfg = state.cfg
    state.model.train()
    state.optimizer.zero_grad(set_to_none=True)
    with autocast(cfg.precision.dtype, state.device.type):
        output = state.model(batch.image)
        loss = state.criterion(output, batch.target)
    state.scaler(loss, state.optimizer, parameters=state.model.parameters(), clip=cfg.train.grad_clip)
    state.scheduler.step()
    return loss.detach()


def eval_step(model: nn.Module, batch: Batch, cfg: Config) -> torch.Tensor:
    """int64 N x H x W predictions at the target's size: logits are upsampled (bilinear) before argmax,
    so a model run on resized eval images is still scored on full-resolution labels."""

    with torch.inference_mode(), autocast(cfg.precision.dtype, batch.image.device.type):
        logits = model(batch.image)
    if isinstance(logits, dict):
        logits = logits["out"]
    size = tuple(batch.target.shape[-2:])
    if tuple(logits.shape[-2:]) != size:
        logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    return logits.argmax(1)

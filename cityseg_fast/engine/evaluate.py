"""Evaluation: a confusion matrix on the device, summed across ranks, official-format export.

Each validation image is counted exactly once, also under DDP: eval loaders mark padding samples with
`Batch.index == -1` and `evaluate` masks them out (the one place padding is masked). Nothing in the
loop waits for the device: no boolean-mask indexing, no CUDA bincount (it reads its input's min/max
back to size its output), no blocking copy; the matrix is read once, after the last batch. A test
runs it under `torch.cuda.set_sync_debug_mode("error")`. The IoU follows cityscapesscripts'
`evalPixelLevelSemanticLabeling`: ground-truth "ignore" pixels are dropped, a class with neither
ground truth nor prediction has IoU NaN and is left out of the mean.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from rich.table import Table
from torch import nn

from cityseg_fast.config import Config
from cityseg_fast.data.batch import Batch
from cityseg_fast.engine import dist
from cityseg_fast.engine.precision import autocast
from cityseg_fast.engine.step import eval_step
from cityseg_fast.labels import CLASS_NAMES, TRAINID_TO_ID


class ConfusionMatrix:
    """C x C int64 matrix, rows = ground truth trainId, columns = predicted trainId, kept on `device`."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu", ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._bins = torch.zeros(num_classes * num_classes + 1, dtype=torch.int64, device=device)
        self.mat = self._bins[:-1].view(num_classes, num_classes)  # the last bin collects what is not counted

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        """Add a batch of predictions (N x ...) against targets of the same shape, without a host sync.

        keep: bool N (on the matrix's device), False for samples that must not count (padding).
        Every pixel goes to bin target * C + pred, or to one spare bin C * C when its target is
        ignore (255) or out of range or its sample is not kept; a scatter-add into C * C + 1 bins
        then needs no data-dependent shape (which is what makes bincount and mask indexing sync).
        """
        n = self.num_classes
        target = target.to(self.mat.device)
        pred = pred.to(self.mat.device)
        valid = (target >= 0) & (target < n)  # drops ignore_index (255) and anything else out of range
        if keep is not None:
            valid &= keep.reshape(-1, *([1] * (target.dim() - 1)))
        idx = torch.where(valid, target * n + pred.clamp(0, n - 1), n * n).reshape(-1)
        ones = torch.ones((), dtype=torch.int64, device=idx.device).expand(idx.numel())
        self._bins.scatter_add_(0, idx, ones)

    def reduce(self) -> None:
        """Sum the matrices of all ranks (every rank ends with the global matrix)."""
        dist.all_reduce_sum(self.mat)

    def reset(self) -> None:
        self._bins.zero_()

    def compute(self) -> dict[str, Any]:
        """{"miou": mean over classes with a defined IoU, "per_class_iou": [19, NaN where undefined], "acc": pixel accuracy}."""
        m = self.mat.double().cpu()  # the one host transfer per evaluation
        tp = m.diag()
        denom = m.sum(0) + m.sum(1) - tp
        iou = torch.where(denom > 0, tp / denom.clamp(min=1), torch.full_like(tp, float("nan")))
        valid = ~torch.isnan(iou)
        miou = float(iou[valid].mean()) if bool(valid.any()) else float("nan")
        total = float(m.sum())
        acc = float(tp.sum()) / total if total > 0 else float("nan")
        return {"miou": miou, "per_class_iou": [float(v) for v in iou], "acc": acc, "pixels": int(total)}


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on `device` without a blocking copy (pinned, then non-blocking)."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def export_prediction(pred: np.ndarray, stem: str, export_dir: str | os.PathLike) -> Path:
    """Write one prediction (H x W trainIds) as a Cityscapes labelId PNG the official evaluation reads.

    cityscapesscripts matches `{city}_{seq}_{frame}*.png` anywhere under $CITYSCAPES_RESULTS, so the file
    is named `{stem}_leftImg8bit.png` (the frame's own image name) inside a folder per city.
    """

    city = stem.split("_", 1)[0]
    out = Path(export_dir) / city
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}_leftImg8bit.png"
    label_ids = TRAINID_TO_ID[pred.astype(np.int64)].astype(np.uint8)
    Image.fromarray(label_ids, mode="L").save(path)
    return path


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    cfg: Config,
    device: torch.device | str,
    export_dir: str | os.PathLike | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """mIoU of `model` over every sample of `loader` (this rank's shard), reduced across ranks.

    Returns {"miou", "per_class_iou", "acc", "pixels", "images"}. With `export_dir`, each prediction is also written
    as a labelId PNG named after its frame (each rank writes the frames it evaluated).
    """
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(cfg.data.num_classes, device, cfg.data.ignore_index)
    task = progress.add_task("eval", total=len(loader), stats="") if progress is not None else None
    advance = (lambda: progress.advance(task)) if task is not None else None
    images = accumulate(model, loader, cfg, cm, export_dir, advance)
    if task is not None:
        progress.remove_task(task)
    cm.reduce()
    dist.all_reduce_sum(images)
    result = cm.compute()  # the evaluation's one host transfer (and sync)
    result["images"] = int(images)
    model.train(was_training)
    return result


@torch.inference_mode()
def accumulate(
    model: nn.Module,
    loader: Iterable[Batch],
    cfg: Config,
    cm: ConfusionMatrix,
    export_dir: str | os.PathLike | None = None,
    advance: Any = None,
) -> torch.Tensor:
    """Add every batch's predictions to `cm`; returns the count of real (non-padding) images, on the
    device. Never waits for the device unless exporting (tests/gpu run it under sync debug mode)."""
    images = torch.zeros((), dtype=torch.int64, device=cm.mat.device)
    samples = getattr(loader, "samples", None)
    for batch in loader:
        pred = eval_step(model, batch, cfg)
        keep = None
        if batch.index is not None:  # a loader without padding (index None): every sample is real
            keep = _to_device(batch.index, pred.device) >= 0
            images += keep.sum()
        else:
            images += pred.shape[0]
        cm.update(pred, batch.target, keep)
        if export_dir is not None:
            if samples is None or batch.index is None:
                raise ValueError("export needs a loader with `samples` and batches with `index`")
            # Export needs the pixels on the host: one transfer per batch, only when exporting.
            for p, i in zip(pred.cpu().numpy(), batch.index.cpu().tolist(), strict=True):
                if i >= 0:
                    export_prediction(p, samples[i].stem, export_dir)
        if advance is not None:
            advance()
    return images


def predict_image(model: nn.Module, rgb: np.ndarray, cfg: Config, device: torch.device) -> torch.Tensor:
    """H x W int64 trainIds for one H x W x 3 uint8 image (`cityseg predict`, a study's example frames)."""
    h, w = rgb.shape[:2]
    x = torch.from_numpy(rgb).to(device).permute(2, 0, 1).float().div_(255)[None]
    mean = torch.tensor(cfg.data.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.data.std, device=device).view(1, 3, 1, 1)
    x = (x - mean) / std
    if cfg.data.eval_size is not None:
        x = F.interpolate(x, size=tuple(cfg.data.eval_size), mode="bilinear", align_corners=False)
    xh, xw = x.shape[-2:]
    ph, pw = (-xh) % 32, (-xw) % 32  # encoder-decoders need sizes divisible by their total stride
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(cfg.precision.dtype, device.type):
        logits = model(x)
    if isinstance(logits, dict):
        logits = logits["out"]
    logits = logits[..., :xh, :xw].float()
    if (xh, xw) != (h, w):
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    return logits.argmax(1)[0]


def iou_table(result: dict[str, Any], title: str = "per-class IoU"):
    """A rich Table of the per-class IoU with the mIoU in the caption."""

    table = Table(
        title=title, caption=f"mIoU {100 * result['miou']:.2f}   pixel acc {100 * result['acc']:.2f}"
    )
    table.add_column("class")
    table.add_column("IoU %", justify="right")
    for name, v in zip(CLASS_NAMES, result["per_class_iou"], strict=True):
        table.add_row(name, "n/a" if math.isnan(v) else f"{100 * v:.2f}")
    return table


"""The Batch contract every loader backend yields, and a checker that tests hold all backends to."""

from __future__ import annotations

from typing import NamedTuple

import torch


class Batch(NamedTuple):
    """image: float N x 3 x H x W, channels_last, normalized, on the training device.
    target: int64 N x H x W trainIds 0..18, 255 = ignore, on the same device.
    index: int64 N (any device) positions of the samples in the loader's `samples` list, or None.
      Eval loaders always set it: it names exported predictions, and -1 marks a padding sample
      (its target is all 255) so that no repeated image ever reaches the metric.
    """

    image: torch.Tensor
    target: torch.Tensor
    index: torch.Tensor | None = None


def check_batch(batch: Batch, device: torch.device | str | None = None, num_classes: int = 19) -> None:
    """Raise AssertionError if `batch` breaks the contract (used by tests and by `--check` debug runs)."""
    img, tgt = batch.image, batch.target
    assert img.dim() == 4 and img.shape[1] == 3, f"image must be N x 3 x H x W, got {tuple(img.shape)}"
    assert img.is_floating_point(), f"image must be float, got {img.dtype}"
    assert img.is_contiguous(memory_format=torch.channels_last), "image must be channels_last"
    # Training targets match the image size; eval targets may stay at full resolution (data.eval_size).
    assert tgt.dim() == 3 and tgt.shape[0] == img.shape[0], (
        f"target must be N x H x W, got {tuple(tgt.shape)} for image {tuple(img.shape)}"
    )
    assert tgt.dtype == torch.int64, f"target must be int64, got {tgt.dtype}"
    assert img.device == tgt.device, "image and target on different devices"
    if device is not None:
        assert img.device.type == torch.device(device).type, f"batch on {img.device}, expected {device}"
    bad = (tgt >= num_classes) & (tgt != 255) | (tgt < 0)
    assert not bool(bad.any()), f"target has values outside 0..{num_classes - 1} and 255"

"""The Batch contract every loader backend yields, and a checker that tests hold all backends to."""

from __future__ import annotations

from typing import NamedTuple

import torch


class Batch(NamedTuple):
    """image: float N x 3 x H x W, normalized, on the training device, in the memory format the model
      runs in: channels_last, or contiguous NCHW when precision.channels_last is false (`to_layout`).
    target: int64 N x H x W trainIds 0..18, 255 = ignore, on the same device.
    index: int64 N (any device) positions of the samples in the loader's `samples` list, or None.
      Eval loaders always set it: it names exported predictions, and -1 marks a padding sample (a
      repeat of a real file that evens out the ranks' batches); evaluation masks those out, once,
      so that no repeated image ever reaches the metric.
    """

    image: torch.Tensor
    target: torch.Tensor
    index: torch.Tensor | None = None


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def to_layout(image: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """N x 3 x H x W in the model's memory format (no copy when it already is): the one place a
    loader's images get the layout precision.channels_last names, so the NCHW axis measures NCHW."""
    return image.contiguous(memory_format=memory_format(channels_last))


def check_batch(
    batch: Batch, device: torch.device | str | None = None, num_classes: int = 19, channels_last: bool = True
) -> None:
    """Raise AssertionError if `batch` breaks the contract (used by tests)."""
    img, tgt = batch.image, batch.target
    assert img.dim() == 4 and img.shape[1] == 3, f"image must be N x 3 x H x W, got {tuple(img.shape)}"
    assert img.is_floating_point(), f"image must be float, got {img.dtype}"
    assert img.is_contiguous(memory_format=memory_format(channels_last)), (
        f"image must be {'channels_last' if channels_last else 'contiguous NCHW'}"
    )
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

"""Small building blocks shared by the models: conv-BN-ReLU, bilinear-initialised upsampling, pad/crop helpers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNReLU(nn.Sequential):
    """3x3 (by default) 'same' convolution -> BatchNorm -> ReLU; the conv has no bias (BN supplies it)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """Two ConvBNReLU: the unit of every U-Net stage."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(ConvBNReLU(in_ch, out_ch), ConvBNReLU(out_ch, out_ch))


def bilinear_kernel(in_ch: int, out_ch: int, kernel_size: int) -> torch.Tensor:
    """Weights (in_ch, out_ch, k, k) that make a ConvTranspose2d a bilinear upsampler, channel by channel.

    Same construction as the FCN reference (`surgery.upsample_filt` in shelhamer/fcn.berkeleyvision.org):
    channel i maps to channel i only, so in_ch must equal out_ch.
    """
    if in_ch != out_ch:
        raise ValueError(f"bilinear init needs in_ch == out_ch, got {in_ch} and {out_ch}")
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float64)
    filt1d = 1 - (og - center).abs() / factor
    filt = filt1d[:, None] * filt1d[None, :]
    weight = torch.zeros(in_ch, out_ch, kernel_size, kernel_size, dtype=torch.float64)
    idx = torch.arange(in_ch)
    weight[idx, idx] = filt
    return weight.float()


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad the bottom/right of x so H and W are multiples of `multiple`; returns (x, (H, W) before)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        # Zero = the dataset mean after normalisation, so the padding looks like a flat grey border.
        x = F.pad(x, (0, pw, 0, ph))
    return x, (h, w)


def like_input_format(out: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
    """`out` made dense in the input's memory format (channels_last or not), after crops and slices.

    No copy when it already is; otherwise one copy of the logits, which is small next to the network.
    """
    if inp.dim() == 4 and inp.is_contiguous(memory_format=torch.channels_last) and not inp.is_contiguous():
        return out.contiguous(memory_format=torch.channels_last)
    return out.contiguous()

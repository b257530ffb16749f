"""U-Net (Ronneberger et al., 2015) with 'same' convolutions and BatchNorm, for any input size.

`depth` down stages and as many up stages (the paper's is 4): widths base, 2b, 4b, 8b in the encoder and
16b at the bottleneck for depth 4 (base * 2**depth at the bottleneck in general). Differences from the
paper, all standard in modern re-implementations: 3x3 convs are padded (so no border cropping of the skips
is needed), BatchNorm follows every conv, and the input is zero-padded internally to a multiple of
2**depth (one 2x pooling per stage) and the logits cropped back, so the output is the input size for any H, W.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cityseg_fast.config_ranges import CHOICES
from cityseg_fast.models.blocks import DoubleConv, like_input_format, pad_to_multiple

UPSAMPLE_MODES = tuple(w for w in CHOICES["model.upsample"] if w is not None)  # None = the variant's default


class Up(nn.Module):
    """One decoder stage: upsample x2 while halving channels, concatenate the skip, DoubleConv."""

    def __init__(self, in_ch: int, out_ch: int, upsample: str) -> None:
        super().__init__()
        self.mode = upsample
        if upsample == "transposed":
            self.up = nn.ConvTranspose2d(in_ch, in_ch // 2, kernel_size=2, stride=2)
        else:
            # A 1x1 conv then bilinear x2: the same function as bilinear-then-1x1 (both are linear and the
            # bilinear weights sum to one, so the bias commutes too) at a quarter of the conv's cost.
            self.up = nn.Conv2d(in_ch, in_ch // 2, kernel_size=1)
        self.conv = DoubleConv(in_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if self.mode == "bilinear":
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """U-Net returning N x num_classes x H x W logits at the input size."""

    def __init__(
        self,
        num_classes: int = 19,
        in_channels: int = 3,
        base_width: int = 64,
        upsample: str = "bilinear",
        depth: int = 4,
    ) -> None:
        super().__init__()
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}")
        if base_width < 1:
            raise ValueError(f"base_width must be >= 1, got {base_width}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        w = [base_width * 2**i for i in range(depth + 1)]  # 64, 128, 256, 512, 1024 for the paper's U-Net
        self.stem = DoubleConv(in_channels, w[0])
        self.downs = nn.ModuleList(DoubleConv(w[i], w[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(Up(w[i + 1], w[i], upsample) for i in reversed(range(depth)))
        self.head = nn.Conv2d(w[0], num_classes, kernel_size=1)
        self.stride = 2**depth
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp = x
        x, (h, w) = pad_to_multiple(x, self.stride)
        x = self.stem(x)
        skips = []
        for down in self.downs:
            skips.append(x)
            x = down(F.max_pool2d(x, 2))
        for up, skip in zip(self.ups, reversed(skips), strict=True):
            x = up(x, skip)
        out = self.head(x)
        if out.shape[-2:] != (h, w):
            out = out[..., :h, :w]
        return like_input_format(out, inp)

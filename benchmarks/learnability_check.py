"""Learnability check for the synthetic scenes: can a tiny CNN beat what colour alone does on them?

A one-off experiment, kept to make reports/cpu-data/README.md's numbers reproducible: a tiny U-Net (base
12, ~0.27 M parameters, defined here, not the package's) trained 300 iterations (batch 6, AdamW +
one-cycle, flips) on 120 synthetic 128x256 frames, evaluated on 20 val frames, against the best per-pixel
colour classifier (synthetic.colour_baseline_miou) fitted on the same train frames. CPU only:

    PYTHONPATH=$PWD python benchmarks/learnability_check.py > reports/cpu-data/learnability_check.log
        (about 30 min on 2 busy shared cores)
    PYTHONPATH=$PWD python benchmarks/learnability_check.py --train 6 --val 2 --iters 2   # a smoke run
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cityseg_fast import labels as L
from cityseg_fast.data.synthetic import colour_baseline_miou, frame_seed, render_frame

SIZE = (128, 256)


def tensors(frames: list) -> tuple[torch.Tensor, torch.Tensor]:
    """(images N x 3 x H x W in [-0.5, 0.5], trainIds N x H x W) of rendered (rgb, labelIds) frames."""
    x = torch.tensor(np.stack([f[0] for f in frames])).permute(0, 3, 1, 2).float() / 255 - 0.5
    y = torch.tensor(L.ID_TO_TRAINID[np.stack([f[1] for f in frames])]).long()
    return x, y


def block(i: int, o: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(i, o, 3, padding=1, bias=False),
        nn.BatchNorm2d(o),
        nn.ReLU(inplace=True),
        nn.Conv2d(o, o, 3, padding=1, bias=False),
        nn.BatchNorm2d(o),
        nn.ReLU(inplace=True),
    )


def _up(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return F.interpolate(t, size=ref.shape[2:], mode="bilinear", align_corners=False)


class TinyUNet(nn.Module):
    """Three poolings, bilinear upsampling, width c at the first stage."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.e1, self.e2, self.e3, self.e4 = block(3, c), block(c, 2 * c), block(2 * c, 4 * c), block(4 * c, 8 * c)
        self.d3, self.d2, self.d1 = block(12 * c, 4 * c), block(6 * c, 2 * c), block(3 * c, c)
        self.head = nn.Conv2d(c, 19, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.e1(x)
        b = self.e2(F.max_pool2d(a, 2))
        c = self.e3(F.max_pool2d(b, 2))
        d = self.e4(F.max_pool2d(c, 2))
        c = self.d3(torch.cat([_up(d, c), c], 1))
        b = self.d2(torch.cat([_up(c, b), b], 1))
        a = self.d1(torch.cat([_up(b, a), a], 1))
        return self.head(a)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, iters: int, batch: int = 6) -> None:
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=iters)
    t0 = time.time()
    for it in range(iters):
        idx = torch.randint(0, len(x), (batch,))
        xb, yb = x[idx], y[idx]
        if it % 2:
            xb, yb = xb.flip(3), yb.flip(2)
        loss = F.cross_entropy(model(xb), yb, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if it % 100 == 99:
            print(it, loss.item(), time.time() - t0, flush=True)


def class_iou(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, np.ndarray]:
    """(mIoU over the classes present in the labels, IoU per class) of the model's predictions."""
    model.eval()
    with torch.no_grad():
        p = model(x).argmax(1).numpy()
    t = y.numpy()
    k = t < 19
    conf = np.bincount(t[k] * 19 + p[k], minlength=361).reshape(19, 19)
    inter = np.diag(conf)
    iou = inter / np.maximum(conf.sum(0) + conf.sum(1) - inter, 1)
    return float(iou[conf.sum(1) > 0].mean()), iou


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=120, help="train frames (default 120)")
    ap.add_argument("--val", type=int, default=20, help="val frames (default 20)")
    ap.add_argument("--iters", type=int, default=300, help="training iterations (default 300)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    tr = [render_frame(frame_seed(0, "train", i), SIZE) for i in range(args.train)]
    va = [render_frame(frame_seed(0, "val", i), SIZE) for i in range(args.val)]
    print("colour baseline", colour_baseline_miou(tr, va)["miou"], flush=True)
    model = TinyUNet(12)
    train(model, *tensors(tr), args.iters)
    miou, iou = class_iou(model, *tensors(va))
    print("cnn miou", miou, np.round(iou, 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

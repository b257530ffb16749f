"""Learnability check for the synthetic scenes (a one-off experiment, kept to make the README's numbers reproducible).

A tiny U-Net (base 12, ~0.27 M parameters) trained 300 iterations (batch 6, AdamW + one-cycle, flips)
on 120 synthetic 128x256 frames, evaluated on 20 val frames, against the best per-pixel colour
classifier (synthetic.colour_baseline_miou) fitted on the same train frames. CPU only:
    python reports/cpu-data/learnability_check.py      (about 30 min on 2 busy shared cores)
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cityseg_fast import labels as L
from cityseg_fast.data.synthetic import colour_baseline_miou, frame_seed, render_frame

torch.set_num_threads(2)
torch.manual_seed(0)
S = (128, 256)
tr = [render_frame(frame_seed(0, "train", i), S) for i in range(120)]
va = [render_frame(frame_seed(0, "val", i), S) for i in range(20)]
print("colour baseline", colour_baseline_miou(tr, va)["miou"], flush=True)


def tens(fr):
    x = torch.tensor(np.stack([f[0] for f in fr])).permute(0, 3, 1, 2).float() / 255 - 0.5
    y = torch.tensor(L.ID_TO_TRAINID[np.stack([f[1] for f in fr])]).long()
    return x, y


Xtr, Ytr = tens(tr)
Xva, Yva = tens(va)


def blk(i, o):
    return nn.Sequential(
        nn.Conv2d(i, o, 3, padding=1, bias=False),
        nn.BatchNorm2d(o),
        nn.ReLU(inplace=True),
        nn.Conv2d(o, o, 3, padding=1, bias=False),
        nn.BatchNorm2d(o),
        nn.ReLU(inplace=True),
    )


class U(nn.Module):
    def __init__(s, c=16):
        super().__init__()
        s.e1 = blk(3, c)
        s.e2 = blk(c, 2 * c)
        s.e3 = blk(2 * c, 4 * c)
        s.e4 = blk(4 * c, 8 * c)
        s.d3 = blk(12 * c, 4 * c)
        s.d2 = blk(6 * c, 2 * c)
        s.d1 = blk(3 * c, c)
        s.h = nn.Conv2d(c, 19, 1)

    def forward(s, x):
        a = s.e1(x)
        b = s.e2(F.max_pool2d(a, 2))
        c = s.e3(F.max_pool2d(b, 2))
        d = s.e4(F.max_pool2d(c, 2))
        up = lambda t, r: F.interpolate(t, size=r.shape[2:], mode="bilinear", align_corners=False)
        c = s.d3(torch.cat([up(d, c), c], 1))
        b = s.d2(torch.cat([up(c, b), b], 1))
        a = s.d1(torch.cat([up(b, a), a], 1))
        return s.h(a)


m = U(12)
opt = torch.optim.AdamW(m.parameters(), 3e-3)
t0 = time.time()
iters = 300
sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=iters)
for it in range(iters):
    idx = torch.randint(0, len(tr), (6,))
    x, y = Xtr[idx], Ytr[idx]
    if it % 2:
        x, y = x.flip(3), y.flip(2)
    loss = F.cross_entropy(m(x), y, ignore_index=255)
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    if it % 100 == 99:
        print(it, loss.item(), time.time() - t0, flush=True)
m.eval()
conf = np.zeros((19, 19), int)
with torch.no_grad():
    p = m(Xva).argmax(1).numpy()
    t = Yva.numpy()
    k = t < 19
    conf = np.bincount(t[k] * 19 + p[k], minlength=361).reshape(19, 19)
i = np.diag(conf)
u = conf.sum(0) + conf.sum(1) - i
pres = conf.sum(1) > 0
iou = i / np.maximum(u, 1)
print("cnn miou", iou[pres].mean(), np.round(iou, 2))

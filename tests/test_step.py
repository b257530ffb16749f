"""The step functions: loss goes down, aux loss, poly/warm-up schedule, eval_step at the target's size."""

from __future__ import annotations

import math

import pytest
import torch
from engine_fixtures import tiny_overrides, write_tiny_cityscapes

from cityseg_fast.config import load_config, replace
from cityseg_fast.data.batch import Batch
from cityseg_fast.engine.step import SegLoss, build_train_state, eval_step, lr_factor, train_step

pytestmark = pytest.mark.usefixtures("one_thread")


def test_loss_goes_down_on_tiny_scenes(tmp_path):
    from cityseg_fast.data.factory import build_loader

    data = write_tiny_cityscapes(tmp_path / "data", {"train": 8})
    cfg = load_config([], tiny_overrides(data, tmp_path / "run"))
    torch.manual_seed(0)
    loader = build_loader(cfg, "train", train=True, device=torch.device("cpu"))
    state = build_train_state(cfg, "cpu")
    losses = []
    for epoch in range(12):
        loader.set_epoch(epoch)
        losses += [train_step(state, b) for b in loader]
    assert all(loss.device.type == "cpu" and not loss.requires_grad for loss in losses)
    first, last = torch.stack(losses[:4]).mean().item(), torch.stack(losses[-4:]).mean().item()
    assert math.isfinite(last) and last < 0.6 * first, (first, last)
    # the schedule advanced once per step: lr is at the poly floor after train.iters steps
    assert state.scheduler.last_epoch == len(losses)


def test_aux_loss_adds_weighted_term():
    target = torch.randint(0, 19, (2, 8, 8))
    target[0, :2] = 255
    out, aux = torch.randn(2, 19, 8, 8), torch.randn(2, 19, 8, 8)
    ce = torch.nn.functional.cross_entropy
    got = SegLoss(255, 0.4)({"out": out, "aux": aux}, target)
    want = ce(out, target, ignore_index=255) + 0.4 * ce(aux, target, ignore_index=255)
    assert torch.allclose(got, want)
    assert torch.allclose(
        SegLoss(255, 0.4)(out.bfloat16(), target), ce(out.bfloat16().float(), target, ignore_index=255)
    )


def test_poly_schedule_matches_mmsegmentation():
    cfg = load_config(
        [], ["train.lr=0.01", "train.min_lr=0.0001", "train.iters=1000", "train.poly_power=0.9"]
    )
    f = lr_factor(cfg.train)
    for i in (0, 1, 500, 999, 1000):
        want = (0.01 - 1e-4) * (1 - i / 1000) ** 0.9 + 1e-4  # mmseg PolyLR with min_lr
        assert math.isclose(0.01 * f(i), want, rel_tol=1e-12)
    w = replace(cfg, train={"warmup_iters": 100, "warmup_factor": 0.1}).train
    g = lr_factor(w)
    assert math.isclose(g(0), 0.1 * f(0))  # warm-up starts at warmup_factor x the regular lr
    assert math.isclose(g(50), (0.1 + 0.9 * 0.5) * f(50))
    assert math.isclose(g(100), f(100))


def test_eval_step_upsamples_logits_to_the_target():
    class Half(torch.nn.Module):  # a real model whose output is at half resolution
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 19, 3, stride=2, padding=1)

        def forward(self, x):
            return self.conv(x)

    cfg = load_config([], [])
    model = Half().eval()
    x = torch.randn(2, 3, 16, 32).contiguous(memory_format=torch.channels_last)
    pred = eval_step(model, Batch(x, torch.zeros(2, 32, 64, dtype=torch.int64)), cfg)
    assert pred.shape == (2, 32, 64) and pred.dtype == torch.int64
    logits = torch.nn.functional.interpolate(model(x), size=(32, 64), mode="bilinear", align_corners=False)
    assert torch.equal(pred, logits.argmax(1))

"""Checkpoints: weights_only round trip, keep-last-k, atomic writes, RNG restore, clear errors."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from cityseg_fast.engine import checkpoint as ck
from cityseg_fast.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


def _ckpt(model: nn.Module, it: int) -> dict:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    return {
        "format": ck.FORMAT,
        "version": ck.VERSION,
        "iteration": it,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "rng": ck.capture_rng(),
        "config": {"train": {"iters": 10, "crop": [64, 128]}},
    }


def test_round_trip_weights_only_and_keep_last(tmp_path):
    model = nn.Linear(3, 4)
    for it in (10, 20, 30):
        path = ck.save_checkpoint(_ckpt(model, it), tmp_path, keep=2)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["ckpt_00000020.pt", "ckpt_00000030.pt"]
    assert ck.latest_checkpoint(tmp_path) == path
    raw = torch.load(path, weights_only=True)  # the contract: no arbitrary unpickling needed
    assert raw["iteration"] == 30
    loaded = ck.load_checkpoint(path)
    fresh = nn.Linear(3, 4)
    ck.load_model_state(fresh, loaded["model"], path)
    for a, b in zip(fresh.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert loaded["optimizer"]["state"][0]["momentum_buffer"].shape == (4, 3)


def test_interrupted_write_is_ignored(tmp_path):
    ck.save_checkpoint(_ckpt(nn.Linear(3, 4), 10), tmp_path)
    (tmp_path / ".ckpt_00000020.pt.tmp123").write_bytes(b"half a checkpoint")
    assert ck.latest_checkpoint(tmp_path).name == "ckpt_00000010.pt"


def test_rng_restore_replays_every_generator():
    state = ck.capture_rng()
    first = (torch.rand(3), np.random.rand(3), random.random())
    ck.restore_rng(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0])
    assert np.array_equal(first[1], again[1])
    assert first[2] == again[2]


def test_bad_checkpoints_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        ck.load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a zip at all" * 10)
    with pytest.raises(UserError, match="junk.pt: not a readable checkpoint"):
        ck.load_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(UserError, match="not a cityseg_fast checkpoint"):
        ck.load_checkpoint(foreign)


def test_wrong_model_is_a_user_error(tmp_path):
    path = ck.save_checkpoint(_ckpt(nn.Linear(3, 4), 1), tmp_path)
    state = ck.load_checkpoint(path)["model"]
    with pytest.raises(UserError, match=r"ckpt_00000001.pt: weights do not fit .*other shapes"):
        ck.load_model_state(nn.Linear(3, 5), state, path)
    with pytest.raises(UserError, match="missing"):
        ck.load_model_state(nn.Sequential(nn.Linear(3, 4)), state, path)


def test_unwrap_model_sees_through_compile():
    m = nn.Linear(3, 4)
    assert ck.unwrap_model(torch.compile(m)) is m

"""DDP: a 2-process gloo run under torchrun keeps bit-identical replicas, and the check can tell; so does a
run over two "nodes" (two torchrun launchers, one process each, --node_rank 0 and 1, master 127.0.0.1)."""

from __future__ import annotations

import json

import pytest
import torch
from engine_fixtures import tiny_overrides, torchrun, torchrun_nodes, write_tiny_cityscapes

from cityseg_fast.engine.checkpoint import list_checkpoints, load_checkpoint
from cityseg_fast.engine.dist import fingerprint

pytestmark = pytest.mark.usefixtures("one_thread")


def test_fingerprint_sees_a_one_element_change():
    a = torch.nn.Conv2d(3, 4, 3)
    b = torch.nn.Conv2d(3, 4, 3)
    b.load_state_dict(a.state_dict())
    assert torch.equal(fingerprint(a), fingerprint(b))
    with torch.no_grad():
        b.weight[1, 2, 0, 1] += 1e-6
    assert not torch.equal(fingerprint(a), fingerprint(b))
    with torch.no_grad():  # a permutation keeps the plain sum; the position-weighted sum catches it
        b.load_state_dict(a.state_dict())
        b.weight.copy_(a.weight.flip(0))
    assert not torch.equal(fingerprint(a), fingerprint(b))


def test_two_process_gloo_training_keeps_replicas_identical(tmp_path):
    data = write_tiny_cityscapes(tmp_path / "data")
    out = tmp_path / "run"
    # batch 2 per rank x 2 ranks = the global batch of the 1-process tests; BatchNorm stays per rank
    over = tiny_overrides(data, out, iters=10, **{"loader.batch_size": 2, "train.ckpt_interval": 10})
    p = torchrun(2, "train", *over, "--json")
    summary = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])
    assert summary["world_size"] == 2 and summary["iters"] == 10
    assert summary["replicas_in_sync"] is True
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["event"] == "start" and rows[0]["world_size"] == 2
    (ev,) = [r for r in rows if r["event"] == "eval"]
    assert ev["images"] == 4  # each val image counted once across the two ranks
    ck = load_checkpoint(list_checkpoints(out)[-1])
    assert ck["iteration"] == 10
    assert not any(k.startswith("module.") for k in ck["model"])  # saved without the DDP wrapper


def test_two_nodes_train_in_sync_and_evaluate_each_image_once(tmp_path):
    data = write_tiny_cityscapes(tmp_path / "data", {"train": 8, "val": 5})  # 5: a padded last eval batch
    out = tmp_path / "run"
    over = tiny_overrides(data, out, iters=4, **{"loader.batch_size": 2, "train.log_interval": 2})
    node0, node1 = torchrun_nodes(2, "train", *over, "--json")
    assert not [ln for ln in node1.stdout.splitlines() if ln.startswith("{")]  # rank 0 alone reports
    summary = json.loads([ln for ln in node0.stdout.splitlines() if ln.startswith("{")][-1])
    assert summary["world_size"] == 2 and summary["iters"] == 4 and summary["replicas_in_sync"] is True
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["event"] == "start" and rows[0]["world_size"] == 2
    (ev,) = [r for r in rows if r["event"] == "eval"]  # evaluated once, across both nodes
    assert ev["images"] == 5  # every val image counted once: none twice, no padding counted
    assert load_checkpoint(list_checkpoints(out)[-1])["iteration"] == 4

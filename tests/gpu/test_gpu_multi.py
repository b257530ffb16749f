"""Two or more GPUs: torchrun NCCL training with SyncBN keeps the replicas in sync and counts each val
image once; `bench model` at world size 2 gives one row with the world size and per-rank devices."""

from __future__ import annotations

import json

import pytest
import torch
from engine_fixtures import PY, _run, tiny_overrides, torchrun, write_tiny_cityscapes

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 or more GPUs"),
]


def test_nccl_training_with_sync_bn_keeps_replicas_in_sync(tmp_path):
    data = write_tiny_cityscapes(tmp_path / "data", size=(128, 256))
    out = tmp_path / "run"
    over = tiny_overrides(data, out, iters=10, **{
        "loader.backend": "dali", "loader.batch_size": 2, "train.sync_bn": "true", "data.crop": "[128,256]",
        "precision.dtype": "bf16", "train.ckpt_interval": 10,
    })  # fmt: skip
    p = torchrun(2, "train", *over, "--json", timeout=600)
    summary = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])
    assert summary["world_size"] == 2 and summary["replicas_in_sync"] is True
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    (ev,) = [r for r in rows if r["event"] == "eval"]
    assert ev["images"] == 4


def test_bench_model_at_world_size_two():
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cityseg_fast",
           "bench", "model", "--json", "model.name=unet_s16", "data.crop=[128,256]", "loader.batch_size=4",
           "precision.dtype=bf16", "bench.iters=10", "bench.warmup=3"]  # fmt: skip
    p = _run(cmd, timeout=600, check=True)
    rows = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert len(rows) == 1  # rank 0 prints the row
    row = rows[0]
    assert row["status"] == "ok" and row["point"]["world_size"] == 2 and row["metrics"]["world_size"] == 2
    assert row["metrics"]["images_per_s"] > 0

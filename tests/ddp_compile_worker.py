"""One rank of tests/test_ddp_compile.py, run under torchrun (gloo): a tiny model trained through
build_train_state with DDP as its wrapper, then evaluated and trained again; writes what it saw to
OUT/rank<r>.json (OUT: its one argument; the ranks share stdout). The model is defined here, in user code: dynamo compiles a user module's forward inside DDP's (a
forward defined in torch itself, as nn.Sequential's, would run uncompiled, which proves nothing)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from cityseg_fast.config import build_config
from cityseg_fast.data.batch import Batch
from cityseg_fast.engine import checkpoint, dist, precision
from cityseg_fast.engine.ranks import AllReduceClock
from cityseg_fast.engine.step import build_train_state, train_step


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))))


def batch(rank: int, step: int) -> Batch:
    """Each rank its own data: replicas stay equal only if DDP averaged the gradients."""
    g = torch.Generator().manual_seed(100 * rank + step)
    image = torch.randn(2, 3, 8, 16, generator=g).contiguous(memory_format=torch.channels_last)
    return Batch(image, torch.randint(0, 2, (2, 8, 16), generator=g), torch.arange(2))


def main() -> None:
    torch.set_num_threads(1)
    info = dist.init_distributed(timeout_s=120)
    cfg = build_config({"precision": {"compile": "default"}, "train": {"optimizer": "sgd", "lr": 0.1, "iters": 10}})
    torch.manual_seed(0)
    precision.reset_compile_counters()
    state = build_train_state(cfg, info.device, Tiny(), wrap=lambda m: dist.wrap_ddp(m, info.device))
    plain = checkpoint.unwrap_model(state.model)
    clock = AllReduceClock.install(state.model, info.device)  # the DDP inside torch.compile's wrapper
    for step in range(3):
        train_step(state, batch(info.rank, step))
    waits = clock.take() if clock is not None else []
    trained = precision.compile_counters()["unique_graphs"]
    dist.broadcast_buffers(state.eval_model)  # BatchNorm's running statistics are per rank, as in train.py
    in_sync = dist.replicas_in_sync(plain)
    state.eval_model.eval()
    with torch.inference_mode():
        state.eval_model(batch(info.rank, 9).image)
    state.eval_model.train()
    train_step(state, batch(info.rank, 3))
    other_order = nn.parallel.DistributedDataParallel(torch.compile(Tiny(), backend="eager"))  # the old order
    checkpoint.load_model_state(other_order, plain.state_dict(), "ckpt")  # a checkpoint loads either way round
    loaded = checkpoint.unwrap_model(other_order)
    same = zip(loaded.state_dict().values(), plain.state_dict().values(), strict=True)
    seen = {
        "rank": info.rank,
        "train_is_compiled_ddp": type(state.model._orig_mod).__name__ == "DistributedDataParallel",
        "eval_is_compiled_plain": state.eval_model._orig_mod is plain and type(plain) is Tiny,
        "unwraps": precision.unwrap_model(state.model) is plain and type(loaded) is Tiny,
        "keys_plain": all(not k.startswith(("module.", "_orig_mod.")) for k in plain.state_dict()),
        "loaded_equal": all(torch.equal(a, b) for a, b in same),
        "graphs_after_training": trained,
        "graphs_after_eval_and_training": precision.compile_counters()["unique_graphs"],
        "in_sync": in_sync,
        "all_reduce_waits": len(waits),
    }
    (Path(sys.argv[1]) / f"rank{info.rank}.json").write_text(json.dumps(seen))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()

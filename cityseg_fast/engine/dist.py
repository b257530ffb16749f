"""Distributed setup: one process, or DDP under torchrun (env:// rendezvous), NCCL with CUDA else gloo.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them this is a plain
single process and every helper below degrades to a no-op, so callers never branch on "am I distributed".
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from cityseg_fast.errors import UserError
from cityseg_fast.hardware import resolve_device

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    is_main: bool


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def init_distributed(timeout_s: float = 300) -> DistInfo:
    """Join the process group torchrun describes (if any) and pick this rank's device.

    `timeout_s` bounds every collective: if a rank dies, the others fail with an error after at most this
    long instead of hanging forever (NCCL needs async error handling, which is torch's default).
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = resolve_device()
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
            **kwargs,
        )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device, is_main=rank == 0)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` in place across ranks (a no-op in one process); returns `t`."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank `src`'s `obj` on every rank (pickled; for small host values such as a stop flag)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def run_on_main(fn: Callable[[], T]) -> T | None:
    """`fn()` on rank 0 only (None on the others). A UserError there is raised on every rank, so the others
    never wait, until the timeout, for a collective rank 0 will not join."""
    result, error = None, None
    if get_rank() == 0:
        try:
            result = fn()
        except UserError as e:
            error = str(e)
    error = broadcast_object(error)
    if error is not None:
        raise UserError(error)
    return result


def cleanup(failed: bool = False) -> None:
    """Leave the process group (safe to call when none was joined).

    On success all ranks meet at a barrier first: a rank that tears its gloo pairs down while a peer is
    still finishing its last collective made that peer abort at exit ("terminate called without an
    active exception", seen once in a 2-rank CI run). After a failure there is no barrier: the peers
    may never arrive, and torchrun or the process-group timeout ends them.
    """
    if dist.is_available() and dist.is_initialized():
        if not failed:
            dist.barrier()
        dist.destroy_process_group()


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` in DistributedDataParallel when several ranks run (gradients averaged across them), else as is."""
    if not is_distributed():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def fingerprint(module: torch.nn.Module) -> torch.Tensor:
    """Two float64 numbers per parameter/buffer (plain sum, position-weighted sum): equal on every rank
    iff the replicas agree, up to a collision no real divergence produces."""
    parts = []
    for t in list(module.parameters()) + list(module.buffers()):
        flat = t.detach().reshape(-1).double()
        weights = torch.arange(1, flat.numel() + 1, device=flat.device, dtype=torch.float64)
        parts.append(torch.stack([flat.sum(), (flat * weights).sum() / flat.numel()]))
    return torch.cat(parts) if parts else torch.zeros(2, dtype=torch.float64)


def replicas_in_sync(module: torch.nn.Module) -> bool:
    """True when every rank holds bit-identical weights (checked through `fingerprint`); one process: True."""
    if not is_distributed():
        return True
    mine = fingerprint(module)
    everyone = [torch.empty_like(mine) for _ in range(get_world_size())]
    dist.all_gather(everyone, mine)
    return all(torch.equal(mine, other) for other in everyone)


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers at the start of each forward, so after the last training step every rank
    holds its own running statistics; evaluating or saving at that point needs rank 0's on all ranks.
    """
    if not is_distributed():
        return
    for b in module.buffers():
        dist.broadcast(b.data, src=src)

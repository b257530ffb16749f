"""Distributed setup: one process, or DDP under torchrun (env:// rendezvous), NCCL with CUDA else gloo.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them this is a plain
single process and every helper below degrades to a no-op, so callers never branch on "am I distributed".

A rank that stops answering (SIGSTOP, a hang, a dead node) makes the others' next collective fail after
`train.dist_timeout_s`: `run_distributed` turns that into one line naming the collective (CollectiveTimeout,
exit 2), not a 40-line traceback and not a hang.
"""

from __future__ import annotations

import datetime
import gc
import os
import re
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from cityseg_fast.errors import Preempted, UserError
from cityseg_fast.hardware import resolve_device

T = TypeVar("T")
_timeout_s: float = 300.0  # the process group's, for the line a timed-out collective gives
# gloo: "Timed out waiting 5000ms for recv operation"; NCCL's watchdog: "collective operation timeout";
# the store: "wait timeout"
_TIMED_OUT = re.compile(r"timed out|timeout", re.IGNORECASE)


class CollectiveTimeout(UserError):
    """A collective waited train.dist_timeout_s for a rank that did not come (stopped, hung or dead)."""


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
    global _timeout_s
    _timeout_s = timeout_s
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


def run_distributed(fn: Callable[[DistInfo], T], timeout_s: float) -> T:
    """`fn(info)` in the process group torchrun describes (a plain call in one process), which is left after.

    A collective that times out ends this rank with a CollectiveTimeout: one line naming the collective and
    the timeout, raised after the failed step's objects are gone (a DDP reducer still alive when the group
    is destroyed aborted the process at exit: "terminate called without an active exception")."""
    info = init_distributed(timeout_s)
    try:
        result = fn(info)
        cleanup()  # its barrier is a collective too
        return result
    except Preempted:  # every rank stopped at the same iteration (engine/train.py): they leave together
        cleanup()
        raise
    except BaseException as e:
        line = timeout_line(e)
        if line is None:
            cleanup(failed=True)
            raise
    gc.collect()  # the exception and its frames are released here; cycles among them too
    cleanup(failed=True)
    raise CollectiveTimeout(line)


def timeout_line(e: BaseException) -> str | None:
    """The one line for a collective that timed out (None if `e` is something else)."""
    if isinstance(e, CollectiveTimeout):
        return str(e)
    if not isinstance(e, RuntimeError) or not is_distributed() or not _TIMED_OUT.search(str(e)):
        return None
    frames = traceback.extract_tb(e.__traceback__)
    if any(f.name == "backward" for f in frames):
        return _timeout_text("DDP's gradient all-reduce (in backward)")
    ours = [f for f in frames if f"{os.sep}cityseg_fast{os.sep}" in f.filename]
    return _timeout_text(f"a collective in {ours[-1].name}()" if ours else "a collective")


def _timeout_text(what: str) -> str:
    rank, world = get_rank(), get_world_size()
    who = f"rank {1 - rank}" if world == 2 else "another rank"
    return (f"rank {rank} of {world}: {what} timed out after {_timeout_s:g} s (train.dist_timeout_s): {who} "
            "did not join it (stopped, hung or dead; its own output says why)")  # fmt: skip


@contextmanager
def _collective(what: str) -> Iterator[None]:
    """Run one collective named `what`: a timeout becomes a CollectiveTimeout that says which."""
    try:
        yield
    except RuntimeError as e:
        if timeout_line(e) is None:
            raise
        raise CollectiveTimeout(_timeout_text(what)) from None


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def barrier() -> None:
    if is_distributed():
        with _collective("a barrier"):
            dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` in place across ranks (a no-op in one process); returns `t`."""
    if is_distributed():
        dtype = str(t.dtype).removeprefix("torch.")
        with _collective(f"an all-reduce of a {list(t.shape)} {dtype} tensor"):
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_floats(values: list[float], device: torch.device) -> list[list[float]]:
    """Every rank's `values` (the same length on each), in rank order: one all_gather of a small tensor on
    `device` (NCCL gathers device tensors; the host read after it waits only for the gather). One process:
    [values]."""
    if not is_distributed():
        return [list(values)]
    mine = torch.tensor(values, dtype=torch.float64, device=device)
    everyone = [torch.empty_like(mine) for _ in range(get_world_size())]
    with _collective(f"an all-gather of {len(values)} floats"):
        dist.all_gather(everyone, mine)
    return torch.stack(everyone).tolist()


def all_gather_object(obj: object) -> list[object]:
    """Every rank's `obj` (pickled; small host values), in rank order; one process: [obj]."""
    if not is_distributed():
        return [obj]
    box: list[object] = [None] * get_world_size()
    with _collective("an all-gather of host values"):
        dist.all_gather_object(box, obj)
    return box


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank `src`'s `obj` on every rank (pickled; for small host values such as a stop flag)."""
    if not is_distributed():
        return obj
    box = [obj]
    with _collective(f"a broadcast from rank {src}"):
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
            with _collective("the barrier before leaving the process group"):
                dist.barrier()
        dist.destroy_process_group()


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` in DistributedDataParallel when several ranks run (gradients averaged across them), else as is.

    Without DDP's broadcast of the buffers at every forward (broadcast_buffers=False, mmengine's default too):
    rank 0 never receives it, so its BatchNorm statistics, the ones evaluated and saved, are the same either
    way, and `broadcast_buffers` below gives them to every rank where they are read (before an evaluation, a
    checkpoint, the end). Left on, it was a collective at the start of every forward, where every rank waited
    for the slowest one's batch: the wait engine/ranks.py must find in the gradient all-reduce, its one place."""
    if not is_distributed():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


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
    with _collective("the replica check's all-gather"):
        dist.all_gather(everyone, mine)
    return all(torch.equal(mine, other) for other in everyone)


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers at the start of each forward, so after the last training step every rank
    holds its own running statistics; evaluating or saving at that point needs rank 0's on all ranks.
    """
    if not is_distributed():
        return
    with _collective(f"the broadcast of BatchNorm statistics from rank {src}"):
        for b in module.buffers():
            dist.broadcast(b.data, src=src)

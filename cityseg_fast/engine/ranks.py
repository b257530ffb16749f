"""Per-rank timing: where each DDP rank's time went, gathered at the log interval, and the straggler named.

    clock = AllReduceClock.install(ddp_model, device)   # None outside DDP; a comm hook that timestamps
    ...                                                  # the steps run; nothing here syncs
    mine = rank_times(meter.take(), clock, steps)        # after the interval's sync: this rank's seconds per step
    fields = rank_fields(gather_rank_times(mine, device), threshold=1.2)   # one all_gather of 3 floats

A rank's step is its data wait + its compute + its time blocked in the gradient all-reduce. Under DDP every
rank's step takes as long as the slowest rank's (the all-reduce waits for it), so the step time alone cannot
name a straggler: a rank starved of data shows up on the others as all-reduce time. Its *work*, data wait +
compute, can: the rank with the most work is the slowest, and `max / median` of the ranks' work above
`train.straggler_threshold` names it. Beside it, each rank's compute and its all-reduce wait tell "rank k
computes slowly" (its compute is high) from "everyone waits for rank k" (the others' all-reduce wait is high,
its data wait or compute explains why).

How the all-reduce wait is measured without a sync per step: a DDP communication hook (the default
all-reduce, whose results DDP documents as unchanged) stamps the moment the last bucket is handed to the
all-reduce (its gradients are computed: backward has nothing left but to wait) and the moment each bucket's
all-reduce completes (the future's callback). The wait of a step = the last completion - the last hand-over.
On the CPU the stamps are host clock readings (gloo completes the future in its own thread when the data is
there); on a GPU they are CUDA events, recorded on the compute stream at the hand-over and, at completion, on
the stream the callback runs on, which torch synchronises with the all-reduce's kernels (torch.futures'
`then`): the events are read at the log interval, after its sync, like the stall meter's (engine/stall.py).
"""

# No `from __future__ import annotations` here: DDP checks a comm hook's annotations as objects
# (GradBucket, Future[Tensor]), and postponed ones are strings it refuses.
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist

from cityseg_fast.engine import dist
from cityseg_fast.engine.stall import StallStats

# The 'train' line's and the row's per-rank fields (results/scenarios.py names the row's metrics the same way).
FIGURES = ("work_s", "data_wait_s", "compute_s", "allreduce_wait_s")


@dataclass(frozen=True)
class RankTimes:
    """One rank's seconds per step over an interval (or a benchmark's timed steps)."""

    data_wait_s: float  # waiting for its batch (engine/stall.py: host time in next() on the CPU, device idle on a GPU)
    compute_s: float  # its step's own time less the all-reduce wait
    allreduce_wait_s: float  # blocked in DDP's gradient all-reduce, waiting for the other ranks (and the transfer)

    @property
    def work_s(self) -> float:
        """What this rank itself costs a step: its data wait and its compute (not its wait for the others)."""
        return self.data_wait_s + self.compute_s

    def as_list(self) -> list[float]:
        return [self.data_wait_s, self.compute_s, self.allreduce_wait_s]


class AllReduceClock:
    """A DDP communication hook that runs the default all-reduce and stamps each step's last bucket hand-over
    and each bucket's completion (see the module docstring); `take` turns the finished steps into waits."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self._lock = threading.Lock()  # gloo completes futures in its own threads
        self._steps: list[dict[str, Any]] = []  # {"ready": stamp of the last bucket, "done": [stamps]}
        self._open: dict[str, Any] = {"ready": None, "done": []}

    @classmethod
    def install(cls, model: torch.nn.Module, device: torch.device) -> "AllReduceClock | None":
        """The clock, registered as `model`'s comm hook when it is a DDP model (also inside torch.compile's
        wrapper: DDP first, then compile, precision.prepare_for_training); None otherwise (one process)."""
        model = getattr(model, "_orig_mod", model)
        if not isinstance(model, torch.nn.parallel.DistributedDataParallel):
            return None
        clock = cls(torch.device(device).type == "cuda")
        model.register_comm_hook(None, clock.hook)  # before the first backward, as DDP requires
        return clock

    def _stamp(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()  # on the current stream: enqueued, the host does not wait
        return ev

    def hook(self, state: Any, bucket: torch_dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        """DDP's default all-reduce of `bucket`, stamped at hand-over (last bucket) and at each completion."""
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        record = self._open
        if bucket.is_last():  # buckets are handed over in index order: this one ends the backward
            record["ready"] = self._stamp()
            with self._lock:
                self._steps.append(record)
            self._open = {"ready": None, "done": []}

        def done(fut: torch.futures.Future[torch.Tensor]) -> torch.Tensor:
            stamp = self._stamp()
            with self._lock:
                record["done"].append(stamp)
            return fut.value()

        return allreduce_hook(state, bucket).then(done)

    def reset(self) -> None:
        """Forget every step so far (a benchmark's warm-up)."""
        with self._lock:
            self._steps = []

    def take(self) -> list[float]:
        """The all-reduce wait (s) of each step finished since the last take, and forget them. On a GPU only
        steps whose events the device has passed are read (query, never a wait); later ones stay."""
        with self._lock:
            steps, self._steps = self._steps, []
        waits, keep = [], []
        for i, s in enumerate(steps):
            if not s["done"] or (self.cuda and not all(e.query() for e in [s["ready"], *s["done"]])):
                keep = steps[i:]
                break
            waits.append(self._wait(s))
        with self._lock:
            self._steps = keep + self._steps
        return waits

    def _wait(self, step: dict[str, Any]) -> float:
        if self.cuda:
            return max(0.0, max(step["ready"].elapsed_time(e) for e in step["done"]) / 1e3)
        return max(0.0, max(step["done"]) - step["ready"])


def rank_times(stats: StallStats, clock: AllReduceClock | None) -> RankTimes | None:
    """This rank's seconds per step from the stall meter's `take` and the clock's (None when no step was read).
    The compute is each step's own time less its all-reduce wait, so the three add up to the rank's wall."""
    n = len(stats.step_s)
    if n == 0:
        return None
    waits = clock.take() if clock is not None else []
    wait = sum(waits) / len(waits) if waits else 0.0
    data = sum(stats.waits_s) / len(stats.waits_s) if stats.waits_s else 0.0
    return RankTimes(data_wait_s=data, compute_s=max(0.0, sum(stats.step_s) / n - wait), allreduce_wait_s=wait)


def gather_rank_times(mine: RankTimes | None, device: torch.device) -> list[RankTimes | None]:
    """Every rank's RankTimes, in rank order: one all_gather of three floats (NaN for a rank that read no
    step). Called right after a sync (the log interval's, or the end of a timed region), so it adds no wait."""
    values = mine.as_list() if mine is not None else [float("nan")] * 3
    rows = dist.all_gather_floats(values, device)
    return [None if any(v != v for v in row) else RankTimes(*row) for row in rows]


def rank_fields(ranks: Sequence[RankTimes | None], threshold: float) -> dict[str, Any]:
    """The 'train' line's (and a row's) per-rank figures: min / median / max across ranks of each of FIGURES,
    each rank's own list, the slowest rank (most work), max / median of the work, and the straggler: the
    slowest rank when that ratio exceeds `threshold`, else None. {} for one rank or none measured."""
    known = [(i, r) for i, r in enumerate(ranks) if r is not None]
    if len(ranks) < 2 or len(known) < 2:
        return {}
    out: dict[str, Any] = {}
    for name in FIGURES:
        values = [getattr(r, name) for _, r in known]
        out.update({f"rank_{name}_min": min(values), f"rank_{name}_median": statistics.median(values),
                    f"rank_{name}_max": max(values)})  # fmt: skip
    for name in FIGURES[1:]:
        out[f"rank_{name}"] = [None if r is None else getattr(r, name) for r in ranks]
    slowest = max(known, key=lambda ir: ir[1].work_s)[0]
    median = out["rank_work_s_median"]
    ratio = out["rank_work_s_max"] / median if median > 0 else None
    out.update({"slowest_rank": slowest, "straggler_ratio": ratio,
                "straggler": slowest if ratio is not None and ratio > threshold else None})  # fmt: skip
    return out


def straggler_text(fields: dict[str, Any]) -> str:
    """'  straggler rank 3 (1.45x the median rank's work)' for a progress line; '' when there is none."""
    rank = fields.get("straggler")
    if rank is None:
        return ""
    return f"  straggler rank {rank} ({fields['straggler_ratio']:.2f}x the median rank's work)"

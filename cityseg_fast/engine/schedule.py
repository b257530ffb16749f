"""When the training loop acts, and what it carries between log intervals: the interval actions due at an iteration
(`Schedule.due` -> `Due`), the interval's loss sum and clock (`LogWindow`, whose `sync` is the loop's one host read
per log interval) and the guard against a loss that stays non-finite."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cityseg_fast.config import TrainConfig
from cityseg_fast.engine import dist
from cityseg_fast.errors import UserError


@dataclass(frozen=True)
class Due:
    """The interval actions due after one iteration, in the order `_loop` runs them."""

    log: bool
    eval: bool
    ckpt: bool
    stop: bool = False  # a stop signal: save and stop here (after a log, where the ranks agreed on it)

    def stopping(self) -> Due:
        """What is due when the ranks have agreed to stop: a checkpoint, not an evaluation (the grace
        period is short), then the stop."""
        return Due(log=self.log, eval=False, ckpt=True, stop=True)

    @property
    def pause(self) -> bool:
        """Evaluation or a checkpoint follows: every rank needs rank 0's BatchNorm statistics, and the time
        it takes is not a data wait."""
        return self.eval or self.ckpt


@dataclass(frozen=True)
class Schedule:
    """When each interval action runs: at every multiple of its interval, and at the last iteration."""

    iters: int
    log: int
    eval: int
    ckpt: int

    @classmethod
    def from_config(cls, t: TrainConfig) -> Schedule:
        return cls(iters=t.iters, log=t.log_interval, eval=t.eval_interval, ckpt=t.ckpt_interval)

    def _at(self, it: int, interval: int) -> bool:
        return it % interval == 0 or it == self.iters

    def due(self, it: int) -> Due:
        return Due(log=self._at(it, self.log), eval=self._at(it, self.eval), ckpt=self._at(it, self.ckpt))


class LogWindow:
    """The current log interval: its summed loss, kept on the device until the interval's one sync, and the
    iteration and clock it started at."""

    def __init__(self, device: torch.device, it: int, now: float) -> None:
        self.totals = torch.zeros(2, device=device)  # [summed loss, stop flag]: one all-reduce carries both
        self.loss_sum = self.totals[0]  # a view: the per-step add writes into `totals`
        self.steps, self.start_it, self.start_t = 0, it, now

    def add(self, loss: torch.Tensor) -> None:
        # Outside the step's events: the log sync waits for this add, so for the step's end event.
        self.loss_sum += loss
        self.steps += 1

    def sync(self, world_size: int, stop: bool, also: torch.Tensor | None = None) -> tuple[float, bool, list[float]]:
        """(the loss averaged over the interval and the ranks, whether any rank asked to stop, the values of
        `also`: the fp16 scaler's trace, this rank's): the one all-reduce and host sync per log interval. The
        flag is summed in the same reduction, so every rank gets the same answer at the same iteration; `also`
        is read in the same transfer, not reduced."""
        self.totals[1].fill_(float(stop))  # a scalar fill: no host-to-device copy
        dist.all_reduce_sum(self.totals)
        values = self.totals if also is None else torch.cat([self.totals, also.float()])
        loss_sum, stops, *rest = values.tolist()
        return loss_sum / (self.steps * world_size), stops > 0, rest

    def next(self, it: int, now: float) -> None:
        """Start the next interval at iteration `it`, time `now`."""
        self.totals.zero_()
        self.steps, self.start_it, self.start_t = 0, it, now

    def restart_clock(self) -> None:
        self.start_t = time.perf_counter()


@dataclass
class NonFiniteGuard:
    """Stops a run whose logged loss stayed non-finite for `limit` consecutive log intervals; while the last
    logged loss is not finite, no checkpoint is saved."""

    limit: int
    bad: int = 0  # consecutive non-finite logged losses

    def check(self, loss: float, it: int, out: Path, last_ckpt: Path | None) -> None:
        if math.isfinite(loss):
            self.bad = 0
            return
        self.bad += 1
        if self.bad >= self.limit:
            where = f"; last good checkpoint: {last_ckpt}" if last_ckpt else ""
            raise UserError(
                f"{out}: loss non-finite for {self.bad} consecutive log intervals (iteration {it}); "
                f"lower train.lr or use precision.dtype=fp32/bf16{where}"
            )

    def healthy(self, model: nn.Module) -> bool:
        """Whether the weights are worth a checkpoint: no non-finite logged loss, and every weight and buffer
        finite (BatchNorm statistics blow up too). One sync, only at checkpoint time, which syncs anyway."""
        if self.bad:
            return False
        flags = [torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()]
        return bool(torch.stack(flags).all()) if flags else True

"""The values a config key may take: one table (`RANGES`) and the relations between keys, read by
`config.build_config`. A key not listed is free, or checked where it is used (names, paths)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cityseg_fast.errors import UserError


@dataclass(frozen=True)
class Range:
    """Bounds of a number (of every element, for a tuple); None = unbounded; lo is excluded if `open_lo`."""

    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False

    def holds(self, v: float) -> bool:
        above_lo = self.lo is None or (v > self.lo if self.open_lo else v >= self.lo)
        return above_lo and (self.hi is None or v <= self.hi)

    def __str__(self) -> str:
        lo = self.lo if self.lo is None or self.lo != int(self.lo) else int(self.lo)
        hi = self.hi if self.hi is None or self.hi != int(self.hi) else int(self.hi)
        if hi is None:
            return f"{'>' if self.open_lo else '>='} {lo}"
        return f"in {'(' if self.open_lo else '['}{lo}, {hi}]"


POSITIVE = Range(0, open_lo=True)
NON_NEGATIVE = Range(0)
AT_LEAST_1 = Range(1)
FRACTION = Range(0, 1)  # a probability or share

# 'section.key' -> the values it may take. Keys not listed are free (or checked where used: names, paths).
RANGES: dict[str, Range] = {
    "data.num_classes": AT_LEAST_1,
    "data.ignore_index": Range(0, 255),  # labels are uint8
    "data.crop": AT_LEAST_1,
    "data.scale_range": POSITIVE,
    "data.flip_prob": FRACTION,
    "data.eval_size": AT_LEAST_1,
    "data.std": POSITIVE,  # normalisation divides by it
    "loader.batch_size": AT_LEAST_1,
    "loader.eval_batch_size": AT_LEAST_1,
    "loader.num_workers": NON_NEGATIVE,  # 0 = load in the main process
    "loader.num_threads": NON_NEGATIVE,  # 0 is kept free to mean "auto" later
    "loader.prefetch_queue_depth": AT_LEAST_1,
    "loader.prefetch_factor": AT_LEAST_1,
    "loader.hw_decoder_load": FRACTION,
    "loader.seed": NON_NEGATIVE,  # numpy seeds are non-negative
    "model.base_width": AT_LEAST_1,
    "model.depth": Range(1, 8),
    "train.iters": AT_LEAST_1,
    "train.eval_interval": AT_LEAST_1,
    "train.log_interval": AT_LEAST_1,
    "train.ckpt_interval": AT_LEAST_1,
    "train.keep_ckpts": AT_LEAST_1,
    "train.lr": POSITIVE,
    "train.momentum": FRACTION,
    "train.weight_decay": NON_NEGATIVE,
    "train.warmup_iters": NON_NEGATIVE,
    "train.warmup_factor": Range(0, 1, open_lo=True),  # lr multiplier at iteration 0 of the warm-up
    "train.poly_power": NON_NEGATIVE,
    "train.min_lr": NON_NEGATIVE,
    "train.aux_weight": NON_NEGATIVE,
    "train.grad_clip": NON_NEGATIVE,  # 0 = off
    "train.seed": NON_NEGATIVE,
    "train.dist_timeout_s": AT_LEAST_1,
    "train.max_nonfinite": AT_LEAST_1,
    "bench.warmup": NON_NEGATIVE,
    "bench.iters": AT_LEAST_1,
    "bench.sample_interval_s": POSITIVE,
    "bench.profile_steps": AT_LEAST_1,
    "bench.variance_warn": NON_NEGATIVE,
}
# Relations between values: tuples read as (low, high), and keys that must not exceed another key.
ORDERED: tuple[str, ...] = ("data.scale_range",)
AT_MOST: dict[str, str] = {"train.min_lr": "train.lr"}  # the poly schedule decays from lr down to min_lr


def check_range(key: str, value: Any) -> None:
    rng = RANGES.get(key)
    if rng is None or value is None:
        return
    items = value if isinstance(value, tuple) else (value,)
    if not all(rng.holds(v) for v in items):
        what = "every value" if isinstance(value, tuple) else "value"
        shown = list(value) if isinstance(value, tuple) else value
        raise UserError(f"config key '{key}': {what} must be {rng}, got {shown}")

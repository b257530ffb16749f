"""The values a config key may take: the numbers' bounds (`RANGES`), the words (`CHOICES`) and the relations
between keys, read by `config.build_config`. A key not listed is free, or checked where it is used (names, paths).

Every other reader of a key's words (argparse `choices`, the precision and loader code) reads `CHOICES`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

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
    "train.straggler_threshold": Range(1),  # a ratio max / median, never below 1
    "bench.warmup": NON_NEGATIVE,
    "bench.iters": AT_LEAST_1,
    "bench.sample_interval_s": POSITIVE,
    "bench.profile_steps": AT_LEAST_1,
    "bench.variance_warn": NON_NEGATIVE,
    "bench.eval_scales": POSITIVE,  # of the evaluated frame (data.eval_size, else full size); 1.0 = as trained
}
# 'section.key' -> the words it may take; None = the key may be null (the model variant's default).
CHOICES: dict[str, tuple[str | None, ...]] = {
    "loader.backend": ("dali", "torch", "synthetic"),
    "loader.device": ("auto", "gpu", "cpu"),  # dali: where it runs; auto follows the device (hardware.loader_device)
    "loader.decoder": ("torchvision", "pil"),  # torch: gpu decodes with nvJPEG through torchvision.io only
    "loader.roi": ("slice", "resize"),
    "loader.resampler": ("auto", "dali", "torch"),
    "model.upsample": ("bilinear", "transposed", None),
    "model.pretrained": ("", "torchvision"),  # or a state_dict file (OR_PATH)
    "precision.dtype": ("fp32", "tf32", "bf16", "fp16"),
    "precision.compile": ("off", "default", "reduce-overhead", "max-autotune"),
    "train.optimizer": ("sgd", "adamw"),
    "train.resume": ("auto", "never"),  # or a checkpoint file (OR_PATH)
}
# Keys that also take a file path, checked for existence where it is read (engine/rundir.py, models/fcn.py).
# Here a path must look like one (a '/' or a '.'), so a mistyped word ('nevr') is refused, not looked for as a file.
OR_PATH: frozenset[str] = frozenset({"model.pretrained", "train.resume"})

# Relations between values: tuples read as (low, high), keys that must not exceed another key, lists without a repeat.
ORDERED: tuple[str, ...] = ("data.scale_range",)
AT_MOST: dict[str, str] = {"train.min_lr": "train.lr"}  # the poly schedule decays from lr down to min_lr
DISTINCT: tuple[str, ...] = ("bench.eval_scales",)  # lists without a repeat: each value is a row of its own


def check_range(key: str, value: Any) -> None:
    rng = RANGES.get(key)
    if rng is None or value is None:
        return
    items = value if isinstance(value, tuple) else (value,)
    if not all(rng.holds(v) for v in items):
        what = "every value" if isinstance(value, tuple) else "value"
        shown = list(value) if isinstance(value, tuple) else value
        raise UserError(f"config key '{key}': {what} must be {rng}, got {shown}")


def _looks_like_path(value: Any) -> bool:
    return isinstance(value, str) and ("/" in value or "." in value)


def _word(w: str | None) -> str:
    return "null" if w is None else (w or "''")  # as YAML and the command line spell them


def allowed(key: str) -> str:
    """The words `key` takes, for a message: "one of fp32, tf32, bf16, fp16" (and "or a file path")."""
    words = "one of " + ", ".join(_word(w) for w in CHOICES[key])
    return words + (" or a file path (with a '/' or a '.')" if key in OR_PATH else "")


def as_word(key: str, value: Any) -> Any:
    """A value of a CHOICES key as read from YAML, before its type check: a word that YAML read as a boolean
    (unquoted `precision.compile=off` arrives as False) taken back, any other value that is not a string
    refused naming the words (not just "expected a string"). Other keys' values pass unchanged."""
    if key not in CHOICES or isinstance(value, str):
        return value
    if isinstance(value, bool):
        same = [w for w in CHOICES[key] if w is not None and yaml.safe_load(w) is value]
        if len(same) == 1:
            return same[0]
    return check_choice(key, value)  # None passes where the key takes null


def check_choice(key: str, value: Any) -> Any:
    """`value`, if `key` takes it (keys not in CHOICES take anything); else a one-line UserError naming the
    key, the value and the words it takes."""
    words = CHOICES.get(key)
    if words is None or value in words or (key in OR_PATH and _looks_like_path(value)):
        return value
    raise UserError(f"config key '{key}': expected {allowed(key)}, got {value!r}")

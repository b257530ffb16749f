"""A training's run directory: claimed for one config, tidied, and the checkpoint to resume from picked.

    claim = claim_run_dir(cfg)   # rank 0, before any other work: claim.resume / claim.ckpt / claim.notes
    ...                          # the run; then claim.lock.release()

A run directory has one writer: claiming it takes its lock (dirlock.py) for the run's life, so a second
`cityseg train` into it while the first runs is refused with one line naming the first (pid, host, since
when). Rank 0 alone claims: the ranks of one torchrun job are one writer, and the others are never refused.

A run directory belongs to one config. Rerunning into it with another config is refused, naming the keys
that differ, unless train.resume=never (`cityseg train --fresh`) starts afresh there: that removes the
previous run's checkpoints and metrics.jsonl (and says so), so nothing of the old run is mixed into or
resumed by the new one. Keys that do not change what is trained may differ (RESUMABLE_KEYS).
train.resume=auto resumes from the newest checkpoint that loads: an unreadable newer one (a truncated copy,
a full disk) is passed over and named. Temporary files of a checkpoint write cut short by a kill are removed.
Every refusal comes before anything in the directory is changed but its lock file (created, with the
directory, to be taken before anything is read).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cityseg_fast import dirlock
from cityseg_fast.config import Config, to_dict
from cityseg_fast.engine import checkpoint as ckpt_io
from cityseg_fast.errors import UserError
from cityseg_fast.paths import check_out_dir

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"

# Keys a rerun may change without starting afresh: how long to train, how often to log, evaluate and save,
# where the files are, how fast batches are made, and what has no effect on training. None of them changes
# the weights an iteration produces from a given state: the loaders' random draws are made on the host per
# sample (data/plan.py), so workers, threads and queue depth do not change them; evaluation counts each image
# once whatever its batch. train.iters is here on purpose: raising it continues a finished run (README,
# "Resuming"), though it stretches the poly schedule from there on. Everything else (model, data, crops,
# augmentation, optimizer, lr, schedule shape, precision, seeds) is what the checkpoint was trained with; a
# changed train.lr, for one, would not even apply, as the restored schedule keeps the old base lr.
RESUMABLE_KEYS = frozenset(
    {
        "train.iters",
        "train.eval_interval",
        "train.log_interval",
        "train.ckpt_interval",
        "train.keep_ckpts",
        "train.resume",
        "train.out_dir",
        "train.dist_timeout_s",
        "train.max_nonfinite",
        "train.straggler_threshold",
        "train.tensorboard",
        "data.root",
        "loader.eval_batch_size",
        "loader.num_workers",
        "loader.num_threads",
        "loader.prefetch_queue_depth",
        "loader.prefetch_factor",
        "loader.pin_memory",
    }
)
RESUMABLE_SECTIONS = frozenset({"bench"})  # benchmark settings; training never reads them


@dataclass
class Claim:
    lock: dirlock.DirLock  # held until the run ends: the caller releases it
    resume: Path | None = None  # the checkpoint to resume from; None = start at iteration 0
    ckpt: dict[str, Any] | None = None  # that checkpoint, loaded
    notes: list[str] = field(default_factory=list)  # one line each for the console: what was done and why


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """'section.key old -> new' for each key both configs set that differs and may not change on a resume."""
    changes = []
    for section, values in new.items():
        before = old.get(section)
        if section in RESUMABLE_SECTIONS or not isinstance(before, Mapping):
            continue
        for key, value in values.items():
            dotted = f"{section}.{key}"
            if dotted not in RESUMABLE_KEYS and key in before and before[key] != value:
                changes.append(f"{dotted} {before[key]!r} -> {value!r}")
    return changes


def _refuse_other_config(source: Path, old: Any, cfg: Config, out: Path) -> None:
    """A UserError naming `source` (a run's config.yaml, or a checkpoint) if its config differs from `cfg`
    in a key that may not change on a resume."""
    changes = config_changes(old if isinstance(old, Mapping) else {}, to_dict(cfg))
    if not changes:
        return
    shown = ", ".join(changes[:4]) + (f" and {len(changes) - 4} more" if len(changes) > 4 else "")
    if source.name == CONFIG_FILE:
        raise UserError(
            f"{source}: the run in {out} has another config ({shown}); use another --out, or --fresh "
            "(train.resume=never) to start afresh there, which removes its checkpoints"
        )
    raise UserError(
        f"{source}: this checkpoint was trained with another config ({shown}); resume it with its own"
    )


def _check_run_config(out: Path, cfg: Config) -> None:
    path = out / CONFIG_FILE
    if not path.is_file():
        return
    try:
        old = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        raise UserError(f"{path}: unreadable; --fresh (train.resume=never) starts afresh in {out}") from None
    _refuse_other_config(path, old, cfg, out)


def _pick_checkpoint(cfg: Config, out: Path, notes: list[str]) -> tuple[Path | None, dict[str, Any] | None]:
    mode = cfg.train.resume
    if mode == "auto":
        found = ckpt_io.latest_readable(out)
        if found is None:
            return None, None
        path, ck, errors = found
        for error in errors:
            notes.append(f"warning: {error}; resuming from the previous checkpoint, {path}, instead")
        return path, ck
    path = Path(mode)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint to resume from not found (train.resume)")
    return path, ckpt_io.load_checkpoint(path)


def _start_afresh(out: Path, notes: list[str]) -> None:
    """Remove what a previous run left that a fresh one would mix with (old checkpoints outlive `keep_ckpts`
    pruning of the new ones, and resume=auto would pick them up later)."""
    old = ckpt_io.list_checkpoints(out)
    for p in old:
        p.unlink()
    if old:
        n = len(old)
        notes.append(f"starting afresh in {out}: removed the previous run's {n} checkpoint(s) and metrics")


def claim_run_dir(cfg: Config) -> Claim:
    """Lock, check, tidy and choose for a training run in cfg.train.out_dir (rank 0 only; see the module
    docstring). The lock is released here on a refusal, else by the caller when the run ends."""
    out = check_out_dir(cfg.train.out_dir, "train.out_dir (--out)")
    lock = dirlock.hold(out, "cityseg train")  # before anything is read: another writer could be changing it
    try:
        return _claim(cfg, out, Claim(lock))
    except BaseException:
        lock.release()
        raise


def _claim(cfg: Config, out: Path, claim: Claim) -> Claim:
    """claim_run_dir's checks and tidying, under the lock `claim` holds."""
    fresh = cfg.train.resume == "never"  # auto, never or a checkpoint path: CHOICES checked which
    if not fresh:
        _check_run_config(out, cfg)
        claim.resume, claim.ckpt = _pick_checkpoint(cfg, out, claim.notes)
        if claim.ckpt is not None:
            _refuse_other_config(claim.resume, claim.ckpt["config"], cfg, out)
    stale = ckpt_io.remove_stale_temps(out)
    if stale:
        names = ", ".join(p.name for p in stale)
        claim.notes.append(f"removed {names} in {out}: left by a checkpoint write that was interrupted")
    if fresh:
        _start_afresh(out, claim.notes)
    if claim.resume is None:
        (out / METRICS_FILE).unlink(missing_ok=True)  # a run from iteration 0 starts a fresh log
    return claim

"""Checkpoints: atomic writes (temp file, fsync, rename), keep the last k, loadable with weights_only=True.

A checkpoint is a plain dict of tensors and primitives:
    {"format": "cityseg_fast.checkpoint", "version": 1, "iteration": int, "model": state_dict,
     "optimizer": ..., "scheduler": ..., "scaler": ..., "rng": {...}, "config": to_dict(cfg)}
so `torch.load(path, weights_only=True)` reads it without unpickling arbitrary objects.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cityseg_fast.diskio import atomic_path, make_dirs
from cityseg_fast.errors import UserError

FORMAT = "cityseg_fast.checkpoint"
VERSION = 1
_NAME = re.compile(r"^ckpt_(\d{8})\.pt$")
_TEMP = re.compile(r"^\.ckpt_\d{8}\.pt\.tmp\d*$")  # diskio.temp_name of a checkpoint (save_checkpoint)


def checkpoint_name(iteration: int) -> str:
    return f"ckpt_{iteration:08d}.pt"


def list_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """Finished checkpoints in `out_dir`, oldest first (temporary files of an interrupted write are ignored)."""
    d = Path(out_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(out_dir)
    return ckpts[-1] if ckpts else None


def latest_readable(out_dir: str | os.PathLike) -> tuple[Path, dict[str, Any], list[str]] | None:
    """(path, loaded checkpoint, errors of the newer ones that did not load) of the newest checkpoint in
    `out_dir` that loads; None when there is none; a UserError when there are some and none loads."""
    errors: list[str] = []
    for path in reversed(list_checkpoints(out_dir)):
        try:
            return path, load_checkpoint(path), errors
        except UserError as e:
            errors.append(str(e))
    if errors:
        raise UserError(f"{out_dir}: none of its {len(errors)} checkpoints loads (newest: {errors[0]})")
    return None


def remove_stale_temps(out_dir: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of checkpoint writes that never finished (a kill mid-write); returns them.
    Only where no write can be under way: rank 0, before training starts."""
    d = Path(out_dir)
    stale = sorted(p for p in d.iterdir() if _TEMP.match(p.name)) if d.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers (`model_without_ddp`), for saving/loading."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


# ---------------------------------------------------------------------------------------------
# RNG state as tensors and primitives (numpy's state tuple holds an ndarray, which weights_only refuses)


def capture_rng() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    rng: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "state": list(state), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"].cpu())
    n = rng["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = rng["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in rng and torch.cuda.is_available():
        states = rng["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in states])


# ---------------------------------------------------------------------------------------------
# save / load


def save_checkpoint(ckpt: dict[str, Any], out_dir: str | os.PathLike, keep: int = 2) -> Path:
    """Write `ckpt` as out_dir/ckpt_{iteration}.pt atomically, then delete all but the newest `keep`.

    The bytes go to a temporary file in the same directory, are fsynced, and only then renamed over the
    final name, so a process killed at any moment leaves either the old set of checkpoints or the new one.
    A full disk is a one-line UserError naming the checkpoint; its temporary file is removed and the older
    checkpoints are kept (diskio.py).
    """
    d = make_dirs(out_dir)
    path = d / checkpoint_name(int(ckpt["iteration"]))
    # A file object, not a path: torch then writes through Python, and a full disk's OSError stays
    # visible behind torch's "unexpected pos" RuntimeError.
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(ckpt, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(d)
    if keep > 0:
        for old in list_checkpoints(d)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint on the CPU with weights_only=True; a UserError for a missing or foreign file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: checkpoint not found")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types on foreign bytes (UnpicklingError, KeyError, ...)
        text = str(e).strip()
        first = text.splitlines()[0].split(". ")[0][:120] if text else type(e).__name__  # its first sentence
        raise UserError(f"{p}: not a readable checkpoint ({first})") from None
    if (
        not isinstance(ckpt, dict)
        or ckpt.get("format") != FORMAT
        or "model" not in ckpt
        or "config" not in ckpt
    ):
        raise UserError(f"{p}: not a cityseg_fast checkpoint (no format/model/config entries)")
    return ckpt


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Load weights strictly; a mismatch (another model or width) is a UserError naming the checkpoint."""
    target = unwrap_model(model)
    own = target.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            parts.append(
                f"{len(shapes)} with other shapes (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})"
            )
        raise UserError(f"{path}: weights do not fit model {type(target).__name__}: " + ", ".join(parts))
    target.load_state_dict(state, strict=True)

"""Helpers of the GPU suite: its loader config and an epoch of batches brought to the CPU."""

from __future__ import annotations

import torch
from loader_fixtures import loader_cfg


def gpu_cfg(root, backend: str, *extra: str):
    """The suite's loader config: 64x128 crops, batch 4, scales that also pad."""
    return loader_cfg(
        root, backend, "data.crop=[64,128]", "loader.batch_size=4", "loader.eval_batch_size=2",
        "data.scale_range=[0.4,1.5]", "loader.num_threads=2", "loader.num_workers=2", *extra,
    )  # fmt: skip


def all_batches(cfg, split: str, device: torch.device) -> list:
    """One epoch of `split`, each batch moved to the CPU for comparison."""
    from cityseg_fast.data.factory import build_loader

    loader = build_loader(cfg, split, device=device)
    try:
        out = []
        for b in loader:
            out.append(type(b)(b.image.float().cpu(), b.target.cpu(), b.index))
        return out
    finally:
        loader.close()

"""Helpers of the GPU suite: its loader config, an epoch of batches brought to the CPU, pixel tolerances that
hold between decoders, and what a fresh process really loaded (to tell GPU decoding from a CPU fallback)."""

from __future__ import annotations

import json
import sys
import textwrap

import torch
from engine_fixtures import _run
from loader_fixtures import loader_cfg

ONE_LEVEL = 1 / (255 * 0.229)  # about one 8-bit level after normalization (the std's of 0.224..0.229)


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


def assert_decoders_agree(a: torch.Tensor, b: torch.Tensor, uint8: bool) -> None:
    """Two decoders' images of the same frames: nvJPEG's IDCT and chroma upsampling are not bit-exact with
    libjpeg-turbo's (nor its hardware decoder with its CUDA one), so single pixels may differ by many levels
    on sharp detail; on average they stay within a level or two, while a wrong crop, flip or scale (what
    this guards) moves the test frames' gradients by tens of levels on average."""
    diff = (a.float() - b.float()).abs()
    levels = diff if uint8 else diff / ONE_LEVEL
    sample = levels.flatten()[:: max(1, levels.numel() // 1_000_000)]  # torch.quantile's input is bounded
    assert float(levels.mean()) < 3.0, float(levels.mean())
    assert float(torch.quantile(sample, 0.99)) < 16, float(torch.quantile(sample, 0.99))


def run_child(code: str, timeout: float = 300) -> dict:
    """Run `code` in a fresh Python process (nothing another test loaded is in it); it prints one JSON
    object last, which is returned. `nvjpeg_mapped()` is defined for it: whether DALI's nvJPEG is loaded."""
    # DALI's own nvJPEG, found as data/dali/nvjpeg.py finds it (torchvision's renamed copy, mapped as soon as
    # torchvision.io is imported, proves nothing and is not matched)
    prelude = textwrap.dedent("""
        import json
        from cityseg_fast.data.dali.nvjpeg import loaded_nvjpeg
        def nvjpeg_mapped():
            return loaded_nvjpeg(open("/proc/self/maps").read()) is not None
    """)
    p = _run([sys.executable, "-c", prelude + textwrap.dedent(code)], timeout, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])

"""What DALI can do on this machine, for `cityseg doctor`: the version, and one batch of the real graphs.

A JPEG decode alone says little: the loader's train graph slices, resizes, flips, normalizes and pads,
its eval graph decodes whole frames and maps labels, on the CPU and (with a GPU) through the `mixed`
decoder. So the probe writes two tiny frames with labels to a temporary folder and runs one batch of
the train and the eval graph of the real loader on each device DALI can use, then asks what the mixed
decoder ran on (nvjpeg.py): a mixed decoder without nvJPEG decodes on the CPU and still runs, so GPU
decoding counts only with nvJPEG loaded. Never raises.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cityseg_fast.config import IMAGENET_MEAN, IMAGENET_STD
from cityseg_fast.data.cityscapes import Sample
from cityseg_fast.data.dali import nvjpeg
from cityseg_fast.data.plan import LoaderSpec
from cityseg_fast.hardware import resolve_device

HW_LOAD = 0.65  # the probe loaders' hw_decoder_load (any share > 0 asks whether the JPEG engines are there)


def dali_version() -> str | None:
    try:
        import nvidia.dali as dali
    except Exception:  # ImportError, or a broken install raising at import
        return None
    return getattr(dali, "__version__", "unknown")


def dali_available() -> bool:
    return dali_version() is not None


def _tiny_samples(folder: Path, hw: tuple[int, int] = (48, 96)) -> list:
    rng = np.random.default_rng(0)
    samples = []
    for k in range(2):
        stem = f"probe_{k:06d}_000019"
        image, label = folder / f"{stem}.jpg", folder / f"{stem}.png"
        Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8)).save(image, quality=90)
        Image.fromarray(rng.integers(0, 19, hw, dtype=np.uint8)).save(label)
        samples.append(Sample(image, label, stem, "trainIds"))
    return samples


def _one_batch(samples: list, train: bool, dali_device: str, device: Any) -> str:
    """Run one batch of the loader's train or eval graph; "" if it met the Batch contract, else why."""
    from cityseg_fast.data.dali.loader import DaliLoader

    spec = LoaderSpec(
        train=train, batch_size=2, crop=(32, 64), scale_range=(0.5, 1.5), flip_prob=0.5,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, eval_size=None, eval_label_resize=False,
        rank=0, world_size=1, seed=0, device=device,
    )  # fmt: skip
    loader = DaliLoader(
        samples, spec, dali_device=dali_device, num_threads=1, prefetch_queue_depth=1, hw_decoder_load=HW_LOAD
    )
    try:
        batch = next(iter(loader))
        want = (2, 3, 32, 64) if train else (2, 3, 48, 96)
        if tuple(batch.image.shape) != want or batch.image.device.type != device.type:
            return f"got images {tuple(batch.image.shape)} on {batch.image.device}, expected {want}"
        if int(batch.target.max()) > 255 or batch.target.dtype.is_floating_point:
            return "targets are not trainIds"
        return ""
    finally:
        loader.close()


def _graphs(dali_device: str, device: Any, samples: list) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in ("train", "eval"):
        try:
            why = _one_batch(samples, mode == "train", dali_device, device)
        except Exception as e:  # report, never crash `doctor`
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        out[mode] = why == ""
        if why:
            out.setdefault("error", f"{mode} graph: {why}")
    return out


def probe() -> dict[str, Any]:
    """{'version', 'cpu_pipeline', 'gpu_decode', 'cpu_graphs': {train, eval}, 'gpu_graphs': ..., 'error',
    'nvjpeg_version', 'hw_decoder', 'hw_decoder_engines', 'gpu_decode_note'}.

    cpu_pipeline: the real train and eval graphs ran one batch on the CPU; gpu_decode: they ran through
    the mixed decoder on this process's GPU with nvJPEG loaded (not a CPU fallback); nvjpeg_version,
    hw_decoder (the GPU's JPEG engines take a share), hw_decoder_engines, gpu_decode_note (why not, or
    "no GPU"): nvjpeg.GpuDecode. Never raises: a missing DALI or a failing pipeline is reported, not
    crashed on.
    """
    import torch

    info: dict[str, Any] = {"version": dali_version(), "cpu_pipeline": False, "gpu_decode": False, "error": None}
    info.update(decode_fields(nvjpeg.NO_GPU))
    if info["version"] is None:
        info["error"] = "nvidia.dali is not installed"
        return info
    with tempfile.TemporaryDirectory(prefix="cityseg-probe-") as tmp:
        samples = _tiny_samples(Path(tmp))
        info["cpu_graphs"] = _graphs("cpu", torch.device("cpu"), samples)
        info["cpu_pipeline"] = info["cpu_graphs"]["train"] and info["cpu_graphs"]["eval"]
        if torch.cuda.is_available():
            device = resolve_device()
            info["gpu_graphs"] = _graphs("gpu", device, samples)
            ran = nvjpeg.gpu_decode(HW_LOAD, device.index or 0)
            info.update(decode_fields(ran))
            info["gpu_decode"] = info["gpu_graphs"]["train"] and info["gpu_graphs"]["eval"] and bool(ran.nvjpeg_version)
    errors = [g.get("error") for g in (info.get("cpu_graphs", {}), info.get("gpu_graphs", {}))]
    info["error"] = next((e for e in errors if e), None)
    return info


def decode_fields(g: nvjpeg.GpuDecode) -> dict[str, Any]:
    """A GpuDecode as doctor's JSON fields."""
    return {
        "nvjpeg_version": g.nvjpeg_version,
        "hw_decoder": g.hw_decoder,
        "hw_decoder_engines": g.hw_engines,
        "gpu_decode_note": g.note,
    }

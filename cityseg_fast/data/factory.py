"""`build_loader(cfg, split, rank, world_size)`: one Loader protocol over three backends.

Every backend yields `Batch` (batch.py) for one epoch per iteration and has `len()` (batches per
epoch on this rank), `set_epoch(epoch)`, `samples` (the whole split), `num_samples` (samples this
rank sees per epoch), `description` and `close()`:

    dali       DALI pipeline, decode + augmentation on the GPU (`mixed`) or the CPU (dali/)
    torch      DataLoader baseline doing the same work, decoding with torchvision.io or PIL
               (`loader.decoder`; torch_loader.py); with loader.device=gpu, nvJPEG through
               torchvision.io and torch ops on the GPU (torch_gpu_loader.py)
    synthetic  fixed random on-device batches: the I/O-free upper bound (synthetic_loader.py)
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from cityseg_fast.config import Config, data_root, dataset_root_or_none
from cityseg_fast.data.cityscapes import find_samples
from cityseg_fast.data.dali import dali_available
from cityseg_fast.data.plan import LoaderSpec
from cityseg_fast.data.synthetic_loader import SyntheticLoader
from cityseg_fast.data.torch_gpu_loader import TorchGpuLoader
from cityseg_fast.data.torch_loader import TorchLoader
from cityseg_fast.errors import UserError
from cityseg_fast.hardware import cores_per_rank, loader_device, resolve_device


class Loader(Protocol):
    samples: list
    description: str

    def __iter__(self) -> Any: ...
    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...
    def close(self) -> None: ...
    @property
    def num_samples(self) -> int: ...


def dali_device(requested: str, device: torch.device) -> str:
    """loader.device -> where DALI runs ("gpu" or "cpu"; hardware.loader_device), refused if "gpu" cannot run here."""
    where = loader_device(requested, device)
    if where == "gpu" and not torch.cuda.is_available():
        raise UserError("loader.device=gpu: no CUDA GPU is available here (use auto or cpu)")
    return where


def torch_loader(samples: list, spec: LoaderSpec, cfg: Config) -> Loader:
    """The torch backend: DataLoader workers on the CPU (loader.device auto | cpu), or nvJPEG and torch ops
    on the training GPU (loader.device=gpu, the torchvision decoder only)."""
    lc = cfg.loader  # loader.device and loader.decoder are CHOICES words: the config checked them
    if lc.device != "gpu":
        return TorchLoader(samples, spec, num_workers=lc.num_workers, prefetch_factor=lc.prefetch_factor,
                           pin_memory=lc.pin_memory, decoder=lc.decoder)  # fmt: skip
    if spec.device.type != "cuda":
        raise UserError(f"loader.device=gpu: the torch backend decodes on the training GPU, but the training device is {spec.device} (use auto or cpu)")
    if lc.decoder != "torchvision":
        raise UserError(f"loader.device=gpu decodes with nvJPEG through torchvision.io: loader.decoder={lc.decoder} runs on the CPU only")
    return TorchGpuLoader(samples, spec, num_threads=lc.num_workers, prefetch=lc.prefetch_factor)


def loader_spec(cfg: Config, train: bool, rank: int, world_size: int, device: torch.device) -> LoaderSpec:
    """The LoaderSpec of a split from the config: the one place a loader's settings are read."""
    d, lc = cfg.data, cfg.loader
    return LoaderSpec(
        train=train,
        batch_size=lc.batch_size if train else lc.eval_batch_size,
        crop=tuple(d.crop),
        scale_range=tuple(d.scale_range),
        flip_prob=d.flip_prob,
        mean=d.mean,
        std=d.std,
        eval_size=d.eval_size,
        eval_label_resize=d.eval_label_resize,
        rank=rank,
        world_size=world_size,
        seed=lc.seed,
        device=device,
        channels_last=cfg.precision.channels_last,
        decode_only=lc.decode_only,
    )


def build_loader(
    cfg: Config,
    split: str,
    rank: int = 0,
    world_size: int = 1,
    *,
    train: bool | None = None,
    device: torch.device | None = None,
) -> Loader:
    """The loader of `split` for this rank. train defaults to split == cfg.data.train_split.

    loader.decode_only (benchmarks): same backend, same files, same decoder, full frames, no
    augmentation, no labels; batches carry uint8 images and an empty target. loader.roi (dali):
    "slice" decodes only the crop window, "resize" decodes the frame and resizes the window.
    """
    backend, lc = cfg.loader.backend, cfg.loader  # a CHOICES word: the config checked it
    if train is None:
        train = split == cfg.data.train_split
    spec = loader_spec(cfg, train, rank, world_size, device if device is not None else resolve_device())

    if backend == "synthetic":
        # With a dataset, the synthetic loader mimics its epoch length and frame size; without, 100 batches.
        has_data = dataset_root_or_none(cfg) is not None
        samples = find_samples(data_root(cfg), split) if has_data else []
        return SyntheticLoader(samples, spec, cfg.data.num_classes)
    samples = find_samples(data_root(cfg), split)
    if backend == "torch":
        return torch_loader(samples, spec, cfg)

    if not dali_available():
        raise UserError(
            "loader.backend=dali: nvidia.dali is not installed (pip install nvidia-dali-cuda130, or use loader.backend=torch)"
        )
    from cityseg_fast.data.dali.loader import DaliLoader

    return DaliLoader(
        samples,
        spec,
        dali_device=dali_device(lc.device, spec.device),
        num_threads=lc.num_threads or cores_per_rank(),
        prefetch_queue_depth=lc.prefetch_queue_depth,
        hw_decoder_load=lc.hw_decoder_load,
        roi=lc.roi,
        resampler=lc.resampler,
    )

"""Epoch plans and crop geometry shared by the `dali` and `torch` loaders, so both do the same work.

A plan is the list of batches one rank reads in one epoch; each entry says which sample to read,
where it goes in `Batch.index` (-1 = padding) and, in training, its random augmentation. Drawing
the random values here, on the host and once per sample, gives three things at once: the image and
the label get the same geometry by construction, `set_epoch(e)` is exactly reproducible from
`seed + e`, and the two backends see identical crops (a test holds them to it).

Sharding follows `torch.utils.data.DistributedSampler`: training shuffles all samples with one
permutation per epoch, wraps it to a multiple of the world size and gives rank r every world-th
entry, then drops the last incomplete batch (fixed shapes: `torch.compile` never recompiles).
Evaluation keeps the sorted order, pads each rank to the same number of full batches with
entries of index -1 (targets all 255), so every sample is counted exactly once across ranks and
every rank runs the same number of steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from cityseg_fast.errors import UserError


@dataclass(frozen=True)
class Aug:
    """One training sample's random draw: scale factor, crop position in [0, 1), horizontal flip."""

    scale: float
    pos_y: float
    pos_x: float
    flip: bool


@dataclass(frozen=True)
class Item:
    index: int  # position in loader.samples written to Batch.index; -1 = padding (target all 255)
    source: int  # the sample whose files are read (== index, or any real sample for padding)
    aug: Aug | None = None  # None in evaluation


@dataclass(frozen=True)
class Geometry:
    """Crop-before-resize: read source rows/cols [y, y+h) x [x, x+w), resize to (out_h, out_w),
    flip, then pad bottom/right to the crop (image 0 after normalization, label 255)."""

    y: int
    x: int
    h: int
    w: int
    out_h: int
    out_w: int
    flip: bool


def train_batches(
    n: int,
    rank: int,
    world_size: int,
    epoch: int,
    seed: int,
    batch_size: int,
    scale_range: tuple[float, float],
    flip_prob: float,
) -> list[list[Item]]:
    """This rank's training batches for `epoch` (shuffled from seed + epoch, drop last)."""
    per_rank = math.ceil(n / world_size)
    check_train_size(n, world_size, batch_size)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    perm = np.resize(perm, per_rank * world_size)  # wrap around, as DistributedSampler pads
    mine = perm[rank::world_size][: (per_rank // batch_size) * batch_size]
    rng = np.random.default_rng([seed, epoch, rank, 1])  # augmentation stream, per rank
    s0, s1 = scale_range
    scales = rng.uniform(s0, s1, len(mine))
    pos = rng.random((len(mine), 2))
    flips = rng.random(len(mine)) < flip_prob
    items = [
        Item(int(i), int(i), Aug(float(s), float(p[0]), float(p[1]), bool(f)))
        for i, s, p, f in zip(mine, scales, pos, flips, strict=True)
    ]
    return [items[k : k + batch_size] for k in range(0, len(items), batch_size)]


def check_train_size(n: int, world_size: int, batch_size: int) -> None:
    if math.ceil(n / world_size) < batch_size:
        raise UserError(
            f"training split has {n} samples: fewer than batch_size {batch_size} x world size {world_size}"
        )


def train_len(n: int, world_size: int, batch_size: int) -> int:
    return math.ceil(n / world_size) // batch_size


def eval_batches(n: int, rank: int, world_size: int, batch_size: int) -> list[list[Item]]:
    """This rank's evaluation batches: samples rank, rank + world, ...; padded with index -1."""
    mine = list(range(rank, n, world_size))
    steps = eval_len(n, world_size, batch_size)
    filler = mine[0] if mine else 0  # padding reads a real file; its index -1 masks it out
    items = [Item(i, i) for i in mine] + [Item(-1, filler)] * (steps * batch_size - len(mine))
    return [items[k : k + batch_size] for k in range(0, len(items), batch_size)]


def eval_len(n: int, world_size: int, batch_size: int) -> int:
    return math.ceil(math.ceil(n / world_size) / batch_size)


def eval_num_samples(n: int, rank: int, world_size: int) -> int:
    return len(range(rank, n, world_size))


def crop_geometry(src_hw: tuple[int, int], crop_hw: tuple[int, int], aug: Aug) -> Geometry:
    """Source window and output size for scaling a (H, W) frame by aug.scale and cropping crop_hw.

    The window is chosen in integer source pixels, so a slice decoder and PIL read exactly the
    same region; where the scaled frame is smaller than the crop, the whole frame is used and the
    rest of the crop is padding.
    """
    (H, W), (ch, cw), s = src_hw, crop_hw, aug.scale
    h, w = min(H, max(1, round(ch / s))), min(W, max(1, round(cw / s)))
    # A window inside the frame fills the crop exactly (rounding h = ch / s must not leave a
    # 1-pixel strip of padding); only a frame smaller than the scaled crop leaves padding.
    out_h = ch if h < H else min(ch, max(1, round(H * s)))
    out_w = cw if w < W else min(cw, max(1, round(W * s)))
    y = min(H - h, int(aug.pos_y * (H - h + 1)))
    x = min(W - w, int(aug.pos_x * (W - w + 1)))
    return Geometry(y, x, h, w, out_h, out_w, aug.flip)


@dataclass(frozen=True)
class LoaderSpec:
    """What every backend is built from, filled once from the config (factory.loader_spec)."""

    train: bool
    batch_size: int
    crop: tuple[int, int]
    scale_range: tuple[float, float]
    flip_prob: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    eval_size: tuple[int, int] | None
    eval_label_resize: bool
    rank: int
    world_size: int
    seed: int
    device: Any  # torch.device the batches are delivered on
    channels_last: bool = True  # the images' memory format (precision.channels_last: the model's)
    decode_only: bool = False  # benchmarks: full frames, no augmentation, no labels


class PlannedLoader:
    """The epoch-plan side of the Loader protocol, shared by every backend: `spec`, `samples`, `len()`,
    `num_samples`, `set_epoch`, and `_plan()` (this rank's batches of the current epoch)."""

    def __init__(self, samples: list, spec: LoaderSpec) -> None:
        self.samples, self.spec, self.epoch = list(samples), spec, 0
        if spec.train and self.samples:  # fail at build, not mid-iteration
            check_train_size(len(self.samples), spec.world_size, spec.batch_size)

    @property
    def device(self) -> Any:
        return self.spec.device

    def __len__(self) -> int:
        n, s = len(self.samples), self.spec
        return train_len(n, s.world_size, s.batch_size) if s.train else eval_len(n, s.world_size, s.batch_size)

    @property
    def num_samples(self) -> int:
        if self.spec.train:
            return len(self) * self.spec.batch_size
        return eval_num_samples(len(self.samples), self.spec.rank, self.spec.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def close(self) -> None:
        """Release workers / pipelines (backends that hold any override this)."""

    def _plan(self) -> list[list[Item]]:
        s, n = self.spec, len(self.samples)
        if s.train:
            return train_batches(n, s.rank, s.world_size, self.epoch, s.seed, s.batch_size, tuple(s.scale_range), s.flip_prob)
        return eval_batches(n, s.rank, s.world_size, s.batch_size)


def endless(loader: Any, epoch: int = 0, skip: int = 0) -> Iterator[tuple[int, Any]]:
    """(epoch, batch) across epochs, `set_epoch` before each, from `epoch`, skipping its first `skip`
    batches (an exact resume). The one endless iterator: training, benchmarks and the loader bench."""
    while True:
        loader.set_epoch(epoch)
        n = 0
        for i, batch in enumerate(loader):
            n += 1
            if i >= skip:
                yield epoch, batch
        if n == 0:
            raise RuntimeError(f"loader '{loader.description}' yielded no batch (dataset smaller than one batch?)")
        skip = 0
        epoch += 1


class SizeCache:
    """(H, W) of each sample's image, read lazily from the file header (PIL reads no pixels)."""

    def __init__(self, paths: list) -> None:
        self._paths = paths
        self._hw: dict[int, tuple[int, int]] = {}

    def __getitem__(self, i: int) -> tuple[int, int]:
        hw = self._hw.get(i)
        if hw is None:
            try:
                with Image.open(self._paths[i]) as im:
                    hw = (im.height, im.width)
            except Exception as e:  # any unreadable header is the user's file at fault
                raise UserError(f"{self._paths[i]}: cannot read image header ({type(e).__name__})") from None
            self._hw[i] = hw
        return hw

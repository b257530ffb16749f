"""From host uint8 crops to the training device's Batch: copy, normalize, pad, layout, on a side stream.

Loaders that produce on the host (the torch DataLoader's workers, DALI on the CPU) hand over a
`HostBatch` of uint8 images, 4x fewer bytes than float. `finish` turns it into the Batch contract
on the device: non-blocking copy from pinned memory, normalization there (on a GPU nearly free),
padding set to 0 after normalization, the model's memory format, int64 targets. On a GPU,
`CudaPrefetcher` (like timm's PrefetchLoader, for any iterator) finishes batch k+1 on a side
stream while the caller's step k runs on the compute stream.

    batches = CudaPrefetcher(host_batches, lambda hb: finish(hb, device, norm, channels_last), device)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import torch

from cityseg_fast.data.batch import Batch, to_layout

STAGES = ("decode", "transform", "handoff")


class StageTimes(NamedTuple):
    """CPU seconds a loader spent on `images` images, by stage: decode (reading and decoding the files),
    transform (crop, resize, flip, label mapping), hand-off (batching, copying, normalizing, delivering).
    Each stage is timed on the thread that runs it (time.thread_time), wherever that thread lives."""

    decode: float = 0.0
    transform: float = 0.0
    handoff: float = 0.0
    images: int = 0

    def plus(self, other: StageTimes | None, handoff_s: float = 0.0) -> StageTimes:
        o = other or StageTimes()
        return StageTimes(self.decode + o.decode, self.transform + o.transform,
                          self.handoff + o.handoff + handoff_s, self.images + o.images)  # fmt: skip

    def per_image_ms(self, since: StageTimes) -> dict[str, float]:
        """{'decode': ms, 'transform': ms, 'handoff': ms} per image since an earlier reading; {} if none."""
        n = self.images - since.images
        if n <= 0:
            return {}
        return {k: 1e3 * (getattr(self, k) - getattr(since, k)) / n for k in STAGES}


class HostBatch(NamedTuple):
    """image: uint8 N x H x W x 3; target: uint8 or int64 N x H x W, or None (decode-only);
    sizes: int64 N x 2, the valid (h, w) of each image from its top-left corner (the rest is
    padding), or None when nothing is padded; index: as Batch.index; stages: the CPU time its
    samples cost so far (StageTimes), where the producer timed it."""

    image: torch.Tensor
    target: torch.Tensor | None
    sizes: torch.Tensor | None
    index: torch.Tensor | None
    stages: StageTimes | None = None


def pinned(shape: tuple[int, ...], dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """A page-locked host buffer from torch's caching host allocator, which reuses a block only once
    the copies recorded on it have finished (so a buffer is never overwritten mid-copy)."""
    return torch.empty(shape, dtype=dtype, pin_memory=True)


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if t.device == device:
        return t
    if device.type == "cuda" and not t.is_pinned():
        t = t.pin_memory()  # a pageable source would make the copy synchronous
    return t.to(device, non_blocking=True)


def frames_batch(images: torch.Tensor, index: torch.Tensor | None) -> Batch:
    """Decode-only (loader.decode_only): uint8 N x H x W x 3 frames as the Batch's image (a
    channels_last N x 3 x H x W view), an empty int64 target on the same device."""
    empty = torch.empty((images.shape[0], 0, 0), dtype=torch.int64, device=images.device)
    return Batch(images.permute(0, 3, 1, 2), empty, index)


def finish(
    hb: HostBatch,
    device: torch.device,
    normalizer: Any,
    channels_last: bool,
    image_out: torch.Tensor | None = None,
    target_out: torch.Tensor | None = None,
) -> Batch:
    """The Batch on `device` (see the module docstring). image_out / target_out: reused CPU buffers
    (float N x H x W x 3, int64 N x H x W) to write into instead of fresh tensors."""
    images = _to(hb.image, device)
    if hb.target is None:  # decode-only
        return frames_batch(images, hb.index)
    x = normalizer.batch(images, image_out)  # N x H x W x 3 float == channels_last N x 3 x H x W
    if hb.sizes is not None:
        H, W = x.shape[1], x.shape[2]
        for k, (h, w) in enumerate(hb.sizes.tolist()):  # host values: no device sync
            if h < H:
                x[k, h:] = 0
            if w < W:
                x[k, :h, w:] = 0
    target = _to(hb.target, device)
    if target_out is not None:
        target = target_out.copy_(target)
    elif target.dtype != torch.int64:
        target = target.long()
    return Batch(to_layout(x.permute(0, 3, 1, 2), channels_last), target, hb.index)


class CudaPrefetcher:
    """Iterate `finish(item)` for each item of `items`, each finished on a side stream one batch ahead.

    Batch k+1 is prepared (host wait, pinned copy, normalization enqueued on the side stream) before
    batch k is handed out, so its copy and kernels overlap the caller's step k. Before a batch is
    handed out the compute stream waits for the side stream (an event, not a host sync), and its
    tensors are marked as used by the compute stream so the allocator frees them only after it.
    """

    def __init__(self, items: Iterable[Any], finish: Callable[[Any], Batch], device: torch.device) -> None:
        self.items, self.finish, self.device = iter(items), finish, device
        self.stream = torch.cuda.Stream(device)

    def _next(self) -> Batch | None:
        try:
            item = next(self.items)
        except StopIteration:
            return None
        with torch.cuda.stream(self.stream):
            return self.finish(item)

    def __iter__(self) -> Iterator[Batch]:
        nxt = self._next()
        while nxt is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_stream(self.stream)  # the batch is ready before the step uses it
            for t in (nxt.image, nxt.target):
                t.record_stream(compute)  # freed only after the step that uses it
            batch, nxt = nxt, self._next()
            yield batch

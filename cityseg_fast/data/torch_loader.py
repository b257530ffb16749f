"""The `torch` backend: a Dataset + DataLoader baseline doing the same work as the DALI pipeline.

Same plan (plan.py: sharding, per-epoch shuffle, one random draw per sample), same geometry (crop
before resize: only the source window of the crop is converted and resized), nearest for labels,
flip, normalization, padding (image 0 after normalization, label 255). Tuned the way NVIDIA's
DeepLearningExamples tune theirs: workers return uint8 crops (4x less to move between processes
than float) collated straight into shared memory, normalization and channels_last happen on the
training device, batches are pinned and copied non-blocking, and on a GPU a side-stream prefetcher
overlaps the copy and the normalization of batch k+1 with the step on batch k (handoff.py). Workers are
persistent. `loader.decoder` picks the decoder (decode.py): torchvision.io (the default: libjpeg-turbo
straight to a tensor) or PIL; palette label PNGs keep their indices either way. The resizes and the
normalization are torch's SIMD uint8 kernels (resample.py), faster than PIL's resize (reports/cpu-loaders/).

Each batch carries the CPU time its samples cost in the workers, by stage (decode, transform, and the
collate as the start of the hand-off); the main process adds its own hand-off and sums them in
`loader.stages` (handoff.StageTimes), which `cityseg bench loader` reports per image.

Workers start from a forkserver (see `_worker_context`), so, as with `spawn`, a script that builds
this loader needs the usual `if __name__ == "__main__":` guard (the `cityseg` CLI has it).
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import multiprocessing.connection
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from cityseg_fast.data.batch import Batch
from cityseg_fast.data.cityscapes import label_size_error
from cityseg_fast.data.decode import (
    DECODER_NAMES,
    DecodeError,
    decode_image,
    decode_label,
    size_of,
    torchvision_io,
    whole,
    window,
)
from cityseg_fast.data.handoff import CudaPrefetcher, HostBatch, StageTimes, finish
from cityseg_fast.data.parallel import process_death
from cityseg_fast.data.plan import Item, LoaderSpec, PlannedLoader, crop_geometry
from cityseg_fast.data.resample import BufferPool, Normalizer, one_thread, resize_image, resize_label
from cityseg_fast.errors import UserError
from cityseg_fast.labels import ID_TO_TRAINID
from cityseg_fast.preemption import ignore_stop_signals


class PlanDataset(torch.utils.data.Dataset):
    """Reads one plan Item: decode (decode.py), crop-before-resize, flip; returns uint8 tensors and the
    thread CPU seconds of its decode and transform stages."""

    def __init__(self, samples: list, spec: LoaderSpec, decoder: str = "torchvision") -> None:
        self.samples, self.spec, self.decoder = samples, spec, decoder
        self.lut = np.asarray(ID_TO_TRAINID, dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: Item) -> tuple | str:
        try:
            if torch.utils.data.get_worker_info() is None:  # loading on the caller's thread (num_workers=0)
                with one_thread():  # its thread CPU time is then all of the stage's CPU time
                    return self._load(item)
            return self._load(item)
        except DecodeError as e:
            return str(e)  # a plain message survives the worker boundary intact; raised in the main process

    def _load(self, item: Item) -> tuple:
        s, spec = self.samples[item.source], self.spec
        t0 = time.thread_time()
        img = decode_image(s.image, self.decoder)
        hw = size_of(img)
        if spec.decode_only:  # decoded to a tensor: torchvision's is a view (the collate's copy is its one
            image = whole(img)  # copy); PIL's export copy is part of decoding to a tensor
            return image, None, item.index, (time.thread_time() - t0, 0.0)
        lab = decode_label(s.label, self.decoder)
        if size_of(lab) != hw:  # a crop would pad it with 0 (road): refuse
            raise DecodeError(label_size_error(s.label, size_of(lab), s.image, hw))
        t1 = time.thread_time()
        if spec.train:
            g = crop_geometry(hw, spec.crop, item.aug)
            # crop before resize: only the window is converted (PIL) or read (.npy) and resized
            image = resize_image(window(img, g.y, g.x, g.h, g.w), (g.out_h, g.out_w))
            label = resize_label(window(lab, g.y, g.x, g.h, g.w), (g.out_h, g.out_w))
            if g.flip:
                image, label = image.flip(1), label.flip(1)
        else:
            image, label = whole(img), whole(lab)
            if spec.eval_size is not None:
                image = resize_image(image, spec.eval_size)
                if spec.eval_label_resize:
                    label = resize_label(label, spec.eval_size)
        if s.label_kind == "labelIds":  # after the geometry: map crop-sized labels, not frames
            label = torch.from_numpy(self.lut[label.numpy()])
        return image, label, item.index, (t1 - t0, time.thread_time() - t1)


def collate(items: list, pad_to: tuple[int, int] = (0, 0)) -> HostBatch | str:
    """Stack uint8 HxWx3 images, labels padded with 255, to the batch's largest size and at least
    `pad_to` (training: the crop, so that every batch has the same shape as DALI's). The batch carries
    its samples' decode and transform CPU seconds, and this copy's as the start of its hand-off."""
    for it in items:
        if isinstance(it, str):
            return it
    t0 = time.thread_time()
    n = len(items)
    H = max(pad_to[0], *(it[0].shape[0] for it in items))
    W = max(pad_to[1], *(it[0].shape[1] for it in items))
    images = _buffer((n, H, W, 3), 0)
    sizes = torch.empty((n, 2), dtype=torch.int64)
    for k, it in enumerate(items):
        img = it[0]
        images[k, : img.shape[0], : img.shape[1]] = img
        sizes[k, 0], sizes[k, 1] = img.shape[0], img.shape[1]
    index = torch.tensor([it[2] for it in items], dtype=torch.int64)
    labels = None
    if items[0][1] is None:  # decode-only: no labels, and nothing is normalized, so nothing to pad
        sizes = None
    else:
        lh = max(pad_to[0], *(it[1].shape[0] for it in items))
        lw = max(pad_to[1], *(it[1].shape[1] for it in items))
        labels = _buffer((n, lh, lw), 255)
        for k, it in enumerate(items):
            labels[k, : it[1].shape[0], : it[1].shape[1]] = it[1]
    stages = StageTimes(
        decode=sum(it[3][0] for it in items), transform=sum(it[3][1] for it in items),
        handoff=time.thread_time() - t0, images=n,
    )  # fmt: skip
    return HostBatch(images, labels, sizes, index, stages)


def _buffer(shape: tuple, fill: int) -> torch.Tensor:
    """A uint8 batch tensor; in a worker, allocated in shared memory (as default_collate does), so
    sending it to the main process does not copy it once more."""
    n = 1
    for d in shape:
        n *= d
    if torch.utils.data.get_worker_info() is None:
        return torch.full(shape, fill, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(n)
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape).fill_(fill)


class _PlanBatches:
    """batch_sampler for the DataLoader: the owning loader's current epoch plan."""

    def __init__(self, loader: TorchLoader) -> None:
        self.loader = loader

    def __iter__(self):
        return iter(self.loader._plan())

    def __len__(self) -> int:
        return len(self.loader)


class TorchLoader(PlannedLoader):
    """The `torch` backend (see the module docstring)."""

    def __init__(
        self,
        samples: list,
        spec: LoaderSpec,
        *,
        num_workers: int,
        prefetch_factor: int = 2,
        pin_memory: bool = True,
        decoder: str = "torchvision",
    ) -> None:
        super().__init__(samples, spec)
        on_gpu = spec.device.type == "cuda"
        self.decoder = DECODER_NAMES[decoder]  # a CHOICES word: the config checked it
        self.stages = StageTimes()  # CPU time by stage of the batches handed out so far
        self._norm = Normalizer(spec.mean, spec.std, device=spec.device)
        # The finished batches the consumer holds at once (a step's and the next); GPU: the caching allocator.
        self._pool = BufferPool(4) if not on_gpu else None
        dataset = PlanDataset(self.samples, spec, decoder)
        kw: dict[str, Any] = {}
        if num_workers > 0:
            kw = {
                "persistent_workers": True,
                "prefetch_factor": prefetch_factor,  # batches each worker loads ahead
                "multiprocessing_context": _worker_context(),
                "worker_init_fn": functools.partial(_init_worker, decoder),
            }
        else:
            _import_decoder(decoder)
        self._dl = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=_PlanBatches(self),
            num_workers=num_workers,
            # training batches always have the crop's shape, even when every frame was scaled smaller
            collate_fn=functools.partial(
                collate, pad_to=spec.crop if spec.train and not spec.decode_only else (0, 0)
            ),
            pin_memory=pin_memory and on_gpu,  # pinning only pays for a host -> GPU copy
            **kw,
        )
        mode = "decode-only" if spec.decode_only else ("train" if spec.train else "eval")
        self.description = f"torch ({num_workers} workers, {mode}, decoder {self.decoder})"

    def close(self) -> None:
        it = getattr(self._dl, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()  # persistent workers would otherwise live until exit
        self._dl._iterator = None

    def __iter__(self):
        raw = (self._check(b) for b in self._host_batches())
        if self.device.type == "cuda":
            yield from CudaPrefetcher(raw, self._finish, self.device)
        else:
            for b in raw:
                yield self._finish(b)

    def _host_batches(self) -> Iterator[HostBatch | str]:
        """The DataLoader's batches; a worker that died (the out-of-memory killer, a signal) is one line."""
        try:
            yield from self._dl
        except UserError:
            raise
        except Exception:  # torch's "worker exited unexpectedly", or a reset pipe to the dead worker
            dead = _dead_worker(getattr(self._dl, "_iterator", None))
            if dead is None:
                raise
            raise UserError(
                f"torch loader: worker process {dead.pid} {process_death(dead.exitcode)} while loading batches; "
                "free memory or lower loader.num_workers, then rerun"
            ) from None

    @staticmethod
    def _check(b: HostBatch | str) -> HostBatch:
        if isinstance(b, str):
            raise UserError(b)
        return b

    def _finish(self, b: HostBatch) -> Batch:
        """uint8 N x H x W x 3 on the host -> the Batch on the device (handoff.finish)."""
        t0 = time.thread_time()
        batch = self._deliver(b)
        self.stages = self.stages.plus(b.stages, time.thread_time() - t0)
        return batch

    def _deliver(self, b: HostBatch) -> Batch:
        if self.device.type != "cpu":
            return finish(b, self.device, self._norm, self.spec.channels_last)

        image_out = target_out = None
        if b.target is not None:  # into reused buffers: a fresh one page-faults
            image_out = self._pool.get((*b.image.shape[:3], 3))
            target_out = self._pool.get(tuple(b.target.shape), torch.int64)
        with one_thread():  # the workers hold the cores: no spinning OpenMP pool
            return finish(b, self.device, self._norm, self.spec.channels_last, image_out, target_out)


def _init_worker(decoder: str, worker_id: int) -> None:
    """A worker's start. A job's SIGTERM reaches every process: the training process saves and then stops
    its workers, which must not die of it first (preemption.py). Then the decoder's import."""
    ignore_stop_signals()
    _import_decoder(decoder, worker_id)


def _import_decoder(decoder: str, worker_id: int = 0) -> None:
    """Import the decoder before the first sample: its import (a second for torchvision) is start-up, not
    the first batch's decode time."""
    if decoder == "torchvision":
        torchvision_io()


def _dead_worker(iterator: Any, wait_s: float = 2.0) -> mp.process.BaseProcess | None:
    """A worker process of a DataLoader iterator that has died (None if none has within `wait_s`: the error
    came from elsewhere). Its death can reach the pipe before its exit status does, hence the short wait."""
    workers = list(getattr(iterator, "_workers", None) or ())  # torch's, private: looked up defensively
    if not workers:
        return None
    ready = mp.connection.wait([w.sentinel for w in workers], timeout=wait_s)
    return next((w for w in workers if w.sentinel in ready and w.exitcode != 0), None)


def _worker_context():
    """Workers start from a forkserver, not a fork of this process.

    A fork copies this process with only the forking thread: a lock held at that moment by any
    other thread (a DALI pipeline's, CUDA's, an OpenMP pool's) stays locked forever in the child,
    and the worker hangs (seen in the test suite after DALI pipelines ran). The forkserver
    imports this module once, so each worker still starts in milliseconds.
    """

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx

"""The `torch` loader backend: a Dataset + DataLoader baseline doing the same work as the DALI pipeline.

Same plan (plan.py: sharding, per-epoch shuffle, one random draw per sample), same geometry (crop
before resize: only the source window of the crop is converted and resized), nearest for labels,
flip, normalization, padding (image 0 after normalization, label 255). Tuned the way NVIDIA's
DeepLearningExamples tune theirs: workers return uint8 crops (4x less to move between processes
than float) collated straight into shared memory, normalization and channels_last happen on the
training device, batches are pinned and copied non-blocking, and on a GPU a side-stream prefetcher
overlaps the copy and the normalization of batch k+1 with the step on batch k (handoff.py). Workers are
persistent. PIL decodes (libjpeg-turbo, and palette label PNGs keep their indices); the resizes and
the normalization are torch's SIMD uint8 kernels (resample.py), faster than PIL's resize (reports/cpu-loaders/).

Workers start from a forkserver (see `_worker_context`), so, as with `spawn`, a script that builds
this loader needs the usual `if __name__ == "__main__":` guard (the `cityseg` CLI has it).
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import multiprocessing.connection
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image

from cityseg_fast.data.batch import Batch
from cityseg_fast.data.cityscapes import label_size_error, load_label_array
from cityseg_fast.data.handoff import CudaPrefetcher, HostBatch, finish
from cityseg_fast.data.parallel import process_death
from cityseg_fast.data.plan import Item, LoaderSpec, PlannedLoader, crop_geometry
from cityseg_fast.data.resample import BufferPool, Normalizer, one_thread, resize_image, resize_label
from cityseg_fast.errors import UserError
from cityseg_fast.labels import ID_TO_TRAINID
from cityseg_fast.preemption import ignore_stop_signals


class PlanDataset(torch.utils.data.Dataset):
    """Reads one plan Item: decode with PIL, crop-before-resize, flip; returns uint8 arrays."""

    def __init__(self, samples: list, spec: LoaderSpec) -> None:
        self.samples, self.spec = samples, spec
        self.lut = np.asarray(ID_TO_TRAINID, dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: Item) -> tuple | str:
        try:
            return self._load(item)
        except _DecodeError as e:
            return str(e)  # a plain message survives the worker boundary intact; raised in the main process

    def _open(self, path, mode: str):
        try:
            im = Image.open(path)
            im.load()  # decode now, so a corrupt file fails here and is named
            if mode == "L" and im.mode == "P":
                return im  # a palette label's indices are its ids (as read_label); NEAREST keeps them
            return im.convert(mode) if im.mode != mode else im
        except Exception as e:
            raise _DecodeError(f"{path}: cannot decode ({type(e).__name__})") from None

    def _open_array(self, path) -> np.ndarray:
        try:
            return load_label_array(path)
        except UserError as e:
            raise _DecodeError(str(e)) from None

    def _load(self, item: Item) -> tuple:
        s = self.samples[item.source]
        img = self._open(s.image, "RGB")
        spec = self.spec
        if spec.decode_only:
            return _tensor(img), None, item.index
        lab = self._open_array(s.label) if s.label.suffix == ".npy" else self._open(s.label, "L")
        lab_hw = tuple(lab.shape) if isinstance(lab, np.ndarray) else (lab.height, lab.width)
        if lab_hw != (img.height, img.width):  # PIL's crop would pad it with 0 (road): refuse

            raise _DecodeError(label_size_error(s.label, lab_hw, s.image, (img.height, img.width)))
        if spec.train:
            g = crop_geometry((img.height, img.width), spec.crop, item.aug)
            box = (g.x, g.y, g.x + g.w, g.y + g.h)  # convert only the window: crop before resize
            image = resize_image(_tensor(img.crop(box)), (g.out_h, g.out_w))
            if isinstance(lab, np.ndarray):  # a memory-mapped array: read the window's rows only
                window = torch.from_numpy(np.array(lab[g.y : g.y + g.h, g.x : g.x + g.w]))
            else:
                window = _tensor(lab.crop(box))
            label = resize_label(window, (g.out_h, g.out_w))
            if g.flip:
                image, label = image.flip(1), label.flip(1)
        else:
            image, label = _tensor(img), _tensor(lab)
            if spec.eval_size is not None:
                image = resize_image(image, spec.eval_size)
                if spec.eval_label_resize:
                    label = resize_label(label, spec.eval_size)
        if s.label_kind == "labelIds":  # after the geometry: map crop-sized labels, not frames
            label = torch.from_numpy(self.lut[label.numpy()])
        return image, label, item.index


def _tensor(im) -> torch.Tensor:
    """PIL image (or memory-mapped array) -> uint8 H x W (x 3) tensor (a writable copy)."""
    return torch.from_numpy(np.array(im))


class _DecodeError(Exception):
    pass


def collate(items: list, pad_to: tuple[int, int] = (0, 0)) -> HostBatch | str:
    """Stack uint8 HxWx3 images, labels padded with 255, to the batch's largest size and at least
    `pad_to` (training: the crop, so that every batch has the same shape as DALI's)."""
    for it in items:
        if isinstance(it, str):
            return it
    n = len(items)
    H = max(pad_to[0], *(it[0].shape[0] for it in items))
    W = max(pad_to[1], *(it[0].shape[1] for it in items))
    images = _buffer((n, H, W, 3), 0)
    sizes = torch.empty((n, 2), dtype=torch.int64)
    for k, (img, _, _) in enumerate(items):
        images[k, : img.shape[0], : img.shape[1]] = img
        sizes[k, 0], sizes[k, 1] = img.shape[0], img.shape[1]
    index = torch.tensor([it[2] for it in items], dtype=torch.int64)
    if items[0][1] is None:  # decode-only
        return HostBatch(images, None, None, index)
    lh = max(pad_to[0], *(it[1].shape[0] for it in items))
    lw = max(pad_to[1], *(it[1].shape[1] for it in items))
    labels = _buffer((n, lh, lw), 255)
    for k, (_, lab, _) in enumerate(items):
        labels[k, : lab.shape[0], : lab.shape[1]] = lab
    return HostBatch(images, labels, sizes, index)


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
    ) -> None:
        super().__init__(samples, spec)
        on_gpu = spec.device.type == "cuda"
        self._norm = Normalizer(spec.mean, spec.std, device=spec.device)
        # The finished batches the consumer holds at once (a step's and the next); GPU: the caching allocator.
        self._pool = BufferPool(4) if not on_gpu else None
        dataset = PlanDataset(self.samples, spec)
        kw: dict[str, Any] = {}
        if num_workers > 0:
            kw = {
                "persistent_workers": True,
                "prefetch_factor": prefetch_factor,  # batches each worker loads ahead
                "multiprocessing_context": _worker_context(),
                # A job's SIGTERM reaches every process: the training process saves, its workers must not die
                "worker_init_fn": ignore_stop_signals,
            }
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
        self.description = f"torch ({num_workers} workers, {mode})"

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
        if self.device.type != "cpu":
            return finish(b, self.device, self._norm, self.spec.channels_last)

        image_out = target_out = None
        if b.target is not None:  # into reused buffers: a fresh one page-faults
            image_out = self._pool.get((*b.image.shape[:3], 3))
            target_out = self._pool.get(tuple(b.target.shape), torch.int64)
        with one_thread():  # the workers hold the cores: no spinning OpenMP pool
            return finish(b, self.device, self._norm, self.spec.channels_last, image_out, target_out)


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

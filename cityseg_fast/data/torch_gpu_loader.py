"""The `torch` backend on the GPU (`loader.backend=torch loader.device=gpu`): nvJPEG through torchvision.io.

What a PyTorch user without DALI would write for a GPU input pipeline, done carefully, so the harness
races DALI against it: file bytes read ahead by threads, one batched `torchvision.io.decode_jpeg(list,
device="cuda")` per batch (nvJPEG: the A100/H100/H200 hardware decoder for baseline JPEGs, its CUDA
decoder otherwise), then the same plan's crop, scale, flip, normalization and padding with torch ops on
the GPU (device_transform.py), all on a side stream in a producer thread, `loader.prefetch_factor`
batches ahead of the consumer. Labels (PNG or a memory-mapped .npy) are read on the CPU threads, their
crop window only where the format allows, and resized (nearest) on the GPU; PNG images (the raw
Cityscapes layout) are decoded on the CPU threads, since nvJPEG decodes JPEG only.

Hand-off: the producer records an event after each batch's last kernel; the consumer's stream waits on
it (no host sync) and the batch's tensors are marked as used by the consumer's stream, so the caching
allocator frees them only after its step (as handoff.CudaPrefetcher does). torchvision's decode blocks
its calling thread (here the producer) until the batch is decoded: it synchronizes its own stream only.

Built by data/factory.py on a CUDA training device; constructed directly with a CPU spec it runs the
same code with torchvision's CPU decoder (the tests hold it to the Batch contract and compare it with the
torch CPU loader on the same plan). CPU time by stage (handoff.StageTimes): decode = reading files and
headers (threads) + the decode call (producer; nvJPEG's host part and its wait), transform = launching the
transforms, hand-off = the consumer's wait and bookkeeping.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cityseg_fast.data.batch import Batch
from cityseg_fast.data.cityscapes import image_size, label_size_error
from cityseg_fast.data.decode import (
    DecodeError,
    decode_image,
    decode_jpeg_or_png,
    decode_label,
    is_jpeg,
    read_bytes,
    size_of,
    torchvision_io,
    whole,
    window,
)
from cityseg_fast.data.device_transform import assemble, assemble_frames, eval_sample, train_sample
from cityseg_fast.data.handoff import StageTimes
from cityseg_fast.data.plan import Item, LoaderSpec, PlannedLoader, crop_geometry
from cityseg_fast.data.resample import Normalizer
from cityseg_fast.errors import UserError
from cityseg_fast.labels import ID_TO_TRAINID


@dataclass
class _Read:
    """One sample as the reading threads leave it: the JPEG's bytes (`encoded`) or a CPU-decoded frame
    (`frame`, 3 x H x W), its label (window or whole, trainIds, uint8; None decode-only), its geometry."""

    path: Path
    encoded: torch.Tensor | None
    frame: torch.Tensor | None
    label: torch.Tensor | None
    geometry: Any
    cpu_s: float


def _header_hw(path: Path) -> tuple[int, int]:
    """(H, W) from the image file's header: the crop window is planned before the GPU decodes the frame."""
    try:
        return image_size(path)
    except UserError as e:
        raise DecodeError(str(e)) from None


class TorchGpuLoader(PlannedLoader):
    """The `torch` backend's GPU loader (see the module docstring)."""

    def __init__(self, samples: list, spec: LoaderSpec, *, num_threads: int, prefetch: int = 2) -> None:
        super().__init__(samples, spec)
        self.on_gpu = spec.device.type == "cuda"
        self.decoder = "torchvision.io nvJPEG" if self.on_gpu else "torchvision.io"
        mode = "decode-only" if spec.decode_only else ("train" if spec.train else "eval")
        where = "gpu" if self.on_gpu else "cpu"
        self.description = f"torch ({where} decode, {num_threads} threads, {mode}, decoder {self.decoder})"
        self.num_threads, self.prefetch = max(1, num_threads), max(1, prefetch)
        self.stages = StageTimes()
        self._norm = Normalizer(spec.mean, spec.std, device=spec.device)
        self._lut = np.asarray(ID_TO_TRAINID, dtype=np.uint8)
        self._pool: ThreadPoolExecutor | None = None
        self._stream = torch.cuda.Stream(spec.device) if self.on_gpu else None
        self._producer: _Producer | None = None

    def close(self) -> None:
        if self._producer is not None:  # an epoch abandoned midway: its thread stops first
            self._producer.stop()
            self._producer = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    # -- the CPU side: files, headers, labels (reading threads) --------------------------------

    def _read(self, item: Item) -> _Read:
        t0 = time.thread_time()
        s, spec = self.samples[item.source], self.spec
        data = read_bytes(s.image)
        encoded, frame = (data, None) if is_jpeg(data) else (None, decode_jpeg_or_png(data, s.image))
        if frame is None and encoded is None:  # neither JPEG nor an 8-bit PNG: PIL, as the CPU loader
            frame = whole(decode_image(s.image, "pil")).permute(2, 0, 1)
        hw = _header_hw(s.image) if frame is None else (int(frame.shape[1]), int(frame.shape[2]))
        if spec.decode_only:
            return _Read(s.image, encoded, frame, None, None, time.thread_time() - t0)
        lab = decode_label(s.label, "torchvision")
        lab_hw = size_of(lab)
        if lab_hw != hw:
            raise DecodeError(label_size_error(s.label, lab_hw, s.image, hw))
        g = crop_geometry(hw, spec.crop, item.aug) if spec.train else None
        label = window(lab, g.y, g.x, g.h, g.w) if g else whole(lab)
        if s.label_kind == "labelIds":  # a nearest resize keeps values: map the window, not the output
            label = torch.from_numpy(self._lut[label.numpy()])
        label = label.contiguous()
        if self.on_gpu:
            label = label.pin_memory()  # so the copy to the GPU is asynchronous
        return _Read(s.image, encoded, frame, label, g, time.thread_time() - t0)

    # -- the device side: decode, transform, assemble (producer thread) -------------------------

    def _decode(self, reads: list[_Read]) -> list[torch.Tensor]:
        """Every frame of the batch as 3 x H x W uint8 on the device: the JPEGs in one batched call."""
        jpegs = [r for r in reads if r.encoded is not None]
        decoded = iter(self._decode_jpegs(jpegs) if jpegs else [])
        frames = []
        for r in reads:
            if r.encoded is not None:
                frames.append(next(decoded))
            elif self.on_gpu:
                frames.append(r.frame.pin_memory().to(self.spec.device, non_blocking=True))
            else:
                frames.append(r.frame)
        return frames

    def _decode_jpegs(self, jpegs: list[_Read]) -> list[torch.Tensor]:
        tvio = torchvision_io()
        try:
            return tvio.decode_jpeg([r.encoded for r in jpegs], mode=tvio.ImageReadMode.RGB, device=self.spec.device)
        except RuntimeError as e:  # the batch failed as a whole: name the file, found with the CPU decoder
            for r in jpegs:
                decode_jpeg_or_png(r.encoded, r.path)  # raises a DecodeError naming a corrupt file
            names = ", ".join(str(r.path) for r in jpegs[:2]) + (", ..." if len(jpegs) > 2 else "")
            raise DecodeError(f"{names}: nvJPEG cannot decode this batch ({str(e).splitlines()[0][:160]})") from None

    def _batch(self, items: list[Item], reads: list[_Read]) -> tuple[Batch, float, float]:
        """The Batch of one plan batch, and the producer's decode and transform CPU seconds."""
        t0 = time.thread_time()
        frames = self._decode(reads)
        t1 = time.thread_time()
        spec, dev = self.spec, self.spec.device
        index = torch.tensor([it.index for it in items], dtype=torch.int64)
        if spec.decode_only:
            batch = assemble_frames(frames, index)
        else:
            labels = [r.label.to(dev, non_blocking=True) for r in reads]
            pairs = [train_sample(f, lab, r.geometry) if spec.train
                     else eval_sample(f, lab, spec.eval_size, spec.eval_label_resize)
                     for f, lab, r in zip(frames, labels, reads, strict=True)]  # fmt: skip
            pad = spec.crop if spec.train else (0, 0)  # training batches always have the crop's shape
            batch = assemble([p[0] for p in pairs], [p[1] for p in pairs], pad, self._norm, spec.channels_last, index)
        return batch, t1 - t0, time.thread_time() - t1

    # -- iteration -----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Batch]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="cityseg-read")
        if self._producer is not None:  # the previous epoch's iterator was abandoned
            self._producer.stop()
        producer = self._producer = _Producer(self, self._plan())
        try:
            while True:
                got = producer.get()
                if got is None:
                    return
                t0 = time.thread_time()
                batch, event, stages = got
                if self.on_gpu:
                    compute = torch.cuda.current_stream(self.spec.device)
                    compute.wait_event(event)  # the batch is ready before the step uses it (no host sync)
                    for t in (batch.image, batch.target):
                        t.record_stream(compute)  # freed only after the step that uses it
                self.stages = self.stages.plus(stages, time.thread_time() - t0)
                yield batch
        finally:
            producer.stop()


class _Producer:
    """One epoch's batches, made in a thread `prefetch` batches ahead of the consumer; file reads are
    submitted to the loader's pool one batch further ahead. Errors reach the consumer as exceptions."""

    def __init__(self, loader: TorchGpuLoader, plan: list[list[Item]]) -> None:
        self.loader, self.plan = loader, plan
        self.out: queue.Queue = queue.Queue(maxsize=loader.prefetch)
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._run, name="cityseg-gpu-loader", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        ld = self.loader
        try:
            if ld.on_gpu:
                torch.cuda.set_device(ld.spec.device)  # the thread's current device: where decode runs
            reads: deque[list[Future]] = deque()
            ahead = iter(self.plan)
            for items in self.plan:
                while len(reads) < ld.prefetch + 1 and (nxt := next(ahead, None)) is not None:
                    reads.append([ld._pool.submit(ld._read, it) for it in nxt])
                done = [f.result() for f in reads.popleft()]
                with torch.cuda.stream(ld._stream) if ld.on_gpu else contextlib.nullcontext():
                    batch, dec_s, tr_s = ld._batch(items, done)
                    event = None
                    if ld.on_gpu:
                        event = torch.cuda.Event()
                        event.record(ld._stream)
                read_s = sum(r.cpu_s for r in done)
                if not self._put((batch, event, StageTimes(read_s + dec_s, tr_s, 0.0, len(items)))):
                    return
            self._put(None)
        except BaseException as e:  # to the consumer, which raises it
            self._put(e)

    def _put(self, obj: Any) -> bool:
        while not self.halt.is_set():
            try:
                self.out.put(obj, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self) -> tuple | None:
        obj = self.out.get()
        if isinstance(obj, DecodeError):
            raise UserError(str(obj))
        if isinstance(obj, BaseException):
            raise obj
        return obj

    def stop(self) -> None:
        """The consumer is done (or gave up early): stop making batches and wait for the thread."""
        self.halt.set()
        while self.thread.is_alive():
            try:
                self.out.get(timeout=0.1)  # unblocks a producer waiting to put
            except queue.Empty:
                pass
        self.thread.join()

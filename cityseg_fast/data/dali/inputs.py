"""What the host feeds a DALI pipeline: per batch of planned items, the fields of one graph's inputs.

`HostInputs` reads encoded files, npy label windows and the plan's crop windows (no pipeline, no torch
state); each NamedTuple below is one graph's inputs, made by its `read`; `Feed` is the pipeline's
external source, which calls that `read` on reader threads ahead of the pipeline.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from cityseg_fast.data.cityscapes import label_size_error, load_label_array
from cityseg_fast.data.plan import Geometry, SizeCache, crop_geometry
from cityseg_fast.errors import UserError

# ---------------------------------------------------------------------------------------------
# what the host feeds: per batch of planned items, the fields of one graph's inputs


@dataclass
class HostInputs:
    """Reads a batch's inputs on the host: encoded files, npy label windows, the plan's crop windows.
    Holds no pipeline and no torch state, so a feed that runs ahead of the pipeline can call it."""

    samples: list
    sizes: SizeCache
    crop: tuple[int, int]
    train: bool
    label_arrays: bool

    def geometry(self, item: Any) -> Geometry:
        return crop_geometry(self.sizes[item.source], self.crop, item.aug)

    def windows(self, items: list) -> list:
        """Each item's crop geometry in training; None each in evaluation (whole frames)."""
        return [self.geometry(it) for it in items] if self.train else [None] * len(items)

    def images(self, items: list) -> list:
        return [_read_bytes(self.samples[it.source].image) for it in items]

    def labels(self, items: list, geo: list) -> list:
        """npy: the arrays (the window `geo` only, in training); PNG: the checked bytes."""
        srcs = [self.samples[it.source] for it in items]
        if self.label_arrays:
            return [
                label_array(s.label, g, s.image, self.sizes[it.source])
                for s, g, it in zip(srcs, geo, items, strict=True)
            ]
        return [
            _check_label_png(s.label, _read_bytes(s.label), s.image, self.sizes[it.source])
            for s, it in zip(srcs, items, strict=True)
        ]


class Frames(NamedTuple):
    """decode_graph's inputs: the encoded images."""

    images: list

    @classmethod
    def read(cls, host: HostInputs, items: list) -> Frames:
        return cls(images=host.images(items))


class Labelled(NamedTuple):
    """eval_graph's and frame_graph's inputs: images and labels (npy windows cut here in training)."""

    images: list
    labels: list

    @classmethod
    def read(cls, host: HostInputs, items: list) -> Labelled:
        images = host.images(items)  # read first: a missing image is named before its label
        return cls(images=images, labels=host.labels(items, host.windows(items)))


class Windowed(NamedTuple):
    """window_graph's inputs: images, labels and each crop's source window (anchor y, x; shape h, w)."""

    images: list
    labels: list
    anchor: list
    shape: list

    @classmethod
    def read(cls, host: HostInputs, items: list) -> Windowed:
        images = host.images(items)
        geo = host.windows(items)
        return cls(images=images, labels=host.labels(items, geo), anchor=_anchors(geo), shape=_shapes(geo))


class Augmented(NamedTuple):
    """train_graph's inputs: Windowed's, plus each crop's output size and flip (drawn by the plan)."""

    images: list
    labels: list
    anchor: list
    shape: list
    size: list
    flip: list

    @classmethod
    def read(cls, host: HostInputs, items: list) -> Augmented:
        images = host.images(items)
        geo = host.windows(items)
        return cls(
            images=images,
            labels=host.labels(items, geo),
            anchor=_anchors(geo),
            shape=_shapes(geo),
            size=[np.array([g.out_h, g.out_w], np.float32) for g in geo],
            flip=[np.array(int(g.flip), np.int32) for g in geo],
        )


def _anchors(geo: list) -> list:
    return [np.array([g.y, g.x], np.int32) for g in geo]


def _shapes(geo: list) -> list:
    return [np.array([g.h, g.w], np.int32) for g in geo]


class Feed:
    """The pipeline's external source, reading ahead: `start(batches)` begins reading the epoch's first
    `ahead` batches on reader threads at once, and each `__call__()` (DALI's source, on the consumer's
    thread: no parameters, or DALI would pass batch info) hands over the oldest batch, waiting only if
    it is not read yet, and starts reading the next. So the thread that runs the model no longer reads
    JPEG bytes and npy label windows itself, and DALI's next iteration is not held up by the read.

    Order is kept: the k-th call returns the k-th planned batch (`read(items)`: one Row's
    `feeds.read`), and a read that failed raises at the call that would have returned it, so errors
    surface at the same batch as with a serial read. `fed` holds the batches handed to DALI and not yet
    out of it, oldest first (popped as their outputs arrive, named on a decode error). `stop()` ends
    the epoch (the next call raises StopIteration; reads still running are left to finish and
    dropped); `close()` also ends the reader threads.

    Why threads and not DALI's parallel external source (worker processes): its callback must be
    stateless, making a batch from its BatchInfo alone, in a process started at build time (a pickled
    source under "spawn", or "fork" before CUDA is initialised), while our plan changes at every
    `set_epoch` and the training process has CUDA up before it builds the loader; and a process per
    worker plus shared-memory slots sized per sample is a high price for what is file reads and numpy
    copies, which release the GIL.
    """

    def __init__(self, read: Callable[[list], tuple], ahead: int = 2) -> None:
        if ahead < 1:
            raise ValueError(f"Feed: ahead must be >= 1, got {ahead}")
        self.read, self.ahead = read, ahead
        self.fed: collections.deque = collections.deque()
        self._todo: Iterator[list] = iter(())
        self._pending: collections.deque = collections.deque()  # (items, Future), in plan order
        self._pool: ThreadPoolExecutor | None = None

    def start(self, batches: list) -> None:
        self.stop()
        self.fed.clear()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.ahead, thread_name_prefix="cityseg-feed")
        self._todo = iter(batches)
        for _ in range(self.ahead):
            self._read_next()

    def stop(self) -> None:
        self._todo = iter(())
        for _, future in self._pending:
            future.cancel()  # a read already running finishes on its thread; its result is dropped
        self._pending.clear()

    def close(self) -> None:
        self.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _read_next(self) -> None:
        items = next(self._todo, None)
        if items is not None:
            self._pending.append((items, self._pool.submit(self.read, items)))

    def __call__(self) -> tuple:
        if not self._pending:
            raise StopIteration
        items, future = self._pending.popleft()
        self._read_next()
        self.fed.append(items)
        return future.result()


# ---------------------------------------------------------------------------------------------
# reading and checking the inputs on the host


def _read_bytes(path) -> Any:
    try:
        return np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None


def _check_label_png(path, data: Any, image_path, image_hw: tuple[int, int]) -> Any:
    """Refuse a palette label PNG (its indices are the ids, but DALI's decoder expands the palette
    to colours) and one whose size differs from its image's, from the IHDR chunk that follows the
    8-byte signature: width and height (big-endian) at bytes 16-23, colour type (3 = palette) at 25."""

    if len(data) > 25 and bytes(data[1:4]) == b"PNG":
        if int(data[25]) == 3:
            raise UserError(
                f"{path}: palette (indexed) label PNG, which DALI decodes to colours, not ids; "
                "convert it with `cityseg prepare` or use loader.backend=torch"
            )
        hw = (int.from_bytes(bytes(data[20:24]), "big"), int.from_bytes(bytes(data[16:20]), "big"))
        if hw != tuple(image_hw):
            raise UserError(label_size_error(path, hw, image_path, image_hw))
    return data


def label_array(path, g, image_path, image_hw: tuple[int, int]) -> Any:
    """A `.npy` label (memory-mapped) as the pipeline's H x W x 1 input: the crop window `g` in
    training (only its rows are read), the whole frame in evaluation."""

    arr = load_label_array(path)
    if tuple(arr.shape) != tuple(image_hw):
        raise UserError(label_size_error(path, arr.shape, image_path, image_hw))
    if g is not None:
        arr = arr[g.y : g.y + g.h, g.x : g.x + g.w]
    return np.array(arr)[:, :, None]  # a copy: it must outlive the memory map

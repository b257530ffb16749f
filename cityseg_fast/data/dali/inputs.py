"""What the host feeds a DALI pipeline: per batch of planned items, the fields of one graph's inputs.

`HostInputs` reads encoded files, npy label windows and the plan's crop windows (no pipeline, no torch
state); each NamedTuple below is one graph's inputs, made by its `read`; `Feed` is the pipeline's
external source, the piece a feed that runs ahead of the pipeline replaces.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
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
    """The pipeline's external source: serves the current epoch's batches through `read(items)`
    (one Row's `feeds.read`), remembers what it fed. The loader's interface to it: `start(batches)`,
    `stop()`, `__call__()` (DALI's source; no parameters, or DALI would pass batch info), and `fed`,
    the batches in flight, oldest first (popped as their outputs arrive, named on a decode error)."""

    def __init__(self, read: Callable[[list], tuple]) -> None:
        self.read = read
        self.batches: list = []
        self.pos = 0
        self.fed: collections.deque = collections.deque()

    def start(self, batches: list) -> None:
        self.batches, self.pos = batches, 0
        self.fed.clear()

    def stop(self) -> None:
        self.pos = len(self.batches)

    def __call__(self) -> tuple:
        if self.pos >= len(self.batches):
            raise StopIteration
        items = self.batches[self.pos]
        self.pos += 1
        self.fed.append(items)
        return self.read(items)


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

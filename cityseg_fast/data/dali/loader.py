"""The `dali` loader backend: the epoch plan fed to a DALI pipeline, and the hand-off of its outputs to torch.

Why an external source and not fn.readers.file: the reader shuffles with its own RNG that runs on
from epoch to epoch, so `set_epoch(e)` could not reproduce an epoch, and its sharding pads with
repeats we could not mark. Instead each epoch's plan (plan.py: which files, in which order, on which
rank, with which random scale/crop/flip) is built on the host, and the pipeline is fed (image bytes,
label bytes, crop window, output size, flip) per batch. Image and label travel in the same tuple, so
they cannot fall out of step; the random values are drawn once per sample and applied to both; the
k-th output batch is the k-th fed batch, which names the files of a batch that fails to decode.

Three hand-offs, by where DALI runs and where the model runs:
- DALI on the GPU: outputs bound to the consumer's CUDA stream (`share_outputs(cuda_stream)`, no host
  sync) and viewed zero-copy through DLPack, as DALI's own iterator does with the dynamic executor
  (a buffer lives while a tensor references it); uint8 targets are widened on the GPU.
- DALI on the CPU, model on the CPU: zero-copy views, or the torch tail writing normalized crops into
  reused buffers (`loader.resampler`; resample.py says why).
- DALI on the CPU, model on a GPU: uint8 crops and labels (4x and 8x fewer bytes than float and
  int64) into pinned memory, copied and normalized on a side stream one batch ahead (handoff.py).

The loader's mode is computed once (`Mode.of`) and its `route` (pipeline, hand-off) picks one row
of ROUTES: what the host feeds (a NamedTuple whose `read` makes it from the planned items), the
graph that takes those fields by name (graphs.py), and the hand-off of the graph's outputs. A row
whose fields are not its graph's inputs cannot be built, so the feed and the graph agree by
construction. Extending the loader = a field in Mode, a row (or a column) in ROUTES.
"""

from __future__ import annotations

import collections
import contextlib
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from PIL import Image

from cityseg_fast.data.batch import Batch, to_layout
from cityseg_fast.data.cityscapes import label_size_error, load_label_array
from cityseg_fast.data.dali import graphs
from cityseg_fast.data.handoff import CudaPrefetcher, HostBatch, finish, frames_batch, pinned
from cityseg_fast.data.plan import Geometry, LoaderSpec, PlannedLoader, SizeCache, crop_geometry
from cityseg_fast.data.resample import BufferPool, Normalizer, one_thread, resize_image, resize_label
from cityseg_fast.errors import UserError

_prefetcher = CudaPrefetcher  # module attributes, so a CPU test can stand in for the CUDA pieces
Pipeline = Literal["decode", "eval", "train", "window", "frame"]
Handoff = Literal["gpu", "cpu", "pinned"]

# ---------------------------------------------------------------------------------------------
# the mode, computed once


@dataclass(frozen=True)
class Mode:
    """What a DaliLoader does; `route` = (pipeline, handoff) is its row in ROUTES.

    pipeline: "decode" (loader.decode_only: whole frames, no labels) | "eval" | "train" (DALI resizes,
      flips, normalizes, pads) | "window" (the torch tail: DALI decodes the crop windows, torch does
      the rest; resample.py says why) | "frame" (the torch tail with roi "resize" and npy labels:
      nothing to window in DALI, so no window is fed).
    handoff: "gpu" (DALI on the GPU, its buffers viewed zero-copy) | "cpu" (DALI and the model on the
      CPU) | "pinned" (DALI on the CPU feeding a GPU: uint8 to pinned memory, normalized there).
    """

    pipeline: Pipeline
    handoff: Handoff
    decoder: graphs.Decoder
    roi: str  # "slice": decode only the crop window | "resize": decode the frame, resize the window
    label_arrays: bool  # every label is a prepared .npy (fed as arrays; in training the window only)
    raw_label_ids: bool  # some label holds raw labelIds (mapped to trainIds in the graph)

    @classmethod
    def of(
        cls,
        spec: LoaderSpec,
        samples: list,
        *,
        dali_device: str,
        roi: str,
        resampler: str,
        hw_decoder_load: float,
    ) -> Mode:
        """The mode of a loader over `samples`. dali_device: "cpu" | "gpu" (where loader.device
        resolved); roi, resampler: the config's words (checked when the config was built)."""
        on_gpu = dali_device == "gpu"
        if resampler == "auto":  # DALI's CPU resampler is slower than torch's (resample.py says why)
            resampler = "dali" if on_gpu else "torch"
        if resampler == "torch" and on_gpu:
            raise UserError(
                "loader.resampler=torch: the torch resize runs only with DALI on the CPU, and DALI runs "
                "on the GPU here; use loader.resampler=dali or auto, or loader.device=cpu"
            )
        label_arrays = bool(samples) and all(s.label.suffix == ".npy" for s in samples)
        if spec.decode_only:
            pipeline = "decode"
        elif not spec.train:
            pipeline = "eval"
        elif resampler == "dali":
            pipeline = "train"
        else:  # the torch tail needs the window in DALI to slice-decode the image or a PNG label
            pipeline = "window" if roi == "slice" or not label_arrays else "frame"
        handoff = "pinned" if _ships_uint8(on_gpu, spec.device) else ("gpu" if on_gpu else "cpu")
        return cls(
            pipeline=pipeline,
            handoff=handoff,
            decoder=graphs.Decoder("mixed" if on_gpu else "cpu", hw_decoder_load),
            roi=roi,
            label_arrays=label_arrays,
            raw_label_ids=any(s.label_kind == "labelIds" for s in samples),
        )

    @property
    def route(self) -> tuple[Pipeline, Handoff]:
        return self.pipeline, self.handoff

    @property
    def torch_tail(self) -> bool:
        return self.pipeline in ("window", "frame")

    def describe(self, num_threads: int) -> str:
        """The loader's description (recorded in every row: keep its words stable)."""
        if self.decoder.on_gpu:
            where = f"gpu mixed decode, hw_decoder_load={self.decoder.hw_decoder_load}"
        else:
            where = "cpu decode"
        stage = {"decode": "decode-only", "eval": "eval"}.get(self.pipeline, "train")
        tail = ", torch resize" if self.torch_tail else ""
        return f"dali ({where}, {num_threads} threads, {stage}{tail})"


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
                _label_array(s.label, g, s.image, self.sizes[it.source])
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


class _Feed:
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
# the hand-off: a graph's outputs -> the Batch contract


def _index(items: list) -> torch.Tensor:
    return torch.tensor([it.index for it in items], dtype=torch.int64)


def _view(outputs: Any) -> torch.Tensor:
    """A DALI output batch as a tensor, zero-copy (the dynamic executor keeps it alive while used)."""
    return torch.from_dlpack(outputs.as_tensor())


class _ToTorch:
    """DALI's outputs (`outs`, a tuple of output batches) of the items of a batch -> a Batch on
    spec.device, or a HostBatch that `finish_host` completes on the GPU. One method per hand-off named in ROUTES."""

    def __init__(
        self, spec: LoaderSpec, mode: Mode, host: HostInputs, layout: str, depth: int, num_threads: int
    ) -> None:
        self.spec, self.mode, self.host, self.layout = spec, mode, host, layout
        self.device = spec.device
        on_device = self.device if mode.handoff == "pinned" else None  # normalized after the copy
        self.normalizer = Normalizer(spec.mean, spec.std, device=on_device)
        self.pool = BufferPool(depth + 2)
        self._tail_pool, self._tail_threads = None, max(1, min(num_threads, spec.batch_size))

    def close(self) -> None:
        if self._tail_pool is not None:
            self._tail_pool.shutdown()
            self._tail_pool = None

    def finish_host(self, hb: HostBatch) -> Batch:
        return finish(hb, self.device, self.normalizer, self.spec.channels_last)

    def _device_scope(self) -> Any:
        return torch.cuda.device(self.device) if self.mode.handoff == "gpu" else contextlib.nullcontext()

    def frames(self, outs: tuple, items: list) -> Batch:
        """Decode-only, DALI's buffers on their device: uint8 frames as they are, an empty target."""
        (images,) = outs
        with self._device_scope():
            return frames_batch(_view(images), _index(items))

    def pinned_frames(self, outs: tuple, items: list) -> HostBatch:
        (images,) = outs
        return HostBatch(image=_view(images), target=None, sizes=None, index=_index(items))

    def gpu(self, outs: tuple, items: list) -> Batch:
        images, labels = outs
        with torch.cuda.device(self.device):
            image = _view(images)  # a view of DALI's buffer: no copy
            target = _view(labels).long()  # uint8 widened on the GPU
        return Batch(to_layout(_nchw(image, self.layout), self.spec.channels_last), target, _index(items))

    def cpu(self, outs: tuple, items: list) -> Batch:
        images, labels = outs
        image, target = _view(images), _view(labels)
        target = self.pool.get(tuple(target.shape), torch.int64).copy_(target)
        return Batch(to_layout(_nchw(image, self.layout), self.spec.channels_last), target, _index(items))

    def pinned(self, outs: tuple, items: list) -> HostBatch:
        images, labels = outs
        sizes = self._valid_sizes(items)
        return HostBatch(image=_view(images), target=_view(labels), sizes=sizes, index=_index(items))

    def _valid_sizes(self, items: list) -> torch.Tensor:
        """(h, w) of each uint8 sample's content before padding: the crop's resized window in
        training, the (resized) frame in evaluation."""
        if self.spec.train:
            hw = [(g.out_h, g.out_w) for g in map(self.host.geometry, items)]
        else:
            hw = [self.spec.eval_size or self.host.sizes[it.source] for it in items]
        return torch.tensor(hw, dtype=torch.int64)

    def tail(self, outs: tuple, items: list) -> Batch | HostBatch:
        """CPU training: DALI's decoded windows (whole frames with roi="resize") and label windows
        -> resized, flipped, padded crops, each written once into a batch buffer: normalized float
        for a CPU model, uint8 in pinned memory for a GPU (normalized there; resample.py says why
        this part runs in torch)."""
        with one_thread():
            return self._tail(outs, items)

    def _tail(self, outs: tuple, items: list) -> Batch | HostBatch:
        images, labels = outs
        index = _index(items)
        n, (ch, cw) = len(items), self.spec.crop
        uint8 = self.mode.handoff == "pinned"
        if uint8:
            image, target = pinned((n, ch, cw, 3)), pinned((n, ch, cw))
        else:
            image, target = self.pool.get((n, ch, cw, 3)), self.pool.get((n, ch, cw), torch.int64)
        srcs = [torch.from_dlpack(images[k]) for k in range(n)]  # zero copy: read before release
        labs = [torch.from_dlpack(labels[k]) for k in range(n)]
        geo = [self.host.geometry(it) for it in items]

        def one(k: int) -> None:
            g, src = geo[k], srcs[k]
            if self.mode.roi == "resize":
                src = src[g.y : g.y + g.h, g.x : g.x + g.w]
            img = resize_image(src, (g.out_h, g.out_w))
            lab = resize_label(labs[k][:, :, 0], (g.out_h, g.out_w))
            if g.flip:
                img, lab = img.flip(1), lab.flip(1)
            if uint8:
                image[k, : g.out_h, : g.out_w] = img  # the padding is zeroed after normalization
            else:
                self.normalizer.into(image[k], img)
                if g.out_h < ch:  # padding: image 0 after normalization (the mean)
                    image[k, g.out_h :] = 0
                if g.out_w < cw:
                    image[k, : g.out_h, g.out_w :] = 0
            target[k, : g.out_h, : g.out_w] = lab
            target[k, g.out_h :] = 255
            target[k, : g.out_h, g.out_w :] = 255

        self._run_samples(one, n)
        if uint8:
            sizes = torch.tensor([(g.out_h, g.out_w) for g in geo], dtype=torch.int64)
            return HostBatch(image=image, target=target, sizes=sizes, index=index)
        return Batch(to_layout(image.permute(0, 3, 1, 2), self.spec.channels_last), target, index)

    def _run_samples(self, one: Callable[[int], None], n: int) -> None:
        """one(0..n-1) on loader.num_threads threads (torch's kernels release the GIL): while DALI's
        threads wait on a slow window, the tail uses the idle core."""
        if self._tail_pool is None:
            self._tail_pool = ThreadPoolExecutor(self._tail_threads, thread_name_prefix="cityseg-tail")
        futures = [self._tail_pool.submit(one, k) for k in range(n)]
        wait(futures)  # all samples done (none still reading DALI's outputs) before any error
        for f in futures:
            f.result()


# ---------------------------------------------------------------------------------------------
# the mode table


@dataclass(frozen=True)
class Row:
    """One row of ROUTES: what the host feeds (a NamedTuple type; `feeds.read(host, items)` makes
    it), the graph that takes those fields as its inputs, and the hand-off of its outputs."""

    feeds: type
    graph: Callable[..., Any]
    handoff: Callable[[_ToTorch, tuple, list], Batch | HostBatch]

    def __post_init__(self) -> None:
        fields, inputs = tuple(self.feeds._fields), graphs.graph_inputs(self.graph)
        if fields != inputs:
            raise TypeError(f"{self.feeds.__name__} feeds {fields}, {self.graph.__name__} takes {inputs}")


# (pipeline, handoff) -> Row: every mode `Mode.of` can return has a row (tests/test_dali.py checks).
ROUTES: dict[tuple[Pipeline, Handoff], Row] = {
    ("decode", "gpu"): Row(Frames, graphs.decode_graph, _ToTorch.frames),
    ("decode", "cpu"): Row(Frames, graphs.decode_graph, _ToTorch.frames),
    ("decode", "pinned"): Row(Frames, graphs.decode_graph, _ToTorch.pinned_frames),
    ("eval", "gpu"): Row(Labelled, graphs.eval_graph, _ToTorch.gpu),
    ("eval", "cpu"): Row(Labelled, graphs.eval_graph, _ToTorch.cpu),
    ("eval", "pinned"): Row(Labelled, graphs.eval_graph, _ToTorch.pinned),
    ("train", "gpu"): Row(Augmented, graphs.train_graph, _ToTorch.gpu),
    ("train", "cpu"): Row(Augmented, graphs.train_graph, _ToTorch.cpu),
    ("train", "pinned"): Row(Augmented, graphs.train_graph, _ToTorch.pinned),
    ("window", "cpu"): Row(Windowed, graphs.window_graph, _ToTorch.tail),
    ("window", "pinned"): Row(Windowed, graphs.window_graph, _ToTorch.tail),
    ("frame", "cpu"): Row(Labelled, graphs.frame_graph, _ToTorch.tail),
    ("frame", "pinned"): Row(Labelled, graphs.frame_graph, _ToTorch.tail),
}


# ---------------------------------------------------------------------------------------------
# the loader


class DaliLoader(PlannedLoader):
    """The `dali` backend: one pipeline per mode (ROUTES), CPU or GPU."""

    def __init__(
        self,
        samples: list,
        spec: LoaderSpec,
        *,
        dali_device: str,  # "cpu" | "gpu": where decode and augmentation run
        num_threads: int,
        prefetch_queue_depth: int,
        hw_decoder_load: float,
        roi: str = "slice",  # "slice": decode only the crop window | "resize": decode all, resize the ROI
        resampler: str = "auto",  # training image resize/flip/normalize: "dali" | "torch" | auto
    ) -> None:
        samples = list(samples)
        self.mode = Mode.of(
            spec, samples, dali_device=dali_device, roi=roi, resampler=resampler,
            hw_decoder_load=hw_decoder_load,
        )  # fmt: skip
        super().__init__(samples, spec)
        row = ROUTES[self.mode.route]
        sizes = SizeCache([s.image for s in self.samples])
        host = HostInputs(self.samples, sizes, spec.crop, spec.train, self.mode.label_arrays)
        normalize = self.mode.handoff != "pinned"
        layout = "HWC" if spec.channels_last or not normalize else "CHW"
        out = graphs.Output(spec.mean, spec.std, normalize, layout)
        self._handoff = _ToTorch(spec, self.mode, host, out.layout, prefetch_queue_depth, num_threads)
        self._to_batch = functools.partial(row.handoff, self._handoff)
        self._feed = _Feed(functools.partial(row.feeds.read, host))
        self._active = False
        self.description = self.mode.describe(num_threads)
        settings = graphs.Settings(
            decoder=self.mode.decoder, out=out, crop=spec.crop, roi=self.mode.roi, eval_size=spec.eval_size,
            eval_label_resize=spec.eval_label_resize, label_arrays=self.mode.label_arrays,
            raw_label_ids=self.mode.raw_label_ids,
        )  # fmt: skip
        self._pipe = self._build(row, settings, num_threads, prefetch_queue_depth)

    # -- the Loader protocol ----------------------------------------------------------------

    def close(self) -> None:
        self._pipe = None
        self._handoff.close()

    def __iter__(self):
        if self._pipe is None:
            raise RuntimeError("loader is closed (or its pipeline failed earlier)")
        self._abandon()
        self._feed.start(self._plan())
        self._active = True
        if self.mode.handoff == "pinned":
            yield from _prefetcher(self._epoch(), self._handoff.finish_host, self.device)
        else:
            yield from self._epoch()

    def _epoch(self):
        pipe, tail = self._pipe, self.mode.torch_tail
        # GPU outputs are bound to the consumer's stream: the step waits for DALI's kernels on the
        # device, and the host never blocks on them.
        stream = torch.cuda.current_stream(self.device) if self.mode.handoff == "gpu" else None
        self._guard(pipe.schedule_run)
        while True:
            try:
                outs = self._guard(lambda: pipe.share_outputs(cuda_stream=stream))
            except StopIteration:
                break
            items = self._feed.fed.popleft()
            if tail:  # keep DALI's threads busy while this thread runs the tail
                self._guard(pipe.schedule_run)
            batch = self._to_batch(outs, items)
            pipe.release_outputs()  # with the dynamic executor a buffer lives while a tensor uses it
            if not tail:
                self._guard(pipe.schedule_run)
            yield batch
        pipe.reset()
        self._active = False

    # -- feeding ------------------------------------------------------------------------------

    def _abandon(self) -> None:
        """Finish an epoch the consumer stopped reading: stop feeding, drop what was prefetched."""
        if not self._active:
            return
        self._feed.stop()
        pipe = self._pipe
        self._guard(pipe.schedule_run)  # the source now raises StopIteration: ends the epoch
        while True:
            try:
                self._guard(pipe.share_outputs)
            except StopIteration:
                break
            pipe.release_outputs()
        pipe.reset()
        self._active = False

    def _guard(self, fn):
        """Run a pipeline call; turn a decode failure into a UserError naming the file."""
        try:
            return fn()
        except StopIteration:
            raise
        except UserError:
            raise
        except Exception as e:  # DALI raises RuntimeError with a multi-line C++ trace
            self._active = False
            self._pipe = None  # a pipeline that failed mid-epoch is not reusable
            raise _decode_error(e, [it for items in self._feed.fed for it in items], self.samples) from None

    # -- the pipeline ------------------------------------------------------------------------

    def _build(self, row: Row, settings: graphs.Settings, num_threads: int, depth: int):
        device_id = None
        if self.mode.handoff == "gpu":
            device_id = self.device.index if self.device.index is not None else 0
        if self.mode.torch_tail:
            # The batch being finished in torch holds its DALI outputs until the tail is done; one
            # more slot lets DALI decode `depth` batches ahead meanwhile (reports/cpu-loaders/).
            depth += 1

        @graphs.pipeline_def(
            batch_size=self.spec.batch_size,
            num_threads=num_threads,
            device_id=device_id,
            prefetch_queue_depth=depth,
            exec_dynamic=True,
            seed=self.spec.seed,
        )
        def pipe():
            nodes = graphs.external_inputs(self._feed, len(row.feeds._fields), no_copy=True)
            return graphs.run_graph(row.graph, row.feeds._make(nodes), settings)

        p = pipe()
        p.build()
        return p


def _ships_uint8(dali_on_gpu: bool, device: torch.device) -> bool:
    """DALI on the CPU feeding a GPU: uint8 out of DALI, copied and normalized on the GPU (handoff.py)."""
    return not dali_on_gpu and device.type == "cuda"


def _nchw(image: torch.Tensor, layout: str) -> torch.Tensor:
    """DALI's N x H x W x C (a channels_last view once permuted) or N x C x H x W output as N x C x H x W."""
    return image.permute(0, 3, 1, 2) if layout == "HWC" else image


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


def _label_array(path, g, image_path, image_hw: tuple[int, int]) -> Any:
    """A `.npy` label (memory-mapped) as the pipeline's H x W x 1 input: the crop window `g` in
    training (only its rows are read), the whole frame in evaluation."""

    arr = load_label_array(path)
    if tuple(arr.shape) != tuple(image_hw):
        raise UserError(label_size_error(path, arr.shape, image_path, image_hw))
    if g is not None:
        arr = arr[g.y : g.y + g.h, g.x : g.x + g.w]
    return np.array(arr)[:, :, None]  # a copy: it must outlive the memory map


def _decode_error(err: Exception, items: list, samples: list) -> UserError:
    """Find the file the pipeline could not decode among the batches in flight, and name it."""

    first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
    seen = set()
    for it in items:
        s = samples[it.source]
        for path in (s.image, s.label):
            if path in seen:
                continue
            seen.add(path)
            try:
                if path.suffix == ".npy":
                    load_label_array(path, mmap=False)
                else:
                    with Image.open(path) as im:
                        im.load()
            except Exception as e:
                return UserError(f"{path}: cannot decode ({type(e).__name__}); DALI: {first[:200]}")
    names = ", ".join(str(samples[it.source].image) for it in items[:4])
    return UserError(f"DALI pipeline failed on a batch with {names}: {first[:300]}")

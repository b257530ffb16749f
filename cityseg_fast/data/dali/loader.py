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
"""

from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import numpy as np
import torch
from PIL import Image

from cityseg_fast.data.batch import Batch, to_layout
from cityseg_fast.data.cityscapes import label_size_error, load_label_array
from cityseg_fast.data.handoff import CudaPrefetcher, HostBatch, finish, pinned
from cityseg_fast.data.plan import LoaderSpec, PlannedLoader, SizeCache, crop_geometry
from cityseg_fast.data.resample import BufferPool, Normalizer, one_thread, resize_image, resize_label
from cityseg_fast.errors import UserError

_prefetcher = CudaPrefetcher  # module attributes, so a CPU test can stand in for the CUDA pieces


class _Feed:
    """The pipeline's external source: serves the current epoch's batches, remembers what it fed."""

    def __init__(self, inputs) -> None:
        self.inputs = inputs
        self.batches: list = []
        self.pos = 0
        self.fed: collections.deque = collections.deque()

    def start(self, batches: list) -> None:
        self.batches, self.pos = batches, 0
        self.fed.clear()

    def stop(self) -> None:
        self.pos = len(self.batches)

    def __call__(self):
        if self.pos >= len(self.batches):
            raise StopIteration
        items = self.batches[self.pos]
        self.pos += 1
        self.fed.append(items)
        return self.inputs(items)


class DaliLoader(PlannedLoader):
    """The `dali` backend: one pipeline per mode (train / eval / decode-only), CPU or GPU."""

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
        from cityseg_fast.data.dali.graphs import Decoder, Output

        if dali_device not in ("cpu", "gpu"):
            raise UserError(f"loader.device: expected auto, cpu or gpu, got '{dali_device}'")
        if roi not in ("slice", "resize"):
            raise UserError(f"loader.roi: expected slice or resize, got '{roi}'")
        if resampler == "auto":  # DALI's CPU resampler is slower than torch's (resample.py says why)
            resampler = "dali" if dali_device == "gpu" else "torch"
        if resampler not in ("dali", "torch") or (resampler == "torch" and dali_device == "gpu"):
            raise UserError(
                f"loader.resampler: expected auto, dali or torch (torch only with DALI on the CPU), got '{resampler}'"
            )
        super().__init__(samples, spec)
        self.dali_device, self.roi = dali_device, roi
        self.on_gpu = dali_device == "gpu"
        self.host_uint8 = _ships_uint8(self.on_gpu, self.device)
        self.torch_tail = spec.train and not spec.decode_only and resampler == "torch"

        self._normalizer = Normalizer(spec.mean, spec.std, device=self.device if self.host_uint8 else None)
        self._pool = BufferPool(prefetch_queue_depth + 2)
        self._tail_pool, self._tail_threads = None, max(1, min(num_threads, spec.batch_size))
        self.raw_labels = any(s.label_kind == "labelIds" for s in self.samples)
        # prepared with --label-format npy: labels are fed as arrays (train: the crop window only)
        self.label_arrays = bool(self.samples) and all(s.label.suffix == ".npy" for s in self.samples)
        self._sizes = SizeCache([s.image for s in self.samples])
        # the torch tail's DALI graph needs the crop window to slice-decode the image or a PNG label
        self._tail_needs_window = roi == "slice" or not self.label_arrays
        self._feed = _Feed(self._inputs)
        self._active = False
        self._decoder = Decoder("mixed" if self.on_gpu else "cpu", hw_decoder_load)
        normalize = not self.host_uint8
        self._out = Output(spec.mean, spec.std, normalize, "HWC" if spec.channels_last or not normalize else "CHW")
        mode = "decode-only" if spec.decode_only else ("train" if spec.train else "eval")
        where = f"gpu mixed decode, hw_decoder_load={hw_decoder_load}" if self.on_gpu else "cpu decode"
        tail = ", torch resize" if self.torch_tail else ""
        self.description = f"dali ({where}, {num_threads} threads, {mode}{tail})"
        self._pipe = self._build(num_threads, prefetch_queue_depth)

    # -- the Loader protocol ----------------------------------------------------------------

    def close(self) -> None:
        self._pipe = None
        if self._tail_pool is not None:
            self._tail_pool.shutdown()
            self._tail_pool = None

    def __iter__(self):
        if self._pipe is None:
            raise RuntimeError("loader is closed (or its pipeline failed earlier)")
        self._abandon()
        self._feed.start(self._plan())
        self._active = True
        if self.host_uint8:
            yield from _prefetcher(self._epoch(), self._finish_host, self.device)
        else:
            yield from self._epoch()

    def _epoch(self):
        pipe = self._pipe
        # GPU outputs are bound to the consumer's stream: the step waits for DALI's kernels on the
        # device, and the host never blocks on them.
        stream = torch.cuda.current_stream(self.device) if self.on_gpu else None
        self._guard(pipe.schedule_run)
        while True:
            try:
                outs = self._guard(lambda: pipe.share_outputs(cuda_stream=stream))
            except StopIteration:
                break
            items = self._feed.fed.popleft()
            if self.torch_tail:  # keep DALI's threads busy while this thread runs the tail
                self._guard(pipe.schedule_run)
            batch = self._to_batch(outs, items)
            pipe.release_outputs()  # with the dynamic executor a buffer lives while a tensor uses it
            if not self.torch_tail:
                self._guard(pipe.schedule_run)
            yield batch
        pipe.reset()
        self._active = False

    # -- planning and feeding ----------------------------------------------------------------

    def _inputs(self, items: list) -> tuple:
        srcs = [self.samples[it.source] for it in items]
        images = [_read_bytes(s.image) for s in srcs]
        if self.spec.decode_only:
            return (images,)
        geo = [self._geometry(it) for it in items] if self.spec.train else [None] * len(items)
        if self.label_arrays:
            labels = [
                _label_array(s.label, g, s.image, self._sizes[it.source])
                for s, g, it in zip(srcs, geo, items, strict=True)
            ]
        else:
            labels = [
                _check_label_png(s.label, _read_bytes(s.label), s.image, self._sizes[it.source])
                for s, it in zip(srcs, items, strict=True)
            ]
        if not self.spec.train:
            return images, labels
        anchor = [np.array([g.y, g.x], np.int32) for g in geo]
        shape = [np.array([g.h, g.w], np.int32) for g in geo]
        if self.torch_tail:  # size and flip are applied in torch (_tail)
            return (images, labels, anchor, shape) if self._tail_needs_window else (images, labels)
        size = [np.array([g.out_h, g.out_w], np.float32) for g in geo]
        flip = [np.array(int(g.flip), np.int32) for g in geo]
        return images, labels, anchor, shape, size, flip

    def _geometry(self, item):
        return crop_geometry(self._sizes[item.source], self.spec.crop, item.aug)

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

    def _build(self, num_threads: int, depth: int):
        from cityseg_fast.data.dali import graphs

        device_id = None
        if self.on_gpu:
            device_id = self.device.index if self.device.index is not None else 0
        if self.torch_tail:
            # The batch being finished in torch holds its DALI outputs until the tail is done; one
            # more slot lets DALI decode `depth` batches ahead meanwhile (reports/cpu-loaders/).
            depth += 1
        n_in = 1 if self.spec.decode_only else (2 if not self.spec.train else (4 if self.torch_tail else 6))
        if self.torch_tail and not self._tail_needs_window:
            n_in = 2
        common = {
            "decoder": self._decoder,
            "label_arrays": self.label_arrays,
            "raw_label_ids": self.raw_labels,
        }

        @graphs.pipeline_def(
            batch_size=self.spec.batch_size,
            num_threads=num_threads,
            device_id=device_id,
            prefetch_queue_depth=depth,
            exec_dynamic=True,
            seed=self.spec.seed,
        )
        def pipe():
            feeds = graphs.external_inputs(self._feed, n_in, no_copy=True)
            if self.spec.decode_only:
                return graphs.decode(feeds[0], self._decoder)
            if not self.spec.train:
                return graphs.eval_graph(
                    *feeds, out=self._out, eval_size=self.spec.eval_size,
                    eval_label_resize=self.spec.eval_label_resize, **common,
                )  # fmt: skip
            if self.torch_tail:
                window = feeds[2:] if self._tail_needs_window else (None, None)
                return graphs.window_graph(*feeds[:2], *window, roi=self.roi, **common)
            return graphs.train_graph(*feeds, out=self._out, crop=self.spec.crop, roi=self.roi, **common)

        p = pipe()
        p.build()
        return p

    # -- hand-off to torch -------------------------------------------------------------------

    def _to_batch(self, outs, items: list) -> Batch | HostBatch:
        index = torch.tensor([it.index for it in items], dtype=torch.int64)
        if self.torch_tail:
            with one_thread():
                return self._tail(outs[0], outs[1], items, index)
        if self.on_gpu:
            return self._gpu_batch(outs, index)
        image = torch.from_dlpack(outs[0].as_tensor())  # zero copy (the dynamic executor keeps it alive)
        target = None if self.spec.decode_only else torch.from_dlpack(outs[1].as_tensor())
        if self.host_uint8:
            return HostBatch(image, target, self._valid_sizes(items), index)
        if self.spec.decode_only:
            return finish(HostBatch(image, None, None, index), self.device, None, True)
        target = self._pool.get(tuple(target.shape), torch.int64).copy_(target)
        return Batch(to_layout(_nchw(image, self._out.layout), self.spec.channels_last), target, index)

    def _gpu_batch(self, outs, index: torch.Tensor) -> Batch:
        with torch.cuda.device(self.device):
            image = torch.from_dlpack(outs[0].as_tensor())  # a view of DALI's buffer: no copy
            if self.spec.decode_only:
                empty = torch.empty((image.shape[0], 0, 0), dtype=torch.int64, device=image.device)
                return Batch(image.permute(0, 3, 1, 2), empty, index)
            target = torch.from_dlpack(outs[1].as_tensor()).long()  # uint8 widened on the GPU
        return Batch(to_layout(_nchw(image, self._out.layout), self.spec.channels_last), target, index)

    def _finish_host(self, hb: HostBatch) -> Batch:
        return finish(hb, self.device, self._normalizer, self.spec.channels_last)

    def _valid_sizes(self, items: list) -> torch.Tensor | None:
        """(h, w) of each uint8 sample's content before padding: the crop's resized window in
        training, the (resized) frame in evaluation; None for decode-only (nothing padded)."""
        if self.spec.decode_only:
            return None
        if self.spec.train:
            hw = [(g.out_h, g.out_w) for g in map(self._geometry, items)]
        else:
            hw = [self.spec.eval_size or self._sizes[it.source] for it in items]
        return torch.tensor(hw, dtype=torch.int64)

    def _tail(self, images, labels, items: list, index: torch.Tensor) -> Batch | HostBatch:
        """CPU training: DALI's decoded windows (whole frames with roi="resize") and label windows
        -> resized, flipped, padded crops, each written once into a batch buffer: normalized float
        for a CPU model, uint8 in pinned memory for a GPU (normalized there; resample.py says why
        this part runs in torch)."""

        n, (ch, cw) = len(items), self.spec.crop
        if self.host_uint8:
            image, target = pinned((n, ch, cw, 3)), pinned((n, ch, cw))
        else:
            image, target = self._pool.get((n, ch, cw, 3)), self._pool.get((n, ch, cw), torch.int64)
        srcs = [torch.from_dlpack(images[k]) for k in range(n)]  # zero copy: read before release
        labs = [torch.from_dlpack(labels[k]) for k in range(n)]
        geo = [self._geometry(it) for it in items]

        def one(k: int) -> None:
            g, src = geo[k], srcs[k]
            if self.roi == "resize":
                src = src[g.y : g.y + g.h, g.x : g.x + g.w]
            img = resize_image(src, (g.out_h, g.out_w))
            lab = resize_label(labs[k][:, :, 0], (g.out_h, g.out_w))
            if g.flip:
                img, lab = img.flip(1), lab.flip(1)
            if self.host_uint8:
                image[k, : g.out_h, : g.out_w] = img  # the padding is zeroed after normalization
            else:
                self._normalizer.into(image[k], img)
                if g.out_h < ch:  # padding: image 0 after normalization (the mean)
                    image[k, g.out_h :] = 0
                if g.out_w < cw:
                    image[k, : g.out_h, g.out_w :] = 0
            target[k, : g.out_h, : g.out_w] = lab
            target[k, g.out_h :] = 255
            target[k, : g.out_h, g.out_w :] = 255

        # Samples in parallel on loader.num_threads threads (torch's kernels release the GIL):
        # while DALI's threads wait on a slow window, the tail uses the idle core.
        if self._tail_pool is None:
            self._tail_pool = ThreadPoolExecutor(self._tail_threads, thread_name_prefix="cityseg-tail")

        futures = [self._tail_pool.submit(one, k) for k in range(n)]
        wait(futures)  # all samples done (none still reading DALI's outputs) before any error
        for f in futures:
            f.result()
        if self.host_uint8:
            sizes = torch.tensor([(g.out_h, g.out_w) for g in geo], dtype=torch.int64)
            return HostBatch(image, target, sizes, index)
        return Batch(to_layout(image.permute(0, 3, 1, 2), self.spec.channels_last), target, index)


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

"""NVIDIA DALI pipelines: the ONLY module that imports `nvidia.dali`.

Everything else asks this module (e.g. `dali_available()`, `probe()`), so the package imports and
runs where DALI is missing, and a DALI upgrade touches one file.
"""

from __future__ import annotations

import collections
import io
from typing import Any

from cityseg_fast.data.plan import LoaderSpec, PlannedLoader
from cityseg_fast.errors import UserError


def dali_version() -> str | None:
    try:
        import nvidia.dali as dali
    except Exception:  # ImportError, or a broken install raising at import
        return None
    return getattr(dali, "__version__", "unknown")


def dali_available() -> bool:
    return dali_version() is not None


def _tiny_jpeg() -> bytes:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((16, 24, 3), 128, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _run_decode(device: str, device_id: int | None) -> tuple[int, ...]:
    import numpy as np
    from nvidia.dali import fn, pipeline_def

    data = np.frombuffer(_tiny_jpeg(), dtype=np.uint8)

    @pipeline_def(batch_size=1, num_threads=1, device_id=device_id, exec_dynamic=True)
    def pipe():
        raw = fn.external_source(source=lambda: [data], batch=True)
        return fn.decoders.image(raw, device=device)

    p = pipe()
    p.build()
    (out,) = p.run()
    if device == "mixed":
        out = out.as_cpu()
    return tuple(out.at(0).shape)


def probe() -> dict[str, Any]:
    """What DALI can do here: {'version', 'cpu_pipeline': bool, 'gpu_decode': bool, 'error': str|None}.

    Never raises: a missing DALI or a failing pipeline is reported, not crashed on.
    """
    info: dict[str, Any] = {
        "version": dali_version(),
        "cpu_pipeline": False,
        "gpu_decode": False,
        "error": None,
    }
    if info["version"] is None:
        info["error"] = "nvidia.dali is not installed"
        return info
    try:
        info["cpu_pipeline"] = _run_decode("cpu", None) == (16, 24, 3)
    except Exception as e:  # report, never crash `doctor`
        info["error"] = f"CPU pipeline: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu_decode"] = _run_decode("mixed", torch.cuda.current_device()) == (16, 24, 3)
    except Exception as e:
        info["error"] = f"mixed decode: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return info


# ---------------------------------------------------------------------------------------------
# the `dali` loader backend
#
# Why an external source and not fn.readers.file: the reader shuffles with its own RNG that runs
# on from epoch to epoch, so `set_epoch(e)` could not reproduce an epoch, and its sharding pads
# with repeats we could not mark. Instead each epoch's plan (plan.py: which files, in which order,
# on which rank, with which random scale/crop/flip) is built on the host, and the pipeline is fed
# (image bytes, label bytes, crop window, output size, flip) per batch. Image and label travel in
# the same tuple, so they cannot fall out of step; the random values are drawn once per sample
# and applied to both; the k-th output batch is the k-th fed batch, which names the files of a
# batch that fails to decode. Reading the bytes (np.fromfile) is cheap next to decoding them.


def _read_bytes(path) -> Any:
    import numpy as np

    try:
        return np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None


def _check_label_png(path, data: Any, image_path, image_hw: tuple[int, int]) -> Any:
    """Refuse a palette label PNG (its indices are the ids, but DALI's decoder expands the palette
    to colours) and one whose size differs from its image's, from the IHDR chunk that follows the
    8-byte signature: width and height (big-endian) at bytes 16-23, colour type (3 = palette) at 25."""
    from cityseg_fast.data.cityscapes import label_size_error

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


def _label_lut() -> tuple[list[int], list[int]]:
    """labelId -> trainId as lookup_table keys/values (every other id -> default 255)."""
    from cityseg_fast.data.labels import ID_TO_TRAINID

    keys = [i for i in range(256) if int(ID_TO_TRAINID[i]) != 255]
    return keys, [int(ID_TO_TRAINID[i]) for i in keys]


class _Feed:
    """The pipeline's external source: serves the current epoch's batches, remembers what it fed."""

    def __init__(self, loader: DaliLoader) -> None:
        self.loader = loader
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
        return self.loader._inputs(items)


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
        from cityseg_fast.data.plan import SizeCache

        if dali_device not in ("cpu", "gpu"):
            raise UserError(f"loader.device: expected auto, cpu or gpu, got '{dali_device}'")
        if roi not in ("slice", "resize"):
            raise ValueError(f"roi must be 'slice' or 'resize', got {roi!r}")
        if resampler == "auto":  # DALI's CPU resampler is ~3x slower than torch's (resample.py)
            resampler = "dali" if dali_device == "gpu" else "torch"
        if resampler not in ("dali", "torch") or (resampler == "torch" and dali_device == "gpu"):
            raise UserError(
                f"loader.resampler: expected auto, dali or torch (torch only with DALI on the CPU), got '{resampler}'"
            )
        self._init_plan(samples, spec)
        self.dali_device, self.roi = dali_device, roi
        self.torch_tail = spec.train and not spec.decode_only and resampler == "torch"
        if self.torch_tail:
            from cityseg_fast.data.resample import BufferPool, Normalizer

            self._normalizer = Normalizer(spec.mean, spec.std)
            self._pool = BufferPool(prefetch_queue_depth + 2)
        self._tail_pool, self._tail_threads = None, max(1, min(num_threads, spec.batch_size))
        self.raw_labels = any(s.label_kind == "labelIds" for s in self.samples)
        # prepared with --label-format npy: labels are fed as arrays (train: the crop window only)
        self.label_arrays = bool(self.samples) and all(s.label.suffix == ".npy" for s in self.samples)
        self._sizes = SizeCache([s.image for s in self.samples])
        self._feed = _Feed(self)
        self._active = False
        mode = "decode-only" if spec.decode_only else ("train" if spec.train else "eval")
        where = (
            f"gpu mixed decode, hw_decoder_load={hw_decoder_load}" if dali_device == "gpu" else "cpu decode"
        )
        tail = ", torch resize" if self.torch_tail else ""
        self.description = f"dali ({where}, {num_threads} threads, {mode}{tail})"
        self._pipe = self._build(num_threads, prefetch_queue_depth, hw_decoder_load)

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
        pipe = self._pipe
        self._guard(pipe.schedule_run)
        while True:
            try:
                outs = self._guard(pipe.share_outputs)
            except StopIteration:
                break
            items = self._feed.fed.popleft()
            if self.torch_tail:  # keep DALI's threads busy while this thread runs the tail
                self._guard(pipe.schedule_run)
            batch = self._to_batch(outs, items)  # CPU: wraps the buffers (zero copy); GPU: copies
            pipe.release_outputs()  # DALI reuses a buffer only once nothing references it
            if not self.torch_tail:
                self._guard(pipe.schedule_run)
            yield batch
        pipe.reset()
        self._active = False

    # -- planning and feeding ----------------------------------------------------------------

    def _inputs(self, items: list) -> tuple:
        import numpy as np

        from cityseg_fast.data.plan import crop_geometry

        srcs = [self.samples[it.source] for it in items]
        images = [_read_bytes(s.image) for s in srcs]
        if self.decode_only:
            return (images,)
        geo = (
            [crop_geometry(self._sizes[it.source], self.crop, it.aug) for it in items] if self.train else None
        )
        if self.label_arrays:
            labels = [
                _label_array(s.label, g, s.image, self._sizes[it.source])
                for s, g, it in zip(srcs, geo or [None] * len(srcs), items, strict=True)
            ]
        else:
            labels = [
                _check_label_png(s.label, _read_bytes(s.label), s.image, self._sizes[it.source])
                for s, it in zip(srcs, items, strict=True)
            ]
        if not self.train:
            return images, labels
        anchor = [np.array([g.y, g.x], np.int32) for g in geo]
        shape = [np.array([g.h, g.w], np.int32) for g in geo]
        if self.torch_tail:  # size and flip are applied in torch (_tail)
            return images, labels, anchor, shape
        size = [np.array([g.out_h, g.out_w], np.float32) for g in geo]
        flip = [np.array(int(g.flip), np.int32) for g in geo]
        return images, labels, anchor, shape, size, flip

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

    # -- pipelines -------------------------------------------------------------------------

    def _build(self, num_threads: int, depth: int, hw_decoder_load: float):
        from nvidia.dali import pipeline_def

        device_id = None
        if self.dali_device == "gpu":
            device_id = self.device.index if self.device.index is not None else 0
        graph = (
            self._decode_graph
            if self.decode_only
            else (self._train_graph if self.train else self._eval_graph)
        )
        if self.torch_tail:
            # The batch being finished in torch holds its DALI outputs until the tail is done; one
            # more slot lets DALI decode `depth` batches ahead meanwhile (+10-15 % images/s here).
            depth += 1

        @pipeline_def(
            batch_size=self.batch_size,
            num_threads=num_threads,
            device_id=device_id,
            prefetch_queue_depth=depth,
            exec_dynamic=True,
            seed=self.seed,
        )
        def pipe():
            return graph(hw_decoder_load)

        p = pipe()
        p.build()
        return p

    def _decoder_kwargs(self, hw_decoder_load: float) -> dict:
        if self.dali_device == "gpu":
            return {"device": "mixed", "hw_decoder_load": hw_decoder_load}
        return {"device": "cpu"}

    def _norm(self, images, mirror=None):
        from nvidia.dali import fn, types

        kw = {} if mirror is None else {"mirror": mirror}
        return fn.crop_mirror_normalize(
            images,
            mean=[255.0 * m for m in self.mean],
            std=[255.0 * s for s in self.std],
            dtype=types.FLOAT,
            output_layout="HWC",  # N x H x W x 3 viewed as N x 3 x H x W is channels_last for free
            **kw,
        )

    def _labels(self, encoded):
        from nvidia.dali import fn, types

        if self.label_arrays:  # H x W x 1 uint8, read on the host
            labels = fn.reshape(encoded, layout="HWC")
        else:
            labels = fn.decoders.image(encoded, device="cpu", output_type=types.GRAY)  # PNG: a CPU codec
        return labels.gpu() if self.dali_device == "gpu" else labels

    def _train_ids(self, labels):
        """Raw Cityscapes labelIds -> trainIds (every non-evaluated id -> 255); prepared: as is.
        Applied after the nearest-neighbour geometry, so it maps crop-sized labels, not frames."""
        from nvidia.dali import fn, types

        if not self.raw_labels:
            return labels
        keys, values = _label_lut()
        return fn.lookup_table(labels, keys=keys, values=values, default_value=255, dtype=types.UINT8)

    def _decode_graph(self, hw_decoder_load: float):
        from nvidia.dali import fn, types

        (images,) = fn.external_source(source=self._feed, num_outputs=1, batch=True, no_copy=True)
        return fn.decoders.image(images, output_type=types.RGB, **self._decoder_kwargs(hw_decoder_load))

    def _eval_graph(self, hw_decoder_load: float):
        from nvidia.dali import fn, types

        images, labels = fn.external_source(source=self._feed, num_outputs=2, batch=True, no_copy=True)
        images = fn.decoders.image(images, output_type=types.RGB, **self._decoder_kwargs(hw_decoder_load))
        labels = self._labels(labels)
        if self.eval_size is not None:
            images = fn.resize(
                images, size=list(self.eval_size), interp_type=types.INTERP_LINEAR, antialias=True
            )
            if self.eval_label_resize:
                labels = fn.resize(
                    labels, size=list(self.eval_size), interp_type=types.INTERP_NN, antialias=False
                )
        labels = self._train_ids(labels)
        # Frames of different sizes in one batch: pad to the largest (image 0, label ignore).
        images = fn.pad(self._norm(images), fill_value=0.0, axes=[0, 1])
        labels = fn.pad(labels, fill_value=255, axes=[0, 1])
        return images, _int64_hw(labels)

    def _train_graph(self, hw_decoder_load: float):
        from nvidia.dali import fn, types

        feeds = fn.external_source(
            source=self._feed, num_outputs=4 if self.torch_tail else 6, batch=True, no_copy=True
        )
        images, labels, anchor, shape = feeds[:4]
        dec = self._decoder_kwargs(hw_decoder_load)
        if self.label_arrays:  # the window's rows, already read from the memory-mapped array
            labels = fn.reshape(labels, layout="HWC")
        else:  # PNG: the slice decoder decodes the frame but keeps only the window (one copy less)
            labels = fn.decoders.image_slice(
                labels, anchor, shape, axis_names="HW", device="cpu", output_type=types.GRAY
            )
        if self.torch_tail:  # DALI decodes; resize, flip, normalize, pad happen in torch (_tail)
            if self.roi == "slice":
                images = fn.decoders.image_slice(
                    images, anchor, shape, axis_names="HW", output_type=types.RGB, **dec
                )
            else:
                images = fn.decoders.image(images, output_type=types.RGB, **dec)
            # the lookup commutes with the nearest-neighbour geometry; the window is small
            return images, self._train_ids(labels)
        size, flip = feeds[4:]
        if self.roi == "slice":  # decode only the source window of the crop
            images = fn.decoders.image_slice(
                images, anchor, shape, axis_names="HW", output_type=types.RGB, **dec
            )
            images = fn.resize(images, size=size, interp_type=types.INTERP_LINEAR, antialias=True)
        else:  # decode the full frame, resize only the window
            images = fn.decoders.image(images, output_type=types.RGB, **dec)
            end = anchor + shape
            images = fn.resize(
                images,
                size=size,
                roi_start=fn.cast(anchor, dtype=types.FLOAT),
                roi_end=fn.cast(end, dtype=types.FLOAT),
                roi_relative=False,
                interp_type=types.INTERP_LINEAR,
                antialias=True,
            )
        images = self._norm(images, mirror=flip)
        if self.dali_device == "gpu":
            labels = labels.gpu()
        labels = fn.resize(labels, size=size, interp_type=types.INTERP_NN, antialias=False)
        labels = self._train_ids(fn.flip(labels, horizontal=flip))
        crop = list(self.crop)
        # Pad after normalization: padded image pixels are 0 (the mean), padded labels ignored.
        images = fn.pad(images, fill_value=0.0, shape=crop, axes=[0, 1])
        labels = fn.pad(labels, fill_value=255, shape=crop, axes=[0, 1])
        return images, _int64_hw(labels)

    # -- hand-off to torch -------------------------------------------------------------------

    def _to_batch(self, outs, items: list):
        import torch
        from nvidia.dali.plugin.pytorch import feed_ndarray

        from cityseg_fast.data.batch import Batch

        on_gpu = self.dali_device == "gpu"
        stream = torch.cuda.current_stream(self.device) if on_gpu else None

        def to_torch(tl, dtype):
            t = tl.as_tensor()
            if not on_gpu:
                # Zero copy: with the dynamic executor an output buffer lives as long as something
                # references it (here the torch tensor), so DALI cannot overwrite a batch in use.
                # A copy into a fresh tensor cost ~7 ms of main-thread CPU per image (page faults).
                return torch.from_dlpack(t)
            out = torch.empty(t.shape(), dtype=dtype, device=self.device)
            feed_ndarray(t, out, cuda_stream=stream)
            return out

        index = torch.tensor([it.index for it in items], dtype=torch.int64)
        if self.decode_only:
            image = to_torch(outs[0], torch.uint8).permute(0, 3, 1, 2)
            return Batch(
                image, torch.empty((len(items), 0, 0), dtype=torch.int64, device=image.device), index
            )
        if self.torch_tail:
            from cityseg_fast.data.resample import one_thread

            with one_thread():
                image, target = self._tail(outs[0], outs[1], items)
        else:
            image, target = to_torch(outs[0], torch.float32), to_torch(outs[1], torch.int64)
        if not on_gpu and self.device.type == "cuda":  # DALI on the CPU feeding a GPU model
            image = image.pin_memory().to(self.device, non_blocking=True)
            target = target.pin_memory().to(self.device, non_blocking=True)
        image = image.permute(0, 3, 1, 2)  # N x H x W x 3 memory == channels_last N x 3 x H x W
        if not self.train and bool((index < 0).any()):
            target[index.to(target.device) < 0] = 255  # padding samples never reach the metric
        return Batch(image, target, index)

    def _tail(self, images, labels, items: list):
        """CPU training: DALI's decoded windows (whole frames with roi="resize") and label windows
        -> resized, flipped, normalized, padded float N x H x W x 3 and int64 N x H x W targets,
        each written once into a batch buffer (resample.py says why this part runs in torch)."""
        import torch

        from cityseg_fast.data.plan import crop_geometry
        from cityseg_fast.data.resample import resize_image, resize_label

        n, (ch, cw) = len(items), self.crop
        image = self._pool.get((n, ch, cw, 3))
        target = self._pool.get((n, ch, cw), torch.int64)
        srcs = [torch.from_dlpack(images[k]) for k in range(n)]  # zero copy: read before release
        labs = [torch.from_dlpack(labels[k]) for k in range(n)]

        def one(k: int) -> None:
            it = items[k]
            g = crop_geometry(self._sizes[it.source], self.crop, it.aug)
            src = srcs[k]
            if self.roi == "resize":
                src = src[g.y : g.y + g.h, g.x : g.x + g.w]
            img = resize_image(src, (g.out_h, g.out_w))
            lab = resize_label(labs[k][:, :, 0], (g.out_h, g.out_w))
            if g.flip:
                img, lab = img.flip(1), lab.flip(1)
            self._normalizer.into(image[k], img)
            target[k, : g.out_h, : g.out_w] = lab
            if g.out_h < ch:  # padding: image 0 after normalization (the mean), label ignore
                image[k, g.out_h :] = 0
                target[k, g.out_h :] = 255
            if g.out_w < cw:
                image[k, : g.out_h, g.out_w :] = 0
                target[k, : g.out_h, g.out_w :] = 255

        # Samples in parallel on loader.num_threads threads (torch's kernels release the GIL):
        # while DALI's threads wait on a slow window, the tail uses the idle core (+5-15 %).
        if self._tail_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._tail_pool = ThreadPoolExecutor(self._tail_threads, thread_name_prefix="cityseg-tail")
        from concurrent.futures import wait

        futures = [self._tail_pool.submit(one, k) for k in range(n)]
        wait(futures)  # all samples done (none still reading DALI's outputs) before any error
        for f in futures:
            f.result()
        return image, target


def _int64_hw(labels):
    """H x W x 1 uint8 -> H x W int64 (the Batch target type), in DALI's threads, not the caller's."""
    from nvidia.dali import fn, types

    return fn.cast(fn.squeeze(labels, axis_names="C"), dtype=types.INT64)


def _label_array(path, g, image_path, image_hw: tuple[int, int]) -> Any:
    """A `.npy` label (memory-mapped) as the pipeline's H x W x 1 input: the crop window `g` in
    training (only its rows are read), the whole frame in evaluation."""
    import numpy as np

    from cityseg_fast.data.cityscapes import label_size_error, load_label_array

    arr = load_label_array(path)
    if tuple(arr.shape) != tuple(image_hw):
        raise UserError(label_size_error(path, arr.shape, image_path, image_hw))
    if g is not None:
        arr = arr[g.y : g.y + g.h, g.x : g.x + g.w]
    return np.array(arr)[:, :, None]  # a copy: it must outlive the memory map


def _decode_error(err: Exception, items: list, samples: list) -> UserError:
    """Find the file the pipeline could not decode among the batches in flight, and name it."""
    from PIL import Image

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
                    from cityseg_fast.data.cityscapes import load_label_array

                    load_label_array(path, mmap=False)
                else:
                    with Image.open(path) as im:
                        im.load()
            except Exception as e:
                return UserError(f"{path}: cannot decode ({type(e).__name__}); DALI: {first[:200]}")
    names = ", ".join(str(samples[it.source].image) for it in items[:4])
    return UserError(f"DALI pipeline failed on a batch with {names}: {first[:300]}")


# ---------------------------------------------------------------------------------------------
# where the time goes: CPU cost of each operator of the CPU training transform (benchmarks/run_loaders.py)

STAGES = {
    "full decode": "DALI: decode the whole JPEG frame (what --decode-only does)",
    "slice decode": "DALI: decode only the crop window (image_slice)",
    "+ DALI resize": "DALI: fn.resize of the window to the crop size (bilinear, antialiased)",
    "+ DALI normalize/flip": "DALI: crop_mirror_normalize to float HWC",
    "label slice decode": "DALI: decode the label PNG, keep the window",
    "+ DALI label NN/flip/int64": "DALI: nearest resize, flip, cast to int64",
    "torch resize/flip": "torch: resize_image of the decoded window (uint8, antialiased bilinear), flip",
    "torch normalize": "torch: Normalizer.into a reused float batch buffer",
    "torch label NN/flip/int64": "torch: resize_label, flip, write into a reused int64 buffer",
    "npy label window": "host: the crop window's rows from a memory-mapped .npy label (--label-format npy)",
}


def stage_costs(
    images: list,
    labels: list,
    geometry: list,
    iters: int = 4,
    batch_size: int = 8,
    npy_labels: list | None = None,
) -> dict[str, float]:
    """CPU milliseconds per image of each operator in STAGES, on one thread, over the crop windows
    `geometry` (plan.Geometry, one per image, e.g. drawn by the training plan). DALI rows are
    growing prefixes of the graph (process CPU time, DALI's pool has 1 thread); torch rows time
    each step alone on DALI's decoded windows (thread CPU time, torch on 1 thread)."""
    import resource
    import time

    import numpy as np
    import torch
    from nvidia.dali import fn, pipeline_def, types

    from cityseg_fast.data.resample import BufferPool, Normalizer, resize_image, resize_label

    n = len(images)
    img_b = [np.fromfile(p, np.uint8) for p in images]
    lab_b = [np.fromfile(p, np.uint8) for p in labels]
    anchor = [np.array([g.y, g.x], np.int32) for g in geometry]
    shape = [np.array([g.h, g.w], np.int32) for g in geometry]
    size = [np.array([g.out_h, g.out_w], np.float32) for g in geometry]
    flip = [np.array(int(g.flip), np.int32) for g in geometry]
    batches = [list(range(k, min(n, k + batch_size))) for k in range(0, n - batch_size + 1, batch_size)]
    if not batches:
        raise ValueError(f"stage_costs needs at least batch_size={batch_size} images, got {n}")

    def graph(stage: str, counter: dict):
        def src():
            sel = batches[counter["i"] % len(batches)]
            counter["i"] += 1
            data = lab_b if stage.startswith("label") or stage.startswith("+ DALI label") else img_b
            pick = lambda xs: [xs[j] for j in sel]  # noqa: E731
            return pick(data), pick(anchor), pick(shape), pick(size), pick(flip)

        enc, a, s, z, f = fn.external_source(source=src, num_outputs=5, batch=True)
        if stage == "full decode":
            return fn.decoders.image(enc, output_type=types.RGB)
        if stage in ("label slice decode", "+ DALI label NN/flip/int64"):
            out = fn.decoders.image_slice(enc, a, s, axis_names="HW", output_type=types.GRAY)
            if stage != "label slice decode":
                out = fn.resize(out, size=z, interp_type=types.INTERP_NN, antialias=False)
                out = _int64_hw(fn.flip(out, horizontal=f))
            return out
        out = fn.decoders.image_slice(enc, a, s, axis_names="HW", output_type=types.RGB)
        if stage != "slice decode":
            out = fn.resize(out, size=z, interp_type=types.INTERP_LINEAR, antialias=True)
        if stage == "+ DALI normalize/flip":
            out = fn.crop_mirror_normalize(
                out, mirror=f, mean=[124.0, 116.0, 104.0], std=[58.0, 57.0, 57.0],
                dtype=types.FLOAT, output_layout="HWC",
            )  # fmt: skip
        return out

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    costs: dict[str, float] = {}
    decoded: dict[str, list] = {}
    for stage in list(STAGES)[:6]:
        counter = {"i": 0}
        pipe = pipeline_def(
            graph, batch_size=batch_size, num_threads=1, device_id=None, exec_dynamic=True,
            prefetch_queue_depth=1,
        )(stage, counter)  # fmt: skip
        pipe.build()
        for _ in batches:  # warm-up (allocations); keeps the decoded windows for the torch rows
            (out,) = pipe.run()
            if stage in ("slice decode", "label slice decode"):
                decoded.setdefault(stage, []).extend(np.array(out[k]) for k in range(len(out)))
        c0 = cpu()
        for _ in range(iters * len(batches)):
            pipe.run()
        costs[stage] = 1e3 * (cpu() - c0) / (iters * len(batches) * batch_size)
        del pipe

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        wins = [torch.from_numpy(a) for a in decoded["slice decode"]]
        labs = [torch.from_numpy(a)[:, :, 0] for a in decoded["label slice decode"]]
        geo = geometry[: len(wins)]
        hw = (max(g.out_h for g in geo), max(g.out_w for g in geo))
        norm, pool = Normalizer((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), BufferPool(2)
        t = {"torch resize/flip": 0.0, "torch normalize": 0.0, "torch label NN/flip/int64": 0.0}
        for _ in range(iters):
            for k, g in enumerate(geo):
                c = time.thread_time()
                img = resize_image(wins[k], (g.out_h, g.out_w))
                if g.flip:
                    img = img.flip(1)
                t["torch resize/flip"] += time.thread_time() - c
                buf = pool.get((*hw, 3))
                c = time.thread_time()
                norm.into(buf, img)
                t["torch normalize"] += time.thread_time() - c
                del buf
                lbuf = pool.get(hw, torch.int64)
                c = time.thread_time()
                lab = resize_label(labs[k], (g.out_h, g.out_w))
                lbuf[: g.out_h, : g.out_w] = lab.flip(1) if g.flip else lab
                t["torch label NN/flip/int64"] += time.thread_time() - c
                del lbuf
        for k, v in t.items():
            costs[k] = 1e3 * v / (iters * len(geo))
    finally:
        torch.set_num_threads(threads)
    if npy_labels:
        from cityseg_fast.data.cityscapes import image_size

        hws = [image_size(p) for p in images]
        c = time.thread_time()
        for _ in range(iters):
            for path, g, img, hw in zip(npy_labels, geometry, images, hws, strict=False):
                _label_array(path, g, img, hw)
        costs["npy label window"] = (
            1e3 * (time.thread_time() - c) / (iters * min(len(npy_labels), len(geometry)))
        )
    return costs

"""The `dali` loader backend: the epoch plan fed to a DALI pipeline, and the hand-off of its outputs to torch.

Why an external source and not fn.readers.file: the reader shuffles with its own RNG that runs on
from epoch to epoch, so `set_epoch(e)` could not reproduce an epoch, and its sharding pads with
repeats we could not mark. Instead each epoch's plan (plan.py: which files, in which order, on which
rank, with which random scale/crop/flip) is built on the host, and the pipeline is fed (image bytes,
label bytes, crop window, output size, flip) per batch. Image and label travel in the same tuple, so
they cannot fall out of step; the random values are drawn once per sample and applied to both; the
k-th output batch is the k-th fed batch, which names the files of a batch that fails to decode.
The feed reads ahead on its own threads (inputs.Feed), so the consumer's thread, which DALI calls the
source from, only hands over batches that are already read.

Three hand-offs, by where DALI runs and where the model runs:
- DALI on the GPU: outputs bound to the consumer's CUDA stream (`share_outputs(cuda_stream)`, no host
  sync) and viewed zero-copy through DLPack, as DALI's own iterator does with the dynamic executor
  (a buffer lives while a tensor references it); uint8 targets are widened on the GPU.
- DALI on the CPU, model on the CPU: zero-copy views, or the torch tail writing normalized crops into
  reused buffers (`loader.resampler`; resample.py says why).
- DALI on the CPU, model on a GPU: uint8 crops and labels (4x and 8x fewer bytes than float and
  int64) into pinned memory, copied and normalized on a side stream one batch ahead (handoff.py).

A mixed decoder that cannot load nvJPEG decodes on the CPU and still runs: after its first batch a GPU
loader asks what its decoding ran on (nvjpeg.py) and its description and rows say it (`gpu_decode`).

The loader's mode is computed once (`Mode.of`) and its `route` (pipeline, hand-off) picks one row
of ROUTES: what the host feeds (a NamedTuple whose `read` makes it from the planned items), the
graph that takes those fields by name (graphs.py), and the hand-off of the graph's outputs. A row
whose fields are not its graph's inputs cannot be built, so the feed and the graph agree by
construction. Extending the loader = a field in Mode, a row (or a column) in ROUTES.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from PIL import Image

from cityseg_fast.data.batch import Batch
from cityseg_fast.data.cityscapes import load_label_array
from cityseg_fast.data.dali import graphs, nvjpeg
from cityseg_fast.data.dali.inputs import Augmented, Feed, Frames, HostInputs, Labelled, Windowed
from cityseg_fast.data.dali.nvjpeg import GpuDecode
from cityseg_fast.data.dali.to_torch import ToTorch
from cityseg_fast.data.handoff import CudaPrefetcher, HostBatch
from cityseg_fast.data.plan import LoaderSpec, PlannedLoader, SizeCache
from cityseg_fast.errors import UserError

_prefetcher = CudaPrefetcher  # a module attribute (as to_torch.pinned), so a CPU test can stand in for the CUDA pieces
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

    def describe(self, num_threads: int, gpu: GpuDecode | None = None) -> str:
        """The loader's description (recorded in every row: keep its words stable); `gpu`: what the mixed
        decoder ran on, once a batch has been decoded (nvjpeg.py)."""
        if self.decoder.on_gpu:
            ran = f", {gpu.words()}" if gpu is not None else ""
            where = f"gpu mixed decode{ran}, hw_decoder_load={self.decoder.hw_decoder_load}"
        else:
            where = "cpu decode"
        stage = {"decode": "decode-only", "eval": "eval"}.get(self.pipeline, "train")
        tail = ", torch resize" if self.torch_tail else ""
        return f"dali ({where}, {num_threads} threads, {stage}{tail})"


# ---------------------------------------------------------------------------------------------
# the mode table


@dataclass(frozen=True)
class Row:
    """One row of ROUTES: what the host feeds (a NamedTuple type; `feeds.read(host, items)` makes
    it), the graph that takes those fields as its inputs, and the hand-off of its outputs."""

    feeds: type
    graph: Callable[..., Any]
    handoff: Callable[[ToTorch, tuple, list], Batch | HostBatch]

    def __post_init__(self) -> None:
        fields, inputs = tuple(self.feeds._fields), graphs.graph_inputs(self.graph)
        if fields != inputs:
            raise TypeError(f"{self.feeds.__name__} feeds {fields}, {self.graph.__name__} takes {inputs}")


# (pipeline, handoff) -> Row: every mode `Mode.of` can return has a row (tests/test_dali.py checks).
ROUTES: dict[tuple[Pipeline, Handoff], Row] = {
    ("decode", "gpu"): Row(Frames, graphs.decode_graph, ToTorch.frames),
    ("decode", "cpu"): Row(Frames, graphs.decode_graph, ToTorch.frames),
    ("decode", "pinned"): Row(Frames, graphs.decode_graph, ToTorch.pinned_frames),
    ("eval", "gpu"): Row(Labelled, graphs.eval_graph, ToTorch.gpu),
    ("eval", "cpu"): Row(Labelled, graphs.eval_graph, ToTorch.cpu),
    ("eval", "pinned"): Row(Labelled, graphs.eval_graph, ToTorch.pinned),
    ("train", "gpu"): Row(Augmented, graphs.train_graph, ToTorch.gpu),
    ("train", "cpu"): Row(Augmented, graphs.train_graph, ToTorch.cpu),
    ("train", "pinned"): Row(Augmented, graphs.train_graph, ToTorch.pinned),
    ("window", "cpu"): Row(Windowed, graphs.window_graph, ToTorch.tail),
    ("window", "pinned"): Row(Windowed, graphs.window_graph, ToTorch.tail),
    ("frame", "cpu"): Row(Labelled, graphs.frame_graph, ToTorch.tail),
    ("frame", "pinned"): Row(Labelled, graphs.frame_graph, ToTorch.tail),
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
        self._handoff = ToTorch(spec, self.mode, host, out.layout, prefetch_queue_depth, num_threads)
        self._to_batch = functools.partial(row.handoff, self._handoff)
        # reads `depth` batches ahead of DALI's own queue, on as many threads (inputs.Feed says why)
        self._feed = Feed(functools.partial(row.feeds.read, host), ahead=prefetch_queue_depth)
        self._active = False
        self._num_threads = num_threads
        # what the decoding ran on: known for a CPU decoder, learnt from the first batch for a mixed one
        self.gpu_decode: GpuDecode | None = None if self.mode.decoder.on_gpu else nvjpeg.CPU_DECODE
        settings = graphs.Settings(
            decoder=self.mode.decoder, out=out, crop=spec.crop, roi=self.mode.roi, eval_size=spec.eval_size,
            eval_label_resize=spec.eval_label_resize, label_arrays=self.mode.label_arrays,
            raw_label_ids=self.mode.raw_label_ids,
        )  # fmt: skip
        self._pipe = self._build(row, settings, num_threads, prefetch_queue_depth)

    # -- the Loader protocol ----------------------------------------------------------------

    @property
    def description(self) -> str:
        return self.mode.describe(self._num_threads, self.gpu_decode if self.mode.decoder.on_gpu else None)

    @property
    def decoder(self) -> str | None:
        """The decoder rows name (LOADER_DECODER), once known: a mixed decoder's after its first batch."""
        return None if self.gpu_decode is None else self.gpu_decode.decoder()

    def close(self) -> None:
        self._pipe = None
        self._feed.close()
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
            if self.gpu_decode is None:  # DALI loads nvJPEG on first use: now it has decoded a batch
                self.gpu_decode = nvjpeg.gpu_decode(self.mode.decoder.hw_decoder_load, self._device_index())
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

    def _device_index(self) -> int:
        return self.device.index if self.device.index is not None else 0

    def _build(self, row: Row, settings: graphs.Settings, num_threads: int, depth: int):
        device_id = self._device_index() if self.mode.handoff == "gpu" else None
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

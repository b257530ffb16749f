"""DALI pipeline bodies as free functions of DataNodes and explicit arguments (no loader state).

The loader (loader.py) wraps them in `pipeline_def`s; benchmarks build their per-operator pipelines
from the same functions, so what they time is what training runs. A loader graph (`*_graph`) takes its
DataNode inputs by name before the `*` and its settings after it: the loader feeds it a NamedTuple
whose fields are those names (`graph_inputs`) and the settings it names from one `Settings`
(`run_graph`), so inputs and graph cannot fall out of step. Every graph returns images and,
where there are labels, uint8 H x W trainId targets (255 = ignore): the consumer widens them to
int64 on the device it trains on, 8x fewer bytes through DALI's buffers and any copy.

Where the ops run: with a `mixed` decoder the image ops after decoding run on the GPU and the labels
are decoded (PNG: a CPU codec) or read (npy) on the CPU, then moved with `.gpu()` before their
nearest-neighbour resize; with a `cpu` decoder everything runs on DALI's CPU threads.

`normalize=False` returns uint8 HWC images (padding 0, with the valid size of each sample known to
the caller): the hand-off for a CPU pipeline feeding a GPU, where the normalization is done on the
GPU after a 4x smaller copy (handoff.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from nvidia.dali import fn, pipeline_def, types

from cityseg_fast.labels import ID_TO_TRAINID

DataNode = Any
__all__ = ["pipeline_def"]  # re-exported: code outside this package (benchmarks/) builds pipelines here


def external_inputs(source: Any, num_outputs: int, no_copy: bool = False) -> tuple[DataNode, ...]:
    """A graph's inputs: each iteration, `source()` returns `num_outputs` batches (lists of arrays)."""
    return fn.external_source(source=source, num_outputs=num_outputs, batch=True, no_copy=no_copy)


@dataclass(frozen=True)
class Decoder:
    """Which image decoder: "cpu" (libjpeg-turbo) or "mixed" (nvJPEG: hardware + CUDA on the GPU)."""

    device: str = "cpu"
    hw_decoder_load: float = 0.65  # mixed: share of the JPEGs sent to the hardware (NVJPG) engines

    @property
    def on_gpu(self) -> bool:
        return self.device == "mixed"

    def kwargs(self) -> dict[str, Any]:
        if not self.on_gpu:
            return {"device": "cpu"}
        # jpeg_fancy_upsampling: nvJPEG's default chroma upsampling is not libjpeg-turbo's (the CPU
        # decoder's and PIL's); with it on, GPU and CPU decoding give the same pixels.
        return {"device": "mixed", "hw_decoder_load": self.hw_decoder_load, "jpeg_fancy_upsampling": True}


@dataclass(frozen=True)
class Output:
    """How images leave the graph: normalized float in `layout` ("HWC": the N x H x W x 3 buffer viewed
    as N x 3 x H x W is channels_last for free; "CHW": plain NCHW), or uint8 HWC (normalize=False)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    normalize: bool = True
    layout: str = "HWC"


@dataclass(frozen=True)
class Settings:
    """Every setting a loader graph takes after its `*`; `run_graph` passes each graph those it names."""

    decoder: Decoder
    out: Output
    crop: tuple[int, int]
    roi: str  # "slice": decode only the crop window | "resize": decode the frame, resize the window
    eval_size: tuple[int, int] | None
    eval_label_resize: bool
    label_arrays: bool  # labels fed as H x W arrays (prepared npy), not PNG bytes
    raw_label_ids: bool  # labels hold Cityscapes labelIds, mapped to trainIds here


def graph_inputs(graph: Callable[..., Any]) -> tuple[str, ...]:
    """A graph's DataNode inputs in order: its parameters before the `*` (the rest are settings)."""
    params = inspect.signature(graph).parameters.values()
    return tuple(p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD)


def graph_settings(graph: Callable[..., Any]) -> tuple[str, ...]:
    """The `Settings` fields a graph takes (its keyword-only parameters)."""
    return tuple(p.name for p in inspect.signature(graph).parameters.values() if p.kind is p.KEYWORD_ONLY)


def run_graph(graph: Callable[..., Any], inputs: NamedTuple, settings: Settings) -> Any:
    """`graph` on `inputs` (DataNodes named as its inputs) with the settings it names."""
    return graph(**inputs._asdict(), **{name: getattr(settings, name) for name in graph_settings(graph)})


def decode(images: DataNode, decoder: Decoder) -> DataNode:
    return fn.decoders.image(images, output_type=types.RGB, **decoder.kwargs())


def decode_window(images: DataNode, anchor: DataNode, shape: DataNode, decoder: Decoder) -> DataNode:
    """Decode only the rows/cols [anchor, anchor + shape) of each image (its crop's source window)."""
    return fn.decoders.image_slice(
        images, anchor, shape, axis_names="HW", output_type=types.RGB, **decoder.kwargs()
    )


def label_input(labels: DataNode, arrays: bool, window: tuple[DataNode, DataNode] | None = None) -> DataNode:
    """H x W x 1 uint8 labels on the CPU: npy arrays already read on the host (the window only, in
    training), or PNGs decoded by DALI's CPU codec (the slice decoder keeps only the window)."""
    if arrays:
        return fn.reshape(labels, layout="HWC")
    if window is None:
        return fn.decoders.image(labels, device="cpu", output_type=types.GRAY)
    return fn.decoders.image_slice(
        labels, window[0], window[1], axis_names="HW", device="cpu", output_type=types.GRAY
    )


def train_ids(labels: DataNode, raw_label_ids: bool) -> DataNode:
    """Raw Cityscapes labelIds -> trainIds (every non-evaluated id -> 255); prepared labels as they are.
    Applied after the nearest-neighbour geometry, so it maps crop-sized labels, not frames."""
    if not raw_label_ids:
        return labels

    keys = [i for i in range(256) if int(ID_TO_TRAINID[i]) != 255]
    values = [int(ID_TO_TRAINID[i]) for i in keys]
    return fn.lookup_table(labels, keys=keys, values=values, default_value=255, dtype=types.UINT8)


def finish_images(images: DataNode, out: Output, mirror: DataNode | None = None) -> DataNode:
    """Flip (per-sample `mirror`), then normalize to float in out.layout, or stay uint8 HWC."""
    if not out.normalize:
        return images if mirror is None else fn.flip(images, horizontal=mirror)
    kw = {} if mirror is None else {"mirror": mirror}
    return fn.crop_mirror_normalize(
        images,
        mean=[255.0 * m for m in out.mean],
        std=[255.0 * s for s in out.std],
        dtype=types.FLOAT,
        output_layout=out.layout,
        **kw,
    )


def resize_to(images: DataNode, size: DataNode) -> DataNode:
    """Antialiased bilinear resize to the per-sample (h, w) `size`."""
    return fn.resize(images, size=size, interp_type=types.INTERP_LINEAR, antialias=True)


def label_geometry(labels: DataNode, size: DataNode, flip: DataNode) -> DataNode:
    """Nearest-neighbour resize (no new class value can appear) and the same flip as the image."""
    labels = fn.resize(labels, size=size, interp_type=types.INTERP_NN, antialias=False)
    return fn.flip(labels, horizontal=flip)


def _targets(labels: DataNode) -> DataNode:
    return fn.squeeze(labels, axis_names="C")  # H x W x 1 -> H x W uint8


def decode_graph(images: DataNode, *, decoder: Decoder) -> DataNode:
    """Decode-only (loader.decode_only): whole frames, uint8 H x W x 3, no labels."""
    return decode(images, decoder)


def train_graph(
    images: DataNode,
    labels: DataNode,
    anchor: DataNode,
    shape: DataNode,
    size: DataNode,
    flip: DataNode,
    *,
    decoder: Decoder,
    out: Output,
    crop: tuple[int, int],
    roi: str,
    label_arrays: bool,
    raw_label_ids: bool,
) -> tuple[DataNode, DataNode]:
    """Training: decode the crop's source window (roi "slice"; "resize": the frame, then resize only
    the window), resize to `size`, flip, normalize, pad bottom/right to `crop` (image 0 after
    normalization, label 255). The random values arrive per sample from the plan (plan.py), drawn
    once for image and label."""
    labels = label_input(labels, label_arrays, None if label_arrays else (anchor, shape))
    if roi == "slice":
        images = resize_to(decode_window(images, anchor, shape, decoder), size)
    else:
        images = decode(images, decoder)
        images = fn.resize(
            images,
            size=size,
            roi_start=fn.cast(anchor, dtype=types.FLOAT),
            roi_end=fn.cast(anchor + shape, dtype=types.FLOAT),
            roi_relative=False,
            interp_type=types.INTERP_LINEAR,
            antialias=True,
        )
    images = finish_images(images, out, mirror=flip)
    if decoder.on_gpu:
        labels = labels.gpu()
    labels = train_ids(label_geometry(labels, size, flip), raw_label_ids)
    images = fn.pad(images, fill_value=0.0, shape=list(crop), axis_names="HW")
    labels = fn.pad(labels, fill_value=255, shape=list(crop), axis_names="HW")
    return images, _targets(labels)


def window_graph(
    images: DataNode,
    labels: DataNode,
    anchor: DataNode,
    shape: DataNode,
    *,
    decoder: Decoder,
    roi: str,
    label_arrays: bool,
    raw_label_ids: bool,
) -> tuple[DataNode, DataNode]:
    """Training with the torch tail (DALI on the CPU): DALI decodes the source windows (roi "resize":
    whole frames) and the label windows (npy labels arrive cut by the host); resize, flip, normalize
    and pad happen in torch."""
    labels = label_input(labels, label_arrays, None if label_arrays else (anchor, shape))
    images = decode_window(images, anchor, shape, decoder) if roi == "slice" else decode(images, decoder)
    return images, train_ids(labels, raw_label_ids)  # the lookup commutes with the NN geometry


def frame_graph(
    images: DataNode, labels: DataNode, *, decoder: Decoder, raw_label_ids: bool
) -> tuple[DataNode, DataNode]:
    """Training with the torch tail, roi "resize" and npy labels: nothing to window in DALI (whole
    frames are decoded; the host fed the label windows), so no window is fed either."""
    labels = label_input(labels, arrays=True)
    return decode(images, decoder), train_ids(labels, raw_label_ids)


def eval_graph(
    images: DataNode,
    labels: DataNode,
    *,
    decoder: Decoder,
    out: Output,
    eval_size: tuple[int, int] | None,
    eval_label_resize: bool,
    label_arrays: bool,
    raw_label_ids: bool,
) -> tuple[DataNode, DataNode]:
    """Evaluation: whole frames (resized to eval_size if set; labels too with eval_label_resize),
    normalized; frames of different sizes in one batch are padded to the largest (image 0, label 255)."""
    images = decode(images, decoder)
    labels = label_input(labels, label_arrays)
    if decoder.on_gpu:
        labels = labels.gpu()
    if eval_size is not None:
        images = fn.resize(images, size=list(eval_size), interp_type=types.INTERP_LINEAR, antialias=True)
        if eval_label_resize:
            labels = fn.resize(labels, size=list(eval_size), interp_type=types.INTERP_NN, antialias=False)
    labels = train_ids(labels, raw_label_ids)
    images = fn.pad(finish_images(images, out), fill_value=0.0, axis_names="HW")
    labels = fn.pad(labels, fill_value=255, axis_names="HW")
    return images, _targets(labels)

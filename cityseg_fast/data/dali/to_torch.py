"""The hand-off of a DALI pipeline's outputs to torch: one method per hand-off that ROUTES (loader.py) names.

DALI on the GPU: zero-copy DLPack views bound to the consumer's stream; DALI and the model on the CPU:
zero-copy views, or the torch tail writing normalized crops into reused buffers; DALI on the CPU
feeding a GPU: uint8 into pinned memory, normalized on the GPU (handoff.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

import torch

from cityseg_fast.data.batch import Batch, to_layout
from cityseg_fast.data.handoff import HostBatch, finish, frames_batch, pinned
from cityseg_fast.data.plan import LoaderSpec
from cityseg_fast.data.resample import BufferPool, Normalizer, one_thread, resize_image, resize_label

if TYPE_CHECKING:
    from cityseg_fast.data.dali.inputs import HostInputs
    from cityseg_fast.data.dali.loader import Mode
# ---------------------------------------------------------------------------------------------
# the hand-off: a graph's outputs -> the Batch contract


def _index(items: list) -> torch.Tensor:
    return torch.tensor([it.index for it in items], dtype=torch.int64)


def _view(outputs: Any) -> torch.Tensor:
    """A DALI output batch as a tensor, zero-copy (the dynamic executor keeps it alive while used)."""
    return torch.from_dlpack(outputs.as_tensor())


class ToTorch:
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


def _nchw(image: torch.Tensor, layout: str) -> torch.Tensor:
    """DALI's N x H x W x C (a channels_last view once permuted) or N x C x H x W output as N x C x H x W."""
    return image.permute(0, 3, 1, 2) if layout == "HWC" else image

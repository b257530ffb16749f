"""The training transform's CPU tail in torch: resize a crop window, flip, normalize.

Shared by the `torch` backend (in its workers and main process) and by the `dali` backend when
DALI runs on the CPU. Why torch and not DALI's own operators there: DALI's CPU `fn.resize` is a
generic float resampler and its `crop_mirror_normalize` a generic kernel, while torch has a uint8
antialiased bilinear kernel (SIMD, channels_last) and the row-wise normalization below; measured per
operator in `reports/cpu-loaders/` (benchmarks/dali_stages.py), DALI's CPU tail cost more than the
decode it follows. On a GPU, DALI's resize and normalize are nearly free and stay in DALI.

Semantics match DALI's `INTERP_LINEAR, antialias=True` and PIL's BILINEAR (a triangle filter
widened when downscaling); labels use nearest-exact (pixel centres, as DALI's and PIL's nearest),
so no new class value can appear.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


@contextlib.contextmanager
def one_thread():
    """Run the tail's small per-sample ops on the calling thread only. With torch's default pool,
    each op's parallel region leaves OpenMP workers spinning on the cores DALI's threads (or the
    DataLoader workers) decode on (CPU time and images/s lost: reports/cpu-loaders/)."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def resize_image(img: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """uint8 H x W x 3 -> uint8 out_h x out_w x 3 (antialiased bilinear), HWC-contiguous."""
    if tuple(img.shape[:2]) == tuple(out_hw):
        return img
    # 1 x H x W x 3 permuted is channels_last with a proper batch stride; with a stride-3 batch
    # dim (permute, then unsqueeze) torch takes it for NCHW: the slower kernel, and an NCHW output.
    x = img.contiguous().unsqueeze(0).permute(0, 3, 1, 2)
    y = F.interpolate(x, size=tuple(out_hw), mode="bilinear", antialias=True, align_corners=False)
    return y.permute(0, 2, 3, 1)[0].contiguous()  # a no-op: interpolate keeps channels_last


def resize_label(lab: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """uint8 H x W -> uint8 out_h x out_w, nearest (pixel centres): only existing values."""
    if tuple(lab.shape) == tuple(out_hw):
        return lab
    return F.interpolate(lab[None, None], size=tuple(out_hw), mode="nearest-exact")[0, 0]


class Normalizer:
    """(x - 255 * mean) / (255 * std) for uint8 HWC images, written straight into a float buffer.

    Broadcasting a 3-wide channel axis runs torch's slow (non-vectorized) path; a row of H x (W * 3)
    values against per-column scale and bias rows vectorizes (the two are compared in reports/cpu-loaders/).
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device=None) -> None:
        self.scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=device)
        self.bias = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)], device=device)
        self._rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _row(self, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        if w not in self._rows:
            self._rows[w] = (self.scale.repeat(w), self.bias.repeat(w))
        return self._rows[w]

    def into(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        """dst: float H x W x 3 view with contiguous rows (a batch slot); src: uint8 h x w x 3 with
        h <= H, w <= W, written to the top-left corner. The rest of dst is left as it is."""
        h, w = src.shape[0], src.shape[1]
        W = dst.shape[1]
        scale, bias = self._row(w)
        out = dst.view(dst.shape[0], W * 3)[:h, : w * 3]
        out.copy_(src.reshape(h, w * 3)).mul_(scale).add_(bias)

    def batch(self, images: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 N x H x W x 3 -> float N x H x W x 3 (normalized), one pass per operation."""
        n, h, w, _ = images.shape
        if out is None:
            out = torch.empty((n, h, w, 3), dtype=torch.float32, device=images.device)
        scale, bias = self._row(w)
        flat = out.view(n * h, w * 3)
        flat.copy_(images.reshape(n * h, w * 3)).mul_(scale).add_(bias)
        return out


class BufferPool:
    """Reuses float batch tensors on the CPU once the consumer has dropped every view of them.

    A fresh 16 MB batch costs its page faults on first write, which cost more than the
    normalization itself (reports/cpu-loaders/). A buffer is handed out again only when nothing but the pool
    references its storage (torch's storage use count), so a batch the caller still holds, or any
    view of it, is never overwritten. A buffer that was moved to shared memory (a batch put on a
    torch.multiprocessing queue: the receiver's reference is not counted here) is dropped, never
    reused. Without the count (a private torch API) every call allocates.
    """

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self.buffers: list[tuple[torch.Tensor, int]] = []
        self._use_count = getattr(torch._C, "_storage_Use_Count", None)

    def _refs(self, t: torch.Tensor) -> int:
        return self._use_count(t.untyped_storage()._cdata)

    def _free(self, t: torch.Tensor, free: int) -> bool:
        return self._refs(t) == free and not t.is_shared()

    def get(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if self._use_count is None:
            return torch.empty(shape, dtype=dtype)
        self.buffers = [(t, free) for t, free in self.buffers if not t.is_shared()]
        for t, free in self.buffers:
            if tuple(t.shape) == tuple(shape) and t.dtype == dtype and self._free(t, free):
                return t.view(t.shape)  # an alias: it counts as a use of the storage while held
        if len(self.buffers) >= self.size:  # full: replace a free buffer of a stale shape, if any
            stale = next((i for i, (t, free) in enumerate(self.buffers) if self._free(t, free)), None)
            if stale is None:
                return torch.empty(shape, dtype=dtype)  # all in use: a one-off, not pooled
            del self.buffers[stale]
        t = torch.empty(shape, dtype=dtype)
        self.buffers.append((t, self._refs(t)))  # the count while only the pool holds it
        return t.view(t.shape)

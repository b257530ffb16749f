"""The training transform with torch ops on the device that holds the decoded frames (the GPU loader's).

    img = resize_frame(frame[:, y:y+h, x:x+w], (out_h, out_w))   # float 3 x out_h x out_w, 0..255
    img, lab = train_sample(frame, label_window, geometry)       # + nearest label, flip
    batch = assemble(images, labels, pad_to, normalizer, channels_last, index)   # the Batch contract

The `torch` backend's GPU path (torch_gpu_loader.py) decodes with nvJPEG into 3 x H x W uint8 frames on
the GPU and runs these functions there; they are device-agnostic, so the tests run them on CPU tensors
against the torch CPU loader on the same plan. The same geometry (plan.crop_geometry: crop before resize),
the same antialiased bilinear resize (torch's float kernel on a GPU: its uint8 one is CPU-only), rounded to
whole levels as the CPU loader's uint8 kernel rounds, the same nearest-exact labels (resample.resize_label),
the same normalization constants (resample.Normalizer), the same padding (image 0 after normalization,
label 255).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cityseg_fast.data.batch import Batch, memory_format
from cityseg_fast.data.plan import Geometry
from cityseg_fast.data.resample import Normalizer, resize_label


def resize_frame(chw: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """uint8 3 x h x w -> float 3 x out_h x out_w in 0..255 (antialiased bilinear, rounded)."""
    x = chw.unsqueeze(0).float()
    if tuple(chw.shape[1:]) != tuple(out_hw):
        x = F.interpolate(x, size=tuple(out_hw), mode="bilinear", antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255)  # whole levels, as the CPU loader's uint8 kernel gives
    return x[0]


def train_sample(frame: torch.Tensor, label_window: torch.Tensor, g: Geometry) -> tuple[torch.Tensor, torch.Tensor]:
    """(float 3 x out_h x out_w image, uint8 out_h x out_w label) of one planned sample: `frame` is the
    whole decoded frame (3 x H x W), `label_window` the label's rows/cols of the window alone."""
    image = resize_frame(frame[:, g.y : g.y + g.h, g.x : g.x + g.w], (g.out_h, g.out_w))
    label = resize_label(label_window, (g.out_h, g.out_w))
    if g.flip:
        image, label = image.flip(-1), label.flip(-1)
    return image, label


def eval_sample(
    frame: torch.Tensor, label: torch.Tensor, eval_size: tuple[int, int] | None, label_resize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole frame for evaluation: resized to eval_size if set (the label too with label_resize)."""
    image = resize_frame(frame, eval_size or tuple(frame.shape[1:]))
    if eval_size is not None and label_resize:
        label = resize_label(label, eval_size)
    return image, label


def _pad_hw(tensors: list[torch.Tensor], pad_to: tuple[int, int]) -> tuple[int, int]:
    return max(pad_to[0], *(t.shape[-2] for t in tensors)), max(pad_to[1], *(t.shape[-1] for t in tensors))


def assemble(
    images: list[torch.Tensor],
    labels: list[torch.Tensor],
    pad_to: tuple[int, int],
    norm: Normalizer,
    channels_last: bool,
    index: torch.Tensor,
) -> Batch:
    """Normalized images padded with 0 and int64 labels padded with 255 to the batch's largest size and
    at least `pad_to`, on the images' device, in the model's memory format."""
    device, n = images[0].device, len(images)
    H, W = _pad_hw(images, pad_to)
    out = torch.empty((n, 3, H, W), device=device, memory_format=memory_format(channels_last)).zero_()
    scale, bias = norm.scale.to(device).view(3, 1, 1), norm.bias.to(device).view(3, 1, 1)
    for k, img in enumerate(images):
        torch.addcmul(bias, img, scale, out=out[k, :, : img.shape[1], : img.shape[2]])
    lh, lw = _pad_hw(labels, pad_to)
    target = torch.full((n, lh, lw), 255, dtype=torch.int64, device=device)
    for k, lab in enumerate(labels):
        target[k, : lab.shape[0], : lab.shape[1]] = lab
    return Batch(out, target, index)


def assemble_frames(frames: list[torch.Tensor], index: torch.Tensor) -> Batch:
    """Decode-only: the uint8 frames as N x 3 x H x W (padded with 0 to the largest) and an empty target."""
    H, W = _pad_hw(frames, (0, 0))
    out = torch.zeros((len(frames), 3, H, W), dtype=torch.uint8, device=frames[0].device)
    for k, f in enumerate(frames):
        out[k, :, : f.shape[1], : f.shape[2]] = f
    return Batch(out, torch.empty((len(frames), 0, 0), dtype=torch.int64, device=out.device), index)

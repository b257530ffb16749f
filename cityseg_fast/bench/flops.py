"""FLOPs per image (forward, and a training step = forward + backward) and peak dense FLOP/s per GPU, for MFU.

Counting uses `torch.utils.flop_counter.FlopCounterMode`, which counts matmuls, convolutions (forward
and backward) and attention: the convention MFU numbers use. Elementwise ops, normalisation, pooling and
interpolation do arithmetic it does not count; `uncounted_ops` names the ones of those a model ran, so a
reader can judge. By default the model runs on the meta device (shapes only, no arithmetic, no copy of
the weights), so counting fcn_resnet101 at 1024x2048 takes a second on a laptop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from cityseg_fast.config_ranges import check_choice
from cityseg_fast.engine.precision import unwrap_model

# Op names that do real arithmetic per element but are outside FlopCounterMode's registry. Matched
# against the aten op name; views, copies, fills and reductions of bookkeeping size are left out.
_COMPUTE_OP = re.compile(
    r"conv|mm|matmul|linear|einsum|attention|batch_norm|layer_norm|group_norm|instance_norm|pool|"
    r"upsample|interpolate|grid_sampler|softmax|cross_entropy|nll_loss"
)


@dataclass(frozen=True)
class FlopCount:
    """FLOPs per image at one (H, W); a multiply-add counts as 2 FLOPs."""

    hw: tuple[int, int]
    forward_per_image: float
    train_step_per_image: float  # forward + backward (the optimizer's elementwise update is not counted)
    uncounted_ops: list[str] = field(default_factory=list)


class _OpRecorder(TorchDispatchMode):
    """Records every aten op overload packet dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[Any] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        self.ops.add(func._overloadpacket)
        return func(*args, **(kwargs or {}))


def _plain(model: nn.Module) -> nn.Module:
    return unwrap_model(model)


def _logits(out: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
    if isinstance(out, dict):
        return sum(v.float().sum() for v in out.values())  # type: ignore[return-value]
    return out.float().sum()


def _run(model: nn.Module, x: torch.Tensor, train: bool, on_meta: bool) -> tuple[float, set[Any]]:
    """FLOPs of one forward (train=False, eval mode, no grad) or forward+backward (train mode)."""
    if on_meta:
        tensors = {
            k: torch.empty_like(v, device="meta").requires_grad_(v.requires_grad and train)
            for k, v in {**dict(model.named_parameters()), **dict(model.named_buffers())}.items()
        }
    was_training = model.training
    model.train(train)
    recorder = _OpRecorder()
    counter = FlopCounterMode(display=False)
    try:
        with counter, recorder, torch.set_grad_enabled(train):
            out = functional_call(model, tensors, (x,)) if on_meta else model(x)
            if train:
                _logits(out).backward()
    finally:
        model.train(was_training)
    return float(counter.get_total_flops()), recorder.ops


def count_flops(model: nn.Module, hw: tuple[int, int], batch: int = 1, on_meta: bool = True) -> FlopCount:
    """FLOPs per image of `model` at input (H, W): forward (eval mode) and a training step (train mode).

    The backward of the input image is not computed (the input does not require grad), as in training.
    Models with an aux head count it in the training step only, as they run it only there.
    """
    model = _plain(model)
    h, w = hw
    device = "meta" if on_meta else next(model.parameters()).device
    x = torch.empty(batch, 3, h, w, device=device) if on_meta else torch.randn(batch, 3, h, w, device=device)
    fwd, ops_f = _run(model, x, train=False, on_meta=on_meta)
    train, ops_t = _run(model, x, train=True, on_meta=on_meta)
    uncounted = sorted(
        str(op)
        for op in ops_f | ops_t
        if op not in flop_registry and _COMPUTE_OP.search(str(op).split(".")[1])
    )
    return FlopCount(
        hw=(h, w), forward_per_image=fwd / batch, train_step_per_image=train / batch, uncounted_ops=uncounted
    )


# --- peak dense FLOP/s ---------------------------------------------------------------------------
# Dense (no 2:4 sparsity) peaks from NVIDIA's datasheets, in TFLOP/s. The datasheets quote tensor-core
# TF32/BF16/FP16 "with sparsity"; the dense figure is half of that. fp32 = non-tensor-core FP32.
#   H100 SXM / PCIe / NVL: "NVIDIA H100 Tensor Core GPU" datasheet (2023).
#   H200 SXM / NVL: "NVIDIA H200 Tensor Core GPU" datasheet (2024); H200 SXM has H100 SXM's compute.
#   A100 SXM / PCIe (40 and 80 GB): "NVIDIA A100 Tensor Core GPU" datasheet (2021).
#   L4: "NVIDIA L4 Tensor Core GPU" datasheet (2023). L40S: "NVIDIA L40S" datasheet (2023).
#   A10: "NVIDIA A10 Tensor Core GPU" datasheet (2021).
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H100 SXM": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.2},
    "H100 NVL": {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "H200 SXM": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H200 NVL": {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "A100 SXM": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "A100 PCIe": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6},
    "L4": {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "A10": {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2},
}

# (pattern on the upper-cased device name, table key); first match wins, so specific names come first.
# Device names as torch/NVML report them, e.g. "NVIDIA H100 80GB HBM3" (SXM5), "NVIDIA H100 PCIe",
# "NVIDIA H100 NVL", "NVIDIA H200", "NVIDIA H200 NVL", "NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe",
# "NVIDIA A100-PCIE-40GB", "NVIDIA L4", "NVIDIA L40S", "NVIDIA A10".
_GPU_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"\bH200\b.*\bNVL\b", "H200 NVL"),
    (r"\bH200\b", "H200 SXM"),
    (r"\bH100\b.*\bNVL\b", "H100 NVL"),
    (r"\bH100\b.*\bPCIE\b", "H100 PCIe"),
    (r"\bH100\b.*\b(SXM|HBM3)", "H100 SXM"),
    (r"\bA100\b.*\bSXM", "A100 SXM"),
    (r"\bA100\b.*\bPCIE\b", "A100 PCIe"),
    (r"\bL40S\b", "L40S"),
    (r"\bL4\b", "L4"),
    (r"\bA10\b", "A10"),
)


def gpu_model(gpu_name: str | None) -> str | None:
    """The PEAK_TFLOPS key for a device name, or None (CPU, unknown GPU, or a MIG slice)."""
    if not gpu_name:
        return None
    name = gpu_name.upper().replace("_", " ")
    if "MIG" in name.split():  # a MIG slice has a fraction of the GPU's peak: no honest number
        return None
    for pattern, key in _GPU_PATTERNS:
        if re.search(pattern, name):
            return key
    return None


def peak_flops(gpu_name: str | None, dtype: str) -> float | None:
    """Peak dense FLOP/s of `gpu_name` at `dtype` (a precision.dtype word); None for the CPU or an unknown GPU."""
    check_choice("precision.dtype", dtype)
    key = gpu_model(gpu_name)
    return None if key is None else PEAK_TFLOPS[key][dtype] * 1e12


def mfu(achieved_flops_per_s: float, gpu_name: str | None, dtype: str) -> float | None:
    """Model FLOPs utilisation: achieved / peak, or None where there is no honest peak."""
    peak = peak_flops(gpu_name, dtype)
    return None if peak is None else achieved_flops_per_s / peak

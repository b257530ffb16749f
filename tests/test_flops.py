"""FLOP counting against analytic counts, and the peak-FLOP/s table's name matching."""

from __future__ import annotations

import pytest
import torch

from cityseg_fast.bench.flops import count_flops, gpu_model, mfu, peak_flops
from cityseg_fast.errors import UserError
from cityseg_fast.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


class OneConv(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 5, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("on_meta", [True, False])
def test_single_conv_matches_analytic_count(on_meta):
    n, cin, cout, k, h, w = 2, 3, 8, 5, 31, 40
    hout, wout = (h + 2 - k) // 2 + 1, (w + 2 - k) // 2 + 1
    fc = count_flops(OneConv(), (h, w), batch=n, on_meta=on_meta)
    fwd = 2 * cin * cout * k * k * hout * wout * n
    assert fc.forward_per_image * n == fwd
    # Backward of a conv = grad of the weight (same count); the input needs no grad in a training step.
    assert fc.train_step_per_image * n == 2 * fwd
    assert fc.uncounted_ops == []


def test_unet_count_is_per_image_and_lists_uncounted_ops():
    model = create_model("unet_s16")
    one = count_flops(model, (64, 96), batch=1)
    two = count_flops(model, (64, 96), batch=2)
    assert one.forward_per_image == two.forward_per_image > 0
    assert 2 * one.forward_per_image < one.train_step_per_image < 3.5 * one.forward_per_image
    assert (
        "aten.native_batch_norm" in one.uncounted_ops and "aten.max_pool2d_with_indices" in one.uncounted_ops
    )
    assert not any("convolution" in op for op in one.uncounted_ops)
    assert next(model.parameters()).device.type == "cpu"  # counting on meta leaves the model alone


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA H200", "H200 SXM"),
        ("NVIDIA H200 NVL", "H200 NVL"),
        ("NVIDIA A100-SXM4-80GB", "A100 SXM"),
        ("NVIDIA A100-SXM4-40GB", "A100 SXM"),
        ("NVIDIA A100-PCIE-40GB", "A100 PCIe"),
        ("NVIDIA A100 80GB PCIe", "A100 PCIe"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA A10", "A10"),
        ("NVIDIA A10G", None),
        ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", None),
        ("Tesla T4", None),
        (None, None),
        ("", None),
    ],
)
def test_gpu_name_matching(name, key):
    assert gpu_model(name) == key


def test_peak_values_and_mfu():
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989.4e12)
    assert peak_flops("NVIDIA A100-SXM4-80GB", "tf32") == pytest.approx(156e12)
    assert peak_flops("NVIDIA L4", "fp32") == pytest.approx(30.3e12)
    assert peak_flops(None, "bf16") is None
    assert mfu(494.7e12, "NVIDIA H200", "bf16") == pytest.approx(0.5)
    assert mfu(1e12, "Intel Xeon", "fp32") is None
    with pytest.raises(UserError):
        peak_flops("NVIDIA L4", "int8")

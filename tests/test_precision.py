"""Precision helpers: dtype validation, autocast, the fp16 scaler step (skips on inf), prepare_model,
and torch.compile of a tiny U-Net (matches eager, no recompile at the same shape, counted at a new one)."""

from __future__ import annotations

import pytest
import torch

from cityseg_fast.config import PrecisionConfig
from cityseg_fast.engine.precision import (
    ScalerStep,
    autocast,
    compile_counters,
    prepare_model,
    reset_compile_counters,
    setup_precision,
    to_channels_last,
    unwrap_model,
)
from cityseg_fast.errors import UserError
from cityseg_fast.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bad_names_are_user_errors():
    with pytest.raises(UserError, match="precision.dtype"):
        setup_precision("fp8")
    with pytest.raises(UserError, match="precision.dtype"):
        autocast("half", "cpu")
    with pytest.raises(UserError, match="precision.compile"):
        prepare_model(torch.nn.Conv2d(3, 3, 1), PrecisionConfig(compile="fast"), "cpu")


def _tf32_getters() -> dict:
    """Every TF32 getter of both torch APIs (legacy flags and the newer fp32_precision attributes);
    inductor reads the legacy ones while it compiles, so none may raise."""
    b = torch.backends
    return {
        "matmul.allow_tf32": b.cuda.matmul.allow_tf32,
        "cudnn.allow_tf32": b.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "matmul.fp32_precision": getattr(b.cuda.matmul, "fp32_precision", None),
        "cudnn.conv.fp32_precision": getattr(getattr(b.cudnn, "conv", None), "fp32_precision", None),
    }


@pytest.mark.parametrize("dtype", ["fp32", "tf32", "bf16", "fp16", "fp32"])
def test_setup_precision_keeps_every_tf32_getter_readable(dtype):
    setup_precision(dtype, cudnn_benchmark=dtype != "fp16")
    g = _tf32_getters()  # raised "mix of legacy and new TF32 APIs" when only the new API was set
    tf32 = dtype != "fp32"
    assert g["matmul.allow_tf32"] is tf32 and g["cudnn.allow_tf32"] is tf32
    assert g["float32_matmul_precision"] == ("high" if tf32 else "highest")
    if g["matmul.fp32_precision"] is not None:  # torch >= 2.9 mirrors the legacy setting
        assert g["matmul.fp32_precision"] == ("tf32" if tf32 else "ieee")
    assert torch.backends.cudnn.benchmark is (dtype != "fp16")
    setup_precision("fp32", cudnn_benchmark=None)
    assert torch.backends.cudnn.benchmark is (dtype != "fp16")  # None leaves it alone


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [("fp32", torch.float32), ("tf32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)],
)
def test_autocast_on_cpu(dtype, expected):
    conv = torch.nn.Conv2d(3, 4, 3)
    with autocast(dtype, "cpu"):
        assert conv(torch.randn(1, 3, 8, 8)).dtype == expected


def _tiny_step_setup(enabled: bool):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, opt, ScalerStep(enabled, "cpu")


def test_fp16_scaler_skips_step_on_inf_gradients():
    model, opt, scaler = _tiny_step_setup(enabled=True)
    before = [p.detach().clone() for p in model.parameters()]
    scale0 = scaler.get_scale()
    loss = model(torch.full((1, 4), float("inf"))).sum()  # inf activations -> inf/nan gradients
    scaler(loss, opt)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert scaler.get_scale() == scale0 * 0.5  # GradScaler backs off by 0.5
    # A finite loss then does step, with the gradients unscaled (same update as plain SGD).
    opt.zero_grad()
    x = torch.randn(3, 4)
    scaler(model(x).sum(), opt, clip=100.0)
    ref, ref_opt, _ = _tiny_step_setup(enabled=False)
    ref(x).sum().backward()
    ref_opt.step()
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert scaler.state_dict()["scale"] == scale0 * 0.5


def test_scaler_disabled_for_bf16_and_state_roundtrip():
    assert not ScalerStep.for_dtype("bf16", "cpu").enabled
    assert ScalerStep.for_dtype("fp16", "cpu").enabled
    model, opt, scaler = _tiny_step_setup(enabled=False)
    w0 = model.weight.detach().clone()
    scaler(model(torch.randn(2, 4)).sum(), opt, clip=1e-3)
    assert (model.weight - w0).abs().max() <= 0.1 * 1e-3 + 1e-7  # clip bounded the step (lr 0.1)
    s = ScalerStep(True, "cpu")
    s.load_state_dict(
        {
            "scale": 128.0,
            "growth_factor": 2.0,
            "backoff_factor": 0.5,
            "growth_interval": 7,
            "_growth_tracker": 3,
        }
    )
    assert s.get_scale() == 128.0 and s.state_dict()["growth_interval"] == 7


def test_prepare_model_channels_last():
    model = prepare_model(create_model("unet_s16", base_width=2), PrecisionConfig(channels_last=True), "cpu")
    assert model.stem[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    x = to_channels_last(torch.randn(2, 3, 16, 16))
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert model(x).is_contiguous(memory_format=torch.channels_last)


def test_compile_tiny_unet_matches_eager_without_recompiling():
    torch.manual_seed(0)
    cfg = PrecisionConfig(channels_last=True, compile="default")
    model = prepare_model(create_model("unet", base_width=2).eval(), cfg, "cpu")
    eager = unwrap_model(model)
    assert eager is not model
    torch._dynamo.reset()
    reset_compile_counters()
    x = to_channels_last(torch.randn(1, 3, 16, 16))
    with torch.no_grad():
        out = model(x)
        first = compile_counters()
        assert first["frames_ok"] >= 1 and first["unique_graphs"] >= 1 and first["compile_s"] > 0
        torch.testing.assert_close(out, eager(x), rtol=1e-3, atol=1e-3)
        model(to_channels_last(torch.randn(1, 3, 16, 16)))  # same shape: guards hold, no new compile
        again = compile_counters()
        assert again["recompiles"] == 0 and again["unique_graphs"] == first["unique_graphs"]


def test_compile_counters_count_a_recompile_at_a_new_shape():
    # backend="eager": dynamo's guards and counters without Inductor's (slow on CPU) code generation.
    fn = torch.compile(lambda x: x * 2 + 1, backend="eager", dynamic=False)
    torch._dynamo.reset()
    reset_compile_counters()
    fn(torch.randn(3))
    fn(torch.randn(3))
    assert compile_counters()["recompiles"] == 0
    fn(torch.randn(5))
    c = compile_counters()
    assert c["recompiles"] == 1 and c["frames_ok"] == 2
    assert "size mismatch" in c["recompile_reasons"][0]

"""Models: every registered model runs forward+backward at odd sizes and keeps channels_last, and runs under
bf16 autocast; the FCN-VGG16 family's geometry (crop offsets, any input size) and VGG16 / VGG16-BN conversion;
U-Net options; registry and config errors."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from torch import nn

from cityseg_fast.config import Config, replace
from cityseg_fast.errors import UserError
from cityseg_fast.hardware import bf16_support
from cityseg_fast.models import create_model, list_models, model_from_config
from cityseg_fast.models.blocks import bilinear_kernel
from cityseg_fast.models.fcn import FCNVGG16, SKIP_OFFSETS, vgg16_to_fcn
from cityseg_fast.models.registry import model_kwargs

pytestmark = pytest.mark.usefixtures("one_thread")

# Builders that take a width are tested 8 wide: the pad-100 VGG FCNs run their backbone on (H + 198) x
# (W + 198) pixels, ~60x a 33x49 input, so one fp32 step at VGG16's width takes seconds (and a U-Net's
# emulated bf16 forward 4 s at width 64). Shapes, formats and dtypes do not depend on the width, and
# test_default_width_output_size builds every model at its default width.
VGG_FCNS = list_models("fcn*s_vgg16*")
EMULATED_BF16 = bf16_support("cpu") == "emulated"


def _narrow(name: str) -> nn.Module:
    width = {"base_width": 8} if "base_width" in model_kwargs(name) else {}
    return create_model(name, num_classes=19, **width)


def test_registry_names():
    names = list_models()
    for required in ("fcn_resnet50", "fcn_resnet101", "unet", "unet_s16", "unet_s32"):
        assert required in names
    for stride in (32, 16, 8):
        assert {f"fcn{stride}s_vgg16", f"fcn{stride}s_vgg16_bn"} <= set(names)
    assert list_models("unet*") == [n for n in names if n.startswith("unet")]


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_odd_size_channels_last(name):
    torch.manual_seed(0)
    model = _narrow(name)
    # Odd size, channels_last input: output must be N x 19 x H x W, channels_last, and train end to end.
    x = torch.randn(1, 3, 33, 49).contiguous(memory_format=torch.channels_last)
    model.train()
    out = model(x)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (1, 19, 33, 49)
    assert out.is_contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 19, (1, 33, 49))
    target[:, :4] = 255
    loss = torch.nn.functional.cross_entropy(out, target, ignore_index=255)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def _bf16_params() -> list:
    skip = pytest.mark.skip(reason="emulated bf16 here: ~60x slower than fp32, see hardware.bf16_support")
    return [pytest.param(n, marks=skip) if EMULATED_BF16 and n in VGG_FCNS else n for n in list_models()]


@pytest.mark.parametrize("name", _bf16_params())
def test_bf16_autocast_forward_contiguous(name):
    torch.manual_seed(0)
    model = _narrow(name).eval()
    # A contiguous input gives a contiguous output at another odd size; bf16 autocast forward works.
    y = torch.randn(1, 3, 35, 51)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(y)
    assert out.shape == (1, 19, 35, 51)
    assert out.dtype == torch.bfloat16
    assert out.is_contiguous()
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("name", list_models())
def test_default_width_output_size(name):
    with torch.device("meta"):  # shapes only: every model at its default width, without its seconds of init
        model = create_model(name, num_classes=19)
        assert model(torch.empty(2, 3, 33, 49)).shape == (2, 19, 33, 49)


@pytest.mark.parametrize("name", VGG_FCNS)
def test_fcn_vgg16_output_size_for_any_input_size(name):
    with torch.device("meta"):  # shapes only: checks the pad-100 + crop geometry for many sizes cheaply
        model = create_model(name, num_classes=19)
        for h, w in [(1, 1), (7, 9), (31, 33), (63, 65), (200, 201), (511, 1023), (1024, 2048), (1025, 2047)]:
            assert model(torch.empty(2, 3, h, w)).shape == (2, 19, h, w)


def _coord_map(modules: list[nn.Module], a: Fraction = Fraction(1), b: Fraction = Fraction(0)):
    """(a, b) with feature coordinate = a * input coordinate + b after `modules` (Caffe's coord_map)."""
    for m in modules:
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.ConvTranspose2d)):
            k, s, p = (v if isinstance(v, int) else v[0] for v in (m.kernel_size, m.stride, m.padding))
            if isinstance(m, nn.ConvTranspose2d):
                a, b = a * s, s * b + Fraction(k - 1, 2) - p
            else:
                a, b = a / s, (b + p - Fraction(k - 1, 2)) / s
    return a, b


@pytest.mark.parametrize("stride", [32, 16, 8])
def test_fcn_vgg16_crop_offsets_follow_from_its_layers(stride):
    """The crop offsets, derived again from the layers' kernels, strides and paddings, are the reference
    nets' (voc-fcn32s: 19; voc-fcn16s: 5, 27; voc-fcn8s: 5, 9, 31) and the ones the model uses."""
    with torch.device("meta"):
        m = FCNVGG16(3, stride=stride, base_width=1, batch_norm=True)
    feats = list(m.features)
    pool3, pool4 = _coord_map(feats[: m._pool3]), _coord_map(feats[: m._pool4])
    h = _coord_map([m.fc6, m.fc7, m.score_fr], *_coord_map(feats))  # 1/32
    skips = [("pool4", "upscore2", pool4), ("pool3", "upscore_pool4", pool3)][: {32: 0, 16: 1, 8: 2}[stride]]
    offsets = {}
    for skip, up, skip_map in skips:
        h = _coord_map([getattr(m, up)], *h)
        assert skip_map[0] == h[0]  # same scale: the skip is a pure shift of the upsampled scores
        offsets[skip] = skip_map[1] - h[1]
    a, offsets["out"] = _coord_map([m.final_upscore], *h)
    assert a == 1
    reference = {32: {"out": 19}, 16: {"pool4": 5, "out": 27}, 8: {"pool4": 5, "pool3": 9, "out": 31}}[stride]
    assert offsets == reference
    assert offsets == {**{k: SKIP_OFFSETS[k] for k, _, _ in skips}, "out": m.crop_offset}


@pytest.mark.parametrize("batch_norm", [False, True])
def test_fcn_vgg16_starts_as_bilinear_upsampler(batch_norm):
    k = bilinear_kernel(2, 2, 4)[0, 0]
    expected_1d = torch.tensor([0.25, 0.75, 0.75, 0.25])
    assert torch.allclose(k, expected_1d[:, None] * expected_1d[None, :])
    assert bilinear_kernel(2, 2, 4)[0, 1].abs().sum() == 0  # channels do not mix
    model = FCNVGG16(3, stride=8, base_width=8, batch_norm=batch_norm)
    assert not model.upscore8.weight.requires_grad and model.upscore2.weight.requires_grad
    assert model.upscore_pool4.weight.requires_grad
    assert not FCNVGG16(3, stride=32, base_width=1).final_upscore.weight.requires_grad
    # Zero-initialised score layers: the untrained net predicts exactly zero logits.
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 20, 24)).abs().max() == 0


def test_fcn_vgg16_width_and_batch_norm():
    with torch.device("meta"):
        m = FCNVGG16(5, stride=16, base_width=16, batch_norm=True)
        plain = FCNVGG16(5, stride=32)
    convs = [x for x in m.features if isinstance(x, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 16, 32, 32, 64, 64, 64] + [128] * 6
    assert all(c.bias is None for c in convs)  # BN supplies the shift
    assert sum(isinstance(x, nn.BatchNorm2d) for x in m.features) == 13
    assert m.fc6.out_channels == m.fc7.out_channels == 1024  # 64 x base_width: 4096 for VGG16
    assert not hasattr(m, "score_pool3") and m.score_pool4.in_channels == 128
    assert not any(isinstance(x, nn.BatchNorm2d) for x in plain.features)
    assert plain.fc6.in_channels == 512 and plain.fc7.out_channels == 4096
    assert not hasattr(plain, "upscore2")
    with pytest.raises(ValueError, match="stride"):
        FCNVGG16(5, stride=4)


def _fake_torchvision_state(batch_norm: bool) -> dict[str, torch.Tensor]:
    """A torchvision vgg16[_bn] state_dict with random values, in a fraction of the seconds its init takes:
    N(0, 0.01) like VGG's own init (fc6's sums over 25088 inputs stay fp32-comparable), drawn as one
    1,000,003-long (prime) random period, rolled to a random start per tensor and repeated: no two rows of
    fc6's weight and no two small tensors are alike."""
    import torchvision

    with torch.device("meta"):
        tv = (torchvision.models.vgg16_bn if batch_norm else torchvision.models.vgg16)(weights=None)
    period = 0.01 * torch.randn(1_000_003)
    out = {}
    for k, v in tv.state_dict().items():
        if not v.is_floating_point():
            out[k] = torch.zeros(v.shape, dtype=v.dtype)
        else:
            start = int(torch.randint(period.numel(), ()))
            flat = period.roll(-start).repeat(v.numel() // period.numel() + 1)[: v.numel()]
            out[k] = flat.view(v.shape).clone()
    return out


def test_fcn8s_loads_torchvision_vgg16_state_dict(tmp_path):
    torch.manual_seed(1)
    sd = _fake_torchvision_state(batch_norm=False)
    path = tmp_path / "vgg16.pth"
    torch.save(sd, path)
    model = create_model("fcn8s_vgg16", num_classes=5, pretrained=str(path))
    assert torch.equal(model.features[28].weight, sd["features.28.weight"])
    # fc6: the Linear over the flattened 512x7x7 map becomes a 7x7 conv with the same function.
    assert torch.equal(model.fc6.weight[7, 100, 2, 5], sd["classifier.0.weight"][7, 100 * 49 + 2 * 7 + 5])
    assert torch.equal(model.fc7.weight[:, :, 0, 0], sd["classifier.3.weight"])
    feat = torch.randn(1, 512, 7, 7)
    with torch.no_grad():
        lin = torch.nn.functional.linear(feat.flatten(1), sd["classifier.0.weight"], sd["classifier.0.bias"])
        conv = model.fc6(feat).flatten(1)
    torch.testing.assert_close(conv, lin, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="a vgg16 state_dict: expected a torchvision vgg16_bn"):
        vgg16_to_fcn(sd, batch_norm=True)


def test_vgg16_bn_conversion_folds_conv_bias_into_bn():
    torch.manual_seed(3)
    sd = _fake_torchvision_state(batch_norm=True)
    sd["features.7.bias"], sd["features.8.running_var"] = torch.randn(128), torch.rand(128) + 0.5
    converted = vgg16_to_fcn(sd, batch_norm=True)
    with torch.device("meta"):  # only the loaded tensors become real: no seconds of VGG16-wide init
        model = FCNVGG16(5, batch_norm=True)
    missing, unexpected = model.load_state_dict(converted, strict=False, assign=True)
    assert not unexpected and missing and all(k.startswith(("score", "upscore")) for k in missing)
    # torchvision's vgg16_bn indices are conv, bn, relu: conv4_3 is features[37], its BN features[38].
    assert (
        torch.equal(model.features[37].weight, sd["features.37.weight"]) and model.features[37].bias is None
    )
    assert torch.equal(model.features[38].weight, sd["features.38.weight"])
    assert torch.equal(model.fc7.weight[:, :, 0, 0], sd["classifier.3.weight"])
    # The conv bias is folded into the BN: block conv2_1-bn-relu computes what torchvision's does.
    tv = nn.Sequential(nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU())
    block = {k.removeprefix("features."): v for k, v in sd.items() if k.split(".")[1] in ("7", "8")}
    tv.load_state_dict({f"{int(k[0]) - 7}{k[1:]}": v for k, v in block.items()})
    x = torch.randn(2, 64, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(model.features[7:10].eval()(x), tv.eval()(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="a vgg16_bn state_dict: expected a torchvision vgg16 one"):
        vgg16_to_fcn(sd, batch_norm=False)


def test_fcn_resnet_loads_backbone_file_and_aux_contract(tmp_path):
    import torchvision

    torch.manual_seed(2)
    resnet = torchvision.models.resnet50(weights=None)
    path = tmp_path / "r50.pth"
    torch.save(resnet.state_dict(), path)
    model = create_model("fcn_resnet50", num_classes=19, aux_loss=True, pretrained=str(path))
    assert torch.equal(model.backbone.layer4[2].conv3.weight, resnet.layer4[2].conv3.weight)
    x = torch.randn(1, 3, 33, 41)
    out = model.train()(x)
    assert set(out) == {"out", "aux"} and out["aux"].shape == out["out"].shape == (1, 19, 33, 41)
    with torch.no_grad():
        assert isinstance(model.eval()(x), torch.Tensor)


def test_pretrained_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        create_model("fcn_resnet50", pretrained=str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"foo": torch.zeros(1)}, bad)
    with pytest.raises(UserError, match="not a resnet50"):
        create_model("fcn_resnet50", pretrained=str(bad))
    with pytest.raises(UserError, match="not a state_dict: expected a torchvision vgg16 one"):
        create_model("fcn8s_vgg16", pretrained=str(bad))
    with pytest.raises(UserError, match=r"model.pretrained: .*model.base_width 64 \(got 16\)"):
        create_model("fcn8s_vgg16_bn", base_width=16, pretrained="torchvision")  # fails before any download
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        create_model("fcn8s_vgg16", pretrained=str(tmp_path / "junk.pth"))


@pytest.mark.parametrize("upsample", ["bilinear", "transposed"])
def test_unet_options(upsample):
    model = create_model("unet", base_width=4, upsample=upsample)
    assert model.stem[0][0].out_channels == 4 and model.downs[-1][1][0].out_channels == 64
    assert model(torch.randn(2, 3, 17, 30)).shape == (2, 19, 17, 30)


@pytest.mark.parametrize("depth", [1, 3, 5])
def test_unet_depth(depth):
    model = create_model("unet_s16", base_width=4, depth=depth)
    assert len(model.downs) == len(model.ups) == depth and model.stride == 2**depth
    assert model.downs[-1][1][0].out_channels == 4 * 2**depth  # the bottleneck doubles once per stage
    assert model(torch.randn(2, 3, 17, 30)).shape == (2, 19, 17, 30)  # padded to 2**depth and cropped back
    shallow = sum(p.numel() for p in create_model("unet_s16", depth=3).parameters())
    assert shallow < sum(p.numel() for p in create_model("unet_s16").parameters()) / 3  # depth 4 is the default


def test_registry_errors():
    with pytest.raises(UserError, match="unet_s16"):
        create_model("unet_s61")
    with pytest.raises(UserError, match="aux_loss"):
        create_model("unet", aux_loss=True)
    with pytest.raises(UserError, match="upsample"):
        create_model("unet", upsample="nearest")
    with pytest.raises(UserError, match="depth"):
        create_model("unet", depth=0)


def test_model_from_config():
    cfg = replace(
        Config(),
        model={"name": "unet_s16", "base_width": 8, "upsample": "transposed", "depth": 3},
        data={"num_classes": 7},
    )
    model = model_from_config(cfg)
    assert model.stem[0][0].out_channels == 8 and len(model.downs) == 3
    assert isinstance(model.ups[0].up, torch.nn.ConvTranspose2d)
    assert model.head.out_channels == 7
    assert model_from_config(replace(Config(), model={"name": "unet_s32"})).stem[0][0].out_channels == 32
    fcn = model_from_config(replace(Config(), model={"name": "fcn16s_vgg16_bn", "base_width": 4}))
    assert fcn.base_width == 4 and fcn.fc7.out_channels == 256 and fcn.stride == 16 and fcn.batch_norm
    with pytest.raises(UserError, match="model.pretrained: .*model.base_width 64"):
        model_from_config(
            replace(Config(), model={"name": "fcn8s_vgg16", "base_width": 4, "pretrained": "x.pth"})
        )
    with pytest.raises(UserError, match="model.upsample"):
        model_from_config(replace(Config(), model={"name": "fcn_resnet50", "upsample": "bilinear"}))
    with pytest.raises(UserError, match="model.depth"):
        model_from_config(replace(Config(), model={"name": "fcn_resnet50", "depth": 3}))
    with pytest.raises(UserError, match="did you mean"):
        model_from_config(replace(Config(), model={"name": "fcn_resnet"}))

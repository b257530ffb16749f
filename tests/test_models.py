"""Models: every registered model runs forward+backward at odd sizes, keeps channels_last, runs under bf16
autocast; FCN-8s geometry and VGG16 conversion; U-Net options; registry and config errors."""

from __future__ import annotations

import pytest
import torch

from cityseg_fast.config import Config, replace
from cityseg_fast.errors import UserError
from cityseg_fast.models import create_model, list_models, model_from_config
from cityseg_fast.models.blocks import bilinear_kernel
from cityseg_fast.models.fcn import FCN8s

pytestmark = pytest.mark.usefixtures("one_thread")


def test_registry_names():
    names = list_models()
    for required in ("fcn8s_vgg16", "fcn_resnet50", "fcn_resnet101", "unet", "unet_s16", "unet_s32"):
        assert required in names
    assert list_models("unet*") == [n for n in names if n.startswith("unet")]


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_odd_size_channels_last_bf16(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=19)
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
    # A contiguous input gives a contiguous output at another odd size; bf16 autocast forward works.
    model.eval()
    y = torch.randn(1, 3, 35, 51)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(y)
    assert out.shape == (1, 19, 35, 51)
    assert out.dtype == torch.bfloat16
    assert out.is_contiguous()
    assert torch.isfinite(out.float()).all()


def test_fcn8s_output_size_for_any_input_size():
    with torch.device("meta"):  # shapes only: checks the pad-100 + crop geometry for many sizes cheaply
        model = FCN8s(19)
        for h, w in [(1, 1), (7, 9), (31, 33), (63, 65), (200, 201), (511, 1023), (1024, 2048), (1025, 2047)]:
            assert model(torch.empty(2, 3, h, w)).shape == (2, 19, h, w)


def test_fcn8s_starts_as_bilinear_upsampler():
    k = bilinear_kernel(2, 2, 4)[0, 0]
    expected_1d = torch.tensor([0.25, 0.75, 0.75, 0.25])
    assert torch.allclose(k, expected_1d[:, None] * expected_1d[None, :])
    assert bilinear_kernel(2, 2, 4)[0, 1].abs().sum() == 0  # channels do not mix
    model = FCN8s(3)
    assert not model.upscore8.weight.requires_grad and model.upscore2.weight.requires_grad
    # Zero-initialised score layers: the untrained net predicts exactly zero logits.
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 20, 24)).abs().max() == 0


def test_fcn8s_loads_torchvision_vgg16_state_dict(tmp_path):
    import torchvision

    torch.manual_seed(1)
    vgg = torchvision.models.vgg16(weights=None)
    path = tmp_path / "vgg16.pth"
    torch.save(vgg.state_dict(), path)
    model = create_model("fcn8s_vgg16", num_classes=5, pretrained=str(path))
    sd = vgg.state_dict()
    assert torch.equal(model.features[28].weight, sd["features.28.weight"])
    # fc6: the Linear over the flattened 512x7x7 map becomes a 7x7 conv with the same function.
    assert torch.equal(model.fc6.weight[7, 100, 2, 5], sd["classifier.0.weight"][7, 100 * 49 + 2 * 7 + 5])
    assert torch.equal(model.fc7.weight[:, :, 0, 0], sd["classifier.3.weight"])
    feat = torch.randn(1, 512, 7, 7)
    with torch.no_grad():
        lin = torch.nn.functional.linear(feat.flatten(1), sd["classifier.0.weight"], sd["classifier.0.bias"])
        conv = model.fc6(feat).flatten(1)
    torch.testing.assert_close(conv, lin, rtol=1e-4, atol=1e-4)


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
    with pytest.raises(UserError, match="vgg16"):
        create_model("fcn8s_vgg16", pretrained=str(bad))
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
    with pytest.raises(UserError, match="model.upsample"):
        model_from_config(replace(Config(), model={"name": "fcn_resnet50", "upsample": "bilinear"}))
    with pytest.raises(UserError, match="model.depth"):
        model_from_config(replace(Config(), model={"name": "fcn_resnet50", "depth": 3}))
    with pytest.raises(UserError, match="did you mean"):
        model_from_config(replace(Config(), model={"name": "fcn_resnet"}))

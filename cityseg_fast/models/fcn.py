"""FCN models: the original FCN-8s on VGG16 (Long et al., 2015) and torchvision's dilated-ResNet FCN.

FCN-8s follows the reference Caffe net (shelhamer/fcn.berkeleyvision.org, voc-fcn8s): conv1_1 pads by
100 so that the 7x7 fc6 and the crops that align the skips work for any input size; pooling rounds up
(Caffe's ceil mode); score layers start at zero; the 2x upsamplings start bilinear and are learned, the
final 8x upsampling is fixed bilinear (as in the paper, sec. 4.2). Crop offsets 5 (pool4), 9 (pool3) and
31 (output) are the reference's. This is the staged FCN-8s (no 0.01 / 0.0001 skip scaling of the
'at-once' variant).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.segmentation.fcn import FCN

from cityseg_fast.errors import UserError
from cityseg_fast.models.blocks import bilinear_kernel, like_input_format

# VGG16 configuration D: channels per conv, "M" = 2x2 max pool. Layer indices then match torchvision's
# `vgg16().features`, so its state_dict loads into `FCN8s.features` unchanged.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
_POOL3, _POOL4 = 17, 24  # features[:17] ends with pool3, features[17:24] with pool4


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 3
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
        else:
            # pad=100 on conv1_1 only: the reference FCN's trick for arbitrary input sizes.
            layers += [nn.Conv2d(in_ch, v, 3, padding=100 if in_ch == 3 else 1), nn.ReLU(inplace=True)]
            in_ch = v
    return nn.Sequential(*layers)


def _crop(x: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
    h, w = like.shape[-2:]
    return x[..., offset : offset + h, offset : offset + w]


class FCN8s(nn.Module):
    """FCN-8s with a VGG16 backbone; returns N x num_classes x H x W logits for any H, W."""

    def __init__(self, num_classes: int = 19) -> None:
        super().__init__()
        self.features = _vgg16_features()
        self.fc6 = nn.Conv2d(512, 4096, 7)
        self.fc7 = nn.Conv2d(4096, 4096, 1)
        self.drop = nn.Dropout(0.5)
        self.score_fr = nn.Conv2d(4096, num_classes, 1)
        self.score_pool4 = nn.Conv2d(512, num_classes, 1)
        self.score_pool3 = nn.Conv2d(256, num_classes, 1)
        self.upscore2 = nn.ConvTranspose2d(num_classes, num_classes, 4, stride=2, bias=False)
        self.upscore_pool4 = nn.ConvTranspose2d(num_classes, num_classes, 4, stride=2, bias=False)
        self.upscore8 = nn.ConvTranspose2d(num_classes, num_classes, 16, stride=8, bias=False)
        self._init_weights(num_classes)

    def _init_weights(self, num_classes: int) -> None:
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for m in (self.fc6, self.fc7):
            nn.init.normal_(
                m.weight, 0.0, 0.005
            )  # VGG's own init for its fc layers is N(0, 0.01) on 4096 wide
            nn.init.zeros_(m.bias)
        for m in (self.score_fr, self.score_pool4, self.score_pool3):
            nn.init.zeros_(m.weight)  # the reference zero-initialises the score layers
            nn.init.zeros_(m.bias)
        for m in (self.upscore2, self.upscore_pool4, self.upscore8):
            with torch.no_grad():
                m.weight.copy_(bilinear_kernel(num_classes, num_classes, m.kernel_size[0]))
        self.upscore8.weight.requires_grad_(False)  # fixed bilinear, as in the paper

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool3 = self.features[:_POOL3](x)
        pool4 = self.features[_POOL3:_POOL4](pool3)
        h = self.features[_POOL4:](pool4)
        h = self.drop(F.relu(self.fc6(h), inplace=True))
        h = self.drop(F.relu(self.fc7(h), inplace=True))
        upscore2 = self.upscore2(self.score_fr(h))  # 1/16
        h = upscore2 + _crop(self.score_pool4(pool4), 5, upscore2)
        upscore_pool4 = self.upscore_pool4(h)  # 1/8
        h = upscore_pool4 + _crop(self.score_pool3(pool3), 9, upscore_pool4)
        out = _crop(self.upscore8(h), 31, x)
        return like_input_format(out, x)

    def load_vgg16_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a torchvision `vgg16()` state_dict: conv layers as is, fc6/fc7 reshaped into convolutions."""
        self.load_state_dict(vgg16_to_fcn8s(state), strict=False)  # score/upscore layers keep their init


def vgg16_to_fcn8s(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a torchvision vgg16 state_dict to FCN8s keys (the 1000-class classifier.6 is dropped)."""
    out: dict[str, torch.Tensor] = OrderedDict()
    for k, v in state.items():
        if k.startswith("features."):
            out[k] = v
    try:
        out["fc6.weight"] = state["classifier.0.weight"].reshape(4096, 512, 7, 7)
        out["fc6.bias"] = state["classifier.0.bias"]
        out["fc7.weight"] = state["classifier.3.weight"].reshape(4096, 4096, 1, 1)
        out["fc7.bias"] = state["classifier.3.bias"]
    except (KeyError, RuntimeError) as e:
        raise ValueError(f"not a torchvision vgg16 state_dict: {e}") from e
    if sum(k.startswith("features.") for k in out) != 26:
        raise ValueError("not a torchvision vgg16 state_dict: expected 13 conv layers under features.*")
    return out


class FCNResNet(FCN):
    """torchvision's FCN (dilated ResNet, output stride 8) with this project's return contract.

    Returns a Tensor, except in training mode with an aux head: {"out": T, "aux": T}. In eval mode the aux
    head is not computed at all. The state_dict keys are torchvision's, so its checkpoints load as is.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:  # type: ignore[override]
        size = x.shape[-2:]
        feats = self.backbone(x)
        out = F.interpolate(self.classifier(feats["out"]), size=size, mode="bilinear", align_corners=False)
        out = like_input_format(out, x)
        if not (self.training and self.aux_classifier is not None):
            return out
        aux = F.interpolate(
            self.aux_classifier(feats["aux"]), size=size, mode="bilinear", align_corners=False
        )
        return {"out": out, "aux": like_input_format(aux, x)}


def _load_file(path: str, what: str) -> dict[str, torch.Tensor]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(
            f"model.pretrained: {path}: no such file (expected a {what} state_dict, or 'torchvision')"
        )
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(
            f"model.pretrained: {path}: cannot read a state_dict ({type(e).__name__}: {e})"
        ) from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"model.pretrained: {path}: expected a state_dict, got {type(state).__name__}")
    return state


def fcn8s_vgg16(num_classes: int = 19, pretrained: str = "") -> FCN8s:
    """FCN-8s; `pretrained` = "" | path to a torchvision vgg16 state_dict | "torchvision" (downloads)."""
    state = None
    if pretrained == "torchvision":
        from torchvision.models import VGG16_Weights

        state = VGG16_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
    elif pretrained:
        state = _load_file(pretrained, "torchvision vgg16")
    if state is not None:  # convert before building: a bad file fails fast
        try:
            state = vgg16_to_fcn8s(state)
        except ValueError as e:
            raise UserError(f"model.pretrained: {pretrained}: {e}") from e
    model = FCN8s(num_classes)
    if state is not None:
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected, unexpected  # vgg16_to_fcn8s only emits FCN8s keys
    return model


def _fcn_resnet(depth: int, num_classes: int, aux_loss: bool, pretrained: str) -> FCNResNet:
    from torchvision.models import ResNet50_Weights, ResNet101_Weights
    from torchvision.models import segmentation as seg

    builder = {50: seg.fcn_resnet50, 101: seg.fcn_resnet101}[depth]
    enum = {50: ResNet50_Weights, 101: ResNet101_Weights}[depth].IMAGENET1K_V1
    state = None
    if pretrained and pretrained != "torchvision":  # read before building: a bad path fails fast
        state = {
            k: v
            for k, v in _load_file(pretrained, f"torchvision resnet{depth}").items()
            if not k.startswith("fc.")
        }
    tv = builder(
        weights=None,
        weights_backbone=enum if pretrained == "torchvision" else None,
        num_classes=num_classes,
        aux_loss=aux_loss,
    )
    model = FCNResNet(tv.backbone, tv.classifier, tv.aux_classifier)
    if state is not None:
        try:
            missing, unexpected = model.backbone.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatches, e.g. a resnet101 file for resnet50
            raise UserError(f"model.pretrained: {pretrained}: not a resnet{depth} state_dict ({e})") from e
        if missing or unexpected:
            raise UserError(
                f"model.pretrained: {pretrained}: not a resnet{depth} state_dict "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
    return model


def fcn_resnet50(num_classes: int = 19, aux_loss: bool = False, pretrained: str = "") -> FCNResNet:
    """torchvision FCN-ResNet50 (dilated, output stride 8); pretrained backbone from a path or 'torchvision'."""
    return _fcn_resnet(50, num_classes, aux_loss, pretrained)


def fcn_resnet101(num_classes: int = 19, aux_loss: bool = False, pretrained: str = "") -> FCNResNet:
    """torchvision FCN-ResNet101 (dilated, output stride 8); pretrained backbone from a path or 'torchvision'."""
    return _fcn_resnet(101, num_classes, aux_loss, pretrained)

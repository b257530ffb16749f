"""FCN models: FCN-32s / 16s / 8s on VGG16 (Long et al., 2015) and torchvision's dilated-ResNet FCN.

The VGG16 nets follow the reference Caffe nets (shelhamer/fcn.berkeleyvision.org, voc-fcn32s / 16s / 8s):
conv1_1 pads by 100 so that the 7x7 fc6 and the crops that align the skips work for any input size;
pooling rounds up (Caffe's ceil mode); score layers start at zero; the 2x upsamplings start bilinear and
are learned, the final 32x / 16x / 8x upsampling is fixed bilinear (as in the paper, sec. 4.2; the
reference repository fixes the 2x ones too: its FAQ found no significant difference). This is the
staged FCN (no 0.01 / 0.0001 skip scaling of the 'at-once' FCN-8s).

Two knobs the paper does not have, for small machines: `base_width` scales every VGG16 stage and fc6 /
fc7 (64 = VGG16: 64..512, fc 4096), and `batch_norm` puts BatchNorm after every backbone conv (torchvision's
VGG16-BN layout), so that a narrow FCN can learn from scratch on a CPU.
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

STRIDES = (32, 16, 8)  # FCN-32s, FCN-16s, FCN-8s: the output stride before the final upsampling
_STAGES = ((2, 1), (2, 2), (3, 4), (3, 8), (3, 8))  # VGG16 (config D): convs per stage, width / base_width
_INPUT_PAD = 100  # conv1_1's padding (the reference's trick for arbitrary input sizes)

# Crop offsets, from the reference nets' Crop layers (voc-fcn*/val.prototxt, `crop_param { axis: 2 offset: N }`):
#   voc-fcn32s: score (upscore vs data) 19
#   voc-fcn16s: score_pool4c (score_pool4 vs upscore2) 5, score (upscore16 vs data) 27
#   voc-fcn8s:  score_pool4c 5, score_pool3c (score_pool3 vs upscore_pool4) 9, score (upscore8 vs data) 31
# They follow from the layer geometry (pad 100, 2x2 pools, 7x7 fc6, k = 2s deconvolutions); a test derives
# them again from this module's layers.
SKIP_OFFSETS = {"pool4": 5, "pool3": 9}
_FINAL = {32: ("upscore", 19), 16: ("upscore16", 27), 8: ("upscore8", 31)}  # final upsampling, its crop


def vgg16_layout(batch_norm: bool) -> list[tuple[str, int]]:
    """(kind, stage) of each layer of the backbone, in torchvision's `vgg16[_bn]().features` order:
    "conv"[, "bn"], "relu" per conv, "pool" per stage. So torchvision's indices are ours and its
    state_dict keys load as they are."""
    layers: list[tuple[str, int]] = []
    for stage, (n_convs, _) in enumerate(_STAGES):
        for _ in range(n_convs):
            layers += [("conv", stage), *([("bn", stage)] if batch_norm else []), ("relu", stage)]
        layers.append(("pool", stage))
    return layers


def vgg16_features(base_width: int = 64, batch_norm: bool = False) -> nn.Sequential:
    """The VGG16 backbone up to pool5, `base_width` wide (64 = VGG16), with BatchNorm if asked."""
    layers: list[nn.Module] = []
    in_ch = 3
    for kind, stage in vgg16_layout(batch_norm):
        width = base_width * _STAGES[stage][1]
        if kind == "conv":
            pad = _INPUT_PAD if in_ch == 3 else 1
            # With BN the conv has no bias: BN's shift supplies it.
            layers.append(nn.Conv2d(in_ch, width, 3, padding=pad, bias=not batch_norm))
            in_ch = width
        elif kind == "bn":
            layers.append(nn.BatchNorm2d(width))
        elif kind == "relu":
            layers.append(nn.ReLU(inplace=True))
        else:
            layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
    return nn.Sequential(*layers)


def _pool_ends(batch_norm: bool) -> tuple[int, int]:
    """features[:a] ends with pool3 and features[a:b] with pool4."""
    ends = [i + 1 for i, (kind, _) in enumerate(vgg16_layout(batch_norm)) if kind == "pool"]
    return ends[2], ends[3]


def _upsampler(channels: int, factor: int, learned: bool) -> nn.ConvTranspose2d:
    """A `factor`x ConvTranspose2d (kernel 2 * factor, as the reference) that starts as bilinear."""
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, channels, 2 * factor))
    up.weight.requires_grad_(learned)
    return up


def _crop(x: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
    h, w = like.shape[-2:]
    return x[..., offset : offset + h, offset : offset + w]


class FCNVGG16(nn.Module):
    """FCN-32s / 16s / 8s (`stride`) on VGG16; returns N x num_classes x H x W logits for any H, W."""

    def __init__(
        self, num_classes: int = 19, stride: int = 8, base_width: int = 64, batch_norm: bool = False
    ) -> None:
        super().__init__()
        if stride not in STRIDES:
            raise ValueError(f"stride must be one of {STRIDES}, got {stride}")
        if base_width < 1:
            raise ValueError(f"base_width must be >= 1, got {base_width}")
        self.stride, self.base_width, self.batch_norm = stride, base_width, batch_norm
        self.features = vgg16_features(base_width, batch_norm)
        self._pool3, self._pool4 = _pool_ends(batch_norm)
        fc = 64 * base_width  # 4096 for VGG16
        self.fc6 = nn.Conv2d(8 * base_width, fc, 7)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.drop = nn.Dropout(0.5)
        self.score_fr = nn.Conv2d(fc, num_classes, 1)
        if stride <= 16:
            self.score_pool4 = nn.Conv2d(8 * base_width, num_classes, 1)
            self.upscore2 = _upsampler(num_classes, 2, learned=True)
        if stride == 8:
            self.score_pool3 = nn.Conv2d(4 * base_width, num_classes, 1)
            self.upscore_pool4 = _upsampler(num_classes, 2, learned=True)
        self._final, self.crop_offset = _FINAL[stride]
        self.add_module(self._final, _upsampler(num_classes, stride, learned=False))  # fixed, as in the paper
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in (self.fc6, self.fc7):
            # VGG's own init for its fc layers is N(0, 0.01) on 4096 wide.
            nn.init.normal_(m.weight, 0.0, 0.005)
            nn.init.zeros_(m.bias)
        for name in ("score_fr", "score_pool4", "score_pool3"):
            if hasattr(self, name):  # the reference zero-initialises the score layers
                nn.init.zeros_(getattr(self, name).weight)
                nn.init.zeros_(getattr(self, name).bias)

    @property
    def final_upscore(self) -> nn.ConvTranspose2d:
        """The fixed bilinear upsampling to the input resolution (upscore / upscore16 / upscore8)."""
        return getattr(self, self._final)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool3 = self.features[: self._pool3](x)
        pool4 = self.features[self._pool3 : self._pool4](pool3)
        h = self.features[self._pool4 :](pool4)
        h = self.drop(F.relu(self.fc6(h), inplace=True))
        h = self.drop(F.relu(self.fc7(h), inplace=True))
        score = self.score_fr(h)  # 1/32
        if self.stride <= 16:
            up = self.upscore2(score)  # 1/16
            score = up + _crop(self.score_pool4(pool4), SKIP_OFFSETS["pool4"], up)
        if self.stride == 8:
            up = self.upscore_pool4(score)  # 1/8
            score = up + _crop(self.score_pool3(pool3), SKIP_OFFSETS["pool3"], up)
        out = _crop(self.final_upscore(score), self.crop_offset, x)
        return like_input_format(out, x)


def vgg16_to_fcn(state: dict[str, torch.Tensor], batch_norm: bool) -> dict[str, torch.Tensor]:
    """Convert a torchvision vgg16 (or, with batch_norm, vgg16_bn) state_dict to FCNVGG16 keys.

    features.* keep their keys (same layout); fc6 / fc7 are the classifier's Linear layers reshaped into
    7x7 / 1x1 convolutions; the 1000-class classifier.6 is dropped. vgg16_bn's convs have a bias our
    BN convs lack: it is folded into the BN's running_mean (BN(conv + b) with mean m is BN(conv) with
    mean m - b; in training the batch mean absorbs it anyway), so the function is unchanged.
    """
    want, other = ("vgg16_bn", "vgg16") if batch_norm else ("vgg16", "vgg16_bn")
    if _conv_keys(state) != _conv_keys_of(batch_norm):
        is_other = _conv_keys(state) == _conv_keys_of(not batch_norm)
        raise ValueError(
            f"{'a ' + other if is_other else 'not a'} state_dict: expected a torchvision {want} one"
        )
    out = OrderedDict((k, v) for k, v in state.items() if k.startswith("features."))
    try:
        if batch_norm:
            for key in _conv_keys_of(batch_norm):
                bias, mean = key.replace("weight", "bias"), _next_layer(key) + ".running_mean"
                out[mean] = out[mean] - out.pop(bias)
        out["fc6.weight"] = state["classifier.0.weight"].reshape(4096, 512, 7, 7)
        out["fc6.bias"] = state["classifier.0.bias"]
        out["fc7.weight"] = state["classifier.3.weight"].reshape(4096, 4096, 1, 1)
        out["fc7.bias"] = state["classifier.3.bias"]
    except (KeyError, RuntimeError) as e:
        raise ValueError(f"not a torchvision {want} state_dict: {e}") from e
    return out


def _conv_keys(state: dict[str, torch.Tensor]) -> set[str]:
    """The backbone's conv weights in a state_dict: the keys that tell vgg16 from vgg16_bn."""
    return {
        k
        for k, v in state.items()
        if k.startswith("features.")
        and k.endswith(".weight")
        and isinstance(v, torch.Tensor)
        and v.dim() == 4
    }


def _conv_keys_of(batch_norm: bool) -> set[str]:
    return {f"features.{i}.weight" for i, (kind, _) in enumerate(vgg16_layout(batch_norm)) if kind == "conv"}


def _next_layer(key: str) -> str:
    """The BN after a conv: features.7.weight -> features.8."""
    return f"features.{int(key.split('.')[1]) + 1}"


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


def _vgg16_state(pretrained: str, batch_norm: bool) -> dict[str, torch.Tensor] | None:
    """The converted ImageNet state for `pretrained` ("" -> None), read before building: a bad file fails fast."""
    if not pretrained:
        return None
    what = "torchvision vgg16_bn" if batch_norm else "torchvision vgg16"
    if pretrained == "torchvision":
        from torchvision.models import VGG16_BN_Weights, VGG16_Weights

        weights = VGG16_BN_Weights if batch_norm else VGG16_Weights
        state = weights.IMAGENET1K_V1.get_state_dict(progress=True)
    else:
        state = _load_file(pretrained, what)
    try:
        return vgg16_to_fcn(state, batch_norm)
    except ValueError as e:
        raise UserError(f"model.pretrained: {pretrained}: {e}") from e


def fcn_vgg16(
    num_classes: int = 19,
    stride: int = 8,
    base_width: int = 64,
    batch_norm: bool = False,
    pretrained: str = "",
) -> FCNVGG16:
    """FCN-`stride`s on VGG16[-BN]; `pretrained` = "" | a torchvision vgg16 / vgg16_bn state_dict path |
    "torchvision" (downloads). ImageNet weights exist for VGG16's own width only."""
    if pretrained and base_width != 64:
        raise UserError(
            f"model.pretrained: ImageNet VGG16 weights need model.base_width 64 (got {base_width}); "
            "set model.pretrained='' to train from scratch"
        )
    state = _vgg16_state(pretrained, batch_norm)
    model = FCNVGG16(num_classes, stride=stride, base_width=base_width, batch_norm=batch_norm)
    if state is not None:
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected, unexpected  # vgg16_to_fcn only emits backbone and fc6 / fc7 keys
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

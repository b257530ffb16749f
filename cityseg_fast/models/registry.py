"""Model registry: `create_model(name, **overrides)`, `list_models(pattern)`, `model_from_config(cfg)`.

Each registered entry is a builder taking `num_classes` plus the keyword overrides it supports; tests
parametrize over `list_models()`, so a new model registered here is tested with no further work.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import nn

from cityseg_fast.errors import UserError
from cityseg_fast.models import fcn, unet

if TYPE_CHECKING:
    from cityseg_fast.config import Config

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a builder `fn(num_classes=..., **overrides) -> nn.Module` under `name`."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def _unknown(name: str) -> UserError:
    close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.4)
    hint = ", ".join(close) if close else ", ".join(list_models())
    return UserError(f"model.name: unknown model {name!r}; did you mean: {hint}")


def model_kwargs(name: str) -> set[str]:
    """The keyword overrides the builder of `name` accepts (besides num_classes)."""
    if name not in _REGISTRY:
        raise _unknown(name)
    return set(inspect.signature(_REGISTRY[name]).parameters) - {"num_classes"}


def create_model(name: str, num_classes: int = 19, **overrides: Any) -> nn.Module:
    """Build a registered model; an override the model does not take is a UserError naming it."""
    if name not in _REGISTRY:
        raise _unknown(name)
    bad = set(overrides) - model_kwargs(name)
    if bad:
        raise UserError(
            f"model {name!r} does not take {sorted(bad)}; it takes {sorted(model_kwargs(name)) or 'no options'}"
        )
    try:
        return _REGISTRY[name](num_classes=num_classes, **overrides)
    except ValueError as e:  # builders raise ValueError for bad option values
        raise UserError(f"model {name!r}: {e}") from e


def model_from_config(cfg: Config) -> nn.Module:
    """Build cfg.model.name with cfg.data.num_classes and the cfg.model options that model takes.

    Options left at None mean "the variant's default". Setting an option the model does not take
    (e.g. model.upsample for an FCN, or aux_loss=true for a U-Net) is a UserError, not silently ignored.
    """
    m = cfg.model
    takes = model_kwargs(m.name)
    candidates = {
        "pretrained": m.pretrained or None,
        "aux_loss": m.aux_loss or None,
        "base_width": m.base_width,
        "upsample": m.upsample,
        "depth": m.depth,
    }
    overrides = {k: v for k, v in candidates.items() if v is not None}
    bad = set(overrides) - takes
    if bad:
        raise UserError(
            f"model.{sorted(bad)[0]}: model {m.name!r} does not take it (it takes {sorted(takes)})"
        )
    return create_model(m.name, num_classes=cfg.data.num_classes, **overrides)


# --- registered models -------------------------------------------------------------------------


def _fcn_vgg16_builder(stride: int, batch_norm: bool) -> Callable[..., nn.Module]:
    def build(num_classes: int = 19, base_width: int = 64, pretrained: str = "") -> nn.Module:
        return fcn.fcn_vgg16(
            num_classes, stride=stride, base_width=base_width, batch_norm=batch_norm, pretrained=pretrained
        )

    return build


# The FCN paper's skip family on VGG16 (the reference nets, ImageNet-initialised), and the same with
# BatchNorm after every backbone conv (torchvision's vgg16_bn): the variant that learns from scratch.
for _stride in fcn.STRIDES:
    register_model(f"fcn{_stride}s_vgg16")(_fcn_vgg16_builder(_stride, batch_norm=False))
    register_model(f"fcn{_stride}s_vgg16_bn")(_fcn_vgg16_builder(_stride, batch_norm=True))


@register_model("fcn_resnet50")
def _fcn_resnet50(num_classes: int = 19, aux_loss: bool = False, pretrained: str = "") -> nn.Module:
    return fcn.fcn_resnet50(num_classes, aux_loss=aux_loss, pretrained=pretrained)


@register_model("fcn_resnet101")
def _fcn_resnet101(num_classes: int = 19, aux_loss: bool = False, pretrained: str = "") -> nn.Module:
    return fcn.fcn_resnet101(num_classes, aux_loss=aux_loss, pretrained=pretrained)


def _unet_builder(default_width: int, default_upsample: str = "bilinear") -> Callable[..., nn.Module]:
    def build(
        num_classes: int = 19, base_width: int = default_width, upsample: str = default_upsample, depth: int = 4
    ) -> nn.Module:
        return unet.UNet(num_classes, base_width=base_width, upsample=upsample, depth=depth)

    return build


register_model("unet")(_unet_builder(64))  # the paper's widths 64..1024
register_model("unet_s32")(_unet_builder(32))  # a quarter of the FLOPs: GPU-friendly small variant
register_model("unet_s16")(_unet_builder(16))  # 1/16 of the FLOPs: for CPU runs and the demo
register_model("unet_transposed")(_unet_builder(64, "transposed"))  # the paper's learned up-convolutions

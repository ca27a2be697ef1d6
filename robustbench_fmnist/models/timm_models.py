"""timm architectures adapted to 28x28 grayscale input (one input channel, ten classes).

Any timm name works as `timm:<name>` in a YAML file. timm's models are made for 224-pixel images;
at 28 pixels a stride-32 CNN ends in a 1x1 map and a patch-16 ViT sees one token, so each family is
adapted (`timm_adaptation` says how, and `ls models --timm` lists the names):
- ViTs and DeiTs get `img_size=28, patch_size=4`: a 7x7 grid of 4-pixel patches;
- ConvNeXts are resized to 32 px with `patch_size=2`: stages at 16, 8, 4 and 2 pixels (at 28 px the
  last downsampling would meet a 1x1 map);
- any other CNN whose output stride is 32 or more has its first convolution's stride set to 1, so it
  ends on a 2x2 map instead of 1x1 (the usual CIFAR-style change to an ImageNet stem);
- `input_size: N` among the kwargs instead resizes the images bilinearly to NxN inside the model and
  builds timm's model for that size, for a family none of the above fits.
Explicit kwargs win over these defaults; they are passed to `timm.create_model`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from functools import cache
from typing import Any

import torch
from torch import nn

from robustbench_fmnist.config import TrainRecipe
from robustbench_fmnist.errors import ConfigError
from robustbench_fmnist.models.registry import Normalize, register_model

TIMM_PREFIX = "timm:"
# float32: on CPU, bfloat16 autocast makes the depthwise convolutions and attention of these families
# 1.4-2x slower, not faster (measured on 2 cores for mobilenetv3, convnext and vit)
TIMM_RECIPE = TrainRecipe(
    epochs=3, lr=2e-3, weight_decay=5e-4, label_smoothing=0.1, augment="flip_crop", precision="float32"
)
IMAGE_SIZE = 28
VIT_PATCH = 4
CONVNEXT_PATCH = 2
CONVNEXT_SIZE = 32  # four stride-2 stages after a patch-2 stem need a multiple of 32
_TRANSFORMER_MODULES = frozenset({"vision_transformer", "deit"})  # built for img_size/patch_size kwargs
_HARNESS_KWARGS = frozenset({"input_size"})  # read here, not passed to timm


def timm_model(arch: str, num_classes: int = 10, **kwargs: object) -> nn.Module:
    """Any timm architecture, randomly initialised, behind the harness's input normalisation (no adaptation)."""
    import timm  # imported here: it takes a second and most runs never need it

    return nn.Sequential(
        Normalize(), timm.create_model(arch, pretrained=False, in_chans=1, num_classes=num_classes, **kwargs)
    )


class Resize(nn.Module):
    """Bilinear resize to a square size: the documented way to fit a family no other rule adapts."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)


@cache
def timm_names() -> tuple[str, ...]:
    """Every architecture name timm can build."""
    import timm

    return tuple(timm.list_models())


def timm_architecture(name: str) -> str | None:
    """The timm architecture a model name means (`timm:resnet18` -> `resnet18`), or None for other names."""
    return name[len(TIMM_PREFIX) :] if name.startswith(TIMM_PREFIX) else None


def check_timm_name(arch: str, kwargs: dict[str, Any]) -> None:
    """ConfigError for a name timm does not know (with timm's closest names) or for pretrained weights."""
    if arch not in timm_names():
        close = difflib.get_close_matches(arch, timm_names(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close else ""
        raise ConfigError(
            f"unknown timm model {arch!r}{hint} (list them with: python -m robustbench_fmnist ls models --timm "
            f"'*{arch[:4]}*')"
        )
    if kwargs.get("pretrained"):
        raise ConfigError(
            f"timm:{arch}: pretrained weights need a download and were made for 3-channel 224-pixel images; the "
            "harness trains every model from scratch (drop `pretrained`, or give a `checkpoint:` file)"
        )
    size = kwargs.get("input_size")
    if size is not None and not (isinstance(size, int) and not isinstance(size, bool) and 8 <= size <= 512):
        raise ConfigError(f"timm:{arch}: input_size must be a whole number of pixels from 8 to 512, got {size!r}")


def _family(arch: str) -> str:
    """The timm module an architecture is defined in (`vision_transformer`, `convnext`, `resnet`, ...)."""
    import timm

    return timm.models.model_entrypoint(arch).__module__.rpartition(".")[2]


def timm_adaptation(arch: str, kwargs: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The kwargs timm gets for 28x28 input, and whether the first convolution's stride is set to 1 after."""
    family = _family(arch)
    chosen = {k: v for k, v in kwargs.items() if k not in _HARNESS_KWARGS and k != "pretrained"}
    if family in _TRANSFORMER_MODULES:
        return {"img_size": input_size(arch, kwargs), "patch_size": VIT_PATCH, **chosen}, False
    if family == "convnext":
        return {"patch_size": CONVNEXT_PATCH, **chosen}, False
    return chosen, "input_size" not in kwargs


def input_size(arch: str, kwargs: dict[str, Any]) -> int:
    """The image size timm's model is built for: `input_size`, 32 for ConvNeXt, else 28."""
    return int(kwargs.get("input_size") or (CONVNEXT_SIZE if _family(arch) == "convnext" else IMAGE_SIZE))


def adapted_timm_model(arch: str, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """timm's `arch` from scratch for 28x28 grayscale input, adapted per family (see the module docstring)."""
    import timm

    check_timm_name(arch, kwargs)
    timm_kwargs, unstride = timm_adaptation(arch, kwargs)
    size = input_size(arch, kwargs)
    sized = "input_size" in kwargs and "img_size" not in timm_kwargs

    def create(**extra: Any) -> nn.Module:
        return timm.create_model(arch, pretrained=False, in_chans=1, num_classes=num_classes, **timm_kwargs, **extra)

    try:
        # a family built for one image size (Swin, MaxViT, ...) is told the resized one
        net = create(img_size=size) if sized else create()
    except TypeError as exc:
        if not sized or "img_size" not in str(exc):
            raise
        net = create()
    if unstride and _output_stride(net) >= 32:
        _first_conv(net).stride = (1, 1)
    return nn.Sequential(Normalize(), Resize(size), net) if size != IMAGE_SIZE else nn.Sequential(Normalize(), net)


def timm_builder(arch: str) -> Callable[..., nn.Module]:
    """The builder a `timm:<arch>` name resolves to (defined here, so the cache key covers this file and timm)."""

    def build(num_classes: int = 10, **kwargs: Any) -> nn.Module:
        return adapted_timm_model(arch, num_classes, **kwargs)

    build.__name__ = build.__qualname__ = f"timm:{arch}"
    return build


def _output_stride(net: nn.Module) -> int:
    info = getattr(net, "feature_info", None) or [{}]
    return int(info[-1].get("reduction", 1))


def _first_conv(net: nn.Module) -> nn.Conv2d:
    """The stem convolution timm names in the model's config (a module path such as `conv1` or `stem.0`)."""
    path = (getattr(net, "pretrained_cfg", None) or {}).get("first_conv")
    module = net.get_submodule(path) if path else None
    if not isinstance(module, nn.Conv2d):
        module = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    return module


@register_model(TIMM_RECIPE)
def timm_mobilenetv3(num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """timm's mobilenetv3_small_050 (0.58M parameters) with its stem at stride 1: output stride 16 at 28 px."""
    return adapted_timm_model("mobilenetv3_small_050", num_classes, **kwargs)


@register_model(TIMM_RECIPE)
def timm_convnext(num_classes: int = 10, dims: tuple[int, ...] = (32, 64, 128, 256), **kwargs: Any) -> nn.Module:
    """timm's convnext_atto narrowed to 32-256 channels (2.2M parameters), resized to 32 px, patch-2 stem."""
    return adapted_timm_model("convnext_atto", num_classes, dims=tuple(dims), **kwargs)


@register_model(TIMM_RECIPE.model_copy(update={"epochs": 1}), tags=("tiny",))
def timm_convnext_tiny(num_classes: int = 10) -> nn.Module:
    """Test-sized timm ConvNeXt (8 to 64 channels, one block per stage)."""
    return adapted_timm_model("convnext_atto", num_classes, dims=(8, 16, 32, 64), depths=(1, 1, 1, 1))


@register_model(TIMM_RECIPE)
def timm_vit(
    num_classes: int = 10, embed_dim: int = 96, depth: int = 6, num_heads: int = 3, **kwargs: Any
) -> nn.Module:
    """A small timm ViT: a 4x4 grid of 7-pixel patches, width 96, depth 6, 3 heads (0.68M parameters)."""
    options = {"patch_size": 7, **kwargs}
    return adapted_timm_model(
        "vit_tiny_patch16_224", num_classes, embed_dim=embed_dim, depth=depth, num_heads=num_heads, **options
    )


@register_model(TIMM_RECIPE.model_copy(update={"epochs": 1}), tags=("tiny",))
def timm_vit_tiny(num_classes: int = 10) -> nn.Module:
    """Test-sized timm ViT (patch 7, width 16, depth 1, 2 heads)."""
    return adapted_timm_model("vit_tiny_patch16_224", num_classes, embed_dim=16, depth=1, num_heads=2, patch_size=7)


@register_model(TIMM_RECIPE)
def timm_resnet18(num_classes: int = 10) -> nn.Module:
    """timm's resnet18 (11M parameters) as timm builds it: stride-32 stem, so 28 px ends on a 1x1 map."""
    return timm_model("resnet18", num_classes=num_classes)


@register_model(TIMM_RECIPE.model_copy(update={"epochs": 1}), tags=("tiny",))
def timm_resnet_tiny(num_classes: int = 10) -> nn.Module:
    """Test-sized timm ResNet (one basic block per stage, 8 to 64 channels)."""
    return timm_model("resnet10t", num_classes=num_classes, channels=(8, 16, 32, 64))

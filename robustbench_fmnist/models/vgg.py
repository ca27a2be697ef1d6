"""VGG-style CNN: three stages of two 3x3 conv-norm-ReLU layers each, at 28, 14 and 7 pixels.

`deep_cnn` normalises with BatchNorm; `deep_cnn_gn` is the same network with GroupNorm, the
controlled counterpart that tells depth apart from batch statistics (which bn adaptation and
lighting shifts both act on).
"""

from __future__ import annotations

from torch import nn

from robustbench_fmnist.config import TrainRecipe
from robustbench_fmnist.models.registry import Normalize, register_model

DEEP_RECIPE = TrainRecipe(
    epochs=10,
    batch_size=128,
    optimizer="adamw",
    lr=3e-3,
    weight_decay=5e-4,
    schedule="onecycle",
    label_smoothing=0.1,
    augment="flip_crop",
)


GROUP_NORM_CHANNELS = 8  # channels per GroupNorm group: 4 to 16 groups at these widths (Wu & He 2018 use 32 groups)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(max(1, channels // GROUP_NORM_CHANNELS), channels)
    return nn.BatchNorm2d(channels)


def _conv_norm(c_in: int, c_out: int, norm: str) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), _norm(norm, c_out), nn.ReLU(inplace=True)]


def _build(
    widths: tuple[int, int, int], convs_per_stage: int, dropout: float, num_classes: int, norm: str = "batch"
) -> nn.Sequential:
    layers: list[nn.Module] = [Normalize()]
    c_in = 1
    for stage, width in enumerate(widths):
        for _ in range(convs_per_stage):
            layers += _conv_norm(c_in, width, norm)
            c_in = width
        # 28 -> 14 -> 7, then global pooling keeps the head small
        layers.append(nn.MaxPool2d(2) if stage < len(widths) - 1 else nn.AdaptiveAvgPool2d(1))
    layers += [nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)


@register_model(DEEP_RECIPE)
def deep_cnn(
    widths: tuple[int, int, int] = (32, 64, 128), convs_per_stage: int = 2, dropout: float = 0.2, num_classes: int = 10
) -> nn.Module:
    """VGG-style: 3 stages x 2 conv-BN-ReLU (32, 64, 128 channels), max-pool, global average pool."""
    return _build(tuple(widths), convs_per_stage, dropout, num_classes)


@register_model(DEEP_RECIPE.model_copy(update={"epochs": 1}), tags=("tiny",))
def deep_cnn_tiny(num_classes: int = 10) -> nn.Module:
    """Test-sized deep_cnn (4, 8, 8 channels)."""
    return _build((4, 8, 8), convs_per_stage=2, dropout=0.0, num_classes=num_classes)


@register_model(DEEP_RECIPE)
def deep_cnn_gn(
    widths: tuple[int, int, int] = (32, 64, 128), convs_per_stage: int = 2, dropout: float = 0.2, num_classes: int = 10
) -> nn.Module:
    """deep_cnn with GroupNorm (8 channels per group) in place of BatchNorm: no batch statistics anywhere."""
    return _build(tuple(widths), convs_per_stage, dropout, num_classes, norm="group")


@register_model(DEEP_RECIPE.model_copy(update={"epochs": 1}), tags=("tiny",))
def deep_cnn_gn_tiny(num_classes: int = 10) -> nn.Module:
    """Test-sized deep_cnn_gn (4, 8, 8 channels)."""
    return _build((4, 8, 8), convs_per_stage=2, dropout=0.0, num_classes=num_classes, norm="group")

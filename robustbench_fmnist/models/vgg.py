"""VGG-style CNN with batch norm: three stages of two 3x3 convs each, at 28, 14 and 7 pixels."""

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


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def _build(widths: tuple[int, int, int], convs_per_stage: int, dropout: float, num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = [Normalize()]
    c_in = 1
    for stage, width in enumerate(widths):
        for _ in range(convs_per_stage):
            layers += _conv_bn(c_in, width)
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

"""The classic Fashion-MNIST baselines below the CNNs: softmax regression, a multilayer perceptron and LeNet-5."""

from __future__ import annotations

from torch import nn

from robustbench_fmnist.config import TrainRecipe
from robustbench_fmnist.models.registry import Normalize, register_model

CLASSIC_RECIPE = TrainRecipe(
    epochs=8, batch_size=128, optimizer="adamw", lr=2e-3, weight_decay=5e-4, schedule="onecycle"
)


@register_model(CLASSIC_RECIPE, tags=("tiny",))
def linear(num_classes: int = 10) -> nn.Module:
    """Softmax regression on the 784 pixels (7,850 parameters): the floor every other model is measured from."""
    return _mlp((), 0.0, num_classes)


def _mlp(hidden: tuple[int, ...], dropout: float, num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = [Normalize(), nn.Flatten()]
    width = 28 * 28
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


@register_model(CLASSIC_RECIPE)
def mlp(hidden: tuple[int, ...] = (256, 128), dropout: float = 0.2, num_classes: int = 10) -> nn.Module:
    """Multilayer perceptron on the 784 pixels: dense 256 and 128 with ReLU and dropout; no convolution."""
    return _mlp(tuple(hidden), dropout, num_classes)


@register_model(CLASSIC_RECIPE.model_copy(update={"epochs": 1}), tags=("tiny",))
def mlp_tiny(num_classes: int = 10) -> nn.Module:
    """Test-sized mlp (one dense layer of 16)."""
    return _mlp((16,), 0.0, num_classes)


def _lenet(channels: tuple[int, int], dense: tuple[int, int], num_classes: int) -> nn.Sequential:
    # LeCun et al. (1998)'s layout: 5x5 convs, 2x2 subsampling, dense 120 and 84; the first conv is
    # padded to keep 28 px (LeNet's 32 px input), with ReLU and max-pool as modern re-implementations use
    first, second = channels
    return nn.Sequential(
        Normalize(),
        nn.Conv2d(1, first, 5, padding=2),
        nn.MaxPool2d(2),
        nn.ReLU(inplace=True),
        nn.Conv2d(first, second, 5),
        nn.MaxPool2d(2),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(second * 5 * 5, dense[0]),
        nn.ReLU(inplace=True),
        nn.Linear(dense[0], dense[1]),
        nn.ReLU(inplace=True),
        nn.Linear(dense[1], num_classes),
    )


@register_model(CLASSIC_RECIPE)
def lenet5(num_classes: int = 10) -> nn.Module:
    """LeNet-5: 5x5 convs of 6 and 16 channels with 2x2 pooling, dense 120 and 84 (ReLU, max-pool)."""
    return _lenet((6, 16), (120, 84), num_classes)


@register_model(CLASSIC_RECIPE.model_copy(update={"epochs": 1}), tags=("tiny",))
def lenet5_tiny(num_classes: int = 10) -> nn.Module:
    """Test-sized lenet5 (2 and 4 channels, dense 8 and 8)."""
    return _lenet((2, 4), (8, 8), num_classes)

"""timm architectures adapted to 28x28 grayscale input (one input channel, ten classes)."""

from __future__ import annotations

from torch import nn

from robustbench_fmnist.config import TrainRecipe
from robustbench_fmnist.models.registry import Normalize, register_model

TIMM_RECIPE = TrainRecipe(epochs=5, lr=2e-3, label_smoothing=0.1, augment="flip_crop")


def timm_model(arch: str, num_classes: int = 10, **kwargs: object) -> nn.Module:
    """Any timm architecture, randomly initialised, behind the harness's input normalisation."""
    import timm  # imported here: it takes a second and most runs never need it

    return nn.Sequential(
        Normalize(), timm.create_model(arch, pretrained=False, in_chans=1, num_classes=num_classes, **kwargs)
    )


@register_model(TIMM_RECIPE)
def timm_resnet18(num_classes: int = 10) -> nn.Module:
    """timm's resnet18 (11M parameters), single-channel stem, trained from scratch."""
    return timm_model("resnet18", num_classes=num_classes)


@register_model(TIMM_RECIPE.model_copy(update={"epochs": 1}), tags=("tiny",))
def timm_resnet_tiny(num_classes: int = 10) -> nn.Module:
    """Test-sized timm ResNet (one basic block per stage, 8 to 64 channels)."""
    return timm_model("resnet10t", num_classes=num_classes, channels=(8, 16, 32, 64))

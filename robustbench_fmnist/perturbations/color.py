"""Lighting perturbations: intensity shifts that keep geometry."""

from __future__ import annotations

import torch

from robustbench_fmnist.perturbations.random import ImageRandom
from robustbench_fmnist.perturbations.registry import register_perturbation


# ImageNet-C's brightness table (0.1..0.5), additive as in ImageNet-C and MNIST-C: it also
# lifts the black background to grey, which is the shift a darkroom-trained model never saw.
@register_perturbation(levels=(0.1, 0.2, 0.3, 0.4, 0.5), identity=0.0, unit="added to intensity", family="lighting")
def brightness(images: torch.Tensor, amount: float, rng: ImageRandom | None = None) -> torch.Tensor:
    """Additive brightness: clip(x + b)."""
    if not -1.0 <= amount <= 1.0:
        raise ValueError(f"brightness amount must lie in [-1, 1], got {amount}")
    return (images + amount).clamp_(0.0, 1.0)


# ImageNet-C's contrast table; the mean is per image, so overall brightness is kept
@register_perturbation(levels=(0.4, 0.3, 0.2, 0.1, 0.05), identity=1.0, unit="contrast factor", family="lighting")
def contrast(images: torch.Tensor, factor: float, rng: ImageRandom | None = None) -> torch.Tensor:
    """Contrast about each image's mean: (x - mean) * c + mean."""
    if factor < 0:
        raise ValueError(f"contrast factor must be >= 0, got {factor}")
    mean = images.mean(dim=(-3, -2, -1), keepdim=True)
    return ((images - mean) * factor + mean).clamp_(0.0, 1.0)

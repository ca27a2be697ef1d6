"""Viewpoint perturbations: geometric warps by affine resampling."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from robustbench_fmnist.perturbations.random import ImageRandom
from robustbench_fmnist.perturbations.registry import register_perturbation


def rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image counter-clockwise by its own angle about the centre.

    Bilinear, zero border, align_corners=False: the convention albumentations' Rotate uses,
    so the two backends agree (REFERENCE.md).
    """
    radians = degrees.to(device=images.device, dtype=torch.float32) * (math.pi / 180.0)
    cos, sin = torch.cos(radians), torch.sin(radians)
    zero = torch.zeros_like(cos)
    # affine_grid maps output to input coordinates (y pointing down), hence the signs
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.to(images.dtype).clamp_(0.0, 1.0)


# 15-degree steps (Ovadia et al. sweep MNIST in 15-degree steps); the direction is drawn per
# image from the seed, so a model cannot profit from a bias towards one direction
@register_perturbation(
    levels=(15, 30, 45, 60, 75), identity=0.0, unit="degrees, random direction", family="viewpoint", random=True
)
def rotation(images: torch.Tensor, degrees: float, rng: ImageRandom | None = None) -> torch.Tensor:
    """Rotation by a fixed angle, clockwise or counter-clockwise per image."""
    if not -360.0 <= degrees <= 360.0:
        raise ValueError(f"rotation angle must lie in [-360, 360] degrees, got {degrees}")
    signs = torch.ones(len(images), device=images.device) if rng is None else rng.sign()
    return rotate(images, signs * degrees)

"""A spatial transformer front end (Jaderberg et al. 2015) on the baseline CNN: it learns to undo the turn.

A small localisation network reads the image and predicts an affine transform; the image is resampled
through it (bilinear, black outside) and the baseline CNN classifies the result. The last layer starts
at the identity, so training begins as the plain baseline and moves away only where that lowers the
loss. The localisation network is PyTorch's MNIST tutorial's, which follows the paper's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_fmnist.models.baseline import BASELINE_RECIPE, baseline_cnn, baseline_cnn_tiny
from robustbench_fmnist.models.registry import register_model


class SpatialTransformer(nn.Module):
    """Resamples each image through the affine transform its localisation network predicts."""

    def __init__(self, channels: tuple[int, int] = (8, 10), hidden: int = 32) -> None:
        super().__init__()
        first, second = channels
        self.localisation = nn.Sequential(
            nn.Conv2d(1, first, 7),  # 28 -> 22
            nn.MaxPool2d(2),  # 11
            nn.ReLU(inplace=True),
            nn.Conv2d(first, second, 5),  # 7
            nn.MaxPool2d(2),  # 3
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(second * 3 * 3, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 6),
        )
        last = self.localisation[-1]
        nn.init.zeros_(last.weight)
        with torch.no_grad():
            last.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))

    def theta(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 2, 3) the affine transform of each image, in affine_grid's normalised coordinates."""
        return self.localisation(images).view(-1, 2, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[-2:]) != (28, 28):
            raise ValueError(
                f"the spatial transformer reads 28 x 28 images, got {images.shape[-2]} x {images.shape[-1]}"
            )
        grid = F.affine_grid(self.theta(images), list(images.shape), align_corners=False)
        return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)


@register_model(BASELINE_RECIPE)
def stn_cnn(dropout: float = 0.25, num_classes: int = 10) -> nn.Module:
    """baseline_cnn behind a spatial transformer (Jaderberg et al. 2015): 230k parameters, 2 % over the baseline's."""
    return nn.Sequential(SpatialTransformer(), baseline_cnn(dropout=dropout, num_classes=num_classes))


@register_model(BASELINE_RECIPE.model_copy(update={"epochs": 1}), tags=("tiny",))
def stn_cnn_tiny(num_classes: int = 10) -> nn.Module:
    """Test-sized stn_cnn (2, 2 localisation channels, dense 4) on baseline_cnn_tiny."""
    return nn.Sequential(SpatialTransformer((2, 2), 4), baseline_cnn_tiny(num_classes=num_classes))

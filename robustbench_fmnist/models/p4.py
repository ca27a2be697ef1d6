"""Group-equivariant CNNs over p4, the four 90° rotations (Cohen & Welling 2016), in plain torch.

A p4 feature map holds every channel at each of the four rotations, carried as (N, C * 4, H, W)
with channel c at rotation r in place 4c + r, so every layer between the ends is an ordinary 4-d
tensor that channels_last, oneDNN and the fast inference path take as they are. The lifting
layer correlates the image with each filter turned by 0, 90, 180 and 270 degrees; a group layer
turns each filter and shifts its rotation axis cyclically, so turning the input by 90° turns every
feature map and rolls its rotation axis by one. Both are one conv2d over a filter bank built from
the learned weights each forward, so training and the fast inference path see ordinary convolutions.
The head takes the maximum over the rotations and averages over space: the logits of an image and of
its quarter turns are the same (exactly in real arithmetic; to float rounding in float32).

Exactness on the pixel grid needs pooling that a quarter turn maps onto itself: padded 3x3
convolutions and 2x2 max-pools on even sizes (28 -> 14 -> 7).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_fmnist.models.baseline import BASELINE_RECIPE
from robustbench_fmnist.models.registry import Normalize, register_model
from robustbench_fmnist.models.vgg import DEEP_RECIPE

ROTATIONS = 4


class LiftingConv(nn.Module):
    """Z2 -> p4: each filter correlated with the image at the four quarter turns; (N, C, H, W) -> (N, O * 4, H, W)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3, *, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(c_out, c_in, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def filter_bank(self) -> torch.Tensor:
        """(O * 4, C, k, k): output channel o at rotation r is the filter turned r quarter turns."""
        turned = torch.stack([torch.rot90(self.weight, r, dims=(2, 3)) for r in range(ROTATIONS)], dim=1)
        return turned.flatten(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.repeat_interleave(ROTATIONS)
        return F.conv2d(x, self.filter_bank(), bias, padding=self.weight.shape[-1] // 2)


class GroupConv(nn.Module):
    """p4 -> p4: (N, C * 4, H, W) -> (N, O * 4, H, W), equivariant to quarter turns of the input."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3, *, bias: bool = True) -> None:
        super().__init__()
        # stored (O, C * 4, k, k), a 4-d tensor like any conv weight, so `.to(memory_format=channels_last)`
        # applies to the model; viewed as (O, C, 4, k, k) to build the bank
        self.weight = nn.Parameter(torch.empty(c_out, c_in * ROTATIONS, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def filter_bank(self) -> torch.Tensor:
        """(O * 4, C * 4, k, k): for output rotation r, each filter turned r times, its rotation axis rolled by r."""
        weight = self.weight.unflatten(1, (-1, ROTATIONS))
        turned = [torch.rot90(torch.roll(weight, shifts=r, dims=2), r, dims=(3, 4)) for r in range(ROTATIONS)]
        return torch.stack(turned, dim=1).flatten(0, 1).flatten(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.repeat_interleave(ROTATIONS)
        return F.conv2d(x, self.filter_bank(), bias, padding=self.weight.shape[-1] // 2)


class GroupBatchNorm(nn.BatchNorm3d):
    """BatchNorm over p4 maps with one mean and variance per channel, shared by its four rotations."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.unflatten(1, (-1, ROTATIONS))).flatten(1, 2)


class GroupMaxPool2d(nn.MaxPool2d):
    """A spatial max-pool of every rotation's map, on sides a quarter turn maps onto themselves."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.kernel_size or x.shape[-2] % self.kernel_size:
            raise ValueError(f"p4 pooling needs sides divisible by {self.kernel_size}, got {tuple(x.shape[-2:])}")
        return super().forward(x)


class InvariantPool(nn.Module):
    """The maximum over the four rotations at each place (Cohen & Welling's group pooling), then the mean over
    space: (N, C * 4, H, W) -> (N, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(1, (-1, ROTATIONS)).amax(dim=2).mean(dim=(-2, -1))


class SquareInput(nn.Module):
    """Refuses inputs a quarter turn does not map onto themselves, before any work."""

    def __init__(self, divisor: int) -> None:
        super().__init__()
        self.divisor = divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height != width or height % self.divisor:
            raise ValueError(
                f"a p4 model needs square inputs whose side divides by {self.divisor} (28 x 28 does), got "
                f"{height} x {width}"
            )
        return x


def _block(c_in: int, c_out: int, *, lifting: bool, norm: bool) -> list[nn.Module]:
    conv = LiftingConv(c_in, c_out, bias=not norm) if lifting else GroupConv(c_in, c_out, bias=not norm)
    return [conv, *([GroupBatchNorm(c_out)] if norm else []), nn.ReLU(inplace=True)]


def _build(stages: list[list[int]], norm: bool, hidden: int, dropout: float, num_classes: int) -> nn.Sequential:
    """Stages of p4 layers at 28, 14, 7 pixels (a 2x2 max-pool between stages), then the invariant head."""
    layers: list[nn.Module] = [SquareInput(2 ** (len(stages) - 1)), Normalize()]
    c_in, lifting = 1, True
    for index, widths in enumerate(stages):
        for width in widths:
            layers += _block(c_in, width, lifting=lifting, norm=norm)
            c_in, lifting = width, False
        if index < len(stages) - 1:
            layers.append(GroupMaxPool2d(2))
    layers.append(InvariantPool())
    if hidden:
        layers += [nn.Linear(c_in, hidden), nn.ReLU(inplace=True)]
        c_in = hidden
    layers += [nn.Dropout(dropout), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)


@register_model(BASELINE_RECIPE)
def p4_cnn(
    widths: tuple[int, int, int] = (16, 48, 96), hidden: int = 128, dropout: float = 0.25, num_classes: int = 10
) -> nn.Module:
    """p4 group CNN at baseline_cnn's size (208k parameters): exactly invariant to quarter turns of the image."""
    return _build([[w] for w in widths], norm=False, hidden=hidden, dropout=dropout, num_classes=num_classes)


@register_model(DEEP_RECIPE)
def p4_deep_cnn(
    widths: tuple[int, int, int] = (16, 32, 64), convs_per_stage: int = 2, dropout: float = 0.2, num_classes: int = 10
) -> nn.Module:
    """deep_cnn as a p4 group CNN (half the channels, four rotations each: about its parameters), BatchNorm."""
    stages = [[w] * convs_per_stage for w in widths]
    return _build(stages, norm=True, hidden=0, dropout=dropout, num_classes=num_classes)


@register_model(BASELINE_RECIPE.model_copy(update={"epochs": 1}), tags=("tiny",))
def p4_cnn_tiny(num_classes: int = 10) -> nn.Module:
    """Test-sized p4_cnn (2, 4, 4 channels, dense 8)."""
    return _build([[2], [4], [4]], norm=False, hidden=8, dropout=0.0, num_classes=num_classes)


@register_model(DEEP_RECIPE.model_copy(update={"epochs": 1}), tags=("tiny",))
def p4_deep_cnn_tiny(num_classes: int = 10) -> nn.Module:
    """Test-sized p4_deep_cnn (2, 4, 4 channels, one layer a stage)."""
    return _build([[2], [4], [4]], norm=True, hidden=0, dropout=0.0, num_classes=num_classes)

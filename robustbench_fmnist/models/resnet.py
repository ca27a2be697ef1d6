"""CIFAR-style ResNets (He et al. 2016, section 4.2): 3 stages of basic blocks at 16, 32 and 64 channels.

ResNet-(6n+2) has n blocks per stage (`resnet8` is n = 1; `kwargs: {blocks: 3}` makes ResNet-20); the
stages run at 28, 14 and 7 pixels here (32, 16, 8 on CIFAR). Shortcuts that change shape are 1x1
convolutions with BatchNorm (option B).
"""

from __future__ import annotations

import torch
from torch import nn

from robustbench_fmnist.models.registry import Normalize, register_model
from robustbench_fmnist.models.vgg import DEEP_RECIPE

# deep_cnn's recipe (AdamW one-cycle, label smoothing, flips and crops) with 6 epochs, so that three
# seeds train in minutes on 2 cores (an epoch is about 14 s there, deep_cnn's 24 s)
RESNET_RECIPE = DEEP_RECIPE.model_copy(update={"epochs": 6})


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut, ReLU after the sum."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def _build(blocks: int, widths: tuple[int, int, int], num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = [
        Normalize(),
        nn.Conv2d(1, widths[0], 3, padding=1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(inplace=True),
    ]
    c_in = widths[0]
    for stage, width in enumerate(widths):
        for block in range(blocks):
            layers.append(BasicBlock(c_in, width, stride=2 if stage > 0 and block == 0 else 1))
            c_in = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)


@register_model(RESNET_RECIPE)
def resnet8(blocks: int = 1, widths: tuple[int, int, int] = (16, 32, 64), num_classes: int = 10) -> nn.Module:
    """CIFAR-style ResNet-8: one basic block per stage at 16, 32, 64 channels (78k parameters)."""
    return _build(blocks, tuple(widths), num_classes)


@register_model(RESNET_RECIPE.model_copy(update={"epochs": 1}), tags=("tiny",))
def resnet8_tiny(num_classes: int = 10) -> nn.Module:
    """Test-sized CIFAR ResNet (one block per stage, 4, 8, 8 channels)."""
    return _build(1, (4, 8, 8), num_classes)

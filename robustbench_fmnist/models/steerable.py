"""Steerable CNNs equivariant to the C8 and C16 rotation groups (Weiler & Cesa 2019), through e2cnn.

`deep_cnn`'s layout (three stages of two 5x5 convolutions at 28, 14 and 7 pixels, BatchNorm, ReLU)
with regular fields of the group in place of channels: rotating the image by a multiple of 45°
(C8) or 22.5° (C16) permutes each field's channels. The fields are pooled over the group and over
space before the dense layer, so the logits are invariant to those turns up to the pixel grid's
interpolation. e2cnn is an optional extra (`pip install 'robustbench_fmnist[e2cnn]'`, which
`make setup` installs); without it the models are listed but building one says how to install it.
For evaluation the network is exported to plain torch modules (e2cnn's `export`), so the harness's
inference path and `bench` run it as any CNN.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

from robustbench_fmnist.errors import ConfigError
from robustbench_fmnist.models.registry import Normalize, register_model
from robustbench_fmnist.models.vgg import DEEP_RECIPE

EXTRA = "pip install 'robustbench_fmnist[e2cnn]' (make setup installs it)"


def _e2cnn() -> Any:
    """The e2cnn package, or one line saying how to install it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import e2cnn
            import e2cnn.nn
    except ImportError as exc:
        raise ConfigError(f"the C8 and C16 steerable CNNs need the e2cnn extra: {EXTRA}") from exc
    return e2cnn


class SteerableCNN(nn.Module):
    """An e2cnn network between plain tensors: (N, 1, 28, 28) images in, (N, classes) logits out."""

    def __init__(self, body: nn.Module, in_type: Any, width: int, dropout: float, num_classes: int) -> None:
        super().__init__()
        self.normalize = Normalize()
        self.body = body
        self.in_type = in_type
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(width, num_classes)
        )
        self._expanded_filters_transient()

    def train(self, mode: bool = True) -> SteerableCNN:
        """As nn.Module's; e2cnn expands each layer's filter when leaving training, here without autograd."""
        with torch.no_grad():
            super().train(mode)
        self._expanded_filters_transient()
        return self

    def _expanded_filters_transient(self) -> None:
        # e2cnn keeps the filters it expands from the learned coefficients as buffers that exist in one mode
        # and not the other; outside the state dict, a checkpoint holds the same keys in any mode
        for module in self.body.modules():
            for name in ("filter", "expanded_bias"):
                if name in module._buffers:
                    module._non_persistent_buffers_set.add(name)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[-2:]) != (28, 28):
            raise ValueError(f"a steerable CNN here reads 28 x 28 images, got {images.shape[-2]} x {images.shape[-1]}")
        geometric = _e2cnn().nn.GeometricTensor(self.normalize(images).contiguous(), self.in_type)
        return self.head(self.body(geometric).tensor)

    def inference_module(self) -> nn.Module:
        """A plain-torch copy for evaluation: e2cnn's layers exported to Conv2d, BatchNorm and pooling."""
        body = copy.deepcopy(self.body)
        with warnings.catch_warnings(), torch.no_grad():  # eval() expands the filters: no graph for them
            body.eval()
            warnings.simplefilter("ignore")
            exported = body.export()
        return nn.Sequential(copy.deepcopy(self.normalize), exported, copy.deepcopy(self.head)).eval()


def _build(rotations: int, fields: tuple[int, int, int], dropout: float, num_classes: int) -> SteerableCNN:
    e2cnn = _e2cnn()
    enn, gspaces = e2cnn.nn, e2cnn.gspaces
    group = gspaces.Rot2dOnR2(N=rotations)
    in_type = enn.FieldType(group, [group.trivial_repr])
    layers: list[Any] = []
    current = in_type
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e2cnn indexes with uint8 masks, which torch deprecates
        for stage, count in enumerate(fields):
            for _ in range(2):
                out = enn.FieldType(group, count * [group.regular_repr])
                layers += [enn.R2Conv(current, out, kernel_size=5, padding=2, bias=False), enn.InnerBatchNorm(out),
                           enn.ReLU(out, inplace=True)]  # fmt: skip
                current = out
            if stage < len(fields) - 1:
                layers.append(enn.PointwiseMaxPool(current, 2))
        layers.append(enn.GroupPooling(current))
    return SteerableCNN(enn.SequentialModule(*layers), in_type, fields[-1], dropout, num_classes)


@register_model(DEEP_RECIPE)
def c8_cnn(fields: tuple[int, int, int] = (10, 20, 41), dropout: float = 0.2, num_classes: int = 10) -> nn.Module:
    """Steerable C8 CNN (Weiler & Cesa 2019), deep_cnn's layout: 283k parameters, 511 M MACs (needs the e2cnn extra)."""
    return _build(8, tuple(fields), dropout, num_classes)


@register_model(DEEP_RECIPE)
def c16_cnn(fields: tuple[int, int, int] = (8, 14, 29), dropout: float = 0.2, num_classes: int = 10) -> nn.Module:
    """Steerable C16 CNN (Weiler & Cesa 2019), deep_cnn's layout: 286k parameters, 1.1G MACs (needs the e2cnn extra)."""
    return _build(16, tuple(fields), dropout, num_classes)


@register_model(DEEP_RECIPE.model_copy(update={"epochs": 1}), tags=("tiny",))
def c8_cnn_tiny(num_classes: int = 10) -> nn.Module:
    """Test-sized c8_cnn (1, 1, 2 fields; needs the e2cnn extra)."""
    return _build(8, (1, 1, 2), 0.0, num_classes)


@register_model(DEEP_RECIPE.model_copy(update={"epochs": 1}), tags=("tiny",))
def c16_cnn_tiny(num_classes: int = 10) -> nn.Module:
    """Test-sized c16_cnn (1, 1, 1 fields; needs the e2cnn extra)."""
    return _build(16, (1, 1, 1), 0.0, num_classes)

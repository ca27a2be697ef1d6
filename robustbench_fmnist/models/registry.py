"""The model registry: `@register_model` turns a builder function into a public name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from robustbench_fmnist.config import TrainRecipe
from robustbench_fmnist.registry import Registry

# Training-set statistics of Fashion-MNIST in [0, 1]; models normalise internally so every
# model, and every perturbation, works on plain [0, 1] images.
FMNIST_MEAN = 0.2860
FMNIST_STD = 0.3530

ModelBuilder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: ModelBuilder
    recipe: TrainRecipe
    description: str
    tags: tuple[str, ...] = field(default_factory=tuple)

    def build(self, **kwargs: object) -> nn.Module:
        return self.builder(**kwargs)


MODELS: Registry[ModelEntry] = Registry("model")


def register_model(
    recipe: TrainRecipe | None = None, *, tags: tuple[str, ...] = ()
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register a builder under its function name, with the recipe that trains it well."""

    def decorate(builder: ModelBuilder) -> ModelBuilder:
        doc = (builder.__doc__ or "").strip().splitlines()
        MODELS.add(
            builder.__name__,
            ModelEntry(builder.__name__, builder, recipe or TrainRecipe(), doc[0] if doc else "", tags),
        )
        return builder

    return decorate


def create_model(name: str, **kwargs: object) -> nn.Module:
    return MODELS.get(name).build(**kwargs)


class Normalize(nn.Module):
    """Standardise [0, 1] inputs with fixed statistics (a buffer, so it follows .to())."""

    def __init__(self, mean: float = FMNIST_MEAN, std: float = FMNIST_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("inv_std", torch.tensor(1.0 / std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.inv_std


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, image_shape: tuple[int, int, int] = (1, 28, 28)) -> int:
    """Multiply-accumulates for one image's forward pass (half of torch's FLOP count)."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *image_shape, device=device))
    model.train(was_training)
    return counter.get_total_flops() // 2

"""Perturbation backends: the registry of implementations a cell's `backend:` names.

`torch` runs the batched kernels of this package on any device; `albumentations` runs the
same perturbations image by image through albumentations 2.0.x, as the reference the torch
kernels are checked against.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from robustbench_fmnist.perturbations.registry import PerturbationEntry
from robustbench_fmnist.registry import Registry

# apply(entry, images, value, seed, indices) -> perturbed images, the contract of PerturbationEntry.apply_value
Apply = Callable[[PerturbationEntry, torch.Tensor, float, int, torch.Tensor | None], torch.Tensor]


@dataclass(frozen=True)
class BackendEntry:
    name: str
    apply: Apply
    unsupported: Callable[[str], str | None]  # why a perturbation has no implementation here; None if it has
    description: str


BACKENDS: Registry[BackendEntry] = Registry("perturbation backend")


def register_backend(name: str, *, unsupported: Callable[[str], str | None]) -> Callable[[Apply], Apply]:
    """Register a perturbation backend under `name` (the word `backend:` takes)."""

    def decorate(apply: Apply) -> Apply:
        doc = (apply.__doc__ or "").strip().splitlines()
        BACKENDS.add(name, BackendEntry(name, apply, unsupported, doc[0] if doc else ""))
        return apply

    return decorate


@register_backend("torch", unsupported=lambda name: None)
def apply_torch(
    entry: PerturbationEntry, images: torch.Tensor, value: float, seed: int, indices: torch.Tensor | None
) -> torch.Tensor:
    """Batched torch kernels, on the images' device."""
    return entry.apply_value(images, value, seed=seed, indices=indices)


def _albumentations_unsupported(name: str) -> str | None:
    from robustbench_fmnist.perturbations.albumentations_backend import ADAPTERS, NO_EQUIVALENT

    if name in ADAPTERS:
        return None
    return NO_EQUIVALENT.get(name, "it has no adapter")


@register_backend("albumentations", unsupported=_albumentations_unsupported)
def apply_albumentations(
    entry: PerturbationEntry, images: torch.Tensor, value: float, seed: int, indices: torch.Tensor | None
) -> torch.Tensor:
    """albumentations 2.0.x, one image at a time on the CPU (the reference implementation)."""
    from robustbench_fmnist.perturbations import albumentations_backend

    return albumentations_backend.apply_albumentations(entry, images, value, seed=seed, indices=indices)


def apply_backend(
    backend: str, entry: PerturbationEntry, images: torch.Tensor, value: float, *, seed: int, indices: torch.Tensor
) -> torch.Tensor:
    """Perturb `images` with `entry` at `value` through the named backend."""
    return BACKENDS.get(backend).apply(entry, images, value, seed, indices)

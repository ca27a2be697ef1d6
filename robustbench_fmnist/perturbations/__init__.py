"""Perturbations. Importing this package registers every built-in perturbation."""

from __future__ import annotations

from robustbench_fmnist.perturbations import blur, color, digital, geometry, noise  # noqa: F401  (registers)
from robustbench_fmnist.perturbations.random import ImageRandom, derive_key
from robustbench_fmnist.perturbations.registry import (
    PERTURBATIONS,
    PerturbationEntry,
    apply_perturbation,
    register_perturbation,
)

__all__ = [
    "PERTURBATIONS",
    "ImageRandom",
    "PerturbationEntry",
    "apply_perturbation",
    "derive_key",
    "register_perturbation",
]

"""The perturbation registry and the one entry point that applies a perturbation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from robustbench_fmnist.config import MAX_SEVERITY
from robustbench_fmnist.perturbations.random import ImageRandom, derive_key
from robustbench_fmnist.registry import Registry

# kernel(images, parameter, rng) -> perturbed images; rng is ignored by deterministic kernels
Kernel = Callable[[torch.Tensor, float, ImageRandom], torch.Tensor]


@dataclass(frozen=True)
class PerturbationEntry:
    name: str
    kernel: Kernel
    levels: tuple[float, ...]  # the kernel's parameter at severities 1..5
    identity: float  # the parameter value that leaves images unchanged (severity 0)
    unit: str  # what the parameter means, for tables and `ls`
    family: str  # lighting, viewpoint, ...
    random: bool  # whether draws depend on the seed
    description: str

    def parameter(self, severity: int) -> float:
        check_severity(severity)
        return self.identity if severity == 0 else self.levels[severity - 1]

    def __call__(
        self, images: torch.Tensor, severity: int, *, seed: int = 0, indices: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Perturb a batch at a severity from the table. Returns a new tensor; input untouched.

        `indices` are the images' positions in the whole test set (default 0..N-1): random
        draws are keyed by them, so a batch gives the same result as the full set sliced.
        """
        check_images(images)
        parameter = self.parameter(severity)
        if severity == 0:
            return images.clone()
        if indices is None:
            indices = torch.arange(len(images), device=images.device)
        elif indices.shape != (len(images),):
            raise ValueError(f"indices must have shape ({len(images)},), got {tuple(indices.shape)}")
        rng = ImageRandom(derive_key(seed, self.name, severity), indices.to(images.device))
        return self.kernel(images, parameter, rng)


PERTURBATIONS: Registry[PerturbationEntry] = Registry("perturbation")


def register_perturbation(
    *, levels: Sequence[float], identity: float, unit: str, family: str, random: bool = False
) -> Callable[[Kernel], Kernel]:
    """Register a kernel under its function name with its five-level severity table."""
    if len(levels) != MAX_SEVERITY:
        raise ValueError(f"a severity table needs {MAX_SEVERITY} levels, got {len(levels)}")

    def decorate(kernel: Kernel) -> Kernel:
        doc = (kernel.__doc__ or "").strip().splitlines()
        entry = PerturbationEntry(
            name=kernel.__name__,
            kernel=kernel,
            levels=tuple(float(v) for v in levels),
            identity=float(identity),
            unit=unit,
            family=family,
            random=random,
            description=doc[0] if doc else "",
        )
        PERTURBATIONS.add(kernel.__name__, entry)
        return kernel

    return decorate


def apply_perturbation(
    name: str, images: torch.Tensor, severity: int, *, seed: int = 0, indices: torch.Tensor | None = None
) -> torch.Tensor:
    return PERTURBATIONS.get(name)(images, severity, seed=seed, indices=indices)


def check_severity(severity: int) -> None:
    if isinstance(severity, bool) or not isinstance(severity, int) or not 0 <= severity <= MAX_SEVERITY:
        raise ValueError(f"severity must be an integer 0..{MAX_SEVERITY}, got {severity!r}")


def check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a (N, C, H, W) tensor, got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [0, 1], got {images.dtype}")

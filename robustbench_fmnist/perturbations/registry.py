"""The perturbation registry and the one entry point that applies a perturbation."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from robustbench_fmnist.config import MAX_SEVERITY
from robustbench_fmnist.perturbations.random import ImageRandom, derive_key
from robustbench_fmnist.registry import Registry

# kernel(images, value, rng) -> perturbed images; `value` is the severity table's parameter
Kernel = Callable[[torch.Tensor, float, ImageRandom], torch.Tensor]

FAMILIES = ("lighting", "viewpoint", "noise", "blur", "digital")


@dataclass(frozen=True)
class PerturbationEntry:
    name: str
    kernel: Kernel
    levels: tuple[float, ...]  # the kernel's parameter at severities 1..len(levels)
    identity: float  # the parameter value that leaves images unchanged (severity 0)
    unit: str  # what the parameter means, for tables and `ls`
    family: str  # lighting, viewpoint, noise, blur, digital
    random: bool  # whether the result depends on the seed
    description: str
    values_key: str | None  # the YAML key for custom values (e.g. "angles"); None for fixed probes
    bounds: tuple[float, float]  # the parameter values the kernel accepts
    step: float | None  # when set, values must be multiples of it (e.g. 90-degree turns)

    @property
    def max_severity(self) -> int:
        return len(self.levels)

    def parameter(self, severity: int) -> float:
        """The kernel's parameter at a severity of this perturbation's table."""
        check_severity(severity, self.max_severity, self.name)
        return self.identity if severity == 0 else self.levels[severity - 1]

    def check_value(self, value: float) -> float:
        """`value` as a float if the kernel accepts it, else ValueError naming the range."""
        if isinstance(value, int | float) and not isinstance(value, bool) and value == self.identity:
            return float(value)  # the identity may be infinite (shot noise: infinitely many photons)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{self.name}: parameter must be a finite number, got {value!r}")
        low, high = self.bounds
        if not low <= value <= high:
            raise ValueError(f"{self.name}: parameter {value:g} is outside [{low:g}, {high:g}] ({self.unit})")
        if self.step is not None and abs(value / self.step - round(value / self.step)) > 1e-9:
            raise ValueError(f"{self.name}: parameter {value:g} must be a multiple of {self.step:g} ({self.unit})")
        return float(value)

    def __call__(
        self, images: torch.Tensor, severity: int, *, seed: int = 0, indices: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Perturb a batch at a severity from the table. Returns a new tensor; input untouched.

        `indices` are the images' positions in the whole test set (default 0..N-1): random
        draws are keyed by them, so a batch gives the same result as the full set sliced.
        """
        return self.apply_value(images, self.parameter(severity), seed=seed, indices=indices)

    def apply_value(
        self, images: torch.Tensor, value: float, *, seed: int = 0, indices: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Perturb a batch with any accepted parameter value (custom sweeps from the YAML)."""
        check_images(images)
        value = self.check_value(value)
        if value == self.identity:
            return images.clone()
        rng = self.random_draws(len(images), value, seed=seed, indices=indices, device=images.device)
        return self.kernel(images, value, rng)

    def random_draws(
        self,
        count: int,
        value: float,
        *,
        seed: int = 0,
        indices: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
    ) -> ImageRandom:
        """The per-image random source for (seed, this perturbation, value); shared by both backends.

        Keyed by the parameter value rather than the severity number, so a custom value equal
        to a table level reproduces that severity exactly.
        """
        if indices is None:
            indices = torch.arange(count, device=device)
        elif indices.shape != (count,):
            raise ValueError(f"indices must have shape ({count},), got {tuple(indices.shape)}")
        return ImageRandom(derive_key(seed, self.name, repr(float(value))), indices.to(device))


PERTURBATIONS: Registry[PerturbationEntry] = Registry("perturbation")


def register_perturbation(
    *,
    levels: Sequence[float],
    identity: float,
    unit: str,
    family: str,
    values_key: str | None,
    bounds: tuple[float, float],
    random: bool = False,
    step: float | None = None,
) -> Callable[[Kernel], Kernel]:
    """Register a kernel under its function name with its severity table (1 to 5 levels).

    Graded perturbations have five levels; fixed probes (a flip, a quarter turn) have fewer.
    """
    if not 1 <= len(levels) <= MAX_SEVERITY:
        raise ValueError(f"a severity table needs 1..{MAX_SEVERITY} levels, got {len(levels)}")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")

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
            values_key=values_key,
            bounds=(float(bounds[0]), float(bounds[1])),
            step=step,
        )
        for level in (*entry.levels, entry.identity):
            entry.check_value(level)
        PERTURBATIONS.add(kernel.__name__, entry)
        return kernel

    return decorate


def apply_perturbation(
    name: str, images: torch.Tensor, severity: int, *, seed: int = 0, indices: torch.Tensor | None = None
) -> torch.Tensor:
    """`name` at `severity` on a (N, C, H, W) batch in [0, 1]: a new tensor, the input untouched.

    ValueError for pixels outside [0, 1] or NaN, which every kernel would clamp or pass on
    without a word. Only this public entry point looks: the sweep's batches come from
    to_float_images, and a pass over every batch would cost time that the benchmarks gate.
    """
    check_images(images)
    check_pixel_range(images)
    return PERTURBATIONS.get(name)(images, severity, seed=seed, indices=indices)


def check_pixel_range(images: torch.Tensor) -> None:
    """Raise ValueError unless every pixel of `images` is a number in [0, 1]."""
    if images.numel() == 0:
        return
    low, high = (float(v) for v in torch.aminmax(images.detach()))
    if math.isnan(low) or math.isnan(high):
        count = int(torch.isnan(images).sum())
        raise ValueError(
            f"images hold {count} NaN pixel(s); perturbations need numbers in [0, 1]: find where the NaN come "
            "from, or replace them (images.nan_to_num(0.0))"
        )
    if low < 0 or high > 1:
        hint = "undo the normalisation (x * std + mean)" if low < 0 else "divide 0-255 pixels by 255"
        raise ValueError(f"images must lie in [0, 1], found values in [{low:g}, {high:g}]; {hint}")


def check_severity(severity: int, max_severity: int = MAX_SEVERITY, name: str = "") -> None:
    if isinstance(severity, bool) or not isinstance(severity, int) or not 0 <= severity <= max_severity:
        where = f"{name}: " if name else ""
        raise ValueError(f"{where}severity must be an integer 0..{max_severity}, got {severity!r}")


def check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        hint = ""
        if isinstance(images, torch.Tensor) and images.ndim == 3:
            hint = "; add the missing axis: images[:, None] for (N, H, W) grey images, images[None] for one image"
        raise ValueError(f"images must be a (N, C, H, W) tensor, got {shape}{hint}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [0, 1], got {images.dtype}")

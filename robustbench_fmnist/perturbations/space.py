"""Perturbation spaces for the worst case: products of named parameter axes, and images perturbed at their points.

A space is `{axis: [low, high, points]}`: rotation (degrees), translate (pixels, both axes:
two dimensions of the same points), scale, shear (degrees along x), brightness, contrast, gamma,
exposure, or any registered perturbation with a continuous parameter. Its points are the
product of every dimension's evenly spaced values, enumerated row-major, so point k means the
same parameters everywhere. The transformations are the suite's own kernels: one affine warp
for the geometric axes (geometry.warp_affine, bilinear, black border; whole-pixel shifts exactly
as `translation` does them), then the lighting primitives of color.py in the space's order, then
any perturbation kernel, each clipping as the suite's does. A point equal to a suite cell gives
that cell's images, bit for bit.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch

from robustbench_fmnist.perturbations.color import add_brightness, adjust_contrast, adjust_gamma, scale_intensity
from robustbench_fmnist.perturbations.geometry import affine_matrices, shift_whole_pixels, warp_affine
from robustbench_fmnist.perturbations.registry import PERTURBATIONS
from robustbench_fmnist.registry import Registry

Light = Callable[[torch.Tensor, "float | torch.Tensor"], torch.Tensor]


@dataclass(frozen=True)
class AxisEntry:
    """One axis a space can name: its unit, the value that changes nothing, the values its kernel takes."""

    name: str
    unit: str
    identity: float
    bounds: tuple[float, float]
    warp: tuple[str, ...] = ()  # affine_matrices' keywords this axis sets (translate sets two)
    light: Light | None = None  # a color.py primitive taking a scalar or per-image values
    perturbation: str | None = None  # a registered perturbation whose kernel takes the value

    @property
    def dims(self) -> tuple[str, ...]:
        """The space's dimensions this axis adds: one, or translate's x and y."""
        return tuple(f"{self.name}_{k.rpartition('_')[2]}" for k in self.warp) if len(self.warp) > 1 else (self.name,)


AXES: Registry[AxisEntry] = Registry("axis")


def register_axis(entry: AxisEntry) -> AxisEntry:
    """Register an axis a space can name (the built-in ones below; any continuous perturbation is one too)."""
    return AXES.add(entry.name, entry)


register_axis(AxisEntry("rotation", "degrees, counter-clockwise", 0.0, (-180.0, 180.0), warp=("rotate",)))
register_axis(AxisEntry("translate", "pixels, x and y", 0.0, (-14.0, 14.0), warp=("translate_x", "translate_y")))
register_axis(AxisEntry("scale", "scale factor", 1.0, (0.25, 4.0), warp=("scale",)))
register_axis(AxisEntry("shear", "degrees along x", 0.0, (-60.0, 60.0), warp=("shear_x",)))
register_axis(AxisEntry("brightness", "added to intensity", 0.0, (-1.0, 1.0), light=add_brightness))
register_axis(AxisEntry("contrast", "contrast factor", 1.0, (0.0, 10.0), light=adjust_contrast))
register_axis(AxisEntry("gamma", "exponent", 1.0, (0.05, 20.0), light=adjust_gamma))
register_axis(AxisEntry("exposure", "intensity factor", 1.0, (0.0, 100.0), light=scale_intensity))


def axis_entry(name: str) -> AxisEntry:
    """The axis `name`: a built-in one, or a registered perturbation with a continuous parameter."""
    if name in AXES:
        return AXES.get(name)
    if name in PERTURBATIONS:
        entry = PERTURBATIONS.get(name)
        if entry.step is None and entry.values_key is not None:
            return AxisEntry(name, entry.unit, entry.identity, entry.bounds, perturbation=name)
    raise ValueError(AXES.unknown_message(name).rstrip(".") + " (or a perturbation with a continuous parameter)")


@dataclass(frozen=True)
class Space:
    """A product of axes, each `(name, low, high, points)`, in the order given."""

    axes: tuple[tuple[str, float, float, int], ...]

    @classmethod
    def of(cls, axes: Mapping[str, Sequence[float]]) -> Space:
        """The space a YAML mapping names, `{axis: [low, high, points]}`, its axes in the mapping's order."""
        return cls(tuple((axis, float(low), float(high), int(points)) for axis, (low, high, points) in axes.items()))

    @cached_property
    def entries(self) -> tuple[AxisEntry, ...]:
        return tuple(axis_entry(name) for name, *_ in self.axes)

    @cached_property
    def dims(self) -> tuple[str, ...]:
        """Every dimension's name, in enumeration order."""
        return tuple(dim for entry in self.entries for dim in entry.dims)

    @cached_property
    def grids(self) -> tuple[torch.Tensor, ...]:
        """Each dimension's values (float64), low to high."""
        values = []
        for entry, (_, low, high, points) in zip(self.entries, self.axes, strict=True):
            # rounded to 12 decimals, so 0 is 0 and 0.1 is the 0.1 a YAML or a severity table writes
            line = [round(low + (high - low) * i / max(points - 1, 1), 12) for i in range(points)]
            values += [torch.tensor(line, dtype=torch.float64)] * len(entry.dims)
        return tuple(values)

    @property
    def size(self) -> int:
        """How many points the space has."""
        return math.prod(len(g) for g in self.grids)

    @cached_property
    def points(self) -> torch.Tensor:
        """(size, dims) float64: every point's parameters, row-major over the dimensions."""
        return torch.tensor(list(itertools.product(*(g.tolist() for g in self.grids))), dtype=torch.float64)

    @cached_property
    def identities(self) -> torch.Tensor:
        """(dims,) the value of each dimension that changes nothing."""
        return torch.tensor([e.identity for e in self.entries for _ in e.dims], dtype=torch.float64)

    @cached_property
    def radius(self) -> torch.Tensor:
        """(size,) each point's distance from the identity, as a share of each dimension's reach (max over dims).

        A budget r keeps the points of radius <= r: the sub-grid of ±r times every axis's range.
        """
        reach = torch.stack([(g - i).abs().max() for g, i in zip(self.grids, self.identities, strict=True)])
        share = (self.points - self.identities).abs() / reach.clamp_min(1e-12)
        return share.max(1).values

    @property
    def identity_index(self) -> int | None:
        """The point that changes nothing, if the space has it."""
        hit = ((self.points - self.identities).abs() < 1e-12).all(1).nonzero()
        return int(hit[0]) if len(hit) else None

    def describe(self, index: int) -> str:
        """Point `index` as 'rotation=-30 translate_x=1.5 ...'."""
        return " ".join(f"{d}={v:g}" for d, v in zip(self.dims, self.points[index].tolist(), strict=True))


def perturb_at(
    images: torch.Tensor,
    space: Space,
    values: torch.Tensor,
    *,
    seed: int = 0,
    indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """`images` (N, C, H, W) in [0, 1], each at its own point of `space`: `values` (N, dims), or (dims,) for all.

    All images at one point take the suite kernels' scalar path (so a point equal to a suite cell
    gives its images bit for bit); points that differ per image take the per-image path.
    """
    one_point = values.dim() == 1
    values = values.to(torch.float64).reshape(-1, len(space.dims)).expand(len(images), -1).cpu()
    columns = dict(zip(space.dims, values.unbind(1), strict=True))
    out = _warped(images, space, columns)
    for entry in space.entries:
        if entry.light is not None:
            amount = columns[entry.name]
            if bool((amount == entry.identity).all()):
                continue  # the suite's kernels leave an identity value out too
            out = entry.light(out, float(amount[0]) if one_point else amount)
        elif entry.perturbation is not None:
            out = _kernel(out, entry, columns[entry.name], seed=seed, indices=indices)
    return out if out is not images else images.clone()


def _warped(images: torch.Tensor, space: Space, columns: dict[str, torch.Tensor]) -> torch.Tensor:
    """One affine warp for every geometric axis; whole-pixel shifts alone move pixels exactly."""
    keywords: dict[str, torch.Tensor] = {}
    for entry in space.entries:
        if entry.warp:
            keywords.update({k: columns[d] for k, d in zip(entry.warp, entry.dims, strict=True)})
    if not keywords:
        return images
    moved = {k: v for k, v in keywords.items() if not bool((v == (1.0 if k == "scale" else 0.0)).all())}
    if not moved:
        return images
    if set(moved) <= {"translate_x", "translate_y"} and all(bool((v == v.round()).all()) for v in moved.values()):
        zero = torch.zeros(len(images), dtype=torch.long)
        shift_x, shift_y = (moved.get(k, zero).round().long() for k in ("translate_x", "translate_y"))
        return shift_whole_pixels(images, shift_x, shift_y)
    return warp_affine(images, affine_matrices(images.shape[-2], images.shape[-1], **moved))


def _kernel(
    images: torch.Tensor, entry: AxisEntry, values: torch.Tensor, *, seed: int, indices: torch.Tensor | None
) -> torch.Tensor:
    """A registered perturbation at each image's value: its kernel takes one value, so images are grouped by it."""
    perturbation = PERTURBATIONS.get(entry.perturbation or "")
    out = torch.empty_like(images)
    positions = torch.arange(len(images)) if indices is None else indices.cpu()
    for value in values.unique().tolist():
        rows = (values == value).nonzero().flatten()
        chosen = images[rows.to(images.device)]
        if value == perturbation.identity:
            out[rows.to(images.device)] = chosen
            continue
        rng = perturbation.random_draws(len(rows), value, seed=seed, indices=positions[rows], device=images.device)
        out[rows.to(images.device)] = perturbation.kernel(chosen, value, rng)
    return out

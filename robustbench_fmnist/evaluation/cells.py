"""The cells of a sweep: the clean test set, or one perturbation at one severity, by one backend."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from robustbench_fmnist.config import ExperimentConfig, PerturbationSpec
from robustbench_fmnist.errors import ConfigError
from robustbench_fmnist.perturbations import PERTURBATIONS
from robustbench_fmnist.perturbations.backends import BACKENDS, apply_backend

CLEAN = "clean"


@dataclass(frozen=True)
class Cell:
    """One column of the sweep: the clean test set (CLEAN_CELL) or one perturbation at one severity."""

    perturbation: str  # the label results are filed under: CLEAN, a perturbation, or name@albumentations
    severity: int  # the table's severity, or the position 1..k in a custom list of values
    parameter: float | None = None  # the kernel's parameter (None for clean)
    name: str | None = None  # the registered perturbation (None for clean)
    backend: str = "torch"

    @property
    def is_clean(self) -> bool:
        """Whether this is the unperturbed test set."""
        return self.perturbation == CLEAN and self.name is None

    @property
    def label(self) -> str:
        """'clean' or 'perturbation s3', for progress and log lines."""
        return CLEAN if self.is_clean else f"{self.perturbation} s{self.severity}"


CLEAN_CELL = Cell(CLEAN, 0)


def perturbation_cells(
    name: str,
    *,
    severities: Sequence[int] | None = None,
    values: Sequence[float] | None = None,
    backend: str = "torch",
    label: str | None = None,
) -> list[Cell]:
    """The cells of one perturbation: its table's severities (default all), or custom values.

    Raises ValueError naming the problem for a severity beyond the table or a value the kernel
    rejects; severity 0 is clean and is skipped.
    """
    entry = PERTURBATIONS.get(name)
    if values is not None:
        pairs = [(position, entry.check_value(v)) for position, v in enumerate(values, start=1)]
    else:
        chosen = range(1, entry.max_severity + 1) if severities is None else severities
        pairs = [(s, entry.parameter(s)) for s in chosen]  # parameter() rejects a severity beyond the table
        pairs = [(s, v) for s, v in pairs if s != 0]
    return [Cell(label or name, s, v, name, backend) for s, v in pairs]


def perturb_cell(cell: Cell, images: torch.Tensor, *, seed: int, indices: torch.Tensor) -> torch.Tensor:
    """The cell's perturbation of a batch, by the cell's backend."""
    return apply_backend(cell.backend, PERTURBATIONS.get(cell.name), images, cell.parameter, seed=seed, indices=indices)


def sweep_cells(perturbations: Sequence[tuple[str, Sequence[int] | None]]) -> list[Cell]:
    """Clean first, then each (perturbation, severities) pair's cells; severities None means all."""
    cells = [CLEAN_CELL]
    for name, severities in perturbations:
        cells += perturbation_cells(name, severities=severities)
    return cells


def experiment_cells(config: ExperimentConfig) -> list[Cell]:
    """Clean plus every perturbation cell the config asks for, checked against the registry."""
    cells = [CLEAN_CELL]
    for i, spec in enumerate(config.perturbations):
        cells += _perturbation_cells(i, spec, config.evaluation.backend)
    return cells


def _perturbation_cells(index: int, spec: PerturbationSpec, default_backend: str) -> list[Cell]:
    where = f"perturbations[{index}]"
    if spec.name not in PERTURBATIONS:
        raise ConfigError(f"{where}.name: {PERTURBATIONS.unknown_message(spec.name)}")
    entry = PERTURBATIONS.get(spec.name)
    if spec.values_key is not None and spec.values_key != entry.values_key:
        accepted = ["severities", "backend"] + ([entry.values_key] if entry.values_key else [])
        close = difflib.get_close_matches(spec.values_key, accepted, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        custom = f"custom values go under {entry.values_key!r}" if entry.values_key else "it is a fixed probe"
        raise ConfigError(f"{where}.{spec.values_key}: unknown key for {spec.name}; {hint}({custom})")
    backend = spec.backend or default_backend
    if backend not in BACKENDS:
        key = f"{where}.backend" if spec.backend else "evaluation.backend"
        raise ConfigError(f"{key}: {BACKENDS.unknown_message(backend)}")
    reason = BACKENDS.get(backend).unsupported(spec.name)
    if reason is not None:
        raise ConfigError(f"{where}.backend: {spec.name} has no {backend} backend ({reason}); use torch")
    try:
        return perturbation_cells(
            spec.name,
            severities=spec.severities,
            values=spec.values,
            backend=backend,
            label=spec.label(default_backend),
        )
    except ValueError as exc:
        key = (spec.values_key or "values") if spec.values is not None else "severities"
        raise ConfigError(f"{where}.{key}: {exc}") from None

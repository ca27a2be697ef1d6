"""What run.json records to reproduce and judge a run: config, environment, versions, commit, perturbations."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from typing import Any

import torch

from robustbench_fmnist.config import ExperimentConfig
from robustbench_fmnist.data import FashionMNIST
from robustbench_fmnist.environment import cpu_description, device_name, git_commit, package_versions
from robustbench_fmnist.evaluation.cells import Cell
from robustbench_fmnist.lock import lock_status
from robustbench_fmnist.perturbations import PERTURBATIONS
from robustbench_fmnist.runtime import thread_info


def run_record(
    config: ExperimentConfig,
    device: torch.device,
    data: FashionMNIST,
    models_info: list[dict[str, Any]],
    timings: dict[str, float],
    cpu_settings: dict[str, object],
    cells: Sequence[Cell],
) -> dict[str, Any]:
    """Everything needed to reproduce and judge a run, for run.json."""
    return {
        "config": config.model_dump(mode="json"),
        "seed": config.run_seeds[0],
        "seeds": list(config.run_seeds),
        "environment": {
            "device": str(device),
            "device_name": device_name(device),
            "cpu": cpu_description(),
            "threads": thread_info(),
            "allocator_tuned": cpu_settings["allocator_tuned"],
            "cpu_settings": cpu_settings,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "versions": package_versions(),
            "lock": lock_status(),
            "git_commit": git_commit(),
        },
        "data": {"source": str(data.source), "checksum": data.checksum, "verified": data.verified},
        "perturbations": perturbation_records(cells),
        "models": models_info,
        "timings_seconds": {k: round(v, 3) for k, v in timings.items()},
    }


def perturbation_records(cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """One record per perturbation label: its registry entry, backend, severities and parameters."""
    records: dict[str, dict[str, Any]] = {}
    for cell in cells:
        if cell.is_clean:
            continue
        if cell.perturbation not in records:
            entry = PERTURBATIONS.get(cell.name)
            records[cell.perturbation] = {
                "name": cell.perturbation,
                "perturbation": entry.name,
                "backend": cell.backend,
                "family": entry.family,
                "unit": entry.unit,
                "random": entry.random,
                "description": entry.description,
                "levels": list(entry.levels),
                "severities": [],
                "parameters": [],
            }
        records[cell.perturbation]["severities"].append(cell.severity)
        records[cell.perturbation]["parameters"].append(cell.parameter)
    return list(records.values())

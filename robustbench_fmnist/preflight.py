"""Everything about an experiment that can be checked in seconds, checked before any training.

`validate` runs exactly these checks, and `run` and `bench` run them first, so a mistake that
would only surface after minutes of training stops the command at once with one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from robustbench_fmnist.checkpoints import checkpoint_dir, read_user_checkpoint
from robustbench_fmnist.config import ExperimentConfig, shorten
from robustbench_fmnist.data import IMAGE_SIZE
from robustbench_fmnist.errors import ModelError
from robustbench_fmnist.evaluation import Cell, check_logits
from robustbench_fmnist.files import check_replaceable, check_writable_folder
from robustbench_fmnist.report.writer import REPORT
from robustbench_fmnist.resolution import ResolvedModel, experiment_cells, resolve
from robustbench_fmnist.runtime import resolve_device

PROBE_IMAGES = 2


@dataclass(frozen=True)
class CheckedExperiment:
    """An experiment that passed every preflight check: what it will run and where it writes."""

    config: ExperimentConfig
    models: list[ResolvedModel]
    cells: list[Cell]
    device: torch.device
    folder: Path  # the report folder: output_dir / name


def preflight(config: ExperimentConfig) -> CheckedExperiment:
    """Check names, device, output and cache folders, checkpoints and every model's output.

    Raises ConfigError (exit 2) naming the key and the fix; creates and changes nothing.
    """
    models = resolve(config)
    cells = experiment_cells(config)
    device = resolve_device(config.device)
    check_writable_folder(config.output_dir, "output_dir")
    folder = Path(config.output_dir) / config.name
    check_replaceable(folder, REPORT)
    if any(m.recipe is not None for m in models):
        check_writable_folder(checkpoint_dir(config.cache_dir), "cache_dir")
    for model in models:
        probe_model(model)
    return CheckedExperiment(config, models, cells, device, folder)


def probe_model(resolved: ResolvedModel) -> None:
    """Build the model once and run a small batch through it: it must give (N, 10) float logits.

    A checkpoint named in the YAML is read and checked against the model too. The global
    random state is left as it was, so the seeded build that follows gets the same weights.
    """
    with torch.random.fork_rng(devices=[]):
        model = resolved.build()
        if resolved.spec.checkpoint is not None:
            read_user_checkpoint(resolved.spec.checkpoint, model)
        probe = torch.zeros(PROBE_IMAGES, 1, IMAGE_SIZE, IMAGE_SIZE)
        try:
            with torch.inference_mode():
                logits = model.eval()(probe)
        except Exception as exc:
            if not resolved.spec.factory:
                raise  # a registered model that cannot run a batch is a bug: keep its traceback
            raise ModelError(
                f"model {resolved.name!r}: a forward pass on a {tuple(probe.shape)} batch raised "
                f"{type(exc).__name__}: {shorten(exc)}"
            ) from None
    check_logits(logits, PROBE_IMAGES, resolved.name)

"""The experiment's own checks, in seconds, before any training: its names, device, folders and models.

checks.py adds the executor's and the `noise_from:` report's; `validate` runs all of them, and
`run` and `bench` run them first, so a mistake that would only surface after minutes of
training stops the command at once with one line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from robustbench_fmnist.config import ExperimentConfig, shorten
from robustbench_fmnist.data import IMAGE_SIZE
from robustbench_fmnist.errors import ConfigError, HarnessError, ModelError, OutputError
from robustbench_fmnist.evaluation.cells import Cell, experiment_cells
from robustbench_fmnist.files import REPORT, absolute, check_replaceable, check_writable_folder, folder_kind
from robustbench_fmnist.models.output import check_logits
from robustbench_fmnist.models.timm_models import timm_architecture
from robustbench_fmnist.perturbations.space_checks import check_adversaries
from robustbench_fmnist.report.bundle import ReportData
from robustbench_fmnist.runtime import resolve_device
from robustbench_fmnist.training.checkpoints import checkpoint_dir, read_user_checkpoint
from robustbench_fmnist.training.resolution import ResolvedModel, resolve

PROBE_IMAGES = 2


@dataclass(frozen=True)
class CheckedExperiment:
    """An experiment that passed every preflight check: what it will run and where it writes."""

    config: ExperimentConfig
    models: list[ResolvedModel]
    cells: list[Cell]
    device: torch.device
    folder: Path  # the report folder: output_dir / name
    noise: ReportData | None = None  # the `noise_from:` report, read and checked (checks.py)


def preflight(config: ExperimentConfig) -> CheckedExperiment:
    """Check names, device, output and cache folders, checkpoints and every model's output (no `noise` yet).

    Raises ConfigError (exit 2) naming the key and the fix; creates and changes nothing.
    """
    cells, models = resolve_experiment(config)
    device = resolve_device(config.device)
    check_writable_folder(config.output_dir, "output_dir")
    folder = Path(config.output_dir) / config.name
    check_replaceable(folder, REPORT)
    # trained weights and every finished task's result are stored under the cache
    check_writable_folder(checkpoint_dir(config.cache_dir), "cache_dir")
    check_cache_apart(checkpoint_dir(config.cache_dir).parent, folder)
    for model in models:
        probe_model(model)
    return CheckedExperiment(config, models, cells, device, folder)


def check_cache_apart(cache: Path, report: Path) -> None:
    """Raise OutputError if the cache and the report folder overlap, or the cache lies in a folder the harness replaces.

    A report folder is swapped in whole, so a cache inside it (or inside any report, comparison
    or leaderboard folder) would be deleted with the old report, and a report inside the cache
    would mix a report into stored checkpoints and evaluations.
    """
    cache, report = absolute(cache).resolve(), absolute(report).resolve()
    fix = "give --cache-dir (cache_dir:) a folder apart from --output-dir (output_dir:)"
    if cache == report:
        raise OutputError(f"cache_dir {cache} is the report folder itself; {fix}")
    if cache.is_relative_to(report):
        raise OutputError(f"cache_dir {cache} lies inside the report folder {report}, which a run replaces; {fix}")
    if report.is_relative_to(cache):
        raise OutputError(f"the report folder {report} lies inside cache_dir {cache}; {fix}")
    owner = next((p for p in (cache, *cache.parents) if folder_kind(p) is not None), None)
    if owner is not None:
        raise OutputError(
            f"cache_dir {cache} lies inside {owner}, a {folder_kind(owner)} folder the harness replaces; {fix}"
        )


def resolve_experiment(config: ExperimentConfig) -> tuple[list[Cell], list[ResolvedModel]]:
    """Every cell and model the config names, checked against the registries: cells first, one ConfigError.

    The adversaries' axes are checked between the two, so a misspelt axis stops before any model is built.
    """
    cells = experiment_cells(config)
    check_adversaries(config)
    models = resolve(config)
    check_gradient_searches(config, models)
    return cells, models


def check_gradient_searches(config: ExperimentConfig, models: list[ResolvedModel]) -> None:
    """A ConfigError if a gradient search would run on a model ONNX Runtime evaluates (it gives no gradients)."""
    outside = [m.name for m in models if m.spec.onnx is not None]
    searches = [a.name for a in config.adversaries if a.search == "gradient"]
    if outside and searches:
        raise ConfigError(
            f"adversaries {', '.join(searches)} search by gradient, which ONNX Runtime cannot give for the onnx: "
            f"model(s) {', '.join(outside)}; search them by grid, random or worst_of_k, or run the two apart"
        )


def probe_model(resolved: ResolvedModel) -> None:
    """Build the model once and run a small batch through it: it must give (N, 10) float logits.

    A model that will be trained also takes one backward pass in training mode, so a model with
    nothing to train, or one whose training-mode forward fails, stops here rather than after the
    data is loaded. A checkpoint named in the YAML is read and checked against the model. The
    global random state is left as it was, so the seeded build that follows gets the same weights.
    """
    with torch.random.fork_rng(devices=[]):
        model = resolved.build()
        if resolved.spec.checkpoint is not None:
            read_user_checkpoint(resolved.spec.checkpoint, model)
        # [0, 1] noise rather than zeros: a model may take other branches on a blank image
        probe = torch.rand(PROBE_IMAGES, 1, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
        with _forward_errors(resolved, "a forward pass"), torch.inference_mode():
            logits = model.eval()(probe)
        check_logits(logits, PROBE_IMAGES, resolved.name)
        if resolved.recipe is None:
            return
        if not any(p.requires_grad for p in model.parameters()):
            raise ModelError(f"model {resolved.name!r} has no trainable parameters; give it a checkpoint instead")
        with _forward_errors(resolved, "a training step"):
            logits = model.train()(probe)
            check_logits(logits, PROBE_IMAGES, resolved.name)
            if not logits.requires_grad:
                raise ModelError(f"model {resolved.name!r}: its logits do not depend on its parameters")
            logits.float().logsumexp(1).mean().backward()


@contextlib.contextmanager
def _forward_errors(resolved: ResolvedModel, what: str) -> Iterator[None]:
    """A user's model (a factory, or a registered one with the user's kwargs) failing on the probe batch is one line."""
    try:
        yield
    except HarnessError:
        raise
    except Exception as exc:
        if not resolved.user_built:
            raise  # with its own defaults, a registered model that cannot run the batch is a bug
        hint = ""
        if timm_architecture(resolved.architecture):
            hint = " (set its size in kwargs, e.g. img_size and patch_size, or input_size: N to resize the images)"
        raise ModelError(
            f"model {resolved.name!r}: {what} on a ({PROBE_IMAGES}, 1, 28, 28) batch raised "
            f"{type(exc).__name__}: {shorten(exc)}{hint}"
        ) from None

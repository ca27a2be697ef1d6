"""Any trained nn.Module through the sweep, from Python: `evaluate_module`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from robustbench_fmnist.config import DEVICE_PATTERN, MAX_BATCH, MAX_SEED, MAX_SEVERITY, shorten
from robustbench_fmnist.data import CLASS_NAMES, IMAGE_SIZE, load_fashion_mnist, to_float_images
from robustbench_fmnist.errors import ConfigError
from robustbench_fmnist.evaluation.cells import sweep_cells
from robustbench_fmnist.evaluation.inference import PRECISIONS
from robustbench_fmnist.evaluation.scoring import score_cells
from robustbench_fmnist.evaluation.sweep import evaluate_cells
from robustbench_fmnist.models.output import check_logits
from robustbench_fmnist.report.bundle import frame
from robustbench_fmnist.runtime import cpu_settings, resolve_device

PROBE_IMAGES = 2


def evaluate_module(
    model: nn.Module,
    *,
    name: str = "model",
    perturbations: Sequence[str] = ("brightness_up", "contrast_down", "rotation"),
    severities: Sequence[int] | None = None,
    device: str = "auto",
    seed: int = 0,
    data_dir: str | Path | None = None,
    batch_size: int = 1000,
    precision: str = "float32",
    test_images: int | None = None,
) -> pd.DataFrame:
    """Evaluate any trained nn.Module (taking (N, 1, 28, 28) images in [0, 1]) on the sweep.

    `severities` None means every level of each perturbation's table. Returns the tidy rows
    of results.csv as a DataFrame: one row per perturbation and severity. Bad arguments raise
    ConfigError (a ValueError) naming the argument, before any data is read. Thread count and
    denormal flushing are restored on return; glibc's allocator stays tuned (see runtime.py).
    """
    perturbations = _check_api_arguments(
        model, name, perturbations, severities, device, seed, data_dir, batch_size, precision, test_images
    )
    cells = sweep_cells([(p, severities) for p in perturbations])  # checks names and severities first
    if len(cells) == 1:
        raise ConfigError(f"severities: {list(severities or [])} leaves no perturbed cell; give levels 1..5")
    torch_device = resolve_device(device)
    probe_module(model, name)
    with cpu_settings():
        data = load_fashion_mnist(data_dir)
        count = min(len(data.test), test_images or len(data.test))
        labels = data.test.labels[:count]
        results, outputs = evaluate_cells(
            model,
            name,
            to_float_images(data.test.images[:count], torch_device),
            labels,
            cells,
            device=torch_device,
            seed=seed,
            batch_size=batch_size,
            precision=precision,
            compile="auto",
        )
    scored = score_cells(results, outputs, cells, labels, seed=seed, class_names=CLASS_NAMES)
    return frame(scored.results, "results")


def _check_api_arguments(
    model: object,
    name: object,
    perturbations: object,
    severities: object,
    device: object,
    seed: object,
    data_dir: object,
    batch_size: object,
    precision: object,
    test_images: object,
) -> list[str]:
    """ConfigError (a ValueError) naming the first bad argument of `evaluate_module`; the perturbations as a list."""

    def integer(value: object, low: int, high: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high

    def names(value: object) -> list[str] | None:
        if isinstance(value, str) or not isinstance(value, Iterable):
            return None
        listed = list(value)  # once: an iterator would be used up by the check
        return listed if all(isinstance(p, str) for p in listed) else None

    if not isinstance(model, nn.Module):
        raise ConfigError(f"model: expected a torch nn.Module, got {type(model).__name__}")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"name: expected a non-empty string, got {name!r}")
    listed = names(perturbations)
    if not listed:
        raise ConfigError(f"perturbations: expected a non-empty list of names, got {shorten(perturbations)}")
    if severities is not None and (
        isinstance(severities, str)
        or not isinstance(severities, Iterable)
        or not all(integer(s, 0, MAX_SEVERITY) for s in severities)
    ):
        raise ConfigError(f"severities: expected None or a list of levels 0..{MAX_SEVERITY}, got {severities!r}")
    _check_no_repeats("perturbations", listed)
    if severities is not None:
        _check_no_repeats("severities", list(severities))  # type: ignore[call-overload]
    if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
        raise ConfigError(f"device: expected auto, cpu, cuda or cuda:N, got {device!r}")
    if not integer(seed, 0, MAX_SEED):
        raise ConfigError(f"seed: expected an integer in 0..2**63-1, got {seed!r}")
    if data_dir is not None and not isinstance(data_dir, str | Path):
        raise ConfigError(f"data_dir: expected None or a path, got {type(data_dir).__name__}")
    if not integer(batch_size, 1, MAX_BATCH):
        raise ConfigError(f"batch_size: expected an integer in 1..{MAX_BATCH}, got {batch_size!r}")
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ConfigError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if test_images is not None and not integer(test_images, 1, 10**9):
        raise ConfigError(f"test_images: expected None (all) or a positive integer, got {test_images!r}")
    return listed


def _check_no_repeats(argument: str, values: list[object]) -> None:
    """ConfigError for a value given twice: its cells would be evaluated, and returned, twice."""
    repeated = next((v for i, v in enumerate(values) if v in values[:i]), None)
    if repeated is not None:
        raise ConfigError(f"{argument}: {repeated!r} is listed twice; give each once")


def probe_module(model: nn.Module, name: str) -> None:
    """ConfigError (a ValueError) unless `model` turns a (2, 1, 28, 28) batch in [0, 1] into (2, 10) logits.

    Runs before the data is read, on the model's own device and in eval mode; every module's
    training flag is put back afterwards, so the caller's model is left as it was.
    """
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.is_meta for t in tensors):
        raise ConfigError(
            "model: its weights are on the meta device (shapes, no values); build it on a real device, "
            "or call model.to_empty(device='cpu') and load its weights, before evaluating"
        )
    where = tensors[0].device if tensors else torch.device("cpu")
    probe = torch.rand(PROBE_IMAGES, 1, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    modes = {module: module.training for module in model.modules()}
    try:
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            logits = model.eval()(probe.to(where))
    except Exception as exc:
        raise ConfigError(
            f"model: a forward pass on a ({PROBE_IMAGES}, 1, {IMAGE_SIZE}, {IMAGE_SIZE}) batch raised "
            f"{type(exc).__name__}: {shorten(exc)}; it must take Fashion-MNIST's 1-channel 28x28 images "
            "(a model built for 3x32x32 input needs 1 input channel and 28 px, or a resize in front)"
        ) from None
    finally:
        for module, training in modes.items():
            module.training = training
    try:
        check_logits(logits, PROBE_IMAGES, name)
    except ConfigError as exc:
        raise ConfigError(f"model: {exc}") from None

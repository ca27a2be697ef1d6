"""Run an experiment end to end: data -> models (cached training) -> sweep -> report."""

from __future__ import annotations

import importlib.metadata
import itertools
import logging
import platform
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from robustbench_fmnist.adaptation import AdaptationSettings, not_applicable
from robustbench_fmnist.augmentation import HELD_OUT, training_exposure
from robustbench_fmnist.checkpoints import (
    cache_key,
    checkpoint_dir,
    code_digest,
    load_cached,
    load_user_checkpoint,
    save_checkpoint,
    training_environment,
    weights_sha256,
)
from robustbench_fmnist.config import (
    DEVICE_PATTERN,
    MAX_BATCH,
    MAX_SEED,
    MAX_SEVERITY,
    ExperimentConfig,
    TrainRecipe,
    shorten,
)
from robustbench_fmnist.data import CLASS_NAMES, FashionMNIST, load_fashion_mnist
from robustbench_fmnist.errors import ConfigError, HarnessError
from robustbench_fmnist.evaluation import (
    CLEAN,
    PRECISIONS,
    Cell,
    CellOutputs,
    evaluate_cells,
    perturb_cell,
    sweep_cells,
)
from robustbench_fmnist.files import hold_folder
from robustbench_fmnist.lock import lock_status
from robustbench_fmnist.metrics import ScoredCells, score_cells
from robustbench_fmnist.models import count_macs, count_parameters
from robustbench_fmnist.perturbations import PERTURBATIONS
from robustbench_fmnist.preflight import CheckedExperiment, preflight
from robustbench_fmnist.progress import progress_bar
from robustbench_fmnist.report import Examples, ReportData, frame, write_report
from robustbench_fmnist.report.agreement import reference_cells
from robustbench_fmnist.report.bundle import outcomes_from
from robustbench_fmnist.report.writer import add_throughput
from robustbench_fmnist.resolution import ResolvedModel, experiment_cells, import_factory, resolve
from robustbench_fmnist.runtime import cpu_settings, resolve_device, seed_everything, thread_info
from robustbench_fmnist.throughput import (
    THROUGHPUT_COLUMNS,
    ThroughputRow,
    measure_conv_ceiling,
    measure_inference,
    measure_latency,
    measure_perturbation,
    measure_sweep_overhead,
    measure_training,
)
from robustbench_fmnist.training import to_float_images, train_model

log = logging.getLogger(__name__)


def prepare_model(
    resolved: ResolvedModel,
    data: FashionMNIST,
    *,
    seed: int,
    device: torch.device,
    cache_dir: Path | None,
    retrain: bool,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model and give it weights: the user's checkpoint, the cache, or fresh training."""
    torch.manual_seed(seed)  # the initial weights are part of what the seed fixes
    model = resolved.build()
    info: dict[str, Any] = {
        "name": resolved.name,
        "factory": resolved.spec.factory,
        "kwargs": resolved.spec.kwargs,
        "parameters": count_parameters(model),
        "macs": count_macs(model),
        "train_seconds": None,
    }
    if resolved.recipe is None:
        load_user_checkpoint(resolved.spec.checkpoint, model)
        checkpoint = str(resolved.spec.checkpoint)
        info.update(weights="checkpoint", checkpoint=checkpoint, weights_sha256=weights_sha256(model))
        return model, info
    key = cache_key(
        resolved.architecture,
        resolved.spec.kwargs,
        resolved.recipe,
        data.checksum,
        seed,
        code=code_digest(resolved.builder),
        device_type=device.type,
    )
    path = checkpoint_dir(cache_dir) / key.filename
    info.update(recipe=resolved.recipe.model_dump(mode="json"), checkpoint=str(path), cache_key=key.digest)
    cached = None if retrain else load_cached(path, model)
    if cached is not None:
        log.info("%s: using cached weights %s", resolved.name, path)
        info.update(
            weights="cached",
            train_seconds=cached.get("train_seconds"),
            training=cached.get("training"),
            trained_with=cached.get("trained_with"),
            weights_sha256=weights_sha256(model),
        )
        return model, info
    trained_with = {**training_environment(device), "harness_commit": git_commit()}
    summary = train_model(model, data.train, resolved.recipe, seed=seed, device=device, name=resolved.name)
    metadata = {
        "train_seconds": summary.seconds,
        "training": summary.to_dict(),
        "cache_key": key.digest,
        "trained_with": trained_with,
    }
    save_checkpoint(path, model, metadata)
    info.update(
        weights="trained",
        train_seconds=summary.seconds,
        training=summary.to_dict(),
        trained_with=trained_with,
        weights_sha256=weights_sha256(model),
    )
    return model, info


def _training_method(model: ResolvedModel) -> str:
    """How the model was trained, in one word: standard, a robust-augmentation method, or checkpoint."""
    if model.recipe is None:
        return "checkpoint"
    return "standard" if model.recipe.robust_augment is None else model.recipe.robust_augment.method


def _in_training(perturbation: str, exposure: dict[str, str], recipe: TrainRecipe | None) -> str:
    """Whether a row's shift was seen in training, partly seen, or held out; empty for clean or an unknown history."""
    if perturbation == CLEAN or recipe is None:
        return ""
    return exposure.get(perturbation.partition("@")[0], HELD_OUT)


def run_experiment(config: ExperimentConfig, *, retrain: bool = False) -> Path:
    """Run every model (once per seed) through every cell and write reports/<name>/. Returns that folder.

    Every check of `preflight` runs first; the report folder stays locked against other runs
    until the new report is in place. Thread count and denormal flushing are restored on return.
    """
    started = time.perf_counter()
    checked = preflight(config)
    with hold_folder(checked.folder), cpu_settings(config.threads) as applied:
        return _run_checked(checked, applied, started, retrain=retrain)


def _run_checked(checked: CheckedExperiment, applied: dict[str, object], started: float, *, retrain: bool) -> Path:
    config, resolved, cells, device = checked.config, checked.models, checked.cells, checked.device
    timings: dict[str, float] = {}
    data = load_fashion_mnist(config.data.dir, download=config.data.download, verify=config.data.verify)
    timings["load_data"] = time.perf_counter() - started
    count = min(len(data.test), config.evaluation.test_images or len(data.test))
    images = to_float_images(data.test.images[:count], device)
    labels = data.test.labels[:count]
    scored = ScoredCells()
    models_info = []
    example_outputs: dict[str, dict[Cell, CellOutputs]] = {}
    first_seed_models: list[tuple[str, nn.Module, int]] = []
    for seed in config.run_seeds:
        seed_everything(seed)
        for model_spec in resolved:
            stage = time.perf_counter()
            model, info = prepare_model(
                model_spec, data, seed=seed, device=device, cache_dir=config.cache_dir, retrain=retrain
            )
            timings[f"prepare {model_spec.name} seed {seed}"] = time.perf_counter() - stage
            exposure = training_exposure(model_spec.recipe)
            info.update(
                seed=seed,
                architecture=model_spec.architecture,
                training=_training_method(model_spec),
                in_training=exposure,
                adaptation="none",
                base_model=model_spec.name,
            )
            entries = [info]  # the model's own, then one per adaptation that ran
            for adaptation in model_spec.adaptations(config.evaluation.adaptation):
                label = model_spec.label(adaptation)
                reason = not_applicable(adaptation, model)
                if reason is not None:
                    if seed == config.run_seeds[0]:
                        log.warning("%s: %s %s; no rows for %s", model_spec.name, adaptation, reason, label)
                    info.setdefault("not_applicable", {})[adaptation] = reason
                    continue
                stage = time.perf_counter()
                results, outputs = evaluate_cells(
                    model,
                    label,
                    images,
                    labels,
                    cells,
                    device=device,
                    seed=seed,
                    batch_size=config.evaluation.batch_size,
                    precision=config.evaluation.precision,
                    channels_last=config.evaluation.channels_last,
                    adaptation=adaptation,
                    adaptation_settings=AdaptationSettings(config.evaluation.bn, config.evaluation.tent),
                )
                seconds = time.perf_counter() - stage
                timings[f"evaluate {label} seed {seed}"] = seconds
                scored_model = score_cells(results, outputs, cells, labels, seed=seed, class_names=CLASS_NAMES)
                for row in scored_model.results:
                    row["in_training"] = _in_training(row["perturbation"], exposure, model_spec.recipe)
                scored.extend(scored_model)
                label_info = info
                if adaptation != "none":
                    settings = getattr(config.evaluation, adaptation).model_dump(mode="json")
                    label_info = {**info, "name": label, "adaptation": adaptation, "adaptation_settings": settings}
                label_info["eval_seconds"] = seconds
                label_info["eval_images_per_second"] = len(cells) * count / seconds
                if label_info is not info:
                    entries.append(label_info)
                if seed == config.run_seeds[0]:
                    example_outputs[label] = outputs
                    if adaptation == "none":
                        first_seed_models.append((model_spec.name, model, info["macs"]))
            models_info += entries
    throughput = None
    if config.throughput.enabled:
        stage = time.perf_counter()
        throughput = benchmark(config, first_seed_models, images, labels, cells)
        timings["throughput"] = time.perf_counter() - stage
    timings["total"] = time.perf_counter() - started
    run = run_record(config, device, data, models_info, timings, applied)
    reference = None
    if checked.noise is not None:
        reference, skipped = reference_cells(checked.noise, models_info)
        env = checked.noise.run["environment"]
        run["noise_from"] = {
            "path": str(config.noise_from),
            "name": checked.noise.run["config"].get("name"),
            "git_commit": env.get("git_commit"),
            "seeds": sorted(int(s) for s in checked.noise.results["seed"].unique()),
            "skipped_models": skipped,
        }
    report = ReportData(
        results=frame(scored.results, "results"),
        per_class=frame(scored.per_class, "per_class"),
        confusion=frame(scored.confusion, "confusion"),
        calibration=frame(scored.calibration, "calibration"),
        run=run,
        examples=collect_examples(cells, data.test.images[:count], labels, example_outputs, config.run_seeds[0]),
        throughput=throughput,
        outcomes=outcomes_from(scored.outcomes),
        reference=reference,
    )
    write_report(checked.folder, report)
    return checked.folder


def run_bench(config: ExperimentConfig, *, retrain: bool = False) -> tuple[Path, pd.DataFrame]:
    """Measure throughput for the experiment's models (first seed) into reports/<name>/throughput.csv."""
    checked = preflight(config)
    with hold_folder(checked.folder), cpu_settings(config.threads):
        seed = config.run_seeds[0]
        seed_everything(seed)
        data = load_fashion_mnist(config.data.dir, download=config.data.download, verify=config.data.verify)
        count = min(len(data.test), config.evaluation.test_images or len(data.test))
        images = to_float_images(data.test.images[:count], checked.device)
        labels = data.test.labels[:count]
        models = []
        for model_spec in checked.models:
            model, info = prepare_model(
                model_spec, data, seed=seed, device=checked.device, cache_dir=config.cache_dir, retrain=retrain
            )
            models.append((model_spec.name, model, info["macs"]))
        throughput = benchmark(config, models, images, labels, checked.cells)
        add_throughput(checked.folder, throughput)
    return checked.folder, throughput


Measurement = Callable[[], ThroughputRow | list[ThroughputRow]]


def benchmark(
    config: ExperimentConfig,
    models: Sequence[tuple[str, nn.Module, int]],
    images: torch.Tensor,
    labels: torch.Tensor,
    cells: Sequence[Cell],
) -> pd.DataFrame:
    """Every throughput measurement the config's `throughput:` section asks for, as throughput.csv rows.

    `models` are (name, trained model, MACs per image); `images` sit on the evaluation device.
    """
    plan = _throughput_plan(config, models, images, labels, cells)
    rows: list[ThroughputRow] = []
    # one step per measurement, labelled: a compiled or batch-4096 row can take a while
    with progress_bar(len(plan), "throughput", unit="measurement") as bar:
        for label, measure in plan:
            bar.set_postfix_str(label)
            result = measure()
            rows += result if isinstance(result, list) else [result]
            bar.update(1)
    return pd.DataFrame([r.to_row() for r in rows], columns=THROUGHPUT_COLUMNS)


def _throughput_plan(
    config: ExperimentConfig,
    models: Sequence[tuple[str, nn.Module, int]],
    images: torch.Tensor,
    labels: torch.Tensor,
    cells: Sequence[Cell],
) -> list[tuple[str, Measurement]]:
    """(label, measurement) pairs in the order they run: ceilings, then per model, then perturbations."""
    settings = config.throughput
    devices = [torch.device(d) for d in settings.devices]
    plan: list[tuple[str, Measurement]] = [
        (f"conv ceiling {d}", partial(measure_conv_ceiling, d, repeats=settings.repeats)) for d in devices
    ]
    # one cell per perturbation (its most severe), to keep the sweep comparison short
    last: dict[str, Cell] = {}
    for cell in cells:
        last[cell.perturbation] = cell
    shown = list(last.values())
    for name, model, macs in models:
        for device in devices:
            for dtype, batch_size, compiled in itertools.product(
                settings.dtypes, settings.batch_sizes, (False, True) if settings.compile else (False,)
            ):
                label = f"{name} {device} {dtype} batch {batch_size}" + (" compiled" if compiled else "")
                measure = partial(
                    measure_inference,
                    name,
                    model,
                    device,
                    batch_size,
                    dtype=dtype,
                    channels_last=settings.channels_last,
                    compiled=compiled,
                    images=settings.images,
                    repeats=settings.repeats,
                    macs=macs,
                    seconds_per_repeat=settings.seconds_per_repeat,
                )
                plan.append((label, measure))
            if settings.latency:
                measure = partial(measure_latency, name, model, device, channels_last=settings.channels_last)
                plan.append((f"{name} {device} latency", measure))
            if settings.training_batch_size:
                measure = partial(
                    measure_training,
                    name,
                    model,
                    device,
                    settings.training_batch_size,
                    channels_last=settings.channels_last,
                )
                plan.append((f"{name} {device} training", measure))
        if settings.sweep:
            measure = partial(
                measure_sweep_overhead,
                name,
                model,
                images,
                labels,
                shown,
                batch_size=config.evaluation.batch_size,
                channels_last=config.evaluation.channels_last,
                repeats=max(1, min(settings.repeats, 3)),
            )
            plan.append((f"{name} sweep", measure))
    if settings.perturbations:
        seed = config.run_seeds[0]
        plan += [
            (f"perturbation {c.name} s{c.severity}", partial(measure_perturbation, c, images, seed=seed))
            for c in shown
            if c.name
        ]
    return plan


def collect_examples(
    cells: Sequence[Cell],
    raw_images: torch.Tensor,
    labels: torch.Tensor,
    outputs: dict[str, dict[Cell, CellOutputs]],
    seed: int,
) -> Examples:
    """The first test image of each class, clean and at each perturbation's last cell, with each model's predictions."""
    picks = [int((labels == c).nonzero()[0]) for c in range(len(CLASS_NAMES)) if (labels == c).any()]
    index = torch.tensor(picks)
    sample = raw_images[index].float().div(255).unsqueeze(1)
    last: dict[str, Cell] = {}
    for cell in cells:
        last[cell.perturbation] = cell
    shown = list(last.values())
    rows = []
    for cell in shown:
        batch = sample if cell.name is None else perturb_cell(cell, sample, seed=seed, indices=index)
        rows.append((batch[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy())
    names = ["clean" if c.name is None else f"{c.perturbation} s{c.severity}" for c in shown]
    predictions = np.stack(
        [np.stack([per_cell[c].predictions[index].numpy() for c in shown]) for per_cell in outputs.values()]
    )
    return Examples(np.stack(rows), labels[index].numpy(), names, list(outputs), predictions)


def run_record(
    config: ExperimentConfig,
    device: torch.device,
    data: FashionMNIST,
    models_info: list[dict[str, Any]],
    timings: dict[str, float],
    cpu_settings: dict[str, object],
) -> dict[str, Any]:
    """Everything needed to reproduce and judge a run, for run.json."""
    return {
        "config": config.model_dump(mode="json"),
        "seed": config.run_seeds[0],
        "seeds": list(config.run_seeds),
        "environment": {
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or platform.machine(),
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
        "perturbations": _perturbation_records(experiment_cells(config)),
        "models": models_info,
        "timings_seconds": {k: round(v, 3) for k, v in timings.items()},
    }


def _perturbation_records(cells: Sequence[Cell]) -> list[dict[str, Any]]:
    records: dict[str, dict[str, Any]] = {}
    for cell in cells:
        if cell.name is None:
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


def package_versions() -> dict[str, str]:
    versions = {}
    packages = ("robustbench_fmnist", "torch", "torchvision", "timm", "numpy", "pandas", "pydantic", "matplotlib")
    for name in (*packages, "markdown", "pillow", "albumentations"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str:
    """HEAD of the checkout the package runs from, '+dirty' if tracked code has changed."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)reports"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


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


__all__ = [
    "HarnessError",
    "ResolvedModel",
    "evaluate_module",
    "experiment_cells",
    "import_factory",
    "resolve",
    "run_experiment",
]

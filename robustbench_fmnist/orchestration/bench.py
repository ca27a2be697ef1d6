"""Throughput: `bench`, and `run` with `throughput.enabled`: the plan of measurements and running it."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Mapping, Sequence
from functools import partial
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from robustbench_fmnist.config import ExperimentConfig, ThroughputConfig, TrainRecipe
from robustbench_fmnist.data import load_fashion_mnist, to_float_images
from robustbench_fmnist.evaluation.adaptation import AveragedOverCopies, tta_space
from robustbench_fmnist.evaluation.cells import Cell
from robustbench_fmnist.evaluation.throughput import (
    THROUGHPUT_COLUMNS,
    ThroughputRow,
    measure_adversary_step,
    measure_conv_ceiling,
    measure_inference,
    measure_latency,
    measure_perturbation,
    measure_sweep_overhead,
    measure_training,
)
from robustbench_fmnist.files import hold_folder
from robustbench_fmnist.models import count_macs
from robustbench_fmnist.orchestration.checks import check_experiment
from robustbench_fmnist.orchestration.tasks import space_of
from robustbench_fmnist.progress import progress_bar
from robustbench_fmnist.report.writer import add_throughput
from robustbench_fmnist.runtime import cpu_settings, seed_everything
from robustbench_fmnist.training.augmentation import BatchAugment, build_batch_augmentation
from robustbench_fmnist.training.resolution import ResolvedModel
from robustbench_fmnist.training.weights import obtain_model


def run_bench(config: ExperimentConfig, *, retrain: bool = False) -> tuple[Path, pd.DataFrame]:
    """Measure throughput for the experiment's models (first seed) into reports/<name>/throughput.csv."""
    checked = check_experiment(config)
    with hold_folder(checked.folder), cpu_settings(config.threads):
        seed = config.run_seeds[0]
        seed_everything(seed)
        data = load_fashion_mnist(config.data.dir, download=config.data.download, verify=config.data.verify)
        count = min(len(data.test), config.evaluation.test_images or len(data.test))
        images = to_float_images(data.test.images[:count], checked.device)
        labels = data.test.labels[:count]
        models = []
        for model_spec in checked.models:
            model, _ = obtain_model(
                model_spec, data, seed=seed, device=checked.device, cache_dir=config.cache_dir, retrain=retrain
            )
            models.append((model_spec.name, model, count_macs(model)))
        throughput = benchmark(config, models, images, labels, checked.cells, checked.models)
        add_throughput(checked.folder, throughput)
    return checked.folder, throughput


Measurement = Callable[[], ThroughputRow | list[ThroughputRow]]


def benchmark(
    config: ExperimentConfig,
    models: Sequence[tuple[str, nn.Module, int]],
    images: torch.Tensor,
    labels: torch.Tensor,
    cells: Sequence[Cell],
    resolved: Sequence[ResolvedModel] = (),
) -> pd.DataFrame:
    """Every throughput measurement the config's `throughput:` section asks for, as throughput.csv rows.

    `models` are (name, trained model, MACs per image); `images` sit on the evaluation device. From
    `resolved` (the experiment's models): a model whose recipe trains with a robust augmentation
    (worst_of_k reads the model) is timed training with it, and a model evaluated with `tta` is also
    timed behind its k copies, under its `+tta` label.
    """
    recipes = {r.name: r.recipe for r in resolved}
    with_tta = {r.name for r in resolved if "tta" in r.adaptations(config.evaluation.adaptation)}
    plan = _throughput_plan(config, models, images, labels, cells, recipes, with_tta)
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
    recipes: Mapping[str, TrainRecipe | None],
    with_tta: Collection[str] = (),
) -> list[tuple[str, Measurement]]:
    """(label, measurement) pairs in the order they run: ceilings, then per model, then perturbations.

    A model in `with_tta` is also timed behind test-time augmentation (inference only: its training
    and single-image latency are its own model's), so a report can set its cost against the k it claims.
    """
    settings = config.throughput
    devices = [torch.device(d) for d in settings.devices]
    plan: list[tuple[str, Measurement]] = [
        (f"conv ceiling {d}", partial(measure_conv_ceiling, d, repeats=settings.repeats)) for d in devices
    ]
    shown = _most_severe(cells)
    for name, model, macs in models:
        recipe = recipes.get(name)
        augment = None if recipe is None else build_batch_augmentation(recipe)
        for device in devices:
            plan += _device_plan(settings, name, model, macs, device, augment)
        if name in with_tta:
            space = tta_space(config.evaluation.tta)
            averaged = AveragedOverCopies(model, space)
            inference_only = settings.model_copy(update={"latency": False, "training_batch_size": None})
            for device in devices:
                plan += _device_plan(inference_only, f"{name}+tta", averaged, macs * space.size, device)
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
                compile=config.evaluation.compile,
                repeats=max(1, min(settings.repeats, 3)),
            )
            plan.append((f"{name} sweep", measure))
    for spec in config.adversaries:
        space = space_of(spec.space)
        for name, model, _ in models:
            measure = partial(
                measure_adversary_step, f"{name} {spec.name}", model, images, labels, space,
                batch_size=config.evaluation.batch_size, repeats=max(1, min(settings.repeats, 3)),
            )  # fmt: skip
            plan.append((f"{name} {spec.name} step", measure))
    if settings.perturbations:
        seed = config.run_seeds[0]
        plan += [
            (f"perturbation {c.name} s{c.severity}", partial(measure_perturbation, c, images, seed=seed))
            for c in shown
            if not c.is_clean
        ]
    return plan


def _most_severe(cells: Sequence[Cell]) -> list[Cell]:
    """One cell per perturbation, its last (most severe), in the sweep's order: keeps the sweep comparison short."""
    last: dict[str, Cell] = {}
    for cell in cells:
        last[cell.perturbation] = cell
    return list(last.values())


def _device_plan(
    settings: ThroughputConfig,
    name: str,
    model: nn.Module,
    macs: int,
    device: torch.device,
    augment: BatchAugment | None = None,
) -> list[tuple[str, Measurement]]:
    """One model's measurements on one device: inference per dtype, batch size and compiling, latency, training."""
    plan: list[tuple[str, Measurement]] = []
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
            measure_training, name, model, device, settings.training_batch_size, channels_last=settings.channels_last,
            augment=augment,
        )  # fmt: skip
        plan.append((f"{name} {device} training", measure))
    return plan

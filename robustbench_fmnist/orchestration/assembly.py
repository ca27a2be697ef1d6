"""The report of a run, assembled from its stored task results: rows, run.json's models, example images."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from robustbench_fmnist.config import ExperimentConfig, TrainRecipe
from robustbench_fmnist.data import CLASS_NAMES
from robustbench_fmnist.evaluation.cells import CLEAN, Cell, perturb_cell
from robustbench_fmnist.evaluation.scoring import ScoredCells, score_cells
from robustbench_fmnist.evaluation.sweep import CellOutputs, CellResult, cell_result
from robustbench_fmnist.orchestration.plan import EvaluateTask, Plan, TrainTask
from robustbench_fmnist.orchestration.task_store import TaskStore
from robustbench_fmnist.orchestration.tasks import Evaluation
from robustbench_fmnist.orchestration.worst_case import (
    consistency_rows,
    fooling_by_class_rows,
    fooling_rows,
    transfer_rows,
    verdicts,
    worst_case_rows,
)
from robustbench_fmnist.report.bundle import Examples
from robustbench_fmnist.training.augmentation import HELD_OUT, cell_exposure, training_exposure
from robustbench_fmnist.training.resolution import ResolvedModel
from robustbench_fmnist.training.weights import (
    cached_weights,
    seeded_model,
    user_weights,
    user_weights_kind,
    weights_record,
)


@dataclass
class Assembled:
    """What the report is written from, besides the run's environment."""

    scored: ScoredCells
    models_info: list[dict[str, Any]]
    examples: Examples
    first_seed_models: list[tuple[str, nn.Module, int]] = field(default_factory=list)  # for `throughput:`
    adversaries: list[dict[str, Any]] = field(default_factory=list)  # adversaries.csv
    consistency: pd.DataFrame | None = None  # consistency.csv, for a run with adversaries
    fooling: pd.DataFrame | None = None  # fooling.csv: each grid point's fooling rate on the sample
    transfer: pd.DataFrame | None = None  # transfer.csv: each model at another's worst points
    fooling_by_class: pd.DataFrame | None = None  # fooling_by_class.csv: the heatmaps' slices per true class


def training_method(model: ResolvedModel) -> str:
    """How the model was trained, in one word: standard, a robust-augmentation method, or checkpoint."""
    if model.recipe is None:
        return "checkpoint"
    return "standard" if model.recipe.robust_augment is None else model.recipe.robust_augment.method


def in_training(
    perturbation: str, exposure: dict[str, str], recipe: TrainRecipe | None, parameter: float | None = None
) -> str:
    """Whether a row's shift was seen in training, partly seen, or held out; empty for clean or an unknown history.

    Training over a space judges each cell by its strength (training.augmentation.cell_exposure): a
    rotation beyond the space's angles is held out though smaller ones were seen.
    """
    if perturbation == CLEAN or recipe is None:
        return ""
    name = perturbation.partition("@")[0]
    by_strength = cell_exposure(recipe, name, parameter)
    return by_strength if by_strength is not None else exposure.get(name, HELD_OUT)


def failed_results(task: EvaluateTask, count: int, reason: str) -> list[CellResult]:
    """The rows of a failed evaluation's cells: marked failed, with nothing scored."""
    return [
        CellResult(
            model=task.label,
            perturbation=cell.perturbation,
            severity=cell.severity,
            parameter=cell.parameter,
            backend="" if cell.is_clean else cell.backend,
            n_images=count,
            n_correct=0,
            accuracy=math.nan,
            error=math.nan,
            seconds=0.0,
            adaptation=task.adaptation,
            failed=reason,
        )
        for cell in task.cells
    ]


def assemble(
    config: ExperimentConfig,
    models: Sequence[ResolvedModel],
    cells: Sequence[Cell],
    plan: Plan,
    store: TaskStore,
    ran: set[TrainTask],
    failures: dict[TrainTask | EvaluateTask, str],
    test_images: torch.Tensor,
    labels: torch.Tensor,
) -> Assembled:
    """Score every stored evaluation in plan order and describe every model, as the report needs them.

    `ran` are the training tasks this run did (their weights are "trained", the others' "cached");
    `failures` the tasks that failed, with their reasons.
    """
    scored = ScoredCells()
    models_info: list[dict[str, Any]] = []
    example_outputs: dict[str, dict[Cell, CellOutputs]] = {}
    first_seed_models: list[tuple[str, nn.Module, int]] = []
    trainings = {(t.model, t.seed): t for t in plan.train}
    evaluations: dict[tuple[str, int, str], list[EvaluateTask]] = {}
    for task in plan.evaluate:
        evaluations.setdefault((task.model, task.seed, task.adaptation), []).append(task)
    first_seed = config.run_seeds[0]
    for seed in config.run_seeds:
        for resolved in models:
            model, info = _model_entry(resolved, seed, trainings.get((resolved.name, seed)), ran, failures)
            if resolved.name in plan.not_applicable:
                info["not_applicable"] = dict(plan.not_applicable[resolved.name])
            entries = [info]
            for adaptation in resolved.adaptations(config.evaluation.adaptation):
                tasks = evaluations.get((resolved.name, seed, adaptation), [])
                if not tasks:
                    continue  # not applicable to this model
                model_scored, outputs, seconds = _score_stored(resolved, seed, tasks, store, failures, cells, labels)
                scored.extend(model_scored)
                label_info = info
                if adaptation != "none":
                    settings = getattr(config.evaluation, adaptation).model_dump(mode="json")
                    label = resolved.label(adaptation)
                    label_info = {**info, "name": label, "adaptation": adaptation, "adaptation_settings": settings}
                    entries.append(label_info)
                label_info["eval_seconds"] = seconds
                label_info["eval_images_per_second"] = len(outputs) * len(labels) / seconds if seconds > 0 else None
                if seed == first_seed and len(outputs) == len(cells):
                    example_outputs[resolved.label(adaptation)] = outputs
            if seed == first_seed and model is not None:
                first_seed_models.append((resolved.name, model, info["macs"]))
            models_info += entries
    examples = collect_examples(cells, test_images, labels, example_outputs, first_seed)
    assembled = Assembled(scored, models_info, examples, first_seed_models)
    _add_worst_case(assembled, plan, store, failures, labels)
    return assembled


def _add_worst_case(
    assembled: Assembled,
    plan: Plan,
    store: TaskStore,
    failures: dict[TrainTask | EvaluateTask, str],
    labels: torch.Tensor,
) -> None:
    """The worst-case tables, derived from the stored searches and transfers (nothing without adversaries)."""
    attacks = {t: a for t in plan.attack if t not in failures and (a := store.load_adversary(t)) is not None}
    if not attacks:
        return
    verdict_by_task = verdicts(attacks, labels)
    assembled.adversaries = worst_case_rows(attacks, labels, verdict_by_task)
    assembled.consistency = consistency_rows(assembled.scored.outcomes, verdict_by_task)
    assembled.fooling = fooling_rows(attacks, labels)
    assembled.fooling_by_class = fooling_by_class_rows(attacks, labels)
    transfers = {t: r for t in plan.transfer if t not in failures and (r := store.load_transfer(t)) is not None}
    assembled.transfer = transfer_rows(transfers, verdict_by_task, labels) if transfers else None


def _score_stored(
    resolved: ResolvedModel,
    seed: int,
    tasks: list[EvaluateTask],
    store: TaskStore,
    failures: dict[TrainTask | EvaluateTask, str],
    cells: Sequence[Cell],
    labels: torch.Tensor,
) -> tuple[ScoredCells, dict[Cell, CellOutputs], float]:
    """One model-seed-adaptation's rows scored from its stored evaluations (a missing or failed one's cells
    marked failed), its per-image outputs by cell, and the seconds its evaluations took."""
    results: list[CellResult] = []
    outputs: dict[Cell, CellOutputs] = {}
    seconds = 0.0
    for task in tasks:
        evaluation = None if task in failures else store.load_evaluation(task)
        if evaluation is None:
            results += failed_results(task, len(labels), failures.get(task, "its result is missing"))
            continue
        # every count and metric is derived here from the stored per-image outputs and the true labels
        for cell, cell_outputs, cell_seconds in zip(
            task.cells, evaluation.outputs, evaluation.cell_seconds, strict=True
        ):
            results.append(cell_result(task.label, cell, cell_outputs, labels, cell_seconds, task.adaptation))
            outputs[cell] = cell_outputs
        seconds += evaluation.seconds
    scored = score_cells(results, outputs, cells, labels, seed=seed, class_names=CLASS_NAMES)
    exposure = training_exposure(resolved.recipe)
    for row in scored.results:
        row["in_training"] = in_training(row["perturbation"], exposure, resolved.recipe, row.get("parameter"))
    return scored, outputs, seconds


def _model_entry(
    resolved: ResolvedModel,
    seed: int,
    train: TrainTask | None,
    ran: set[TrainTask],
    failures: dict[TrainTask | EvaluateTask, str],
) -> tuple[nn.Module | None, dict[str, Any]]:
    """The model with its weights (None if its training failed) and its run.json entry."""
    model: nn.Module | None = None
    loaded = None if train is None or train in failures else cached_weights(resolved, seed, train.path)
    if train is None:
        model = user_weights(resolved, seed)
        info = weights_record(resolved, model, weights=user_weights_kind(resolved), checkpoint=resolved.weights_file)
    elif loaded is None:
        info = weights_record(
            resolved, seeded_model(resolved, seed), weights="failed", checkpoint=train.path, key=train.key
        )
        info["failed"] = failures.get(train, "its checkpoint is missing")
    else:
        model, metadata = loaded
        kind = "trained" if train in ran else "cached"
        info = weights_record(resolved, model, weights=kind, checkpoint=train.path, key=train.key, metadata=metadata)
    info.update(
        seed=seed,
        architecture=resolved.architecture,
        training=training_method(resolved),
        in_training=training_exposure(resolved.recipe),
        adaptation="none",
        base_model=resolved.name,
    )
    if resolved.spec.against is not None:
        info["against"] = resolved.spec.against
    return model, info


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
        batch = sample if cell.is_clean else perturb_cell(cell, sample, seed=seed, indices=index)
        rows.append((batch[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy())
    names = [cell.label for cell in shown]
    if outputs:
        predictions = np.stack(
            [np.stack([per_cell[c].predictions[index].numpy() for c in shown]) for per_cell in outputs.values()]
        )
    else:
        predictions = np.zeros((0, len(shown), len(picks)), dtype=np.uint8)
    return Examples(np.stack(rows), labels[index].numpy(), names, list(outputs), predictions)


__all__ = ["Assembled", "Evaluation", "assemble", "collect_examples"]

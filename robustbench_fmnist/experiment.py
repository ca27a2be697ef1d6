"""The public API and the orchestration of a run: preflight -> plan -> execute -> assemble -> report.

Each step is another module's job: preflight.py checks, plan.py lists the tasks, execution.py
(and ray_executor.py) runs the missing ones, task_store.py keeps their results, assembly.py
builds the report's rows from them and report/ writes it. This module only sequences them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from robustbench_fmnist.adaptation import AdaptationSettings
from robustbench_fmnist.assembly import assemble
from robustbench_fmnist.bench import benchmark, run_bench
from robustbench_fmnist.config import DEVICE_PATTERN, MAX_BATCH, MAX_SEED, MAX_SEVERITY, ExperimentConfig, shorten
from robustbench_fmnist.data import CLASS_NAMES, FashionMNIST, load_fashion_mnist
from robustbench_fmnist.errors import ConfigError, HarnessError
from robustbench_fmnist.evaluation import evaluate_cells, sweep_cells
from robustbench_fmnist.execution import EXECUTORS, Work
from robustbench_fmnist.files import hold_folder
from robustbench_fmnist.inference import PRECISIONS
from robustbench_fmnist.plan import EvaluateTask, Plan, TrainTask, build_plan
from robustbench_fmnist.preflight import CheckedExperiment, preflight
from robustbench_fmnist.provenance import run_record
from robustbench_fmnist.report import ReportData, frame, write_report
from robustbench_fmnist.report.agreement import reference_cells
from robustbench_fmnist.report.bundle import outcomes_from
from robustbench_fmnist.resolution import ResolvedModel, experiment_cells, import_factory, resolve
from robustbench_fmnist.runtime import cpu_settings, resolve_device
from robustbench_fmnist.scoring import score_cells
from robustbench_fmnist.task_store import TaskStore
from robustbench_fmnist.tasks import EvaluationSettings
from robustbench_fmnist.training import to_float_images
from robustbench_fmnist.weights import cached_weights, user_weights

log = logging.getLogger(__name__)


@dataclass
class PlannedExperiment:
    """A checked experiment, its data and its plan, with which tasks are already stored."""

    checked: CheckedExperiment
    data: FashionMNIST
    test_images: int
    plan: Plan
    store: TaskStore
    done: set[TrainTask | EvaluateTask]

    @property
    def missing(self) -> list[TrainTask | EvaluateTask]:
        return [t for t in self.plan.tasks if t not in self.done]

    def describe(self) -> str:
        """The plan as `plan` and `run --dry-run` print it: one line per task, done or to do."""
        tasks = self.plan.tasks
        lines = [
            f"{len(tasks)} tasks ({len(self.plan.train)} trainings, {len(self.plan.evaluate)} evaluations), "
            f"{len(tasks) - len(self.missing)} done, {len(self.missing)} to do; executor "
            f"{self.checked.config.executor.kind}; report -> {self.checked.folder}"
        ]
        lines += [f"  {'done' if t in self.done else 'to do':<6} {t.title}" for t in tasks]
        for model, reasons in self.plan.not_applicable.items():
            lines += [f"  {'n/a':<6} {model}: {a} {why}" for a, why in reasons.items()]
        return "\n".join(lines)


def plan_experiment(
    config: ExperimentConfig, *, retrain: bool = False, checked: CheckedExperiment | None = None
) -> PlannedExperiment:
    """Preflight, load the data and plan the experiment; with `retrain`, every task is to do."""
    checked = checked or preflight(config)
    data = load_fashion_mnist(config.data.dir, download=config.data.download, verify=config.data.verify)
    count = min(len(data.test), config.evaluation.test_images or len(data.test))
    plan = build_plan(checked, data.checksum, count)
    store = TaskStore(config.cache_dir)
    done = set() if retrain else {t for t in plan.tasks if store.is_done(t)}
    return PlannedExperiment(checked, data, count, plan, store, done)


def run_experiment(config: ExperimentConfig, *, retrain: bool = False) -> Path:
    """Run every model (once per seed) through every cell and write reports/<name>/. Returns that folder.

    Every check of `preflight` runs first; the report folder stays locked against other runs
    until the new report is in place. Only the plan's missing tasks run; each result is stored
    as it finishes, so an interrupted run resumes where it stopped. Thread count and denormal
    flushing are restored on return.
    """
    started = time.perf_counter()
    checked = preflight(config)
    with hold_folder(checked.folder), cpu_settings(config.threads) as applied:
        return _run_checked(checked, applied, started, retrain=retrain)


def _run_checked(checked: CheckedExperiment, applied: dict[str, object], started: float, *, retrain: bool) -> Path:
    config, device = checked.config, checked.device
    timings: dict[str, float] = {}
    planned = plan_experiment(config, retrain=retrain, checked=checked)
    data, count = planned.data, planned.test_images
    timings["load_data"] = time.perf_counter() - started
    missing = planned.missing
    log.info("%d of %d tasks to do (%d stored)", len(missing), len(planned.plan.tasks), len(planned.done))
    ran: set[TrainTask] = set()

    def store_result(task: TrainTask | EvaluateTask, result: object) -> None:
        if isinstance(task, TrainTask):
            planned.store.save_training(task, result)
            ran.add(task)
            timings[f"train {task.model} seed {task.seed}"] = result.metadata["train_seconds"]
        else:
            planned.store.save_evaluation(task, result)

    stage = time.perf_counter()
    work = Work(
        missing,
        {m.name: m for m in checked.models},
        data,
        _evaluation_settings(config, device, count),
        stored_weights=_stored_weights_reader(checked),
        threads=config.threads,
    )
    failures = EXECUTORS.get(config.executor.kind).run(work, config.executor, store_result) if missing else []
    timings["execute"] = time.perf_counter() - stage
    labels = data.test.labels[:count]
    assembled = assemble(
        config, checked.models, checked.cells, planned.plan, planned.store, ran,
        {f.task: f.reason for f in failures}, data.test.images[:count], labels,
    )  # fmt: skip
    throughput = None
    if config.throughput.enabled:
        stage = time.perf_counter()
        images = to_float_images(data.test.images[:count], device)
        throughput = benchmark(config, assembled.first_seed_models, images, labels, checked.cells)
        timings["throughput"] = time.perf_counter() - stage
    timings["total"] = time.perf_counter() - started
    run = run_record(config, device, data, assembled.models_info, timings, applied, checked.cells)
    run["tasks"] = {
        "planned": len(planned.plan.tasks),
        "stored_before": len(planned.done),
        "ran": len(missing) - len(failures),
        "failed": [f.line for f in failures],
        "executor": config.executor.kind,
    }
    reference = None
    if checked.noise is not None:
        reference, skipped = reference_cells(checked.noise, assembled.models_info)
        env = checked.noise.run["environment"]
        run["noise_from"] = {
            "path": str(config.noise_from),
            "name": checked.noise.run["config"].get("name"),
            "git_commit": env.get("git_commit"),
            "seeds": sorted(int(s) for s in checked.noise.results["seed"].unique()),
            "skipped_models": skipped,
        }
    scored = assembled.scored
    report = ReportData(
        results=frame(scored.results, "results"),
        per_class=frame(scored.per_class, "per_class"),
        confusion=frame(scored.confusion, "confusion"),
        calibration=frame(scored.calibration, "calibration"),
        run=run,
        examples=assembled.examples,
        throughput=throughput,
        outcomes=outcomes_from(scored.outcomes),
        reference=reference,
    )
    write_report(checked.folder, report)
    return checked.folder


def _evaluation_settings(config: ExperimentConfig, device: torch.device, count: int) -> EvaluationSettings:
    evaluation = config.evaluation
    return EvaluationSettings(
        device=device,
        batch_size=evaluation.batch_size,
        precision=evaluation.precision,
        channels_last=evaluation.channels_last,
        compile=evaluation.compile,
        adaptation=AdaptationSettings(evaluation.bn, evaluation.tent),
        test_images=count,
    )


def _stored_weights_reader(checked: CheckedExperiment) -> Callable[[EvaluateTask], dict[str, torch.Tensor]]:
    """Where an evaluation gets weights whose training is not among the tasks to do: the cache or the user's file."""
    models = {m.name: m for m in checked.models}

    def stored_weights(task: EvaluateTask) -> dict[str, torch.Tensor]:
        resolved = models[task.model]
        if task.train is None:
            return user_weights(resolved, task.seed).state_dict()
        loaded = cached_weights(resolved, task.seed, task.train.path)
        if loaded is None:
            raise HarnessError(f"the checkpoint of {task.train.title} is missing or unusable; run again to retrain")
        return loaded[0].state_dict()

    return stored_weights


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
    "plan_experiment",
    "resolve",
    "run_bench",
    "run_experiment",
]

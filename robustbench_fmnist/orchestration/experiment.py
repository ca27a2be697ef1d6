"""A run, top to bottom: checks -> plan -> executor -> task store -> assembly -> report.

Each step is another module's job, and each module below imports only those below it:
checks.py (preflight.py, the executor's and the reference's checks), plan.py (the tasks and
their identity keys), executors.py (local_executor.py, ray_executor.py: run the missing
tasks, whose bodies are tasks.py), task_store.py (their stored results), assembly.py (the
report's rows from those results) and report/ (writes it). This module only sequences them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from robustbench_fmnist.config import ExperimentConfig
from robustbench_fmnist.data import FashionMNIST, load_fashion_mnist, to_float_images
from robustbench_fmnist.errors import HarnessError
from robustbench_fmnist.evaluation.adaptation import AdaptationSettings
from robustbench_fmnist.evaluation.throughput import forward_seconds_per_image
from robustbench_fmnist.files import hold_folder, writing
from robustbench_fmnist.orchestration.assembly import Assembled, assemble
from robustbench_fmnist.orchestration.bench import benchmark
from robustbench_fmnist.orchestration.checks import check_experiment
from robustbench_fmnist.orchestration.executors import EXECUTORS
from robustbench_fmnist.orchestration.plan import AdversaryTask, EvaluateTask, Plan, TrainTask, TransferTask, build_plan
from robustbench_fmnist.orchestration.preflight import CheckedExperiment
from robustbench_fmnist.orchestration.provenance import run_record
from robustbench_fmnist.orchestration.task_store import TaskStore
from robustbench_fmnist.orchestration.tasks import Attack, EvaluationSettings
from robustbench_fmnist.orchestration.work import Failure, Work
from robustbench_fmnist.orchestration.worst_case import adversary_frame
from robustbench_fmnist.report.agreement import reference_cells
from robustbench_fmnist.report.bundle import ReportData, frame, outcomes_from
from robustbench_fmnist.report.writer import write_report
from robustbench_fmnist.runtime import cpu_settings
from robustbench_fmnist.training.weights import cached_weights, seeded_model, user_weights

log = logging.getLogger(__name__)


@dataclass
class PlannedExperiment:
    """A checked experiment, its data and its plan, with which tasks are already stored."""

    checked: CheckedExperiment
    data: FashionMNIST
    test_images: int
    plan: Plan
    store: TaskStore
    done: set[TrainTask | EvaluateTask | AdversaryTask]
    _speed: dict[str, float] = field(default_factory=dict)  # seconds per image of each model's forward here

    @property
    def missing(self) -> list[TrainTask | EvaluateTask]:
        return [t for t in self.plan.tasks if t not in self.done]

    def describe(self) -> str:
        """The plan as `plan` and `run --dry-run` print it: one line per task, done or to do."""
        tasks = self.plan.tasks
        lines = [
            f"{len(tasks)} tasks ({len(self.plan.train)} trainings, {len(self.plan.evaluate)} evaluations"
            + (f", {len(self.plan.attack)} adversary searches" if self.plan.attack else "")
            + (f", {len(self.plan.transfer)} transfers" if self.plan.transfer else "")
            + "), "
            f"{len(tasks) - len(self.missing)} done, {len(self.missing)} to do; executor "
            f"{self.checked.config.executor.kind}; report -> {self.checked.folder}"
        ]
        lines += [f"  {'done' if t in self.done else 'to do':<6} {t.title}{self._estimate(t)}" for t in tasks]
        for model, reasons in self.plan.not_applicable.items():
            lines += [f"  {'n/a':<6} {model}: {a} {why}" for a, why in reasons.items()]
        return "\n".join(lines)

    def _estimate(self, task: TrainTask | EvaluateTask | AdversaryTask) -> str:
        """For an adversary search still to do: its most forward passes at this machine's measured forward speed."""
        if not isinstance(task, AdversaryTask) or task in self.done:
            return ""
        if task.model not in self._speed:
            resolved = next(m for m in self.checked.models if m.name == task.model)
            model = seeded_model(resolved, task.seed)
            self._speed[task.model] = forward_seconds_per_image(model, self.checked.device)
        minutes = task.forward_passes * self._speed[task.model] / 60
        return f", at most about {minutes:.0f} min here" if minutes >= 1 else ", under a minute here"


def plan_experiment(
    config: ExperimentConfig, *, retrain: bool = False, checked: CheckedExperiment | None = None
) -> PlannedExperiment:
    """Preflight, load the data and plan the experiment; with `retrain`, every task is to do."""
    checked = checked or check_experiment(config)
    data = load_fashion_mnist(config.data.dir, download=config.data.download, verify=config.data.verify)
    count = min(len(data.test), config.evaluation.test_images or len(data.test))
    plan = build_plan(checked, data.checksum, count)
    store = TaskStore(config.cache_dir)
    done = set() if retrain else {t for t in plan.tasks if store.is_done(t)}
    return PlannedExperiment(checked, data, count, plan, store, done)


def run_experiment(config: ExperimentConfig, *, retrain: bool = False) -> Path:
    """Run every model (once per seed) through every cell and write reports/<name>/. Returns that folder.

    Every check of `check_experiment` runs first; the report folder stays locked against other
    runs until the new report is in place. Only the plan's missing tasks run; each result is
    stored as it finishes, so an interrupted run resumes where it stopped. Thread count and
    denormal flushing are restored on return.
    """
    started = time.perf_counter()
    checked = check_experiment(config)
    with hold_folder(checked.folder), cpu_settings(config.threads) as applied:
        planned = plan_experiment(config, retrain=retrain, checked=checked)
        timings = {"load_data": time.perf_counter() - started}
        executed = execute(planned, timings)
        count = planned.test_images
        test = planned.data.test
        assembled = assemble(
            config, checked.models, checked.cells, planned.plan, planned.store, executed.trained,
            executed.reasons, test.images[:count], test.labels[:count],
        )  # fmt: skip
        throughput = _measure_throughput(planned, assembled, timings)
        timings["total"] = time.perf_counter() - started
        run = run_record(config, checked.device, planned.data, assembled.models_info, timings, applied, checked.cells)
        run["tasks"] = executed.record(planned)
        reference = None
        if checked.noise is not None:
            reference, run["noise_from"] = _against_reference(checked, assembled.models_info)
        write_report(checked.folder, _report_data(assembled, run, throughput, reference))
    return checked.folder


@dataclass
class Executed:
    """What the executor did with the plan's missing tasks."""

    trained: set[TrainTask]  # the trainings this run did (their weights are "trained", the others' "cached")
    failures: list[Failure]

    @property
    def reasons(self) -> dict[TrainTask | EvaluateTask, str]:
        return {f.task: f.reason for f in self.failures}

    def record(self, planned: PlannedExperiment) -> dict[str, object]:
        """run.json's `tasks`: how many were planned, stored before, ran and failed, and on which executor."""
        return {
            "planned": len(planned.plan.tasks),
            "stored_before": len(planned.done),
            "ran": len(planned.missing) - len(self.failures),
            "failed": [f.line for f in self.failures],
            "executor": planned.checked.config.executor.kind,
            # the evaluation records the report was derived from: `verify <report>` checks them and results.csv
            "records": planned.store.record_checksums(
                [*planned.plan.evaluate, *planned.plan.attack, *planned.plan.transfer]
            ),
        }


def execute(planned: PlannedExperiment, timings: dict[str, float]) -> Executed:
    """Hand the missing tasks to the config's executor; store each result in the task store as it comes back."""
    checked = planned.checked
    config = checked.config
    executed = Executed(set(), [])

    def store_result(task: TrainTask | EvaluateTask | AdversaryTask | TransferTask, result: object) -> None:
        # a full disk stops the run with one line; the atomic writes leave no half-written file
        if isinstance(task, TrainTask):
            needed = sum(t.nbytes for t in result.state.values())
            with writing(task.path.parent, "the checkpoint cache", needed):
                planned.store.save_training(task, result)
            executed.trained.add(task)
            timings[f"train {task.model} seed {task.seed}"] = result.metadata["train_seconds"]
        elif isinstance(task, AdversaryTask):
            with writing(planned.store.adversary_path(task).parent, "the evaluation store"):
                planned.store.save_adversary(task, result)
        elif isinstance(task, TransferTask):
            with writing(planned.store.transfer_path(task).parent, "the evaluation store"):
                planned.store.save_transfer(task, result)
        else:
            with writing(planned.store.evaluation_path(task).parent, "the evaluation store"):
                planned.store.save_evaluation(task, result)

    missing = planned.missing
    log.info("%d of %d tasks to do (%d stored)", len(missing), len(planned.plan.tasks), len(planned.done))
    started = time.perf_counter()
    if missing:
        work = Work(
            missing,
            {m.name: m for m in checked.models},
            planned.data,
            _evaluation_settings(config, checked.device, planned.test_images),
            stored_weights=_stored_weights_reader(checked),
            stored_attack=_stored_attack_reader(planned.store),
            threads=config.threads,
        )
        executed.failures = EXECUTORS.get(config.executor.kind).run(work, config.executor, store_result)
    timings["execute"] = time.perf_counter() - started
    return executed


def _measure_throughput(
    planned: PlannedExperiment, assembled: Assembled, timings: dict[str, float]
) -> pd.DataFrame | None:
    """`throughput:` of the config, on the first seed's models; None when it is off."""
    config = planned.checked.config
    if not config.throughput.enabled:
        return None
    started = time.perf_counter()
    test, count = planned.data.test, planned.test_images
    images = to_float_images(test.images[:count], planned.checked.device)
    throughput = benchmark(
        config, assembled.first_seed_models, images, test.labels[:count], planned.checked.cells, planned.checked.models
    )
    timings["throughput"] = time.perf_counter() - started
    return throughput


def _against_reference(
    checked: CheckedExperiment, models_info: list[dict[str, Any]]
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The `noise_from:` report's cells this run's models can be set against, and run.json's note of that report."""
    assert checked.noise is not None
    reference, skipped = reference_cells(checked.noise, models_info)
    env = checked.noise.run["environment"]
    return reference, {
        "path": str(checked.config.noise_from),
        "name": checked.noise.run["config"].get("name"),
        "git_commit": env.get("git_commit"),
        "seeds": sorted(int(s) for s in checked.noise.results["seed"].unique()),
        "skipped_models": skipped,
    }


def _report_data(
    assembled: Assembled, run: dict[str, Any], throughput: pd.DataFrame | None, reference: pd.DataFrame | None
) -> ReportData:
    scored = assembled.scored
    return ReportData(
        results=frame(scored.results, "results"),
        per_class=frame(scored.per_class, "per_class"),
        confusion=frame(scored.confusion, "confusion"),
        calibration=frame(scored.calibration, "calibration"),
        run=run,
        examples=assembled.examples,
        throughput=throughput,
        outcomes=outcomes_from(scored.outcomes),
        reference=reference,
        adversaries=adversary_frame(assembled.adversaries) if assembled.adversaries else None,
        consistency=assembled.consistency,
        fooling=assembled.fooling,
        transfer=assembled.transfer,
        fooling_by_class=assembled.fooling_by_class,
    )


def _evaluation_settings(config: ExperimentConfig, device: torch.device, count: int) -> EvaluationSettings:
    evaluation = config.evaluation
    return EvaluationSettings(
        device=device,
        batch_size=evaluation.batch_size,
        precision=evaluation.precision,
        channels_last=evaluation.channels_last,
        compile=evaluation.compile,
        adaptation=AdaptationSettings(evaluation.bn, evaluation.tent, evaluation.tta),
        test_images=count,
    )


def _stored_attack_reader(store: TaskStore) -> Callable[[AdversaryTask], Attack]:
    """Where a transfer gets the search whose worst points it uses: the task store (its task ran, or ran before)."""

    def stored_attack(task: AdversaryTask) -> Attack:
        attack = store.load_adversary(task)
        if attack is None:
            raise HarnessError(f"{task.title} has no stored result (it failed or was not run); run again")
        return attack

    return stored_attack


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


__all__ = ["PlannedExperiment", "plan_experiment", "run_experiment"]

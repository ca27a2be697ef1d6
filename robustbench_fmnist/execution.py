"""Executors: what runs the plan's missing tasks, here (`local`) or on a Ray cluster (`ray`).

An executor is handed the work and a callback; it calls the callback with each task's result
as soon as the task finishes (the driver stores it there and then), retries a failing task as
`executor.retries` says, and returns the tasks that still failed, each with its reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from robustbench_fmnist.config import ExecutorConfig, shorten
from robustbench_fmnist.data import FashionMNIST
from robustbench_fmnist.plan import EvaluateTask, TrainTask
from robustbench_fmnist.progress import progress_bar
from robustbench_fmnist.registry import Registry
from robustbench_fmnist.resolution import ResolvedModel
from robustbench_fmnist.task_store import Evaluation
from robustbench_fmnist.tasks import EvaluationSettings, run_evaluation, run_training
from robustbench_fmnist.weights import TrainedWeights

Task = TrainTask | EvaluateTask
Result = TrainedWeights | Evaluation


@dataclass
class Work:
    """The missing tasks of a plan and everything they read."""

    tasks: list[Task]  # in plan order: each training before the evaluations of its weights
    models: dict[str, ResolvedModel]
    data: FashionMNIST
    settings: EvaluationSettings
    stored_weights: Callable[[EvaluateTask], dict]  # the weights of an evaluation whose training is not in `tasks`
    threads: int | None = None  # the config's `threads:`, applied on every worker

    def __len__(self) -> int:
        return len(self.tasks)


@dataclass(frozen=True)
class Failure:
    """A task that failed on every attempt."""

    task: Task
    attempts: int
    reason: str

    @property
    def line(self) -> str:
        """One line naming the task (model, seed, cells), the attempts and the error."""
        tries = f"after {self.attempts} attempt{'s' if self.attempts != 1 else ''}" if self.attempts else "not run"
        return f"{self.task.title} failed {tries}: {self.reason}"


OnResult = Callable[[Task, Result], None]
Executor = Callable[[Work, ExecutorConfig, OnResult], list[Failure]]


@dataclass(frozen=True)
class ExecutorEntry:
    name: str
    run: Executor
    description: str


EXECUTORS: Registry[ExecutorEntry] = Registry("executor")


def register_executor(name: str) -> Callable[[Executor], Executor]:
    """Register an executor under `name` (the word `executor.kind` takes)."""

    def decorate(run: Executor) -> Executor:
        doc = (run.__doc__ or "").strip().splitlines()
        EXECUTORS.add(name, ExecutorEntry(name, run, doc[0] if doc else ""))
        return run

    return decorate


def reason_of(exc: BaseException) -> str:
    """An exception as the short reason a failure line gives."""
    return f"{type(exc).__name__}: {shorten(exc)}"


def training_failed(task: EvaluateTask, failures: dict[TrainTask, Failure]) -> Failure:
    """The failure of an evaluation that could not run because its weights' training failed."""
    assert task.train is not None
    return Failure(task, 0, f"its training failed ({failures[task.train].reason})")


@register_executor("local")
def run_local(work: Work, config: ExecutorConfig, on_result: OnResult) -> list[Failure]:
    """In this process, one task after another in plan order (the default)."""
    failures: list[Failure] = []
    failed_training: dict[TrainTask, Failure] = {}
    # the last weights evaluated, by identity: a model-seed's evaluations follow its training in plan order
    weights: dict[str, dict] = {}
    with progress_bar(len(work), "tasks", unit="task") as bar:
        for task in work.tasks:
            bar.set_postfix_str(task.title)
            if isinstance(task, EvaluateTask) and task.train in failed_training:
                outcome: Result | Failure = training_failed(task, failed_training)
            else:
                outcome = _attempts(work, task, weights, config.retries + 1)
            if isinstance(outcome, Failure):
                failures.append(outcome)
                if isinstance(task, TrainTask):
                    failed_training[task] = outcome
            else:
                if isinstance(task, TrainTask):
                    weights.clear()
                    weights[task.key] = outcome.state
                on_result(task, outcome)
            bar.update(1)
    return failures


def _attempts(work: Work, task: Task, weights: dict[str, dict], attempts: int) -> Result | Failure:
    """The task's result, or its failure after `attempts` runs that raised (the others' results are kept)."""
    for attempt in range(1, attempts + 1):
        try:
            return _run_here(work, task, weights)
        except Exception as exc:  # the task's own error: run again, then reported
            if attempt == attempts:
                return Failure(task, attempt, reason_of(exc))
    raise AssertionError("unreachable: attempts >= 1")


def _run_here(work: Work, task: Task, weights: dict[str, dict]) -> Result:
    resolved = work.models[task.model]
    if isinstance(task, TrainTask):
        return run_training(task, resolved, work.data.train, work.settings.device)
    if task.weights not in weights:
        weights.clear()
        weights[task.weights] = work.stored_weights(task)
    return run_evaluation(task, resolved, weights[task.weights], work.data.test, work.settings)


@register_executor("ray")
def run_on_ray(work: Work, config: ExecutorConfig, on_result: OnResult) -> list[Failure]:
    """On a Ray cluster: tasks with retries, the data shipped once through the object store."""
    from robustbench_fmnist.ray_executor import run_ray

    return run_ray(work, config, on_result)

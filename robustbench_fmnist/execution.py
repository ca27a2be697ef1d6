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
    trained: dict[str, dict] = {}  # the weights trained in this run, by training key, for their evaluations
    with progress_bar(len(work), "tasks", unit="task") as bar:
        for task in work.tasks:
            bar.set_postfix_str(task.title)
            if isinstance(task, EvaluateTask) and task.train in failed_training:
                failures.append(training_failed(task, failed_training))
                bar.update(1)
                continue
            for attempt in range(1, config.retries + 2):
                try:
                    result = _run_here(work, task, trained)
                    break
                except Exception as exc:  # the task's own error: retried, then reported with the others kept
                    if attempt == config.retries + 1:
                        failure = Failure(task, attempt, reason_of(exc))
                        failures.append(failure)
                        if isinstance(task, TrainTask):
                            failed_training[task] = failure
                        result = None
            if result is not None:
                if isinstance(task, TrainTask):
                    trained[task.key] = result.state
                on_result(task, result)
            bar.update(1)
    return failures


def _run_here(work: Work, task: Task, trained: dict[str, dict]) -> Result:
    resolved = work.models[task.model]
    if isinstance(task, TrainTask):
        return run_training(task, resolved, work.data.train, work.settings.device)
    state = trained.get(task.weights) if task.train is not None else None
    if state is None:
        state = work.stored_weights(task)
    return run_evaluation(task, resolved, state, work.data.test, work.settings)


@register_executor("ray")
def run_on_ray(work: Work, config: ExecutorConfig, on_result: OnResult) -> list[Failure]:
    """On a Ray cluster: tasks with retries, the data shipped once through the object store."""
    from robustbench_fmnist.ray_executor import run_ray

    return run_ray(work, config, on_result)

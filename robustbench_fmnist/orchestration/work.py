"""What an executor is handed and gives back: the work, each task's result or failure, and the registry.

An executor (`local`, `ray`; see executors.py) is handed the work and a callback; it calls the
callback with each task's result as soon as the task finishes (the driver stores it there and
then), retries a failing task as `executor.retries` says, and returns the tasks that still
failed, each with its reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from robustbench_fmnist.config import MAX_SHOWN, ExecutorConfig, shorten
from robustbench_fmnist.data import FashionMNIST
from robustbench_fmnist.errors import HarnessError
from robustbench_fmnist.orchestration.plan import AdversaryTask, EvaluateTask, TrainTask, TransferTask
from robustbench_fmnist.orchestration.tasks import Attack, Evaluation, EvaluationSettings, Transfer
from robustbench_fmnist.registry import Registry
from robustbench_fmnist.training.resolution import ResolvedModel
from robustbench_fmnist.training.weights import TrainedWeights

Task = TrainTask | EvaluateTask | AdversaryTask | TransferTask
MAX_REASON_CHARACTERS = 300  # a failure line in the terminal, run.json and report.md
Result = TrainedWeights | Evaluation | Attack | Transfer


@dataclass
class Work:
    """The missing tasks of a plan and everything they read."""

    tasks: list[Task]  # in plan order: each training before the evaluations of its weights
    models: dict[str, ResolvedModel]
    data: FashionMNIST
    settings: EvaluationSettings
    stored_weights: Callable[[EvaluateTask], dict]  # the weights of an evaluation whose training is not in `tasks`
    stored_attack: Callable[[AdversaryTask], Attack] | None = None  # a transfer's source search, once stored
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


LOCAL = "local"  # where a task ran, for the local executor; a Ray task names its node's id
OnResult = Callable[[Task, Result, str], None]  # a task, its result, and where it ran
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
    """An exception as the short reason a failure line gives: the harness's own messages whole, others cut."""
    # the harness words its errors to fit one line, with the fix at the end: cutting them loses the fix
    limit = MAX_REASON_CHARACTERS if isinstance(exc, HarnessError) else MAX_SHOWN
    return f"{type(exc).__name__}: {shorten(exc, limit)}"


def training_failed(task: EvaluateTask | AdversaryTask | TransferTask, failures: dict[TrainTask, Failure]) -> Failure:
    """The failure of an evaluation that could not run because its weights' training failed."""
    assert task.train is not None
    return Failure(task, 0, f"its training failed ({failures[task.train].reason})")

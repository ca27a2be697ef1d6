"""The local executor: the plan's missing tasks in this process, one after another in plan order."""

from __future__ import annotations

from robustbench_fmnist.config import ExecutorConfig
from robustbench_fmnist.orchestration.plan import TrainTask, TransferTask
from robustbench_fmnist.orchestration.tasks import run_on_weights, run_training, run_transfer
from robustbench_fmnist.orchestration.work import (
    LOCAL,
    Failure,
    OnResult,
    Result,
    Task,
    Work,
    reason_of,
    register_executor,
    training_failed,
)
from robustbench_fmnist.progress import progress_bar


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
            if not isinstance(task, TrainTask) and task.train in failed_training:
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
                on_result(task, outcome, LOCAL)
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
    if isinstance(task, TransferTask):
        assert work.stored_attack is not None
        source = work.stored_attack(task.source).outputs  # stored before: transfers run last, in plan order
        return run_transfer(task, resolved, weights[task.weights], source, work.data.test, work.settings)
    return run_on_weights(task, resolved, weights[task.weights], work.data.test, work.settings)

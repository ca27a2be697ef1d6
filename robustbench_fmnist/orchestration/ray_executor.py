"""The Ray executor: each task a Ray task, retried by Ray, its result streamed back as it finishes.

The data go into the object store once (`ray.put`) and every task reads them from there; an
evaluation depends on its training task's ObjectRef, so Ray starts it when the weights exist.
Ray retries a task whose worker died (`max_retries`) and one that raised (`retry_exceptions`).
Install with `pip install '.[ray]'`; a cluster is started with `ray start --head`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import torch

from robustbench_fmnist.config import ExecutorConfig
from robustbench_fmnist.data import Split
from robustbench_fmnist.errors import ConfigError
from robustbench_fmnist.orchestration.plan import AdversaryTask, EvaluateTask, TrainTask, TransferTask
from robustbench_fmnist.orchestration.tasks import (
    Attack,
    Evaluation,
    EvaluationSettings,
    Transfer,
    run_on_weights,
    run_training,
    run_transfer,
)
from robustbench_fmnist.orchestration.work import (
    Failure,
    OnResult,
    Task,
    Work,
    reason_of,
    register_executor,
    training_failed,
)
from robustbench_fmnist.progress import progress_bar, set_progress
from robustbench_fmnist.runtime import apply_cpu_settings
from robustbench_fmnist.training.resolution import ResolvedModel
from robustbench_fmnist.training.weights import TrainedWeights

log = logging.getLogger(__name__)
DEFAULT_ADDRESS = "auto"


def import_ray() -> Any:
    """The ray module, or a ConfigError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "executor.kind ray: Ray is not installed; pip install '.[ray]' (or pip install 'ray>=2.9'), "
            "or use executor.kind local"
        ) from None
    return ray


def _worker_threads(threads: int | None, cpus_per_task: float) -> int:
    # Ray sets OMP_NUM_THREADS to the task's CPUs; the config's `threads:` wins, as it does locally
    return threads or max(1, int(cpus_per_task))


def _node() -> str:
    """The id of the Ray node this worker runs on (run.json's `tasks.nodes`)."""
    import ray

    return ray.get_runtime_context().get_node_id()


def _train_on_worker(
    task: TrainTask, resolved: ResolvedModel, train: Split, device: torch.device, threads: int
) -> tuple[TrainedWeights, str]:
    set_progress(False)  # a worker's bars would interleave in the driver's log; the driver shows one over tasks
    apply_cpu_settings(threads)
    return run_training(task, resolved, train, device), _node()


def _evaluate_on_worker(
    task: EvaluateTask | AdversaryTask,
    resolved: ResolvedModel,
    weights: TrainedWeights | dict[str, torch.Tensor],
    test: Split,
    settings: EvaluationSettings,
    threads: int,
) -> tuple[Evaluation | Attack, str]:
    set_progress(False)
    apply_cpu_settings(threads)
    state = weights.state if isinstance(weights, TrainedWeights) else weights
    return run_on_weights(task, resolved, state, test, settings), _node()


def _transfer_on_worker(
    task: TransferTask,
    resolved: ResolvedModel,
    weights: TrainedWeights | dict[str, torch.Tensor],
    source: Attack,
    test: Split,
    settings: EvaluationSettings,
    threads: int,
) -> tuple[Transfer, str]:
    set_progress(False)
    apply_cpu_settings(threads)
    state = weights.state if isinstance(weights, TrainedWeights) else weights
    return run_transfer(task, resolved, state, source.outputs, test, settings), _node()


def factory_paths(models: dict[str, ResolvedModel]) -> list[str]:
    """The folders the models' `factory:` modules are imported from, so workers on this machine find them too."""
    paths = []
    for resolved in models.values():
        if not resolved.spec.factory:
            continue
        module = sys.modules.get(resolved.builder.__module__)
        file = getattr(module, "__file__", None)
        if file:
            root = Path(file).resolve().parents[resolved.builder.__module__.count(".")]
            paths.append(str(root))
    return sorted(set(paths))


def connect(ray: Any, config: ExecutorConfig, models: dict[str, ResolvedModel]) -> None:
    """Join the cluster at `executor.address`; a ConfigError naming the address when there is none."""
    address = config.address or DEFAULT_ADDRESS
    extra = factory_paths(models)
    runtime_env = None
    if extra:
        runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join([*extra, os.environ.get("PYTHONPATH", "")])}}
    main_thread = threading.current_thread() is threading.main_thread()
    terminate = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING, log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"executor.address {address!r}: no Ray cluster to join ({' '.join(str(exc).split())[:160]}); start one "
            "with `ray start --head` or give the address of a running one"
        ) from None
    if main_thread and terminate is not None:
        # ray.init installs its own SIGTERM handler, which exits at once; the CLI's stops like Ctrl-C
        signal.signal(signal.SIGTERM, terminate)


@register_executor("ray")
def run_on_ray(work: Work, config: ExecutorConfig, on_result: OnResult) -> list[Failure]:
    """On a Ray cluster: tasks with retries, the data shipped once through the object store."""
    ray = import_ray()
    connect(ray, config, work.models)
    try:
        return _run_connected(ray, work, config, on_result)
    finally:
        ray.shutdown()  # disconnects this driver; the cluster keeps running


def _submit(ray: Any, work: Work, config: ExecutorConfig) -> dict[Any, tuple[Task, Any]]:
    """Every task handed to Ray in plan order, each waiting on the results it reads through their refs."""
    options = {
        "num_cpus": config.cpus_per_task,
        "num_gpus": config.gpus_per_task,
        "max_retries": config.retries,  # a worker that died
        "retry_exceptions": True,  # and a task that raised: retried as often
        "num_returns": 2,  # the result, which later tasks read through its ref, and the node that made it
        "scheduling_strategy": "SPREAD" if config.spread else "DEFAULT",
    }
    train_remote = ray.remote(_train_on_worker).options(**options)
    evaluate_remote = ray.remote(_evaluate_on_worker).options(**options)
    transfer_remote = ray.remote(_transfer_on_worker).options(**options)
    threads = _worker_threads(work.threads, config.cpus_per_task)
    settings = EvaluationSettings(**{**work.settings.__dict__, "show_progress": False})
    train_data, test_data = ray.put(work.data.train), ray.put(work.data.test)  # shipped once
    pending: dict[Any, tuple[Task, Any]] = {}  # result ref -> its task and the ref of the node that ran it
    training_refs: dict[TrainTask, Any] = {}
    attack_refs: dict[AdversaryTask, Any] = {}  # a transfer waits on its source search's result through Ray
    stored: dict[str, Any] = {}  # weights loaded from the cache, put once per weights
    for task in work.tasks:
        resolved = work.models[task.model]
        if isinstance(task, TrainTask):
            ref, node = train_remote.remote(task, resolved, train_data, work.settings.device, threads)
            training_refs[task] = ref
        else:
            weights = training_refs.get(task.train) if task.train is not None else None
            if weights is None:
                if task.weights not in stored:
                    stored[task.weights] = ray.put(work.stored_weights(task))
                weights = stored[task.weights]
            if isinstance(task, TransferTask):
                source = attack_refs.get(task.source)
                if source is None:
                    source = ray.put(work.stored_attack(task.source))
                ref, node = transfer_remote.remote(task, resolved, weights, source, test_data, settings, threads)
            else:
                ref, node = evaluate_remote.remote(task, resolved, weights, test_data, settings, threads)
                if isinstance(task, AdversaryTask):
                    attack_refs[task] = ref
        pending[ref] = (task, node)
    return pending


def _run_connected(ray: Any, work: Work, config: ExecutorConfig, on_result: OnResult) -> list[Failure]:
    pending = _submit(ray, work, config)
    failures: list[Failure] = []
    failed_training: dict[TrainTask, Failure] = {}
    waiting = list(pending)  # the tasks whose results have not come back
    try:
        with progress_bar(len(pending), "tasks (ray)", unit="task") as bar:
            while waiting:
                # a bounded wait: a signal is handled between waits, not after the next task finishes
                ready, still_waiting = ray.wait(waiting, num_returns=1, timeout=0.5)
                if not ready:
                    continue
                waiting = still_waiting
                task, node = pending[ready[0]]
                try:
                    result = ray.get(ready[0])
                except ray.exceptions.RayError as exc:
                    failures.append(_failure(task, exc, config, failed_training))
                else:
                    on_result(task, result, ray.get(node))
                bar.set_postfix_str(task.title)
                bar.update(1)
    except KeyboardInterrupt:
        # no ray.cancel: a cancel racing a task's reply aborts the driver inside Ray (ray 2.60,
        # "Check failed: it != submissible_tasks_"); the caller's ray.shutdown ends this job,
        # and the cluster kills the job's workers, so what has not come back stops there
        raise
    return failures


def _failure(task: Task, exc: BaseException, config: ExecutorConfig, failed: dict[TrainTask, Failure]) -> Failure:
    """The failure line of a task Ray gave up on: its own error, or its training's."""
    if not isinstance(task, TrainTask) and task.train in failed:
        return training_failed(task, failed)
    cause = getattr(exc, "cause", None)
    failure = Failure(task, config.retries + 1, reason_of(cause if isinstance(cause, BaseException) else exc))
    if isinstance(task, TrainTask):
        failed[task] = failure
    return failure

"""The executors a run can name (`executor.kind`), each registered by importing its module here."""

from __future__ import annotations

from robustbench_fmnist.config import ExperimentConfig
from robustbench_fmnist.errors import ConfigError
from robustbench_fmnist.orchestration import local_executor, ray_executor
from robustbench_fmnist.orchestration.work import EXECUTORS

assert local_executor.run_local and ray_executor.run_on_ray  # imported for their registration


def check_executor(config: ExperimentConfig) -> None:
    """The executor is registered, and Ray installed where it is asked for (the cluster is joined as the run starts)."""
    kind = config.executor.kind
    if kind not in EXECUTORS:
        raise ConfigError(f"executor.kind: {EXECUTORS.unknown_message(kind)}")
    if kind == "ray":
        ray_executor.import_ray()
    elif config.executor.address is not None:
        raise ConfigError(f"executor.address: {config.executor.address!r} is for kind: ray; drop it or set kind: ray")


__all__ = ["EXECUTORS", "check_executor"]

"""Every check of an experiment that takes seconds: preflight's, the executor's, the `noise_from:` report's."""

from __future__ import annotations

import dataclasses

from robustbench_fmnist.config import ExperimentConfig
from robustbench_fmnist.orchestration.executors import check_executor
from robustbench_fmnist.orchestration.preflight import CheckedExperiment, preflight
from robustbench_fmnist.report.agreement import read_noise_report


def check_experiment(config: ExperimentConfig) -> CheckedExperiment:
    """The checked experiment, with its `noise_from:` report read; ConfigError (exit 2) naming the key and the fix."""
    checked = preflight(config)
    check_executor(config)
    if config.noise_from is None:
        return checked
    return dataclasses.replace(checked, noise=read_noise_report(config.noise_from, checked.folder))

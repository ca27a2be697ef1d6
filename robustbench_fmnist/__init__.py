"""robustbench_fmnist: how much Fashion-MNIST classifiers degrade under lighting and viewpoint shifts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from robustbench_fmnist.orchestration.experiment import run_experiment as run_experiment
    from robustbench_fmnist.orchestration.user_module import evaluate_module as evaluate_module

# The public API is imported lazily so `python -m robustbench_fmnist ls` and `--help` stay fast.
_LAZY = {
    "evaluate_module": "robustbench_fmnist.orchestration.user_module",
    "run_experiment": "robustbench_fmnist.orchestration.experiment",
    "load_config": "robustbench_fmnist.config",
    "load_fashion_mnist": "robustbench_fmnist.data",
    "register_model": "robustbench_fmnist.models",
    "create_model": "robustbench_fmnist.models",
    "register_perturbation": "robustbench_fmnist.perturbations",
    "apply_perturbation": "robustbench_fmnist.perturbations",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'robustbench_fmnist' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]

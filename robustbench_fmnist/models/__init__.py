"""Model families. Importing this package registers every built-in model."""

from __future__ import annotations

from robustbench_fmnist.models import baseline, classic, p4, resnet, steerable, stn, timm_models, vgg  # noqa: F401  (registers)
from robustbench_fmnist.models.registry import (
    FMNIST_MEAN,
    FMNIST_STD,
    MODELS,
    ModelEntry,
    Normalize,
    count_macs,
    count_parameters,
    create_model,
    register_model,
)

__all__ = [
    "FMNIST_MEAN",
    "FMNIST_STD",
    "MODELS",
    "ModelEntry",
    "Normalize",
    "count_macs",
    "count_parameters",
    "create_model",
    "register_model",
]

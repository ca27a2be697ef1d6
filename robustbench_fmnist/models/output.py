"""What every model must return: floating-point logits of shape (N, 10), checked wherever it runs."""

from __future__ import annotations

import torch

from robustbench_fmnist.errors import ModelError

NUM_CLASSES = 10


def check_logits(logits: object, batch_size: int, model_name: str) -> None:
    """Raise ModelError unless `logits` is a floating-point tensor of shape (batch_size, 10)."""
    if not isinstance(logits, torch.Tensor):
        raise ModelError(f"model {model_name!r} returned {type(logits).__name__}, not a tensor of logits")
    if tuple(logits.shape) != (batch_size, NUM_CLASSES) or not logits.is_floating_point():
        raise ModelError(
            f"model {model_name!r} returned {logits.dtype} logits of shape {tuple(logits.shape)} for "
            f"{batch_size} images; it must return floating-point logits of shape (N, {NUM_CLASSES})"
        )

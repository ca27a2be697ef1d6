"""Giving a model its weights: the user's checkpoint, the checkpoint cache, or fresh training."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustbench_fmnist.data import FashionMNIST, Split
from robustbench_fmnist.environment import git_commit
from robustbench_fmnist.models import count_macs, count_parameters
from robustbench_fmnist.models.onnx_model import OnnxModel
from robustbench_fmnist.training.checkpoints import (
    CacheKey,
    cache_key,
    checkpoint_dir,
    code_digest,
    load_cached,
    load_user_checkpoint,
    save_checkpoint_state,
    training_environment,
    weights_sha256,
)
from robustbench_fmnist.training.loop import train_model
from robustbench_fmnist.training.resolution import ResolvedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainedWeights:
    """What a training task gives back: the weights and what run.json records about their training."""

    state: dict[str, torch.Tensor]
    metadata: dict[str, Any]  # train_seconds, training (the summary), cache_key, trained_with


def seeded_model(resolved: ResolvedModel, seed: int) -> nn.Module:
    """A new instance of the model with the initial weights `seed` fixes."""
    torch.manual_seed(seed)  # the initial weights are part of what the seed fixes
    return resolved.build()


def model_description(resolved: ResolvedModel, model: nn.Module) -> dict[str, Any]:
    """The part of a model's run.json entry that does not depend on its weights."""
    return {
        "name": resolved.name,
        "factory": resolved.spec.factory,
        "kwargs": resolved.spec.kwargs,
        # an outside model counts its own weights (an ONNX file's float initializers, Keras' count_params);
        # an ONNX file's MACs are ONNX Runtime's kernels', not counted here
        "parameters": getattr(model, "parameter_count", None) or count_parameters(model),
        "macs": None if isinstance(model, OnnxModel) else count_macs(model),
        "train_seconds": None,
    }


def weights_key(resolved: ResolvedModel, data_checksum: str, seed: int, device: torch.device) -> CacheKey | None:
    """The checkpoint cache's key for the model trained with `seed`; None for weights from the user's checkpoint."""
    if resolved.recipe is None:
        return None
    return cache_key(
        resolved.architecture,
        resolved.spec.kwargs,
        resolved.recipe,
        data_checksum,
        seed,
        code=code_digest(resolved.builder),
        device_type=device.type,
    )


def checkpoint_path(key: CacheKey, cache_dir: Path | None) -> Path:
    """Where the cache keeps the checkpoint of `key`."""
    return checkpoint_dir(cache_dir) / key.filename


def train_weights(
    resolved: ResolvedModel, train: Split, *, seed: int, device: torch.device, key: str
) -> TrainedWeights:
    """Train the model from its seeded initial weights: the body of a training task."""
    model = seeded_model(resolved, seed)
    trained_with = {**training_environment(device), "harness_commit": git_commit()}
    assert resolved.recipe is not None
    summary = train_model(model, train, resolved.recipe, seed=seed, device=device, name=resolved.name)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "train_seconds": summary.seconds,
        "training": summary.to_dict(),
        "cache_key": key,
        "trained_with": trained_with,
    }
    return TrainedWeights(state, metadata)


def cached_weights(resolved: ResolvedModel, seed: int, path: Path) -> tuple[nn.Module, dict[str, Any]] | None:
    """The model with the cached checkpoint at `path` loaded, and the checkpoint's metadata; None if unusable."""
    model = seeded_model(resolved, seed)
    metadata = load_cached(path, model)
    return None if metadata is None else (model, metadata)


def user_weights(resolved: ResolvedModel, seed: int) -> nn.Module:
    """The model with the checkpoint the YAML names loaded."""
    model = seeded_model(resolved, seed)
    if resolved.spec.checkpoint is not None:  # an ONNX or Keras model's weights come with its file
        load_user_checkpoint(resolved.spec.checkpoint, model)
    return model


def user_weights_kind(resolved: ResolvedModel) -> str:
    """run.json's `weights` for weights the user gave: `checkpoint`, or `onnx` / `keras` for a model's file."""
    return resolved.spec.outside_kind or "checkpoint"


def model_with(resolved: ResolvedModel, seed: int, state: dict[str, torch.Tensor]) -> nn.Module:
    """The model with `state` loaded (weights a task was handed)."""
    model = seeded_model(resolved, seed)
    model.load_state_dict(state)
    return model


def weights_record(
    resolved: ResolvedModel,
    model: nn.Module,
    *,
    weights: str,
    checkpoint: Path | None,
    key: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A model's run.json entry: what it is, where its weights came from (`weights`), their SHA-256 and training."""
    info = model_description(resolved, model)
    if resolved.recipe is not None:
        info.update(recipe=resolved.recipe.model_dump(mode="json"), cache_key=key)
    info.update(weights=weights, checkpoint=str(checkpoint))
    if metadata is not None:
        info.update(
            train_seconds=metadata.get("train_seconds"),
            training_summary=metadata.get("training"),  # per-epoch loss, accuracy and seconds: what training saw
            trained_with=metadata.get("trained_with"),
        )
    if weights != "failed":
        info["weights_sha256"] = weights_sha256(model)
    return info


def obtain_model(
    resolved: ResolvedModel,
    data: FashionMNIST,
    *,
    seed: int,
    device: torch.device,
    cache_dir: Path | None,
    retrain: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """The model with its weights in this process (for `bench`), and its record: the user's checkpoint, the cache,
    or training now (then cached)."""
    key = weights_key(resolved, data.checksum, seed, device)
    if key is None:
        model = user_weights(resolved, seed)
        return model, weights_record(
            resolved, model, weights=user_weights_kind(resolved), checkpoint=resolved.weights_file
        )
    path = checkpoint_path(key, cache_dir)
    loaded = None if retrain else cached_weights(resolved, seed, path)
    if loaded is not None:
        model, metadata = loaded
        return model, weights_record(
            resolved, model, weights="cached", checkpoint=path, key=key.digest, metadata=metadata
        )
    trained = train_weights(resolved, data.train, seed=seed, device=device, key=key.digest)
    save_checkpoint_state(path, trained.state, trained.metadata)
    model = model_with(resolved, seed, trained.state)
    record = weights_record(
        resolved, model, weights="trained", checkpoint=path, key=key.digest, metadata=trained.metadata
    )
    return model, record

"""Checkpoint cache: trained weights keyed by model, recipe, data and seed."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustbench_fmnist.config import TrainRecipe
from robustbench_fmnist.data import user_cache_dir
from robustbench_fmnist.errors import CheckpointError
from robustbench_fmnist.files import atomic_path

log = logging.getLogger(__name__)

# bump when the meaning of a cached checkpoint changes (training code, model definitions)
CACHE_FORMAT = 1


@dataclass(frozen=True)
class CacheKey:
    model: str
    digest: str

    @property
    def filename(self) -> str:
        return f"{self.model}-{self.digest[:16]}.pt"


def cache_key(
    model_name: str, model_kwargs: dict[str, Any], recipe: TrainRecipe, data_checksum: str, seed: int
) -> CacheKey:
    identity = {
        "format": CACHE_FORMAT,
        "model": model_name,
        "kwargs": model_kwargs,
        "recipe": recipe.model_dump(mode="json"),
        "data": data_checksum,
        "seed": seed,
    }
    text = json.dumps(identity, sort_keys=True, default=str)
    return CacheKey(model_name, hashlib.sha256(text.encode()).hexdigest())


def checkpoint_dir(cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir) if cache_dir else user_cache_dir() / "checkpoints"


def save_checkpoint(path: Path, model: nn.Module, metadata: dict[str, Any]) -> None:
    """Write atomically: an interrupted save leaves the old file or none, never half a file."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"state_dict": state, "metadata": metadata}, tmp)


def load_cached(path: Path, model: nn.Module) -> dict[str, Any] | None:
    """Load a cached checkpoint into `model`; None if absent or unusable (then it is retrained)."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(payload["state_dict"])
    except Exception as exc:
        log.warning("cached checkpoint %s is unusable (%s); retraining", path, exc)
        return None
    return dict(payload.get("metadata", {}))


def load_user_checkpoint(path: Path, model: nn.Module) -> None:
    """Load a checkpoint a user named in the YAML: a bare state_dict or {'state_dict': ...}."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; fix the path under models[].checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}); is it a torch.save file?"
        ) from None
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds no state_dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise CheckpointError(f"checkpoint {path} does not fit its model: {detail}") from None

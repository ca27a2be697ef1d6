"""Checkpoint cache: trained weights keyed by everything that changes them, and their identity."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import re
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustbench_fmnist.config import TrainRecipe
from robustbench_fmnist.data import user_cache_dir
from robustbench_fmnist.environment import device_name
from robustbench_fmnist.errors import CheckpointError
from robustbench_fmnist.files import atomic_path, safe_file_name

log = logging.getLogger(__name__)

# bump when the meaning of a cached checkpoint changes in a way the source hashes below miss
CACHE_FORMAT = 2
WEIGHTS_SHA256 = "weights_sha256"  # the metadata key of the SHA-256 a checkpoint's weights had when written
_PACKAGE = Path(__file__).resolve().parent.parent
# the code whose numerics decide trained weights: the training loop (augmentation included) and
# every registered model's definition; a factory's own module is added per model. An ONNX or Keras
# file's model is never trained: their wrappers decide no weights
_NEVER_TRAINED = {"onnx_model.py", "keras_model.py", "outside.py"}
_TRAINING_SOURCES = (
    _PACKAGE / "training" / "loop.py",
    _PACKAGE / "training" / "augmentation.py",
    *sorted(p for p in (_PACKAGE / "models").glob("*.py") if p.name not in _NEVER_TRAINED),
)


@dataclass(frozen=True)
class CacheKey:
    model: str
    digest: str

    @property
    def filename(self) -> str:
        # a label may hold characters a file name should not (`timm:resnet18`, a '/')
        return f"{safe_file_name(self.model)}-{self.digest[:16]}.pt"


def minor_version(version: str) -> str:
    """'2.14.1+cpu' -> '2.14': releases within one minor version train to the same weights."""
    return ".".join(version.split("+")[0].split(".")[:2])


def code_digest(builder: Callable[..., nn.Module]) -> str:
    """SHA-256 of the training code, the model definitions and the source file `builder` lives in.

    Any edit there (a factory's too) gives a new key, so weights trained by older code are never
    taken for the new code's. Where the builder's module uses timm, timm's minor version counts too.
    """
    digest = hashlib.sha256()
    sources = list(_TRAINING_SOURCES)
    try:
        own = inspect.getsourcefile(builder)
    except TypeError:  # a builtin or C-extension callable has no source file
        own = None
    if own is not None and Path(own).resolve() not in sources:
        sources.append(Path(own).resolve())
    for path in sources:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    module = sys.modules.get(getattr(builder, "__module__", "") or "")
    uses = {v.__name__.partition(".")[0] for v in vars(module).values() if isinstance(v, types.ModuleType)}
    # timm_models imports timm inside its functions (it is slow to import), so look at the source too
    if "timm" in uses or (own is not None and re.search(rb"^\s*import timm\b", Path(own).read_bytes(), re.M)):
        import timm

        digest.update(f"timm {minor_version(timm.__version__)}".encode())
    # the steerable CNNs import e2cnn inside their functions too: its filter bases decide their weights
    if own is not None and re.search(rb"^\s*import e2cnn\b", Path(own).read_bytes(), re.M):
        from importlib.metadata import PackageNotFoundError, version

        with contextlib.suppress(PackageNotFoundError):  # missing: building the model says how to install it
            digest.update(f"e2cnn {version('e2cnn')}".encode())
    return digest.hexdigest()


def _augmentation_code(method: str) -> str:
    """What a robust augmentation's draws depend on beyond augmentation.py: the perturbation kernels it
    applies (suite, AugMix's warps, the hashed random numbers), or torchvision's version for its policies."""
    if method in ("trivialaugment", "randaugment"):
        import torchvision

        return f"torchvision {minor_version(torchvision.__version__)}"
    digest = hashlib.sha256()
    for path in sorted((_PACKAGE / "perturbations").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cache_key(
    model_name: str,
    model_kwargs: dict[str, Any],
    recipe: TrainRecipe,
    data_checksum: str,
    seed: int,
    *,
    code: str,
    device_type: str,
) -> CacheKey:
    """The key of one trained checkpoint: model, builder arguments, recipe, data, seed, code, torch and device.

    `code` is `code_digest(builder)`. torch's minor version and the device type are part of it
    because both change the floating-point path training takes, and so the weights.
    """
    identity = {
        "format": CACHE_FORMAT,
        "model": model_name,
        "kwargs": model_kwargs,
        "recipe": recipe.model_dump(mode="json"),
        "data": data_checksum,
        "seed": seed,
        "code": code,
        "torch": minor_version(torch.__version__),
        "device_type": device_type,
    }
    if recipe.robust_augment is not None:
        identity["augmentation"] = _augmentation_code(recipe.robust_augment.method)
    text = json.dumps(identity, sort_keys=True, default=str)
    return CacheKey(model_name, hashlib.sha256(text.encode()).hexdigest())


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over the state_dict (names, dtypes, shapes, bytes): equal only for identical weights."""
    return state_sha256(model.state_dict())


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """`weights_sha256` of a state_dict itself: what a checkpoint records, and an evaluation is tied to."""
    digest = hashlib.sha256()
    for name, tensor in state.items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def training_environment(device: torch.device) -> dict[str, Any]:
    """Where and how weights are trained: what run.json records beside their SHA-256."""
    from robustbench_fmnist import __version__

    return {
        "torch": str(torch.__version__),  # a TorchVersion would not load back with weights_only
        "device_type": device.type,
        "device_name": device_name(device),
        "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "threads": torch.get_num_threads(),
        "harness": __version__,
    }


def checkpoint_dir(cache_dir: str | Path | None = None) -> Path:
    """Where checkpoints live: `<cache>/checkpoints/`, the cache being `cache_dir` or the user cache.

    `--cache-dir`, `cache_dir:` and $RBFM_CACHE_DIR all name the same kind of folder, the cache
    root, so one folder gives the same checkpoints whichever way it is named.
    """
    return (Path(cache_dir) if cache_dir else user_cache_dir()) / "checkpoints"


def save_checkpoint(path: Path, model: nn.Module, metadata: dict[str, Any]) -> None:
    """Write atomically: an interrupted save leaves the old file or none, never half a file."""
    save_checkpoint_state(path, {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, metadata)


def save_checkpoint_state(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, Any]) -> str:
    """`save_checkpoint` for a state_dict already on the CPU (weights a training task sent back).

    The weights' SHA-256 is recorded beside them and checked whenever they are read back, so an
    edited or corrupted checkpoint is never taken for what was trained. Returns that SHA-256.
    """
    sha = state_sha256(state)
    with atomic_path(path) as tmp:
        torch.save({"state_dict": state, "metadata": {**metadata, WEIGHTS_SHA256: sha}}, tmp)
    return sha


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A cached checkpoint's state_dict and metadata, its weights checked against the SHA-256 recorded
    when it was written; CheckpointError saying why it is unusable otherwise."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"it cannot be read ({type(exc).__name__})") from None
    state = payload.get("state_dict") if isinstance(payload, dict) else None
    metadata = payload.get("metadata") if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError("it holds no state_dict")
    recorded = metadata.get(WEIGHTS_SHA256) if isinstance(metadata, dict) else None
    if recorded is None:
        raise CheckpointError("it records no SHA-256 of its weights (written by an older harness)")
    if state_sha256(state) != recorded:
        raise CheckpointError("its weights do not match the SHA-256 recorded when it was written (edited or corrupt)")
    if any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in state.values()):
        raise CheckpointError("its weights hold NaN or infinite values")  # they would score every image as none
    return state, dict(metadata)


def state_dict_mismatch(model: nn.Module, state: dict[str, Any]) -> str | None:
    """Why `state` cannot be loaded into `model` as a whole (keys, shapes, non-finite values), or None."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = [f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else ""]
        return "keys differ: " + ", ".join(p for p in parts if p)
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            return f"{name} is {type(tensor).__name__}, not a tensor"
        if tensor.layout != torch.strided or tensor.is_meta:
            return f"{name} is a {'meta' if tensor.is_meta else str(tensor.layout)} tensor, not one with values"
        if tensor.shape != expected[name].shape:
            return f"{name} has shape {tuple(tensor.shape)}, the model {tuple(expected[name].shape)}"
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return f"{name} holds NaN or infinite values"
    return None


def load_cached(path: Path, model: nn.Module) -> dict[str, Any] | None:
    """Load a cached checkpoint into `model`; None if absent or unusable (then it is retrained).

    The checkpoint is checked as a whole before any tensor is copied, so a rejected one leaves
    `model` exactly as it was.
    """
    if not path.is_file():
        return None
    metadata, problem = load_checkpoint_into(path, model)
    if problem is not None:
        log.warning("cached checkpoint %s is unusable (%s); retraining", path, problem[:200])
    return metadata


def load_checkpoint_into(path: Path, model: nn.Module) -> tuple[dict[str, Any] | None, str | None]:
    """Load the checkpoint into `model`: (metadata, None), or (None, its problem) with `model` untouched."""
    try:
        state, metadata = read_checkpoint(path)
        problem = state_dict_mismatch(model, state)
    except CheckpointError as exc:
        problem = str(exc)
    if problem is not None:
        return None, problem
    model.load_state_dict(state)
    return metadata, None


def load_user_checkpoint(path: Path, model: nn.Module) -> None:
    """Load a checkpoint a user named in the YAML: a bare state_dict or {'state_dict': ...}."""
    model.load_state_dict(read_user_checkpoint(path, model))


def read_user_checkpoint(path: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict in a user's checkpoint, checked against `model` (which is not changed)."""
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; fix the path under models[].checkpoint")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a regular file; give a torch.save file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}); is it a torch.save file?"
        ) from None
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds no state_dict")
    problem = state_dict_mismatch(model, state)
    if problem is not None:
        raise CheckpointError(f"checkpoint {path} does not fit its model: {problem}")
    return state

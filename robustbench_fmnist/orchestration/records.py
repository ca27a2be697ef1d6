"""One evaluation task's stored observations: per-image outputs in a safetensors file that names what made them.

A record holds what was observed and nothing concluded: each image's predicted class (uint8),
top-1 softmax probability and true-class probability (float32) in every cell of the task, and
each cell's seconds. Every metric a report shows is derived from these again at assembly.
Its header names exactly what produced it (the task's identity key, the weights' SHA-256, the
data's checksum, the cells with their severities and seed, the adaptation and the evaluation
code's digest) and a SHA-256 over that header and every tensor's bytes. safetensors reads
tensors and a JSON header, nothing else: loading a record never unpickles or runs anything.

A 10,000-image task stores 9 bytes per image and cell: 90 kB per cell, 450 kB for a
five-severity perturbation.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from robustbench_fmnist.errors import HarnessError
from robustbench_fmnist.evaluation.cells import Cell
from robustbench_fmnist.evaluation.sweep import NO_PREDICTION, CellOutputs
from robustbench_fmnist.files import atomic_path

RECORD_FORMAT = 2  # 1 was a torch.save of metric rows beside the outputs
SUFFIX = ".safetensors"
_TENSORS = {
    "predictions": torch.uint8,  # (cells, images): the top-1 class, NO_PREDICTION where logits were not finite
    "confidence": torch.float32,  # (cells, images): top-1 softmax probability
    "true_probability": torch.float32,  # (cells, images): softmax probability of the true class
    "cell_seconds": torch.float64,  # (cells,): how long each cell took
}
# an adversary task's per-image observations (evaluation/adversary.py's AdversaryOutputs)
ADVERSARY_TENSORS = {
    "clean_prediction": torch.uint8,
    "random_point": torch.int32,
    "random_prediction": torch.uint8,
    "fooling_point": torch.int32,
    "fooling_prediction": torch.uint8,
    "worst_point": torch.int32,
    "worst_true_probability": torch.float32,
    "sample_indices": torch.int64,
    "sample_predictions": torch.uint8,
    "found_values": torch.float32,
}
# a transfer task's: the point each image was evaluated at, and the class there
TRANSFER_TENSORS = {"points": torch.int32, "predictions": torch.uint8}
_SLACK = 1e-5  # float32 softmax may round a probability a hair past 1


class RecordError(HarnessError):
    """A stored record that cannot be used: unreadable, edited, or made by something else than its task."""


@dataclass(frozen=True)
class EvaluationRecord:
    """What one evaluation task observed, and what produced it."""

    identity: dict[str, Any]
    predictions: torch.Tensor
    confidence: torch.Tensor
    true_probability: torch.Tensor
    cell_seconds: torch.Tensor
    sha256: str = ""  # content_sha256, as written and checked on reading

    @property
    def outputs(self) -> list[CellOutputs]:
        """Each cell's per-image outputs, in the task's cell order."""
        return [
            CellOutputs(p, c, t)
            for p, c, t in zip(self.predictions, self.confidence, self.true_probability, strict=True)
        ]

    @property
    def cells(self) -> list[Cell]:
        """The task's cells, as its identity names them."""
        return [Cell(p, s, parameter=v, name=n, backend=b) for p, s, v, n, b in self.identity["cells"]]

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in _TENSORS}


def record_from_outputs(
    identity: dict[str, Any], outputs: list[CellOutputs], cell_seconds: list[float]
) -> EvaluationRecord:
    """The record of a task's per-image outputs (one CellOutputs per cell, in cell order)."""
    return EvaluationRecord(
        identity,
        torch.stack([o.predictions for o in outputs]).to(torch.uint8).contiguous(),
        torch.stack([o.confidence for o in outputs]).float().contiguous(),
        torch.stack([o.true_probability for o in outputs]).float().contiguous(),
        torch.tensor(cell_seconds, dtype=torch.float64),
    )


def content_sha256(identity: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the identity (canonical JSON) and every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode() + b"\0")
    # an evaluation record's tensors in their documented order (as written since format 2), any other sorted
    for name in tuple(_TENSORS) if set(tensors) == set(_TENSORS) else sorted(tensors):
        value = tensors[name].contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_record(path: Path, record: EvaluationRecord) -> str:
    """Write an evaluation record atomically (whole or absent); returns its content SHA-256."""
    return write_tensors(path, record.identity, record.tensors)


def write_tensors(path: Path, identity: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    """Any record: tensors and the identity header with their content SHA-256, atomically; returns the SHA-256."""
    sha = content_sha256(identity, tensors)
    metadata = {"identity": json.dumps(identity, sort_keys=True), "content_sha256": sha}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return sha


def read_tensors(path: Path, schema: dict[str, torch.dtype]) -> tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    """A record's identity, tensors (exactly `schema`'s names and dtypes) and checked SHA-256; RecordError why not."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
    except (OSError, SafetensorError, ValueError) as exc:
        raise RecordError(f"it cannot be read ({type(exc).__name__})") from None
    try:
        identity = json.loads(metadata["identity"])
        recorded = metadata["content_sha256"]
    except (KeyError, TypeError, ValueError):
        raise RecordError("it names nothing that produced it (no identity header)") from None
    if set(tensors) != set(schema) or any(tensors[n].dtype != d for n, d in schema.items()):
        raise RecordError(f"it holds {sorted(tensors)} instead of {sorted(schema)} with their dtypes")
    if content_sha256(identity, tensors) != recorded:
        raise RecordError("its content does not match the SHA-256 written with it (edited or corrupt)")
    return identity, tensors, recorded


def record_kind(path: Path) -> str:
    """'adversary', 'transfer' or 'evaluation', as the record's header says (unreadable: 'evaluation')."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            identity = json.loads((handle.metadata() or {}).get("identity", "{}"))
    except (OSError, SafetensorError, ValueError):
        return "evaluation"
    kind = identity.get("kind") if isinstance(identity, dict) else None
    return kind if kind in ("adversary", "transfer") else "evaluation"


def read_record(path: Path) -> EvaluationRecord:
    """The evaluation record at `path`, its checksum and the shapes and ranges of its outputs checked."""
    identity, tensors, recorded = read_tensors(path, _TENSORS)
    record = EvaluationRecord(identity, **tensors, sha256=recorded)
    _check_outputs(record)
    return record


def _check_outputs(record: EvaluationRecord) -> None:
    """Shapes that agree with each other, classes 0-9 (or none), probabilities in [0, 1] where a class was given."""
    cells, images = record.predictions.shape if record.predictions.dim() == 2 else (-1, -1)
    for name in ("confidence", "true_probability"):
        if tuple(getattr(record, name).shape) != (cells, images):
            raise RecordError(f"its {name} has shape {tuple(getattr(record, name).shape)}, not ({cells}, {images})")
    if cells < 1 or tuple(record.cell_seconds.shape) != (cells,):
        raise RecordError(f"its shapes disagree: predictions {tuple(record.predictions.shape)}")
    given = record.predictions != NO_PREDICTION
    if bool((record.predictions[given] > 9).any()):
        raise RecordError("it holds a predicted class outside 0-9")
    for name in ("confidence", "true_probability"):
        values = getattr(record, name)[given]
        if not bool(torch.isfinite(values).all()) or bool((values < 0).any() or (values > 1 + _SLACK).any()):
            raise RecordError(f"its {name} holds values outside [0, 1]")
    if bool((record.true_probability[given] > record.confidence[given] + _SLACK).any()):
        raise RecordError("a true-class probability exceeds the top-1 probability of its image")
    if not all(math.isfinite(s) and s >= 0 for s in record.cell_seconds.tolist()):
        raise RecordError("its cell seconds are not finite and non-negative")


def check_identity(record: EvaluationRecord, expected: dict[str, Any]) -> None:
    """RecordError naming the first field in which the record's identity differs from `expected`."""
    check_identity_of(record.identity, expected)


def check_identity_of(identity: dict[str, Any], expected: dict[str, Any]) -> None:
    """RecordError naming the first field in which `identity` differs from `expected`."""
    for key, value in expected.items():
        if identity.get(key) != value:
            raise RecordError(f"its {key} is {_short(identity.get(key))}, this task's {_short(value)}")


def _short(value: object) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."

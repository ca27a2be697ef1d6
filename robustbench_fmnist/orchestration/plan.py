"""An experiment as a plan of tasks: train(model, recipe, seed) and evaluate(weights, cells, adaptation).

Each task is keyed by the identity of everything that decides its result: a training task by
the checkpoint cache's key, an evaluation by its weights' identity (that key, or the user's
checkpoint's SHA-256), its cells, adaptation, data, evaluation settings and the evaluation
code. A task whose result is stored under its key is done; a run does only the others.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustbench_fmnist.config import ExperimentConfig
from robustbench_fmnist.evaluation.adaptation import not_applicable
from robustbench_fmnist.evaluation.cells import Cell
from robustbench_fmnist.orchestration.preflight import CheckedExperiment
from robustbench_fmnist.training.resolution import ResolvedModel
from robustbench_fmnist.training.weights import checkpoint_path, seeded_model, weights_key

_PACKAGE = Path(__file__).resolve().parent.parent
# the code whose numerics decide an evaluation's result, beside the weights
_EVALUATION_SOURCES = (
    _PACKAGE / "evaluation" / "cells.py",
    _PACKAGE / "evaluation" / "sweep.py",
    _PACKAGE / "evaluation" / "inference.py",
    _PACKAGE / "evaluation" / "adaptation.py",
    _PACKAGE / "models" / "fusion.py",
    *sorted((_PACKAGE / "perturbations").glob("*.py")),
)
EVALUATION_FORMAT = 2  # bump when a stored evaluation's meaning changes in a way the sources above miss


@dataclass(frozen=True)
class TrainTask:
    """Train one model with one seed; its result is the checkpoint at `path`."""

    model: str
    seed: int
    key: str  # the checkpoint cache's key digest
    path: Path

    @property
    def title(self) -> str:
        return f"train {self.model} seed {self.seed}"


@dataclass(frozen=True)
class EvaluateTask:
    """Evaluate one model's weights (as adapted) on some cells; its result is stored under `key`."""

    model: str  # the resolved model whose weights are evaluated
    label: str  # the name its rows are filed under (model+adaptation)
    adaptation: str
    seed: int
    cells: tuple[Cell, ...]
    weights: str  # the weights' identity: the training task's key, or the user checkpoint's SHA-256
    key: str
    images_planned: int  # images this model's weights go through in the whole plan (decides compiling)
    train: TrainTask | None = None  # the task that makes the weights; None for a user checkpoint
    # everything `key` digests (and where a user's weights file is), as its stored record names it;
    # the key alone decides equality
    identity: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def title(self) -> str:
        shown = self.cells[0].label if len(self.cells) == 1 else _cells_title(self.cells)
        return f"evaluate {self.label} seed {self.seed} {shown}"


def _cells_title(cells: Sequence[Cell]) -> str:
    severities = [c.severity for c in cells]
    return f"{cells[0].perturbation} s{min(severities)}-s{max(severities)}"


@dataclass(frozen=True)
class AdversaryTask:
    """Search one model's weights for each test image's worst case in one adversary's space."""

    model: str
    adversary: str  # the `adversaries:` entry's name
    seed: int
    weights: str  # as EvaluateTask's
    key: str
    forward_passes: int  # at most, before early exits: what `plan` shows as the cost
    train: TrainTask | None = None
    identity: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    adaptation: str = "none"  # or tta: the search goes through the test-time augmented model

    @property
    def label(self) -> str:
        """The name its rows are filed under: the model's, with `+tta` for a search through test-time augmentation."""
        return self.model if self.adaptation == "none" else f"{self.model}+{self.adaptation}"

    @property
    def title(self) -> str:
        return f"attack {self.label} seed {self.seed} {self.adversary} (at most {self.forward_passes:,} forward passes)"


@dataclass(frozen=True)
class TransferTask:
    """Evaluate one model's weights at the points another model's grid search found worst, image by image."""

    model: str  # the model evaluated
    seed: int
    adversary: str
    source: AdversaryTask  # whose worst points: another model's search with the same seed and adversary
    weights: str
    key: str
    train: TrainTask | None = None
    identity: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def label(self) -> str:
        return self.model

    @property
    def title(self) -> str:
        return f"transfer {self.adversary} seed {self.seed}: {self.model} at {self.source.model}'s worst points"


@dataclass
class Plan:
    """Every task of an experiment, in the order the local executor runs them."""

    train: list[TrainTask]
    evaluate: list[EvaluateTask]
    not_applicable: dict[str, dict[str, str]] = field(default_factory=dict)  # model -> adaptation -> why not
    attack: list[AdversaryTask] = field(default_factory=list)
    transfer: list[TransferTask] = field(default_factory=list)

    @property
    def tasks(self) -> list[TrainTask | EvaluateTask | AdversaryTask | TransferTask]:
        """Each model-seed's training, then its evaluations, then its adversaries; the transfers last (they read
        other models' searches)."""
        ordered: list[TrainTask | EvaluateTask | AdversaryTask] = []
        by_train: dict[TrainTask | None, list[EvaluateTask | AdversaryTask]] = {}
        for task in [*self.evaluate, *self.attack]:
            by_train.setdefault(task.train, []).append(task)
        for task in self.train:
            ordered += [task, *by_train.pop(task, [])]
        for rest in by_train.values():
            ordered += rest
        return [*ordered, *self.transfer]


def cell_groups(cells: Sequence[Cell]) -> list[tuple[Cell, ...]]:
    """One group per evaluation task: the clean cell alone, then each perturbation's severities."""
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.perturbation, []).append(cell)
    return [tuple(group) for group in groups.values()]


def build_plan(checked: CheckedExperiment, data_checksum: str, test_images: int) -> Plan:
    """The tasks of a checked experiment on data with `data_checksum`, evaluated on `test_images` images."""
    config, device = checked.config, checked.device
    groups = cell_groups(checked.cells)
    plan = Plan([], [])
    for resolved in checked.models:
        adaptations, skipped = _applicable(resolved, config)
        if skipped:
            plan.not_applicable[resolved.name] = skipped
        for seed in config.run_seeds:
            key = weights_key(resolved, data_checksum, seed, device)
            train = (
                None
                if key is None
                else TrainTask(resolved.name, seed, key.digest, checkpoint_path(key, config.cache_dir))
            )
            if train is not None:
                plan.train.append(train)
            weights = train.key if train is not None else _file_sha256(resolved.weights_file)
            for adaptation in adaptations:
                for group in groups:
                    identity = _evaluation_identity(
                        config, adaptation, seed, group, weights, data_checksum, test_images
                    )
                    identity.update(
                        device=device.type,
                        images_planned=test_images * len(checked.cells),
                        model=_model_identity(resolved),
                    )
                    key = _digest(identity)
                    if resolved.weights_file is not None:  # where `verify` finds the user's weights; not identity
                        kind = resolved.spec.outside_kind or "checkpoint"
                        identity["model"][kind] = str(resolved.weights_file.resolve())
                    plan.evaluate.append(
                        EvaluateTask(
                            model=resolved.name,
                            label=resolved.label(adaptation),
                            adaptation=adaptation,
                            seed=seed,
                            cells=group,
                            weights=weights,
                            key=key,
                            images_planned=test_images * len(checked.cells),
                            train=train,
                            identity=identity,
                        )
                    )
            plan.attack += _adversary_tasks(checked, resolved, seed, weights, train, data_checksum, test_images)
    plan.transfer = _transfer_tasks(plan.attack)
    return plan


def _transfer_tasks(attacks: list[AdversaryTask]) -> list[TransferTask]:
    """For every grid adversary and seed, each model at each other model's worst points (unadapted models)."""
    grids = [t for t in attacks if t.identity["adversary"]["search"] == "grid" and t.adaptation == "none"]
    tasks = []
    for source in grids:
        for target in grids:
            if (target.adversary, target.seed) != (source.adversary, source.seed) or target.model == source.model:
                continue
            identity = {**target.identity, "kind": "transfer", "source_key": source.key, "source_model": source.model}
            key = _digest(identity)
            tasks.append(TransferTask(target.model, target.seed, target.adversary, source, target.weights, key,
                                      target.train, identity))  # fmt: skip
    return tasks


# the code whose numerics decide an adversary's result, beside the evaluation's
_ADVERSARY_SOURCES = (_PACKAGE / "evaluation" / "adversary.py",)


def _adversary_tasks(
    checked: CheckedExperiment,
    resolved: ResolvedModel,
    seed: int,
    weights: str,
    train: TrainTask | None,
    data_checksum: str,
    test_images: int,
) -> list[AdversaryTask]:
    """One task per `adversaries:` entry for this model's weights with this seed: unadapted, and through test-time
    augmentation where the model has `tta` (bn and tent adapt to a whole cell, so a search per image means nothing
    for them)."""
    config, tasks = checked.config, []
    adaptations = [a for a in resolved.spec.adaptation or config.evaluation.adaptation if a in ("none", "tta")]
    for adaptation, spec in itertools.product(adaptations, config.adversaries):
        searched = min(spec.test_images or test_images, test_images)
        identity = _evaluation_identity(config, adaptation, seed, (), weights, data_checksum, searched)
        identity.pop("cells")
        identity.update(
            kind="adversary",
            # the images searched are the identity's test_images: the spec's own key stays out, so adversaries that
            # do not set it keep the keys they had before it existed
            adversary=spec.model_dump(mode="json", exclude={"test_images"}),
            device=checked.device.type,
            model=_model_identity(resolved),
            adversary_code=_digest_files(_ADVERSARY_SOURCES),
        )
        key = _digest(identity)
        passes = _forward_passes(spec, searched) * (config.evaluation.tta.copies if adaptation == "tta" else 1)
        identity["adversary_name"] = spec.name
        tasks.append(AdversaryTask(resolved.name, spec.name, seed, weights, key, passes, train, identity, adaptation))
    return tasks


def _forward_passes(spec: Any, test_images: int) -> int:
    """The most forward passes an adversary can spend on `test_images` images (early exits spend fewer)."""
    per_image = {
        "random": 1,
        "worst_of_k": spec.k or 1,
        "grid": spec.point_count(),
        "gradient": 1 + 2 * spec.steps * spec.restarts,
    }
    return test_images * (1 + per_image[spec.search])


def _model_identity(resolved: ResolvedModel) -> dict[str, Any]:
    """What builds the evaluated model: enough for `verify` to build it again from a registry name."""
    spec = resolved.spec
    identity = {
        "name": spec.name,
        "architecture": resolved.architecture,
        "kwargs": spec.kwargs,
        "factory": spec.factory,
    }
    if spec.outside_kind is not None:  # how the images reach the file's model decides its predictions too
        identity.update(spec.model_dump(mode="json", include={"layout", "channels", "normalize"}))
    return identity


def _applicable(resolved: ResolvedModel, config: ExperimentConfig) -> tuple[list[str], dict[str, str]]:
    """The model's adaptations that apply to it, and why each other one does not."""
    model = seeded_model(resolved, config.run_seeds[0])
    applicable, skipped = [], {}
    for adaptation in resolved.adaptations(config.evaluation.adaptation):
        reason = not_applicable(adaptation, model)
        if reason is None:
            applicable.append(adaptation)
        else:
            skipped[adaptation] = reason
    return applicable, skipped


def _evaluation_identity(
    config: ExperimentConfig,
    adaptation: str,
    seed: int,
    cells: Sequence[Cell],
    weights: str,
    data_checksum: str,
    test_images: int,
) -> dict[str, Any]:
    evaluation = config.evaluation
    identity: dict[str, Any] = {
        "format": EVALUATION_FORMAT,
        "weights": weights,
        "adaptation": adaptation,
        "seed": seed,
        "cells": [[c.perturbation, c.severity, c.parameter, c.name, c.backend] for c in cells],
        "data": data_checksum,
        "test_images": test_images,
        "batch_size": evaluation.batch_size,
        "precision": evaluation.precision,
        "channels_last": evaluation.channels_last,
        "compile": evaluation.compile,  # with images_planned, which decides whether auto compiles
        "code": _evaluation_code(),
    }
    if adaptation != "none":
        identity["settings"] = getattr(evaluation, adaptation).model_dump(mode="json")
    return identity


def _digest(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _evaluation_code() -> str:
    return _digest_files(_EVALUATION_SOURCES)


def _digest_files(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _file_sha256(path: Path | None) -> str:
    assert path is not None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()

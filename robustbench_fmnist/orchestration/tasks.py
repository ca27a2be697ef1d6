"""The bodies of the plan's tasks: what a worker runs, given everything it needs, returning the result.

They read no cache and write no file: the driver stores each result as it comes back, so a
task runs the same in this process or on a Ray worker on another machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from robustbench_fmnist.data import Split, to_float_images
from robustbench_fmnist.evaluation.adaptation import AdaptationSettings, averaged_over_copies
from robustbench_fmnist.evaluation.adversary import AdversaryOutputs, Search, search_space
from robustbench_fmnist.evaluation.inference import Compile, PreparedModel, prepare_for_inference
from robustbench_fmnist.evaluation.sweep import NO_PREDICTION, CellOutputs, evaluate_cells
from robustbench_fmnist.orchestration.plan import AdversaryTask, EvaluateTask, TrainTask, TransferTask
from robustbench_fmnist.perturbations.space import Space, perturb_at
from robustbench_fmnist.runtime import seed_everything
from robustbench_fmnist.training.checkpoints import state_sha256
from robustbench_fmnist.training.resolution import ResolvedModel
from robustbench_fmnist.training.weights import TrainedWeights, model_with, train_weights


@dataclass(frozen=True)
class Evaluation:
    """What an evaluation task observed: each cell's per-image outputs and seconds, in the task's cell order.

    No metric travels with it: assembly derives every one from the outputs and the true labels."""

    outputs: list[CellOutputs]
    cell_seconds: list[float]
    seconds: float
    compiled: bool
    weights_sha256: str  # of the weights evaluated, hashed where they were evaluated


@dataclass(frozen=True)
class EvaluationSettings:
    """What every evaluation task of a run shares: `evaluation:` of the config, and the device."""

    device: torch.device
    batch_size: int
    precision: str
    channels_last: bool
    compile: Compile
    adaptation: AdaptationSettings
    test_images: int
    show_progress: bool = True


def run_training(task: TrainTask, resolved: ResolvedModel, train: Split, device: torch.device) -> TrainedWeights:
    """Train the task's model with its seed."""
    seed_everything(task.seed)
    return train_weights(resolved, train, seed=task.seed, device=device, key=task.key)


# The model prepared for the last weights this process evaluated (by their SHA-256): the plan runs a model-seed's
# evaluations one after another, so compiling (seconds) is paid once per model and batch shape
_prepared: dict[tuple[str, str], PreparedModel] = {}  # at most one entry


def run_evaluation(
    task: EvaluateTask,
    resolved: ResolvedModel,
    state: dict[str, torch.Tensor],
    test: Split,
    settings: EvaluationSettings,
) -> Evaluation:
    """Evaluate the task's weights on its cells (adapted as the task says)."""
    started = time.perf_counter()
    device = settings.device
    # hashed here, where they are evaluated: the record is tied to these weights, whatever the plan expected,
    # and the prepared model is reused only for these very weights
    weights_sha256 = state_sha256(state)
    model = model_with(resolved, task.seed, state).eval()
    images = to_float_images(test.images[: settings.test_images], device)
    labels = test.labels[: settings.test_images]
    prepared = None
    if task.adaptation == "none":
        # the same weights file can be loaded into different architectures: both name the prepared model
        built = f"{resolved.architecture}|{sorted(resolved.spec.kwargs.items())}"
        how = f"{device}|{settings.precision}|{settings.channels_last}|{settings.compile}"
        identity = (weights_sha256, f"{built}|{how}")
        prepared = _prepared.get(identity)
        if prepared is None:
            _prepared.clear()
            prepared = prepare_for_inference(
                model,
                device,
                precision=settings.precision,
                channels_last=settings.channels_last,
                compile=settings.compile,
                images=task.images_planned,
            )
            _prepared[identity] = prepared
    results, outputs = evaluate_cells(
        model,
        task.label,
        images,
        labels,
        task.cells,
        device=device,
        seed=task.seed,
        batch_size=settings.batch_size,
        precision=settings.precision,
        channels_last=settings.channels_last,
        adaptation=task.adaptation,
        adaptation_settings=settings.adaptation,
        prepared=prepared,
        show_progress=settings.show_progress,
    )
    compiled = prepared is not None and prepared.compiled
    seconds = [r.seconds for r in results]
    outputs_in_order = [outputs[c] for c in task.cells]
    return Evaluation(outputs_in_order, seconds, time.perf_counter() - started, compiled, weights_sha256)


@dataclass(frozen=True)
class Attack:
    """What an adversary task observed: each image's verdicts and points (see evaluation/adversary.py)."""

    outputs: AdversaryOutputs
    seconds: float
    weights_sha256: str


def adversary_of(identity: dict) -> tuple[Space, Search]:
    """The space and search an adversary task's identity names."""
    spec = identity["adversary"]
    space = Space.of(spec["space"])
    search = Search(
        spec["search"], k=spec.get("k") or 1, images=spec["images"], steps=spec["steps"], restarts=spec["restarts"]
    )
    return space, search


def run_adversary(
    task: AdversaryTask,
    resolved: ResolvedModel,
    state: dict[str, torch.Tensor],
    test: Split,
    settings: EvaluationSettings,
) -> Attack:
    """Search the task's space for every test image's worst case under the task's weights."""
    started = time.perf_counter()
    weights_sha256 = state_sha256(state)
    prepared, images, labels = _eager_on_test(model_with(resolved, task.seed, state), test, settings, task.identity)
    if task.adaptation == "tta":  # every forward pass of the search goes through the k copies
        prepared = averaged_over_copies(prepared, settings.adaptation.tta)
    space, search = adversary_of(task.identity)
    outputs = search_space(
        prepared, images, labels, space, search, name=task.label, seed=task.seed, batch_size=settings.batch_size,
        show_progress=settings.show_progress,
    )  # fmt: skip
    if task.adaptation == "tta":
        outputs.forward_passes *= settings.adaptation.tta.copies  # the search counts the averaged model's calls
    return Attack(outputs, time.perf_counter() - started, weights_sha256)


def _eager_on_test(
    model: nn.Module, test: Split, settings: EvaluationSettings, identity: dict
) -> tuple[PreparedModel, torch.Tensor, torch.Tensor]:
    """The model prepared eager, and the task's test images (its identity's first N) on the device with their labels.

    Eager: a search's batches change size as images drop out, which a compiled model would recompile for."""
    prepared = prepare_for_inference(
        model.eval(), settings.device, precision=settings.precision, channels_last=settings.channels_last,
        compile="never",
    )  # fmt: skip
    count = int(identity["test_images"])  # an adversary's own `test_images`, else the evaluation's
    images = to_float_images(test.images[:count], settings.device)
    return prepared, images, test.labels[:count]


def run_on_weights(
    task: EvaluateTask | AdversaryTask,
    resolved: ResolvedModel,
    state: dict[str, torch.Tensor],
    test: Split,
    settings: EvaluationSettings,
) -> Evaluation | Attack:
    """An evaluation or an adversary task: both take trained weights and the test set."""
    if isinstance(task, AdversaryTask):
        return run_adversary(task, resolved, state, test, settings)
    return run_evaluation(task, resolved, state, test, settings)


@dataclass(frozen=True)
class Transfer:
    """What a transfer task observed: per image the point it was evaluated at and the class there."""

    points: torch.Tensor  # (N,) int32: the source's fooling point, else its lowest true-class probability
    predictions: torch.Tensor  # (N,) uint8
    seconds: float
    weights_sha256: str

    def tensors(self) -> dict[str, torch.Tensor]:
        """The observations as the record stores them."""
        return {"points": self.points, "predictions": self.predictions}


def worst_points(source: AdversaryOutputs, space: Space) -> torch.Tensor:
    """(N,) each image's worst point in a search: where it was fooled, else where its true class was least likely
    (the identity for an image no point was tried on: one wrong on the clean image)."""
    points = torch.where(source.fooling_point >= 0, source.fooling_point, source.worst_point).long()
    identity = space.identity_index if space.identity_index is not None else 0
    return torch.where(points >= 0, points, torch.full_like(points, identity))


def run_transfer(
    task: TransferTask,
    resolved: ResolvedModel,
    state: dict[str, torch.Tensor],
    source: AdversaryOutputs,
    test: Split,
    settings: EvaluationSettings,
) -> Transfer:
    """The task's model at the source search's worst point of every image (one forward pass each)."""
    started = time.perf_counter()
    prepared, images, labels = _eager_on_test(model_with(resolved, task.seed, state), test, settings, task.identity)
    space, _ = adversary_of(task.identity)
    points = worst_points(source, space)
    predictions = torch.empty(len(labels), dtype=torch.uint8)
    for first in range(0, len(labels), settings.batch_size):
        rows = torch.arange(first, min(first + settings.batch_size, len(labels)))
        batch = perturb_at(images[rows.to(settings.device)], space, space.points[points[rows]], seed=task.seed,
                           indices=rows)  # fmt: skip
        with torch.inference_mode():
            logits = prepared(batch)
        classes = logits.float().argmax(1).masked_fill(~torch.isfinite(logits).all(1), NO_PREDICTION)
        predictions[rows] = classes.to(torch.uint8).cpu()
    return Transfer(points.int(), predictions, time.perf_counter() - started, state_sha256(state))

"""The sweep: one model through every cell on the test set -> tidy rows and per-image outputs."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from robustbench_fmnist.config import BatchNormAdaptation, TentAdaptation
from robustbench_fmnist.evaluation.adaptation import ADAPTATIONS, AdaptationSettings
from robustbench_fmnist.evaluation.cells import Cell, perturb_cell
from robustbench_fmnist.evaluation.inference import Compile, PreparedModel, memory_format_of, prepare_for_inference
from robustbench_fmnist.models.output import check_logits
from robustbench_fmnist.progress import progress_bar

log = logging.getLogger(__name__)

NO_PREDICTION = 255  # the predicted class of an image whose logits hold NaN or inf: it has none


@dataclass
class CellResult:
    model: str
    perturbation: str
    severity: int
    parameter: float | None
    backend: str
    n_images: int
    n_correct: int
    accuracy: float
    error: float
    seconds: float
    nonfinite_images: int = 0  # images whose logits hold NaN or inf: above 0, the cell is invalid
    adaptation: str = "none"  # the test-time adaptation the predictions came from
    failed: str = ""  # why the cell's task failed (after its retries); empty when it ran

    @property
    def valid(self) -> bool:
        """Whether the cell has scores: its task ran and every image had finite logits."""
        return self.nonfinite_images == 0 and not self.failed

    def to_row(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class CellOutputs:
    """Per-image outputs of one model in one cell, on the CPU: what every metric is computed from."""

    predictions: torch.Tensor  # (N,) uint8 top-1 class, NO_PREDICTION where the logits were not finite
    confidence: torch.Tensor  # (N,) float32 top-1 softmax probability
    true_probability: torch.Tensor  # (N,) float32 softmax probability of the true class


def evaluate_cells(
    model: nn.Module,
    model_name: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    cells: Sequence[Cell],
    *,
    device: torch.device,
    seed: int = 0,
    batch_size: int = 1000,
    precision: str = "float32",
    channels_last: bool = True,
    adaptation: str = "none",
    adaptation_settings: AdaptationSettings | None = None,
    compile: Compile = "never",
    prepared: PreparedModel | None = None,
    show_progress: bool = True,
) -> tuple[list[CellResult], dict[Cell, CellOutputs]]:
    """Accuracy of `model` in every cell, plus its per-image outputs per cell (on the CPU).

    `images` are (N, 1, 28, 28) floats in [0, 1]; they are moved to `device` once and
    perturbed batch by batch there, so nothing is copied per cell. The model runs as
    `inference.prepare_for_inference` prepares it (`compile` as there), or as `prepared` when
    given (prepared once for several calls: compiling is paid once). With an `adaptation` other
    than none, each cell's images are perturbed whole and the adaptation predicts them, starting
    from `model`'s own weights in every cell.
    """
    memory_format = memory_format_of(channels_last)
    adapt = ADAPTATIONS.get(adaptation).predict
    settings = adaptation_settings or AdaptationSettings(BatchNormAdaptation(), TentAdaptation())
    settings = replace(settings, batch_size=batch_size, memory_format=memory_format)
    count = len(labels)
    if adapt is None and prepared is None:
        images_planned = count * len(cells)
        prepared = prepare_for_inference(
            model, device, precision=precision, channels_last=channels_last, compile=compile, images=images_planned
        )
    # adaptations start from this unadapted copy in every cell; the caller's model is not touched
    source = None if adapt is None else copy.deepcopy(model).to(device=device, memory_format=memory_format).eval()
    images, labels = images.to(device), labels.to(device)
    batches = range(0, count, batch_size)
    results: list[CellResult] = []
    outputs: dict[Cell, CellOutputs] = {}

    def perturbed(cell: Cell, first: int) -> torch.Tensor:
        batch = images[first : first + batch_size]
        if not cell.is_clean:
            indices = torch.arange(first, first + len(batch), device=device)
            batch = perturb_cell(cell, batch, seed=seed, indices=indices)
        return batch.contiguous(memory_format=memory_format)

    bar = progress_bar(len(cells) * len(batches), f"eval {model_name}", unit="batch", enabled=show_progress)
    with bar, torch.inference_mode():
        for cell in cells:
            start = time.perf_counter()
            scores = _CellScores(count, labels)
            if prepared is not None:
                for first in batches:
                    scores.add(first, prepared(perturbed(cell, first)), model_name)
                    bar.update(1)
            else:
                cell_logits = adapt(source, torch.cat([perturbed(cell, first) for first in batches]), settings)
                for first in batches:
                    scores.add(first, cell_logits[first : first + batch_size], model_name)
                    bar.update(1)
            correct = int((scores.predicted == labels).sum())
            invalid = int(scores.nonfinite)
            if invalid:
                log.warning(
                    "%s seed %d %s s%d: %d of %d images gave NaN or infinite logits; the cell is marked invalid",
                    model_name,
                    seed,
                    cell.perturbation,
                    cell.severity,
                    invalid,
                    count,
                )
            outputs[cell] = CellOutputs(scores.predicted.cpu(), scores.confidence.cpu(), scores.true_probability.cpu())
            results.append(
                CellResult(
                    model=model_name,
                    perturbation=cell.perturbation,
                    severity=cell.severity,
                    parameter=cell.parameter,
                    backend="" if cell.is_clean else cell.backend,
                    n_images=count,
                    n_correct=correct,
                    accuracy=correct / count,
                    error=1.0 - correct / count,
                    seconds=time.perf_counter() - start,
                    nonfinite_images=invalid,
                    adaptation=adaptation,
                )
            )
            shown = "invalid" if invalid else f"{correct / count:.3f}"
            bar.set_postfix(last=f"{cell.perturbation}/{cell.severity}", acc=shown)
    return results, outputs


class _CellScores:
    """Per-image predictions of one cell, filled batch by batch on the device."""

    def __init__(self, count: int, labels: torch.Tensor) -> None:
        device = labels.device
        self.labels = labels
        self.predicted = torch.empty(count, dtype=torch.uint8, device=device)
        self.confidence = torch.empty(count, dtype=torch.float32, device=device)
        self.true_probability = torch.empty(count, dtype=torch.float32, device=device)
        # counted on the device, read once per cell: a NaN must never be scored as a class
        self.nonfinite = torch.zeros((), dtype=torch.long, device=device)

    def add(self, first: int, logits: torch.Tensor, model_name: str) -> None:
        """Score the logits of the images first.. of the cell."""
        check_logits(logits, len(logits), model_name)
        unusable = (~torch.isfinite(logits)).any(1)
        self.nonfinite += unusable.sum()
        # softmax in float32 whatever the autocast dtype: calibration needs the precision
        probabilities = logits.float().softmax(1)
        top, classes = probabilities.max(1)
        rows = slice(first, first + len(logits))
        self.predicted[rows] = classes.masked_fill_(unusable, NO_PREDICTION)
        self.confidence[rows] = top
        self.true_probability[rows] = probabilities.gather(1, self.labels[rows].long().unsqueeze(1)).squeeze(1)

"""The sweep: one model through every cell on the test set -> tidy rows and per-image outputs."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from robustbench_fmnist.config import BatchNormAdaptation, TentAdaptation
from robustbench_fmnist.data import CLASS_NAMES
from robustbench_fmnist.evaluation.adaptation import ADAPTATIONS, AdaptationSettings, Predict
from robustbench_fmnist.evaluation.cells import Cell, perturb_cell
from robustbench_fmnist.evaluation.inference import Compile, PreparedModel, memory_format_of, prepare_for_inference
from robustbench_fmnist.models.output import check_logits
from robustbench_fmnist.perturbations.registry import check_images
from robustbench_fmnist.progress import progress_bar

if TYPE_CHECKING:
    from tqdm.auto import tqdm

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
    image_indices: torch.Tensor | None = None,
) -> tuple[list[CellResult], dict[Cell, CellOutputs]]:
    """Accuracy of `model` in every cell, plus its per-image outputs per cell (on the CPU).

    `images` are (N, 1, 28, 28) floats in [0, 1]; they are moved to `device` once and
    perturbed batch by batch there, so nothing is copied per cell. The model runs as
    `inference.prepare_for_inference` prepares it (`compile` as there), or as `prepared` when
    given (prepared once for several calls: compiling is paid once). With an `adaptation` other
    than none, each cell's images are perturbed whole and the adaptation predicts them, starting
    from `model`'s own weights in every cell. `image_indices` are the images' positions in the test
    set (default 0..N-1): a perturbation's random draws are keyed by them, so a sample of the test
    set is perturbed exactly as the whole set's sweep perturbs those images.
    """
    check_sweep_inputs(model, images, labels, image_indices)
    memory_format = memory_format_of(channels_last)
    adapt = ADAPTATIONS.get(adaptation).predict
    settings = adaptation_settings or AdaptationSettings(BatchNormAdaptation(), TentAdaptation())
    settings = replace(settings, batch_size=batch_size, memory_format=memory_format)
    if adapt is None and prepared is None:
        images_planned = len(labels) * len(cells)
        prepared = prepare_for_inference(
            model, device, precision=precision, channels_last=channels_last, compile=compile, images=images_planned
        )
    # adaptations start from this unadapted copy in every cell; the caller's model is not touched
    source = None if adapt is None else copy.deepcopy(model).to(device=device, memory_format=memory_format).eval()
    sweep = _Sweep(
        model_name=model_name,
        adaptation=adaptation,
        images=images.to(device),
        labels=labels.to(device),
        image_indices=(torch.arange(len(labels)) if image_indices is None else image_indices).to(device),
        device=device,
        seed=seed,
        batch_size=batch_size,
        memory_format=memory_format,
        prepared=prepared,
        adapt=adapt,
        source=source,
        settings=settings,
    )
    return sweep.run(cells, show_progress=show_progress)


def check_sweep_inputs(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, image_indices: torch.Tensor | None = None
) -> None:
    """ValueError, one line naming the problem and the fix, for inputs the sweep would crash on or score wrong."""
    check_images(images)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise ValueError("the model's weights are on the meta device (no values); load real weights before evaluating")
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.is_floating_point():
        shown = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a 1-D integer tensor of class indices, got {shown}")
    if len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} images; give one label per image")
    classes = len(CLASS_NAMES)
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        low, high = int(labels.min()), int(labels.max())
        raise ValueError(f"labels range over {low}..{high}; Fashion-MNIST's classes are 0..{classes - 1}")
    if image_indices is not None and len(image_indices) != len(images):
        raise ValueError(f"{len(image_indices)} image indices for {len(images)} images; give one per image")


def cell_result(
    model_name: str, cell: Cell, outputs: CellOutputs, labels: torch.Tensor, seconds: float, adaptation: str
) -> CellResult:
    """A cell's row derived from its per-image outputs and the true labels: the one way every count is made."""
    predictions = outputs.predictions.to(labels.device)
    count = len(labels)
    # NO_PREDICTION never equals a label, so an image without a prediction counts as not correct
    correct = int((predictions.long() == labels.long()).sum())
    return CellResult(
        model=model_name,
        perturbation=cell.perturbation,
        severity=cell.severity,
        parameter=cell.parameter,
        backend="" if cell.is_clean else cell.backend,
        n_images=count,
        n_correct=correct,
        accuracy=correct / count,
        error=1.0 - correct / count,
        seconds=seconds,
        nonfinite_images=int((predictions == NO_PREDICTION).sum()),
        adaptation=adaptation,
    )


@dataclass
class _Sweep:
    """What one `evaluate_cells` call shares across its cells: the test set on the device and how to predict."""

    model_name: str
    adaptation: str
    images: torch.Tensor  # on `device`
    labels: torch.Tensor  # on `device`
    image_indices: torch.Tensor  # on `device`: each image's position in the test set
    device: torch.device
    seed: int
    batch_size: int
    memory_format: torch.memory_format
    prepared: PreparedModel | None  # predicts batch by batch; None where the adaptation predicts
    adapt: Predict | None  # predicts a whole cell at once, starting from `source`
    source: nn.Module | None
    settings: AdaptationSettings

    @property
    def batches(self) -> range:
        """The first image of every batch."""
        return range(0, len(self.labels), self.batch_size)

    def run(self, cells: Sequence[Cell], *, show_progress: bool) -> tuple[list[CellResult], dict[Cell, CellOutputs]]:
        """Every cell's row and per-image outputs, in the order of `cells`."""
        results: list[CellResult] = []
        outputs: dict[Cell, CellOutputs] = {}
        total = len(cells) * len(self.batches)
        bar = progress_bar(total, f"eval {self.model_name}", unit="batch", enabled=show_progress)
        with bar, torch.inference_mode():
            for cell in cells:
                result, outputs[cell] = self.evaluate(cell, bar)
                results.append(result)
                shown = "invalid" if result.nonfinite_images else f"{result.accuracy:.3f}"
                bar.set_postfix(last=f"{cell.perturbation}/{cell.severity}", acc=shown)
        return results, outputs

    def evaluate(self, cell: Cell, bar: tqdm) -> tuple[CellResult, CellOutputs]:
        """The cell's row and its per-image outputs (on the CPU); NaN or infinite logits mark it invalid."""
        start = time.perf_counter()
        scores = self._scores(cell, bar)
        count = len(self.labels)
        invalid = int(scores.nonfinite)
        if invalid:
            log.warning(
                "%s seed %d %s s%d: %d of %d images gave NaN or infinite logits; the cell is marked invalid",
                self.model_name,
                self.seed,
                cell.perturbation,
                cell.severity,
                invalid,
                count,
            )
        outputs = CellOutputs(scores.predicted.cpu(), scores.confidence.cpu(), scores.true_probability.cpu())
        seconds = time.perf_counter() - start
        return cell_result(self.model_name, cell, outputs, self.labels, seconds, self.adaptation), outputs

    def _scores(self, cell: Cell, bar: tqdm) -> _CellScores:
        """The cell's predictions, batch by batch, or from the adaptation over the whole cell at once."""
        scores = _CellScores(len(self.labels), self.labels)
        if self.prepared is not None:
            for first in self.batches:
                scores.add(first, self.prepared(self._perturbed(cell, first)), self.model_name)
                bar.update(1)
        else:
            whole = torch.cat([self._perturbed(cell, first) for first in self.batches])
            cell_logits = self.adapt(self.source, whole, self.settings)
            for first in self.batches:
                scores.add(first, cell_logits[first : first + self.batch_size], self.model_name)
                bar.update(1)
        return scores

    def _perturbed(self, cell: Cell, first: int) -> torch.Tensor:
        """The batch of images first.. as the cell shows them, in the model's memory layout."""
        batch = self.images[first : first + self.batch_size]
        if not cell.is_clean:
            indices = self.image_indices[first : first + len(batch)]
            batch = perturb_cell(cell, batch, seed=self.seed, indices=indices)
        return batch.contiguous(memory_format=self.memory_format)


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

"""One model's sweep as the tidy rows of the report's files, every metric from metrics.py."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from robustbench_fmnist.evaluation.cells import Cell
from robustbench_fmnist.evaluation.metrics import (
    calibration_bins,
    confusion_matrix,
    expected_calibration_error,
    flip_rate,
    negative_log_likelihood,
    per_class_accuracy,
    wilson_interval,
)
from robustbench_fmnist.evaluation.sweep import CellOutputs, CellResult

# what an invalid cell (NaN or infinite logits, or a task that failed) leaves empty in results.csv
UNSCORED = (
    "n_correct",
    "accuracy",
    "error",
    "accuracy_low",
    "accuracy_high",
    "flip_rate",
    "flip_rate_step",
    "ece",
    "mean_confidence",
    "nll",
)


@dataclass
class ScoredCells:
    """The tidy rows one model's sweep produces, one list per report file."""

    results: list[dict[str, object]] = field(default_factory=list)  # results.csv
    per_class: list[dict[str, object]] = field(default_factory=list)  # per_class.csv
    confusion: list[dict[str, object]] = field(default_factory=list)  # confusion.csv (non-zero cells)
    calibration: list[dict[str, object]] = field(default_factory=list)  # calibration.csv
    # outcomes.npz: ((model, seed, perturbation, severity), per-image correct), for paired tests
    outcomes: list[tuple[tuple[str, int, str, int], torch.Tensor]] = field(default_factory=list)

    def extend(self, other: ScoredCells) -> None:
        for name in ("results", "per_class", "confusion", "calibration", "outcomes"):
            getattr(self, name).extend(getattr(other, name))


def score_cells(
    results: Sequence[CellResult],
    outputs: dict[Cell, CellOutputs],
    cells: Sequence[Cell],
    labels: torch.Tensor,
    *,
    seed: int,
    class_names: Sequence[str],
) -> ScoredCells:
    """Every metric of every cell of one model: `cells` in sweep order, clean first.

    flip_rate compares with the clean predictions; flip_rate_step with the previous severity
    of the same perturbation (the clean ones for its first).
    """
    scored = ScoredCells()
    labels = labels.cpu()
    clean = outputs[cells[0]].predictions if results[0].valid else None
    previous: dict[str, torch.Tensor] = {}
    for cell, result in zip(cells, results, strict=True):
        key = {"model": result.model, "seed": seed, "perturbation": cell.perturbation, "severity": cell.severity}
        row = {**key, **{k: v for k, v in result.to_row().items() if k not in key}}
        out = outputs.get(cell)  # a failed cell has no outputs
        if out is not None:
            # NO_PREDICTION never equals a label, so an image without a prediction counts as not correct
            scored.outcomes.append((tuple(key.values()), out.predictions.long() == labels.long()))
        if not result.valid:
            # NaN logits have no class: nothing about this cell is scored (REFERENCE: never an accuracy)
            row.update({column: math.nan for column in UNSCORED})
            scored.results.append(row)
            scored.per_class += _unscored_per_class(key, labels, class_names)
            continue
        confusion = confusion_matrix(out.predictions, labels, len(class_names))
        bins = calibration_bins(out.confidence, out.predictions.long() == labels.long())
        low, high = wilson_interval(result.n_correct, result.n_images)
        against_clean, against_previous = _flip_rates(cell, out.predictions, clean, previous)
        row.update(
            accuracy_low=low,
            accuracy_high=high,
            flip_rate=against_clean,
            flip_rate_step=against_previous,
            ece=expected_calibration_error(bins),
            mean_confidence=float(out.confidence.double().mean()),
            nll=negative_log_likelihood(out.true_probability),
        )
        previous[cell.perturbation] = out.predictions
        scored.results.append(row)
        scored.per_class += _per_class_rows(key, confusion, class_names)
        scored.confusion += _confusion_rows(key, confusion, class_names)
        scored.calibration += [{**key, **bin_row} for bin_row in bins.to_dict("records")]
    return scored


def _flip_rates(
    cell: Cell, predictions: torch.Tensor, clean: torch.Tensor | None, previous: dict[str, torch.Tensor]
) -> tuple[float, float]:
    """The cell's flip rate against the clean predictions and against its perturbation's previous severity.

    NaN for the clean cell, and where what it is compared with has no valid predictions (`clean` None).
    """
    if cell.is_clean:
        return math.nan, math.nan
    before = previous.get(cell.perturbation, clean)
    against_clean = flip_rate(predictions, clean) if clean is not None else math.nan
    against_previous = flip_rate(predictions, before) if before is not None else math.nan
    return against_clean, against_previous


def _unscored_per_class(
    key: dict[str, object], labels: torch.Tensor, class_names: Sequence[str]
) -> list[dict[str, object]]:
    """per_class.csv rows of an invalid cell: how many images each class has, nothing scored."""
    images = torch.bincount(labels.long(), minlength=len(class_names)).tolist()
    return [
        {**key, "class": name, "n_images": images[c], "n_correct": math.nan, "accuracy": math.nan}
        for c, name in enumerate(class_names)
    ]


def _per_class_rows(
    key: dict[str, object], confusion: torch.Tensor, class_names: Sequence[str]
) -> list[dict[str, object]]:
    """per_class.csv rows of a scored cell; accuracy NaN for a class without images."""
    images, hits = per_class_accuracy(confusion)
    return [
        {
            **key,
            "class": name,
            "n_images": images[c],
            "n_correct": hits[c],
            "accuracy": hits[c] / images[c] if images[c] else math.nan,
        }
        for c, name in enumerate(class_names)
    ]


def _confusion_rows(
    key: dict[str, object], confusion: torch.Tensor, class_names: Sequence[str]
) -> list[dict[str, object]]:
    """confusion.csv rows of a scored cell: its non-zero (true, predicted) counts."""
    return [
        {
            **key,
            "true": class_names[true],
            "predicted": class_names[predicted],
            "count": int(confusion[true, predicted]),
        }
        for true, predicted in confusion.nonzero().tolist()
    ]

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
    classes = len(class_names)
    clean_valid = results[0].valid
    clean = outputs[cells[0]].predictions if clean_valid else None
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
            images = torch.bincount(labels.long(), minlength=classes).tolist()
            scored.per_class += [
                {**key, "class": name, "n_images": images[c], "n_correct": math.nan, "accuracy": math.nan}
                for c, name in enumerate(class_names)
            ]
            continue
        confusion = confusion_matrix(out.predictions, labels, classes)
        images, hits = per_class_accuracy(confusion)
        correct = out.predictions.long() == labels.long()
        bins = calibration_bins(out.confidence, correct)
        low, high = wilson_interval(result.n_correct, result.n_images)
        row.update(
            accuracy_low=low,
            accuracy_high=high,
            flip_rate=flip_rate(out.predictions, clean) if not cell.is_clean and clean_valid else math.nan,
            flip_rate_step=flip_rate(out.predictions, previous.get(cell.perturbation, clean))
            if not cell.is_clean and (cell.perturbation in previous or clean_valid)
            else math.nan,
            ece=expected_calibration_error(bins),
            mean_confidence=float(out.confidence.double().mean()),
            nll=negative_log_likelihood(out.true_probability),
        )
        previous[cell.perturbation] = out.predictions
        scored.results.append(row)
        for c, name in enumerate(class_names):
            accuracy = hits[c] / images[c] if images[c] else math.nan
            scored.per_class.append(
                {**key, "class": name, "n_images": images[c], "n_correct": hits[c], "accuracy": accuracy}
            )
        for true, predicted in confusion.nonzero().tolist():
            scored.confusion.append(
                {
                    **key,
                    "true": class_names[true],
                    "predicted": class_names[predicted],
                    "count": int(confusion[true, predicted]),
                }
            )
        scored.calibration += [{**key, **bin_row} for bin_row in bins.to_dict("records")]
    return scored

"""Robustness metrics, as defined in REFERENCE.md: per cell from predictions, aggregated from rows.

Per-image inputs are 1-D tensors over the test set: predicted class, top-1 confidence and the
probability given to the true class. Aggregates (CE, mCE, area under the curve) are computed
from the tidy rows of results.csv, so a report re-rendered from that file gets the same numbers.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch

from robustbench_fmnist.evaluation import Cell, CellOutputs, CellResult

CALIBRATION_BINS = 15  # Ovadia et al. (2019)
Z95 = 1.959963984540054  # two-sided 95 % normal quantile
_NLL_FLOOR = 1e-12  # a probability the softmax rounded to 0 costs -log(1e-12) = 27.6 nats, not infinity


def wilson_interval(correct: int, total: int, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval for a proportion correct / total (stays inside [0, 1])."""
    if total <= 0:
        return math.nan, math.nan
    p = correct / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def calibration_bins(confidence: torch.Tensor, correct: torch.Tensor, bins: int = CALIBRATION_BINS) -> pd.DataFrame:
    """Equal-width bins on the top-1 confidence: count, accuracy and mean confidence in each.

    Bin b holds confidences in (b/B, (b+1)/B]; a confidence of exactly 0 falls in the first.
    """
    confidence = confidence.double().flatten()
    correct = correct.double().flatten()
    finite = torch.isfinite(confidence)  # a NaN confidence (NaN logits) belongs to no bin
    confidence, correct = confidence[finite], correct[finite]
    index = (confidence * bins).ceil().long().sub_(1).clamp_(0, bins - 1)
    count = torch.bincount(index, minlength=bins).double()
    hits = torch.bincount(index, weights=correct, minlength=bins)
    total_confidence = torch.bincount(index, weights=confidence, minlength=bins)
    safe = count.clamp(min=1)
    return pd.DataFrame(
        {
            "bin": range(bins),
            "lower": [b / bins for b in range(bins)],
            "upper": [(b + 1) / bins for b in range(bins)],
            "count": count.long().tolist(),
            "accuracy": torch.where(count > 0, hits / safe, torch.nan).tolist(),
            "confidence": torch.where(count > 0, total_confidence / safe, torch.nan).tolist(),
        }
    )


def expected_calibration_error(bins: pd.DataFrame) -> float:
    """ECE = sum over bins of |B_b| / N * |accuracy(B_b) - confidence(B_b)| (from `calibration_bins`)."""
    filled = bins[bins["count"] > 0]
    total = filled["count"].sum()
    if total == 0:
        return math.nan
    return float((filled["count"] / total * (filled["accuracy"] - filled["confidence"]).abs()).sum())


def negative_log_likelihood(true_probability: torch.Tensor) -> float:
    """Mean -log p(true class), in nats."""
    return float(-true_probability.double().clamp(min=_NLL_FLOOR).log().mean())


def flip_rate(predictions: torch.Tensor, reference: torch.Tensor) -> float:
    """Share of images whose prediction differs from the reference prediction (e.g. the clean one)."""
    return float((predictions != reference).double().mean())


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """(classes, classes) int64 counts, rows the true class, columns the predicted one."""
    index = labels.long() * classes + predictions.long()
    return torch.bincount(index, minlength=classes * classes).view(classes, classes)


def per_class_accuracy(confusion: torch.Tensor) -> tuple[list[int], list[int]]:
    """(images, correct) per true class, from a confusion matrix."""
    return confusion.sum(1).tolist(), confusion.diagonal().tolist()


def area_under_curve(
    clean_accuracy: float, accuracies: Sequence[float], severities: Sequence[float] | None = None
) -> float:
    """Normalised area under accuracy vs severity, clean at severity 0 (trapezoids over the
    severities given, default 1, 2, ...; divided by the last), so 1 = no loss at 100 %."""
    xs = [0.0, *(severities if severities is not None else range(1, len(accuracies) + 1))]
    ys = [clean_accuracy, *accuracies]
    if len(ys) < 2 or xs[-1] <= 0:
        return math.nan
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in itertools.pairwise(zip(xs, ys, strict=True)))
    return area / xs[-1]


def corruption_errors(summary: pd.DataFrame, reference: str) -> pd.DataFrame:
    """CE and relative CE of every model on every perturbation, normalised by `reference`.

    `summary` has one row per (model, perturbation) with `error_sum` (sum over severities of the
    error) and `clean_error_sum` (the clean error times the number of severities). Following
    Hendrycks & Dietterich (2019): CE = sum_s E(f, c, s) / sum_s E(ref, c, s), relative
    CE = sum_s (E(f, c, s) - E(f, clean)) / sum_s (E(ref, c, s) - E(ref, clean)). A perturbation
    the reference does not lose on (zero denominator) gives NaN rather than infinity.
    """
    ref = summary[summary["model"] == reference].set_index("perturbation")
    out = summary[["model", "perturbation"]].copy()
    ref_error = summary["perturbation"].map(ref["error_sum"])
    ref_gap = summary["perturbation"].map(ref["error_sum"] - ref["clean_error_sum"])
    out["ce"] = summary["error_sum"] / ref_error.where(ref_error > 0)
    out["relative_ce"] = (summary["error_sum"] - summary["clean_error_sum"]) / ref_gap.where(ref_gap > 0)
    return out


def mean_corruption_errors(ce: pd.DataFrame) -> pd.DataFrame:
    """mCE and relative mCE per model: the mean of CE over perturbations (NaN ones left out)."""
    grouped = ce.groupby("model", sort=False)
    return grouped.agg(mce=("ce", "mean"), relative_mce=("relative_ce", "mean")).reset_index()


# what an invalid cell (NaN or infinite logits) leaves empty in results.csv
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
    clean = outputs[cells[0]].predictions
    previous: dict[str, torch.Tensor] = {}
    for cell, result in zip(cells, results, strict=True):
        out = outputs[cell]
        key = {"model": result.model, "seed": seed, "perturbation": cell.perturbation, "severity": cell.severity}
        row = {**key, **{k: v for k, v in result.to_row().items() if k not in key}}
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
        clean_valid = results[0].valid
        row.update(
            accuracy_low=low,
            accuracy_high=high,
            flip_rate=flip_rate(out.predictions, clean) if cell.name is not None and clean_valid else math.nan,
            flip_rate_step=flip_rate(out.predictions, previous.get(cell.perturbation, clean))
            if cell.name is not None and (cell.perturbation in previous or clean_valid)
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

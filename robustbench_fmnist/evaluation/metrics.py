"""Robustness metrics, as defined in REFERENCE.md: pure functions, per cell from predictions, aggregated from rows.

scoring.py turns one model's sweep into the rows of the report's files with these functions.

Per-image inputs are 1-D tensors over the test set: predicted class, top-1 confidence and the
probability given to the true class. Aggregates (CE, mCE, area under the curve) are computed
from the tidy rows of results.csv, so a report re-rendered from that file gets the same numbers.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import pandas as pd
import torch

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

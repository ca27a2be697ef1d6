"""The worst case per image: error consistency between models, statistics over a space's orbit, the robustness curve.

Pure functions over CPU tensors, no I/O. Error consistency is Geirhos et al. (2020), "Beyond accuracy:
quantifying trial-by-trial behaviour of CNNs and humans by measuring error consistency", as REFERENCE.md
defines it. Orbit statistics take the class predicted for S images at every one of a space's P points,
(S, P) uint8, where NO_PREDICTION (255) marks non-finite logits: it is never right and never consistent.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from robustbench_fmnist.evaluation.metrics import wilson_interval

NO_PREDICTION = 255  # the evaluator's class for non-finite logits
BOOTSTRAP_LEVEL = 0.95
MATRIX_COLUMNS = [
    "model_a",
    "model_b",
    "kappa",
    "kappa_low",
    "kappa_high",
    "c_obs",
    "c_exp",
    "accuracy_a",
    "accuracy_b",
    "n_images",
]
CURVE_COLUMNS = ["budget", "accuracy", "n_correct", "n_images", "accuracy_low", "accuracy_high"]


def _correctness(correct: torch.Tensor, name: str) -> torch.Tensor:
    if correct.dtype != torch.bool or correct.dim() != 1:
        raise ValueError(
            f"{name} must be a 1-D bool tensor (right or wrong per image), got {correct.dtype} {tuple(correct.shape)}"
        )
    return correct


def _kappa_from_counts(
    both_right: np.ndarray, a_only: np.ndarray, b_only: np.ndarray, both_wrong: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kappa, c_obs, c_exp) from the 2x2 table of right/wrong counts; kappa NaN where c_exp == 1."""
    n = both_right + a_only + b_only + both_wrong
    right_a, right_b = both_right + a_only, both_right + b_only
    c_obs = (both_right + both_wrong) / n
    c_exp = (right_a * right_b + (n - right_a) * (n - right_b)) / (n * n)
    # 1 - c_exp from the counts, not by subtraction: it is exactly 0 only when both models are all
    # right or both all wrong, never a rounding residue that would blow kappa up
    spread = (right_a * (n - right_b) + right_b * (n - right_a)) / (n * n)
    # c_obs - c_exp = (1 - c_exp) - disagreement, so kappa = 1 - disagreement / (1 - c_exp): exactly 1
    # when the models never disagree (also in every resample)
    disagreement = (a_only + b_only) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = np.where(spread > 0, 1 - disagreement / np.where(spread > 0, spread, 1.0), np.nan)
    return kappa, c_obs, c_exp


def error_consistency(
    correct_a: torch.Tensor, correct_b: torch.Tensor, *, seed: int = 0, resamples: int = 1000
) -> dict[str, float | int]:
    """Geirhos et al.'s error consistency of two models on the same images, with a 95 % bootstrap interval.

    kappa = (c_obs - c_exp) / (1 - c_exp): c_obs the share of images both models get right or both
    wrong, c_exp = p1*p2 + (1-p1)*(1-p2) what independent errors at accuracies p1, p2 would give.
    kappa is NaN when c_exp == 1, i.e. both models are all right or both all wrong: with no errors
    (or no successes) to compare, consistency is undefined. kappa_low and kappa_high are the 2.5 and
    97.5 percentiles of kappa over `resamples` resamplings of the images (percentile bootstrap).
    """
    correct_a, correct_b = _correctness(correct_a, "correct_a"), _correctness(correct_b, "correct_b")
    if correct_a.numel() != correct_b.numel():
        raise ValueError(f"error consistency needs the same images: {correct_a.numel()} vs {correct_b.numel()} results")
    n = correct_a.numel()
    a, b = correct_a.cpu().numpy(), correct_b.cpu().numpy()
    table = np.array([(a & b).sum(), (a & ~b).sum(), (~a & b).sum(), (~a & ~b).sum()], dtype=np.int64)
    result: dict[str, float | int] = {
        "kappa": math.nan,
        "kappa_low": math.nan,
        "kappa_high": math.nan,
        "c_obs": math.nan,
        "c_exp": math.nan,
        "accuracy_a": float(a.mean()) if n else math.nan,
        "accuracy_b": float(b.mean()) if n else math.nan,
        "n_images": n,
    }
    if n == 0:
        return result
    kappa, c_obs, c_exp = _kappa_from_counts(*table.astype(np.float64))
    result.update(kappa=float(kappa), c_obs=float(c_obs), c_exp=float(c_exp))
    if math.isnan(result["kappa"]) or resamples < 1:
        return result
    # Resampling N images with replacement only changes kappa through the 2x2 table, and the table
    # of a resample is multinomial(N, observed shares): drawing the table directly is the same
    # percentile bootstrap over images, in O(resamples) instead of O(resamples * N)
    draws = np.random.default_rng(seed).multinomial(n, table / n, size=resamples).astype(np.float64)
    boot, _, _ = _kappa_from_counts(draws[:, 0], draws[:, 1], draws[:, 2], draws[:, 3])
    tail = 100 * (1 - BOOTSTRAP_LEVEL) / 2
    if np.isfinite(boot).any():  # a resample may hold only agreeing images of one kind (tiny N): undefined, left out
        low, high = np.nanpercentile(boot, [tail, 100 - tail])
        result.update(kappa_low=float(low), kappa_high=float(high))
    return result


def consistency_matrix(correct: dict[str, torch.Tensor], *, seed: int = 0, resamples: int = 1000) -> pd.DataFrame:
    """Error consistency of every unordered pair of models (a before b in the dict's order), one row per pair."""
    lengths = {name: int(t.numel()) for name, t in correct.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name} {count}" for name, count in lengths.items())
        raise ValueError(f"error consistency needs every model on the same images; results per model: {listed}")
    rows = [
        # the same seed for every pair: a pair's interval does not change when models are added or removed
        {"model_a": a, "model_b": b, **error_consistency(correct[a], correct[b], seed=seed, resamples=resamples)}
        for a, b in itertools.combinations(correct, 2)
    ]
    return pd.DataFrame(rows, columns=MATRIX_COLUMNS)


def _orbit(predictions: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """The (S, P) predictions as int64, checked against the labels' length."""
    if predictions.dim() != 2:
        raise ValueError(f"orbit predictions must be (images, points), got shape {tuple(predictions.shape)}")
    if labels is not None and (labels.dim() != 1 or labels.numel() != predictions.shape[0]):
        raise ValueError(f"{predictions.shape[0]} images in the predictions but labels of shape {tuple(labels.shape)}")
    return predictions.long()


def _wrong(predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(S, P) bool: the prediction at the point is not the label (NO_PREDICTION is never a label, so wrong)."""
    return _orbit(predictions, labels) != labels.long().unsqueeze(1)


def orbit_consistency(predictions: torch.Tensor) -> float:
    """Share of images predicted as one class at every point of the space, right or wrong (NaN for no images)."""
    predictions = _orbit(predictions)
    if predictions.shape[0] == 0:
        return math.nan
    same = (predictions == predictions[:, :1]).all(dim=1)
    # an image without a prediction somewhere was not classified consistently, even if all of it is 255
    answered = (predictions != NO_PREDICTION).all(dim=1)
    return float((same & answered).double().mean())


def fooled_share_per_image(predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(S,) float64: per image, the share of the space's points where its prediction is wrong."""
    return _wrong(predictions, labels).double().mean(dim=1)


def fooling_rate_per_point(
    predictions: torch.Tensor, labels: torch.Tensor, clean_correct: torch.Tensor
) -> torch.Tensor:
    """(P,) float64: per point, the share of the images right clean that it makes wrong (NaN if none is right clean)."""
    wrong = _wrong(predictions, labels)
    clean_correct = _correctness(clean_correct, "clean_correct")
    if clean_correct.numel() != wrong.shape[0]:
        raise ValueError(f"{wrong.shape[0]} images in the predictions but {clean_correct.numel()} clean results")
    if not clean_correct.any():
        return torch.full((wrong.shape[1],), math.nan, dtype=torch.float64)
    return wrong[clean_correct].double().mean(dim=0)


def fooling_rate_per_point_by_class(
    predictions: torch.Tensor, labels: torch.Tensor, clean_correct: torch.Tensor, classes: int = 10
) -> torch.Tensor:
    """(classes, P) float64: fooling_rate_per_point over each true class's images (NaN where none is right clean)."""
    wrong = _wrong(predictions, labels)
    clean_correct = _correctness(clean_correct, "clean_correct")
    if clean_correct.numel() != wrong.shape[0]:
        raise ValueError(f"{wrong.shape[0]} images in the predictions but {clean_correct.numel()} clean results")
    labels = labels.long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"labels must lie in 0..{classes - 1}, got {int(labels.min())}..{int(labels.max())}")
    kept = labels[clean_correct]
    count = torch.bincount(kept, minlength=classes).double()
    fooled = torch.zeros(classes, wrong.shape[1], dtype=torch.float64).index_add_(
        0, kept, wrong[clean_correct].double()
    )
    return torch.where(count.unsqueeze(1) > 0, fooled / count.clamp(min=1).unsqueeze(1), math.nan)


def mean_accuracy_over_points(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """The average case: accuracy over every (image, point) pair of the space (NaN for none)."""
    wrong = _wrong(predictions, labels)
    return float((~wrong).double().mean()) if wrong.numel() else math.nan


def heatmap(rates: torch.Tensor, shape: tuple[int, ...], keep: tuple[int, int]) -> torch.Tensor:
    """(shape[keep[0]], shape[keep[1]]) float64: per-point rates on the space's row-major grid, nan-mean over the
    other dimensions."""
    if rates.dim() != 1 or rates.numel() != math.prod(shape):
        raise ValueError(
            f"{rates.numel()} rates do not fill a grid of shape {tuple(shape)} ({math.prod(shape)} points)"
        )
    first, second = keep
    if first == second or not (0 <= first < len(shape) and 0 <= second < len(shape)):
        raise ValueError(f"keep must name two different dimensions of a {len(shape)}-D space, got {tuple(keep)}")
    grid = rates.double().reshape(shape)
    others = [d for d in range(len(shape)) if d not in keep]
    grid = grid.permute(first, second, *others).reshape(shape[first], shape[second], -1)
    return torch.nanmean(grid, dim=2)  # a cell whose points are all NaN stays NaN


def worst_case_curve(
    min_fooling_radius: torch.Tensor, clean_correct: torch.Tensor, budgets: Sequence[float]
) -> pd.DataFrame:
    """Worst-case accuracy at each budget r, with its 95 % Wilson interval, one row per budget in the order given.

    At budget r an image counts as correct iff it is right clean and its smallest fooling radius is
    larger than r (inf: never fooled). The radius of an image wrong clean is not read (it may be NaN).
    """
    clean_correct = _correctness(clean_correct, "clean_correct")
    radius = min_fooling_radius.flatten()
    if not radius.is_floating_point():
        radius = radius.double()
    if radius.numel() != clean_correct.numel():
        raise ValueError(f"{radius.numel()} fooling radii but {clean_correct.numel()} clean results")
    if torch.isnan(radius[clean_correct]).any():
        # an image right clean was searched, so NaN here is a bug upstream, not "never fooled"
        raise ValueError("an image right clean has a NaN fooling radius; use inf for one never fooled")
    n = radius.numel()
    rows = []
    for budget in budgets:
        # the budget in the radii's own precision: a float32 radius of 0.1 is not "larger" than a budget of 0.1
        n_correct = int((clean_correct & (radius > torch.tensor(budget, dtype=radius.dtype))).sum())
        low, high = wilson_interval(n_correct, n)
        accuracy = n_correct / n if n else math.nan
        rows.append({"budget": float(budget), "accuracy": accuracy, "n_correct": n_correct, "n_images": n,
                     "accuracy_low": low, "accuracy_high": high})  # fmt: skip
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)

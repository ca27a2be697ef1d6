"""Intervals and tests that count training noise: spread between seeds, paired and unpaired tests.

A model's accuracy on the test set moves between trainings far more under shift than clean, so
every interval over several seeds includes the spread between them. The methods, for one cell
(one model, perturbation and severity) evaluated by k seeds on the same n test images:

- accuracy: the mean of the k seed accuracies, +- sqrt((t * s / sqrt(k))**2 + (z * sqrt(p (1 - p) / n))**2),
  with s the standard deviation between seeds, t the exact Student quantile with k - 1 degrees of
  freedom and z the normal one. The first term is the t-interval on the seed means (training
  noise), the second the test-set sampling of the n images, which all seeds share and so does not
  shrink with k. Both are added, so the interval covers the recipe's expected accuracy on the
  test distribution at least at the stated level (`tests/test_statistics.py` simulates it).
- any other metric (flip rate, ECE, NLL, mCE, AUC, ...): the t-interval on its k seed values.
- one seed: no spread can be measured; the report's intervals are over the test images only.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

LEVEL = 0.95


def t_quantile(df: float | np.ndarray, level: float = LEVEL) -> float | np.ndarray:
    """The two-sided Student t quantile for `df` degrees of freedom (exact, any df > 0)."""
    return stats.t.ppf(0.5 + level / 2, df)


def z_quantile(level: float = LEVEL) -> float:
    return float(stats.norm.ppf(0.5 + level / 2))


def seed_half_width(std: pd.Series, seeds: pd.Series, level: float = LEVEL) -> pd.Series:
    """Half-width of the t-interval on a mean of `seeds` seed values with standard deviation `std` (NaN below 2)."""
    k = seeds.astype(float)
    quantile = pd.Series(t_quantile(np.maximum(k - 1, 1), level), index=std.index).where(k >= 2)
    return quantile * std / np.sqrt(k)


def accuracy_half_width(
    accuracy: pd.Series, std: pd.Series, seeds: pd.Series, images: pd.Series, level: float = LEVEL
) -> pd.Series:
    """Half-width of the accuracy interval over several seeds: the seed t-interval plus the test-set term."""
    sampling = z_quantile(level) * np.sqrt(accuracy * (1 - accuracy) / images)
    return np.sqrt(seed_half_width(std, seeds, level) ** 2 + sampling**2)


def across_seeds(per_seed: pd.DataFrame, keys: list[str], metrics: list[str], level: float = LEVEL) -> pd.DataFrame:
    """One row per `keys`: each metric's mean over seeds, its standard deviation and 95 % t-interval.

    `per_seed` has one row per `keys` and seed. Columns: `seeds`, then for each metric m: m,
    m_std, m_low, m_high (the interval is NaN with one seed).
    """
    grouped = per_seed.groupby(keys, sort=False, dropna=False)
    table = grouped.agg(seeds=("seed", "nunique"), **{m: (m, "mean") for m in metrics})
    spread = grouped[metrics].std()
    for m in metrics:
        table[f"{m}_std"] = spread[m]
        half = seed_half_width(spread[m], table["seeds"], level)
        table[f"{m}_low"] = table[m] - half
        table[f"{m}_high"] = table[m] + half
    return table.reset_index()


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (images only A, or only B, got right)."""
    discordant = a_only + b_only
    if discordant == 0:
        return 1.0
    return float(stats.binomtest(min(a_only, b_only), discordant, 0.5).pvalue)


def paired_difference_interval(a_only: int, b_only: int, pairs: int, level: float = LEVEL) -> tuple[float, float]:
    """Interval for B - A accuracy over `pairs` paired images (Wald, on the discordant counts)."""
    difference = (b_only - a_only) / pairs
    variance = ((a_only + b_only) / pairs - difference**2) / pairs
    half = z_quantile(level) * math.sqrt(max(variance, 0.0))
    return difference - half, difference + half


def welch(a: np.ndarray, b: np.ndarray, level: float = LEVEL) -> tuple[float, float, float]:
    """Welch's test of mean(b) - mean(a) over seed values: (interval low, high, two-sided p)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    difference = b.mean() - a.mean()
    se = math.sqrt(va + vb)
    if se == 0:
        return difference, difference, (1.0 if difference == 0 else 0.0)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(t_quantile(df, level)) * se
    p = float(2 * stats.t.sf(abs(difference) / se, df))
    return difference - half, difference + half, p


def t_test_with_known_spread(
    difference: float, variance: float, df: float, level: float = LEVEL
) -> tuple[float, float, float]:
    """A difference whose variance (with `df` degrees of freedom) comes from elsewhere: (low, high, p)."""
    if not variance > 0 or not df > 0:
        return math.nan, math.nan, math.nan
    se = math.sqrt(variance)
    half = float(t_quantile(df, level)) * se
    return difference - half, difference + half, float(2 * stats.t.sf(abs(difference) / se, df))


def satterthwaite(parts: list[tuple[float, float]]) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of variance terms, each (variance, its df)."""
    total = sum(v for v, _ in parts)
    denominator = sum(v * v / df for v, df in parts if df > 0)
    return total * total / denominator if denominator > 0 else math.nan


def prediction_half_width(std: float, seeds: int, new_seeds: int, level: float = LEVEL) -> float:
    """How far the mean of `new_seeds` fresh trainings may fall from a `seeds`-seed mean at `level`.

    Both evaluate the same test images, so only training noise separates them:
    t(seeds - 1) * std * sqrt(1 / seeds + 1 / new_seeds).
    """
    if seeds < 2 or math.isnan(std):
        return math.nan
    return float(t_quantile(seeds - 1, level)) * std * math.sqrt(1 / seeds + 1 / new_seeds)


def excess_outside_p(outside: int, cells: int, level: float = LEVEL) -> float:
    """One-sided binomial p of at least `outside` of `cells` falling outside intervals of coverage `level`."""
    if cells == 0:
        return 1.0
    return float(stats.binomtest(outside, cells, 1 - level, alternative="greater").pvalue)

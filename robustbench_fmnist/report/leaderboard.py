"""The leaderboard's numbers: models from several report folders, ranked per shift family, with effective robustness.

Tidy rows in, tables out, no I/O (leaderboard_files.py reads the folders and writes the board).
Every metric is computed per seed on the family's cells with the report tables' own functions,
then summarised across seeds with the harness's intervals (statistics.py), so a board row means
what the same row of a report means. Effective robustness follows imagenet-testbed
(modestyachts/imagenet-testbed, plotting/plotter.py; Taori et al. 2020): a `scipy.stats.linregress`
of shifted on clean accuracy, on a logit scale, over the standard-trained models only, with a
bootstrap band (`scipy.stats.bootstrap`, resampling the models).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import special, stats

from robustbench_fmnist.evaluation.cells import CLEAN
from robustbench_fmnist.report.tables import headline_table, seed_mean, with_sampling_term
from robustbench_fmnist.statistics import LEVEL, across_seeds, seed_half_width

STANDARD = "standard"
ROBUST_TRAINING = "robust training"
ADAPTATION = "test-time adaptation"
CHECKPOINT = "checkpoint"
ROLES = (STANDARD, ROBUST_TRAINING, ADAPTATION, CHECKPOINT)

MIN_FIT_MODELS = 4  # a line through fewer standard models has no bootstrap band worth the name
BOARD_METRICS = ["clean_accuracy", "shifted_accuracy", "worst_accuracy", "mce", "relative_mce", "shifted_ece"]


@dataclass(frozen=True)
class Scale:
    """An axis transform for accuracy on the line: forward to the fit's scale and back."""

    name: str
    forward: Callable[[np.ndarray], np.ndarray]
    inverse: Callable[[np.ndarray], np.ndarray]


# accuracies of exactly 0 or 1 would be infinite on logit and probit axes; 1e-4 is one image in 10,000
_EDGE = 1e-4
SCALES = {
    "logit": Scale("logit", lambda p: special.logit(np.clip(p, _EDGE, 1 - _EDGE)), special.expit),
    "probit": Scale("probit", lambda p: stats.norm.ppf(np.clip(p, _EDGE, 1 - _EDGE)), stats.norm.cdf),
    "linear": Scale("linear", lambda p: np.asarray(p, dtype=float), lambda z: np.asarray(z, dtype=float)),
}


def model_role(info: dict[str, Any]) -> tuple[str, str]:
    """What a model is on the board, from its run.json entry: (role, detail), e.g. (robust training, augmix)."""
    if info.get("adaptation", "none") != "none":
        return ADAPTATION, str(info["adaptation"])
    training = info.get("training")
    if training is None or info.get("weights") == "user checkpoint" or info.get("recipe") is None:
        return CHECKPOINT, ""
    return (STANDARD, "") if training == STANDARD else (ROBUST_TRAINING, str(training))


def family_cells(results: pd.DataFrame, families: dict[str, str]) -> tuple[dict[str, set[tuple]], dict[str, int]]:
    """Per family, the (perturbation, severity, parameter) cells every model of that family has, and how many
    cells some model lacks (they are left out of the family for all models, so everyone is scored on the same)."""
    shifted = results[results.perturbation != CLEAN].assign(family=lambda r: r.perturbation.map(families))
    keys = ["perturbation", "severity", "parameter"]
    common: dict[str, set[tuple]] = {}
    dropped: dict[str, int] = {}
    for family, rows in shifted.groupby("family", sort=False):
        per_model = [set(map(tuple, g[keys].astype(str).to_numpy().tolist())) for _, g in rows.groupby("model")]
        common[family] = set.intersection(*per_model)
        dropped[family] = len(set.union(*per_model) - common[family])
    return common, dropped


def _in_cells(results: pd.DataFrame, cells: set[tuple]) -> pd.Series:
    keys = results[["perturbation", "severity", "parameter"]].astype(str)
    return pd.Series([tuple(k) in cells for k in keys.to_numpy().tolist()], index=results.index)


def per_seed_scores(results: pd.DataFrame, cells: dict[str, set[tuple]], reference: str | None) -> pd.DataFrame:
    """One row per (model, family, seed): clean, mean shifted and worst-cell accuracy, mCE, relative mCE, ECE.

    mCE pairs each seed with the reference's same seed, as a report does; a seed the reference was not
    run with is set against the reference's mean over its seeds.
    """
    frames = []
    for family, family_keys in cells.items():
        rows = results[(results.perturbation == CLEAN) | _in_cells(results, family_keys)]
        ref_rows = rows[rows.model == reference] if reference is not None else rows.iloc[:0]
        for seed, group in rows.groupby("seed"):
            if reference is not None and not (group.model == reference).any():
                mean_ref = ref_rows.assign(seed=seed)
                group = pd.concat([group, mean_ref], ignore_index=True)
            cells_mean = seed_mean(group)
            table = headline_table(cells_mean, reference)
            worst = cells_mean[cells_mean.perturbation != CLEAN].groupby("model", sort=False)["accuracy"].min()
            table["worst_accuracy"] = table["model"].map(worst)
            mine = set(rows.loc[rows.seed == seed, "model"])
            frames.append(table[table.model.isin(mine)].assign(family=family, seed=seed))
    per_seed = pd.concat(frames, ignore_index=True)
    return per_seed[["model", "family", "seed", *BOARD_METRICS, "clean_ece"]]


def board_table(per_seed: pd.DataFrame, images: int) -> pd.DataFrame:
    """Per (model, family): every board metric's mean, spread and 95 % interval over seeds (accuracies also
    carry the test-set term), ranked by mean shifted accuracy with ties where the intervals say so."""
    table = with_sampling_term(across_seeds(per_seed, ["model", "family"], [*BOARD_METRICS, "clean_ece"]), images)
    ranked = []
    for _, rows in table.groupby("family", sort=False):
        rows = rows.sort_values("shifted_accuracy", ascending=False, kind="stable").copy()
        rows["rank"] = interval_ranks(rows["shifted_accuracy"], rows["shifted_accuracy_low"],
                                      rows["shifted_accuracy_high"])  # fmt: skip
        rows["tied"] = rows["rank"].duplicated(keep=False)
        ranked.append(rows)
    return pd.concat(ranked, ignore_index=True)


def interval_ranks(mean: pd.Series, low: pd.Series, high: pd.Series) -> list[int]:
    """1 + the number of models whose interval lies wholly above this one's (without intervals: above its mean).

    A rank counts only the models that are separably better, so the leader and everything that
    overlaps it rank 1, and models sharing a rank are shown as ties.
    """
    lows = low.fillna(mean).to_numpy()
    highs = high.fillna(mean).to_numpy()
    return [1 + int(np.sum(lows > h)) for h in highs]


@dataclass(frozen=True)
class LineFit:
    """One family's accuracy-on-the-line fit: shifted = inverse(intercept + slope * forward(clean))."""

    family: str
    scale: str
    models: tuple[str, ...]
    slope: float
    intercept: float
    r: float
    grid: np.ndarray  # clean accuracies the line and its band are drawn at
    curve: np.ndarray  # the line at `grid`, transformed back to accuracy
    band_low: np.ndarray
    band_high: np.ndarray


def fit_line(
    points: pd.DataFrame, family: str, scale: Scale, resamples: int, seed: int = 0
) -> tuple[LineFit, pd.DataFrame] | None:
    """Fit the family's line over the standard models in `points` (model, role, clean and shifted accuracy);
    return it with the band's bounds at every model's clean accuracy, or None with too few models."""
    fitted = points[points.role == STANDARD]
    if len(fitted) < MIN_FIT_MODELS:
        return None
    x = scale.forward(fitted["clean_accuracy"].to_numpy())
    y = scale.forward(fitted["shifted_accuracy"].to_numpy())
    line = stats.linregress(x, y)
    lo, hi = points["clean_accuracy"].min(), points["clean_accuracy"].max()
    pad = 0.15 * (hi - lo) + 0.005
    grid = np.linspace(max(lo - pad, 0.01), min(hi + pad, 0.995), 60)
    at = scale.forward(np.concatenate([grid, points["clean_accuracy"].to_numpy()]))
    full = line.intercept + line.slope * at

    def predictions(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        # a resample that drew one model only has no line: it counts as the full fit (rare from 4 models on)
        if np.ptp(xs) == 0:
            return full
        refit = stats.linregress(xs, ys)
        return refit.intercept + refit.slope * at

    band = stats.bootstrap(
        (x, y), predictions, paired=True, vectorized=False, n_resamples=resamples, confidence_level=LEVEL,
        method="percentile", rng=np.random.default_rng(seed),
    ).confidence_interval  # fmt: skip
    low, high = scale.inverse(band.low), scale.inverse(band.high)
    n = len(grid)
    fit = LineFit(family, scale.name, tuple(fitted["model"]), float(line.slope), float(line.intercept),
                  float(line.rvalue), grid, scale.inverse(full[:n]), low[:n], high[:n])  # fmt: skip
    at_models = points[["model"]].assign(line=scale.inverse(full[n:]), line_low=low[n:], line_high=high[n:])
    return fit, at_models.reset_index(drop=True)


def effective_robustness(
    per_seed: pd.DataFrame, board: pd.DataFrame, roles: dict[str, str], scale: Scale, resamples: int
) -> tuple[pd.DataFrame, list[LineFit]]:
    """Per (model, family): effective robustness = shifted accuracy minus the line at the model's clean
    accuracy, transformed back, averaged over seeds.

    Its interval is the t-interval over seeds of the per-seed values, widened in quadrature by the
    line's bootstrap band at that clean accuracy. Families with fewer than MIN_FIT_MODELS standard
    models get NaN.
    """
    rows, fits = [], []
    for family, points in board.groupby("family", sort=False):
        points = points.assign(role=points["model"].map(roles))
        fitted = fit_line(points, str(family), scale, resamples)
        if fitted is None:
            continue
        fit, at_models = fitted
        fits.append(fit)
        mine = per_seed[per_seed.family == family].copy()
        predicted = scale.inverse(fit.intercept + fit.slope * scale.forward(mine["clean_accuracy"].to_numpy()))
        mine["effective_robustness"] = mine["shifted_accuracy"].to_numpy() - predicted
        spread = across_seeds(mine, ["model", "family"], ["effective_robustness"]).merge(at_models, on="model")
        seed_half = seed_half_width(spread["effective_robustness_std"], spread["seeds"]).fillna(0.0)
        line_half = (spread["line_high"] - spread["line_low"]) / 2
        half = np.sqrt(seed_half**2 + line_half**2)
        spread["effective_robustness_low"] = spread["effective_robustness"] - half
        spread["effective_robustness_high"] = spread["effective_robustness"] + half
        rows.append(spread)
    columns = ["model", "family", "effective_robustness", "effective_robustness_std", "effective_robustness_low",
               "effective_robustness_high", "line", "line_low", "line_high"]  # fmt: skip
    if not rows:
        return pd.DataFrame(columns=columns), fits
    return pd.concat(rows, ignore_index=True)[columns], fits


def verdict(low: float, high: float) -> str:
    """Above, below or on the line, by the interval of a model's effective robustness."""
    if low != low:  # NaN
        return "n/a"
    return "above the line" if low > 0 else "below the line" if high < 0 else "on the line"

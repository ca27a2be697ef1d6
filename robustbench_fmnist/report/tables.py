"""Tidy rows (the report's CSV files) -> the tables a report shows. One function per table, no I/O.

With several seeds, each (model, perturbation, severity) cell is first averaged over the seeds
(`seed_mean`, which also gives each metric's spread and interval); the per-perturbation and
per-model tables are computed per seed and then summarised across seeds (`summary_spread`,
`headline_spread`), so every number carries the spread between trainings (statistics.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from robustbench_fmnist.evaluation.cells import CLEAN
from robustbench_fmnist.evaluation.metrics import area_under_curve, corruption_errors, mean_corruption_errors
from robustbench_fmnist.statistics import accuracy_half_width, across_seeds, seed_half_width

CELL = ["model", "perturbation", "severity"]
_MEANS = ["accuracy", "flip_rate", "flip_rate_step", "ece", "mean_confidence", "nll"]
DERIVED = _MEANS[1:]  # per-cell metrics other than accuracy: t-interval over seeds only


def seed_mean(results: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: metrics averaged over seeds, each with its spread and a 95 % interval.

    One seed: the accuracy's Wilson interval over the test images, nothing for the other metrics.
    Several: the accuracy interval adds the t-interval over seeds and the test-set term, every
    other metric gets the t-interval over seeds (statistics.py). `n_images` is per seed.
    """
    grouped = results.groupby(CELL, sort=False)
    table = grouped.agg(
        parameter=("parameter", "first"),
        seeds=("seed", "nunique"),
        n_images=("n_images", "mean"),
        n_correct=("n_correct", "sum"),
        wilson_low=("accuracy_low", "mean"),
        wilson_high=("accuracy_high", "mean"),
        **{column: (column, "mean") for column in _MEANS},
    ).reset_index()
    spread = grouped[_MEANS].std().reset_index(drop=True)
    several = table["seeds"] >= 2
    half = accuracy_half_width(table["accuracy"], spread["accuracy"], table["seeds"], table["n_images"])
    table["accuracy_std"] = spread["accuracy"].where(several)
    table["accuracy_low"] = (table["accuracy"] - half).clip(lower=0.0).where(several, table["wilson_low"])
    table["accuracy_high"] = (table["accuracy"] + half).clip(upper=1.0).where(several, table["wilson_high"])
    for column in DERIVED:
        half = seed_half_width(spread[column], table["seeds"])
        table[f"{column}_std"] = spread[column].where(several)
        table[f"{column}_low"] = (table[column] - half).clip(lower=0.0)  # all of them are >= 0
        table[f"{column}_high"] = table[column] + half
    table["error"] = 1.0 - table["accuracy"]
    return table.drop(columns=["wilson_low", "wilson_high"])


def with_drops(cells: pd.DataFrame) -> pd.DataFrame:
    """Add each row's absolute and relative accuracy drop from the same model's clean accuracy."""
    clean = cells[cells.perturbation == CLEAN].set_index("model")["accuracy"]
    out = cells.copy()
    out["clean_accuracy"] = out["model"].map(clean)
    out["drop"] = out["clean_accuracy"] - out["accuracy"]
    out["relative_drop"] = out["drop"] / out["clean_accuracy"]
    return out


def _shifted(cells: pd.DataFrame) -> pd.DataFrame:
    return cells[cells.perturbation != CLEAN]


def ce_table(cells: pd.DataFrame, reference: str | None) -> pd.DataFrame:
    """CE and relative CE per (model, perturbation) against `reference` (NaN without one)."""
    rows = _shifted(with_drops(cells))
    rows["clean_error"] = 1.0 - rows["clean_accuracy"]
    summary = (
        rows.groupby(["model", "perturbation"], sort=False)
        .agg(error_sum=("error", "sum"), clean_error_sum=("clean_error", "sum"))
        .reset_index()
    )
    if reference is None or reference not in set(summary["model"]):
        return summary[["model", "perturbation"]].assign(ce=np.nan, relative_ce=np.nan)
    return corruption_errors(summary, reference)


def summary_table(cells: pd.DataFrame, reference: str | None = None) -> pd.DataFrame:
    """Per model x perturbation: clean, mean and worst accuracy, drops, AUC, CE, flip rate, ECE."""
    rows = _shifted(with_drops(cells))
    grouped = rows.groupby(["model", "perturbation"], sort=False)
    table = grouped.agg(
        clean_accuracy=("clean_accuracy", "first"),
        mean_accuracy=("accuracy", "mean"),
        mean_drop=("drop", "mean"),
        mean_relative_drop=("relative_drop", "mean"),
        worst_accuracy=("accuracy", "min"),
        flip_rate=("flip_rate", "mean"),
        ece=("ece", "mean"),
    ).reset_index()
    table["auc"] = [
        area_under_curve(
            group["clean_accuracy"].iloc[0],
            group.sort_values("severity")["accuracy"].tolist(),
            sorted(group["severity"].tolist()),
        )
        for _, group in grouped
    ]
    return table.merge(ce_table(cells, reference), on=["model", "perturbation"], how="left", sort=False)


def headline_table(cells: pd.DataFrame, reference: str | None = None) -> pd.DataFrame:
    """Per model: clean accuracy with its interval, mean shifted accuracy, mCE, flip rate, ECE, NLL."""
    clean = cells[cells.perturbation == CLEAN].set_index("model")
    shifted = _shifted(cells).groupby("model", sort=False)
    table = pd.DataFrame(index=pd.Index(list(dict.fromkeys(cells["model"])), name="model"))
    table["clean_accuracy"] = clean["accuracy"]
    table["clean_low"] = clean["accuracy_low"]
    table["clean_high"] = clean["accuracy_high"]
    table["shifted_accuracy"] = shifted["accuracy"].mean()
    mce = mean_corruption_errors(ce_table(cells, reference)).set_index("model")
    table["mce"] = mce["mce"]
    table["relative_mce"] = mce["relative_mce"]
    table["flip_rate"] = shifted["flip_rate"].mean()
    table["clean_ece"] = clean["ece"]
    table["shifted_ece"] = shifted["ece"].mean()
    table["clean_confidence"] = clean["mean_confidence"]
    table["shifted_confidence"] = shifted["mean_confidence"].mean()
    table["clean_nll"] = clean["nll"]
    table["shifted_nll"] = shifted["nll"].mean()
    return table.reset_index()


HEADLINE_METRICS = [
    "clean_accuracy",
    "shifted_accuracy",
    "mce",
    "relative_mce",
    "flip_rate",
    "clean_confidence",
    "shifted_confidence",
    "clean_ece",
    "shifted_ece",
    "clean_nll",
    "shifted_nll",
]
SUMMARY_METRICS = [
    "clean_accuracy",
    "mean_accuracy",
    "mean_drop",
    "mean_relative_drop",
    "worst_accuracy",
    "auc",
    "ce",
    "relative_ce",
    "flip_rate",
    "ece",
]
# shares of the test images: their intervals also carry the test-set sampling term
_ACCURACIES = {"clean_accuracy", "shifted_accuracy", "mean_accuracy", "worst_accuracy"}


def _per_seed(results: pd.DataFrame, table: object, reference: str | None) -> pd.DataFrame:
    frames = [table(seed_mean(group), reference).assign(seed=seed) for seed, group in results.groupby("seed")]
    return pd.concat(frames, ignore_index=True)


# metrics that can be negative: a drop (accuracy can rise under a shift) and the relative CEs
_SIGNED = {"mean_drop", "mean_relative_drop", "relative_ce", "relative_mce"}


def with_sampling_term(table: pd.DataFrame, images: float) -> pd.DataFrame:
    """Widen the accuracy intervals of a spread table by the shared test-set term (statistics.py).

    Intervals of metrics that cannot be negative are cut at 0 (a t-interval knows no bounds).
    """
    for m in {c for c in table.columns if f"{c}_low" in table.columns} - _SIGNED:
        table[f"{m}_low"] = table[f"{m}_low"].clip(lower=0.0)
    for m in _ACCURACIES & {c for c in table.columns if f"{c}_std" in table.columns}:
        half = accuracy_half_width(table[m], table[f"{m}_std"], table["seeds"], pd.Series(images, index=table.index))
        several = table["seeds"] >= 2
        table[f"{m}_low"] = (table[m] - half).clip(lower=0.0).where(several)
        table[f"{m}_high"] = (table[m] + half).clip(upper=1.0).where(several)
    return table


def headline_spread(results: pd.DataFrame, reference: str | None = None) -> pd.DataFrame:
    """Per model: each headline metric computed per seed, then its mean, spread and 95 % interval over seeds."""
    per_seed = _per_seed(results, headline_table, reference)
    table = across_seeds(per_seed, ["model"], HEADLINE_METRICS)
    return with_sampling_term(table, float(results["n_images"].iloc[0]))


def summary_spread(results: pd.DataFrame, reference: str | None = None) -> pd.DataFrame:
    """Per model x perturbation: each summary metric per seed, then mean, spread and 95 % interval over seeds."""
    per_seed = _per_seed(results, summary_table, reference)
    table = across_seeds(per_seed, ["model", "perturbation"], SUMMARY_METRICS)
    return with_sampling_term(table, float(results["n_images"].iloc[0]))


def severity_table(cells: pd.DataFrame, perturbation: str) -> pd.DataFrame:
    """One perturbation: rows are models; clean and each severity's accuracy (with interval), then means."""
    rows = with_drops(cells)
    shifted = rows[rows.perturbation == perturbation]
    models = list(dict.fromkeys(shifted["model"]))
    table = pd.DataFrame(index=pd.Index(models, name="model"))
    table["clean"] = rows[rows.perturbation == CLEAN].set_index("model")["accuracy"].reindex(models)
    for severity, group in shifted.groupby("severity", sort=True):
        indexed = group.set_index("model")
        for column, source in (
            ("", "accuracy"),
            ("_low", "accuracy_low"),
            ("_high", "accuracy_high"),
            ("_std", "accuracy_std"),
        ):
            table[f"s{severity}{column}"] = indexed[source].reindex(models)
    grouped = shifted.groupby("model", sort=False)
    table["mean"] = grouped["accuracy"].mean().reindex(models)
    table["mean_drop"] = grouped["drop"].mean().reindex(models)
    table["relative_drop"] = grouped["relative_drop"].mean().reindex(models)
    table["flip_rate"] = grouped["flip_rate"].mean().reindex(models)
    table["flip_rate_step"] = grouped["flip_rate_step"].mean().reindex(models)
    return table.reset_index()


def parameter_labels(cells: pd.DataFrame, perturbation: str) -> dict[int, float]:
    shifted = cells[cells.perturbation == perturbation]
    return dict(zip(shifted["severity"], shifted["parameter"], strict=False))


def format_parameter(value: float, unit: str) -> str:
    """A severity's parameter as a short label: +0.1, x0.4, 30°, 2."""
    text = f"{value:g}"
    if unit.startswith("added"):
        return f"{value:+g}"
    if unit.startswith("contrast") or unit.startswith("factor"):
        return f"x{text}"
    if unit.startswith("degrees"):
        return f"{text}°"
    return text


def class_table(per_class: pd.DataFrame) -> pd.DataFrame:
    """Per model x class (seed means): clean accuracy, mean accuracy over every shifted cell, drop."""
    cells = per_class.groupby([*CELL, "class"], sort=False)["accuracy"].mean().reset_index()
    clean = cells[cells.perturbation == CLEAN].set_index(["model", "class"])["accuracy"]
    shifted = _shifted(cells).groupby(["model", "class"], sort=False)["accuracy"].mean()
    table = pd.DataFrame({"clean_accuracy": clean, "shifted_accuracy": shifted}).reindex(clean.index)
    table["drop"] = table["clean_accuracy"] - table["shifted_accuracy"]
    return table.reset_index()


def class_drop_matrix(per_class: pd.DataFrame, model: str) -> pd.DataFrame:
    """(class x perturbation) mean drop of the class's accuracy from clean, for one model's heatmap."""
    rows = per_class[per_class.model == model]
    cells = rows.groupby(["perturbation", "severity", "class"], sort=False)["accuracy"].mean().reset_index()
    clean = cells[cells.perturbation == CLEAN].set_index("class")["accuracy"]
    shifted = _shifted(cells).copy()
    shifted["drop"] = shifted["class"].map(clean) - shifted["accuracy"]
    matrix = shifted.pivot_table(index="class", columns="perturbation", values="drop", aggfunc="mean", sort=False)
    return matrix.reindex(index=list(clean.index))


def confusion_growth(confusion: pd.DataFrame, per_class: pd.DataFrame, top: int = 5) -> pd.DataFrame:
    """Per model, the `top` (true, predicted) pairs whose confusion grows most from clean to shifted.

    A pair's rate is its count over the true class's images; shifted is the mean over every
    shifted cell (seed means), growth the difference in percentage points of the class.
    """
    totals = per_class.groupby([*CELL, "class"], sort=False)["n_images"].mean().rename("total").reset_index()
    errors = confusion[confusion["true"] != confusion["predicted"]]
    seeds = max(1, confusion["seed"].nunique())  # absent rows are zero counts: sum, then divide by seeds
    counts = errors.groupby([*CELL, "true", "predicted"], sort=False)["count"].sum().div(seeds).reset_index()
    counts = counts.merge(totals.rename(columns={"class": "true"}), on=[*CELL, "true"], how="left")
    counts["rate"] = counts["count"] / counts["total"]
    # a pair absent from a cell was never made there: average over every shifted cell, not its rows
    cells_per_model = _shifted(per_class).drop_duplicates(["model", "perturbation", "severity"]).groupby("model").size()
    clean = counts[counts.perturbation == CLEAN].set_index(["model", "true", "predicted"])["rate"]
    shifted = _shifted(counts).groupby(["model", "true", "predicted"], sort=False)["rate"].sum()
    shifted = shifted / shifted.index.get_level_values("model").map(cells_per_model).to_numpy()
    table = pd.DataFrame({"shifted_rate": shifted})
    table["clean_rate"] = clean.reindex(table.index).fillna(0.0)
    table["growth"] = table["shifted_rate"] - table["clean_rate"]
    table = table.reset_index().sort_values(["model", "growth"], ascending=[True, False], kind="stable")
    order = {m: i for i, m in enumerate(dict.fromkeys(per_class["model"]))}
    table = table.sort_values("model", key=lambda s: s.map(order), kind="stable")
    return table.groupby("model", sort=False).head(top).reset_index(drop=True)


def reliability_table(calibration: pd.DataFrame, model: str, severity: int | None = None) -> pd.DataFrame:
    """Calibration bins of `model` pooled over cells: the clean cell (severity 0) or every cell at `severity`.

    severity None pools each perturbation's most severe cell.
    """
    rows = calibration[calibration.model == model]
    if severity == 0:
        chosen = rows[rows.perturbation == CLEAN]
    else:
        shifted = _shifted(rows)
        worst = shifted.groupby("perturbation")["severity"].transform("max")
        chosen = shifted[shifted.severity == (worst if severity is None else severity)]
    chosen = chosen.assign(
        hits=chosen["accuracy"].fillna(0) * chosen["count"], total=chosen["confidence"].fillna(0) * chosen["count"]
    )
    pooled = chosen.groupby(["bin", "lower", "upper"], sort=True)[["count", "hits", "total"]].sum().reset_index()
    filled = pooled["count"] > 0
    pooled["accuracy"] = np.where(filled, pooled["hits"] / pooled["count"].clip(lower=1), np.nan)
    pooled["confidence"] = np.where(filled, pooled["total"] / pooled["count"].clip(lower=1), np.nan)
    return pooled[["bin", "lower", "upper", "count", "accuracy", "confidence"]]

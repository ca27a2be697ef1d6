"""Tidy result rows -> the tables a report shows. One function per table, no I/O."""

from __future__ import annotations

import pandas as pd

from robustbench_fmnist.evaluation import CLEAN


def with_drops(results: pd.DataFrame) -> pd.DataFrame:
    """Add each row's absolute and relative accuracy drop from the same model's clean accuracy."""
    clean = results[results.perturbation == CLEAN].set_index("model")["accuracy"]
    out = results.copy()
    out["clean_accuracy"] = out["model"].map(clean)
    out["drop"] = out["clean_accuracy"] - out["accuracy"]
    out["relative_drop"] = out["drop"] / out["clean_accuracy"]
    return out


def summary_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per model x perturbation: clean accuracy, mean over severities, mean drops, worst severity."""
    rows = with_drops(results)
    shifted = rows[rows.perturbation != CLEAN]
    grouped = shifted.groupby(["model", "perturbation"], sort=False)
    table = grouped.agg(
        clean_accuracy=("clean_accuracy", "first"),
        mean_accuracy=("accuracy", "mean"),
        mean_drop=("drop", "mean"),
        mean_relative_drop=("relative_drop", "mean"),
        worst_accuracy=("accuracy", "min"),
    )
    return table.reset_index()


def severity_table(results: pd.DataFrame, perturbation: str) -> pd.DataFrame:
    """One perturbation: rows are models, columns clean and severities, then mean and drops."""
    rows = with_drops(results)
    shifted = rows[rows.perturbation == perturbation]
    wide = shifted.pivot(index="model", columns="severity", values="accuracy")
    wide = wide[sorted(wide.columns)]
    models = list(dict.fromkeys(shifted["model"]))
    table = pd.DataFrame(index=pd.Index(models, name="model"))
    table["clean"] = rows[rows.perturbation == CLEAN].set_index("model")["accuracy"].reindex(models)
    for severity in wide.columns:
        table[f"s{severity}"] = wide[severity].reindex(models)
    grouped = shifted.groupby("model", sort=False)
    table["mean"] = grouped["accuracy"].mean().reindex(models)
    table["mean_drop"] = grouped["drop"].mean().reindex(models)
    table["relative_drop"] = grouped["relative_drop"].mean().reindex(models)
    return table.reset_index()


def parameter_labels(results: pd.DataFrame, perturbation: str) -> dict[int, float]:
    shifted = results[results.perturbation == perturbation]
    return dict(zip(shifted["severity"], shifted["parameter"], strict=False))

"""A run against a multi-seed reference of the same recipes: does each cell fall inside its seed spread?

Used by a run with `noise_from:` (the quickstart against reports/lighting) and by `reproduce`.
Both models evaluate the same test images, so the only noise between a reference cell and a new
one is training noise: the new mean of m seeds falls within the reference mean of k seeds
+- t(k - 1) * s * sqrt(1/k + 1/m) with 95 % probability (statistics.prediction_half_width).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from robustbench_fmnist.config import TrainRecipe
from robustbench_fmnist.errors import ConfigError, HarnessError
from robustbench_fmnist.report.bundle import REFERENCE_COLUMNS, ReportData, read_data
from robustbench_fmnist.report.tables import CELL, seed_mean
from robustbench_fmnist.statistics import LEVEL, excess_outside_p, prediction_half_width

# below this one-sided binomial p, more cells fall outside than 95 % intervals allow by chance
EXCESS_P = 0.001
_RECIPE_FIELDS = ("factory", "kwargs", "recipe", "adaptation_settings")


def _field(record: dict[str, Any], key: str) -> Any:
    """A model record's field; a recipe read by today's schema, so fields added since with their defaults match."""
    value = record.get(key)
    if key == "recipe" and isinstance(value, dict):
        try:
            return TrainRecipe.model_validate(value).model_dump(mode="json")
        except ValidationError:
            return value
    return value


def _architecture(record: dict[str, Any]) -> str:
    # reports from before labels (`architecture:`) record none: the factory or the name is what was built
    return record.get("architecture") or record.get("factory") or record.get("name")


def reference_cells(reference: ReportData, models: list[dict[str, Any]]) -> tuple[pd.DataFrame, list[str]]:
    """The reference's seed mean and spread per cell, for this run's models whose recipe it shares.

    Returns the table (reference.csv) and the names of this run's models left out: absent from
    the reference, or trained there with another recipe, builder or arguments.
    """
    theirs: dict[str, dict[str, Any]] = {}
    for record in reference.run["models"]:
        theirs.setdefault(record.get("name"), record)
    ours: dict[str, dict[str, Any]] = {}
    for record in models:
        ours.setdefault(record["name"], record)
    shared = [
        name
        for name, record in ours.items()
        if name in theirs
        and record.get("weights") != "checkpoint"
        and all(_field(record, f) == _field(theirs[name], f) for f in _RECIPE_FIELDS)
        and _architecture(record) == _architecture(theirs[name])
    ]
    skipped = [name for name in ours if name not in shared]
    cells = seed_mean(reference.results)
    cells = cells[cells["model"].isin(shared)]
    return cells[REFERENCE_COLUMNS].reset_index(drop=True), skipped


def agreement_table(results: pd.DataFrame, reference: pd.DataFrame, level: float = LEVEL) -> pd.DataFrame:
    """Per cell both have (same parameter): this run's seed mean, the reference's, the expected range, inside."""
    ours = seed_mean(results)[[*CELL, "parameter", "seeds", "accuracy"]]
    merged = ours.merge(reference, on=CELL, suffixes=("", "_reference"), how="inner", sort=False)
    same = np.isclose(
        merged["parameter"].astype(float).fillna(np.inf), merged["parameter_reference"].astype(float).fillna(np.inf)
    )
    merged = merged[same & merged["accuracy"].notna() & merged["accuracy_reference"].notna()].copy()
    merged["half_width"] = [
        prediction_half_width(std, int(k), int(m), level)
        for std, k, m in zip(merged["accuracy_std"], merged["seeds_reference"], merged["seeds"], strict=True)
    ]
    merged = merged[merged["half_width"].notna()]
    distance = (merged["accuracy"] - merged["accuracy_reference"]).abs()
    # the CSVs keep 6 significant digits: equal accuracies must sit inside even a zero-width range
    merged["inside"] = distance <= merged["half_width"] + 1e-6
    return merged.rename(
        columns={"accuracy_reference": "reference_accuracy", "accuracy_std": "reference_std", "seeds_reference": "k"}
    ).reset_index(drop=True)[
        [*CELL, "seeds", "k", "accuracy", "reference_accuracy", "reference_std", "half_width", "inside"]
    ]


@dataclass(frozen=True)
class Verdict:
    cells: int
    outside: int
    p_value: float
    agrees: bool

    @property
    def summary(self) -> str:
        if self.cells == 0:
            return "No cell could be compared (none shared with a reference of at least two seeds)."
        expected = (1 - LEVEL) * self.cells
        word = "agrees" if self.agrees else "does not agree"
        return (
            f"{self.cells - self.outside} of {self.cells} cells inside, {self.outside} outside (about "
            f"{expected:.1f} expected by chance; one-sided binomial p = {self.p_value:.3g}): this run {word} "
            f"with the reference within its seed spread."
        )


def agreement_verdict(table: pd.DataFrame, level: float = LEVEL) -> Verdict:
    """Whether clearly more cells fall outside than intervals of coverage `level` allow (p < EXCESS_P)."""
    cells, outside = len(table), int((~table["inside"].astype(bool)).sum())
    p = excess_outside_p(outside, cells, level)
    return Verdict(cells, outside, p, agrees=cells > 0 and p >= EXCESS_P)


def read_noise_report(path: Path, folder: Path | None = None, key: str = "noise_from") -> ReportData:
    """The multi-seed report whose seed spread a run or comparison is set against, checked."""
    if folder is not None and Path(path).resolve() == folder.resolve():
        raise ConfigError(f"{key}: {path} is this run's own report folder; name a report the run does not replace")
    try:
        report = read_data(path)
    except HarnessError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    seeds = report.results["seed"].nunique()
    if seeds < 2:
        raise ConfigError(
            f"{key}: {path} has {seeds} seed; its spread between trainings needs a report of at least 2 seeds"
        )
    return report

"""Two saved runs side by side: accuracy differences per cell, and whether they exceed the noise."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from robustbench_fmnist.metrics import Z95
from robustbench_fmnist.report.bundle import ReportData
from robustbench_fmnist.report.markdown import markdown_table, pct, points
from robustbench_fmnist.report.tables import CELL, seed_mean


def compare_runs(first: ReportData, second: ReportData) -> pd.DataFrame:
    """Cells both runs have, with accuracy A, B, B - A and a 95 % interval for the difference.

    The interval treats the two accuracies as independent proportions over their test images
    (normal approximation; with several seeds, the seed means over one seed's images, which
    leaves out the spread between seeds); `significant` is whether it excludes zero.
    """
    a, b = seed_mean(first.results), seed_mean(second.results)
    for table in (a, b):  # images per seed: seeds do not add test images
        table["n_images"] = table["n_images"] / table["seeds"]
    merged = a[[*CELL, "parameter", "accuracy", "n_images"]].merge(
        b[[*CELL, "parameter", "accuracy", "n_images"]], on=CELL, suffixes=("_a", "_b"), how="inner", sort=False
    )
    merged["difference"] = merged["accuracy_b"] - merged["accuracy_a"]
    variance = (
        merged["accuracy_a"] * (1 - merged["accuracy_a"]) / merged["n_images_a"]
        + merged["accuracy_b"] * (1 - merged["accuracy_b"]) / merged["n_images_b"]
    )
    half = Z95 * np.sqrt(variance)
    merged["difference_low"] = merged["difference"] - half
    merged["difference_high"] = merged["difference"] + half
    merged["significant"] = (merged["difference_low"] > 0) | (merged["difference_high"] < 0)
    columns = ["parameter_a", "parameter_b", "accuracy_a", "accuracy_b", "difference", "difference_low"]
    return merged[[*CELL, *columns, "difference_high", "significant"]]


def compare_markdown(table: pd.DataFrame, name_a: str, name_b: str, only_a: int, only_b: int) -> str:
    """The comparison as markdown: one row per shared cell."""
    rows = [
        [
            r["model"],
            r["perturbation"],
            r["severity"],
            pct(r["accuracy_a"]),
            pct(r["accuracy_b"]),
            points(r["difference"]),
            f"{points(r['difference_low'])} to {points(r['difference_high'])}",
            "yes" if r["significant"] else "no",
        ]
        for r in table.to_dict("records")
    ]
    changed = int(table["significant"].sum())
    parameters_differ = table[~np.isclose(table["parameter_a"].fillna(math.inf), table["parameter_b"].fillna(math.inf))]
    notes = [
        f"# Comparison: {name_a} (A) vs {name_b} (B)",
        "",
        f"{len(table)} cells in both runs; {changed} differ beyond the 95 % interval of the difference "
        f"(independent proportions). Cells only in A: {only_a}; only in B: {only_b}.",
    ]
    if len(parameters_differ):
        notes.append(f"Warning: {len(parameters_differ)} shared cells have different parameters in A and B.")
    headers = ["model", "perturbation", "severity", "A", "B", "B - A", "95 % interval", "beyond noise"]
    return "\n".join([*notes, "", markdown_table(headers, rows)]) + "\n"

"""Two saved runs side by side: accuracy differences per cell, tested by the rule the runs allow.

The rule, chosen once for the whole comparison and printed with it:

- `paired`: both sides evaluate the same weights (equal SHA-256 for every shared model and seed,
  as after a change to the evaluation code) and both have outcomes.npz. Exact McNemar test on the
  images one side got right and the other wrong, pooled over seeds: no training noise at all,
  and the shared test images cancel, so it is far tighter than independent proportions.
- `seeds`: different trainings with at least two seeds on each side. Welch's t-test on the seed
  accuracies of each cell (both sides use the same test images, so training noise is what varies).
- `noise-from`: fewer than two seeds on a side, and a multi-seed report of the same recipes given
  (`--noise-from`). Each side's seed variance comes from that report's spread for its model and
  cell; the t-test has that report's seeds - 1 degrees of freedom (Welch-Satterthwaite across two
  models).
- `none`: fewer than two seeds on a side and no noise report. Nothing is called significant: a
  single training per side cannot separate a difference from training noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from robustbench_fmnist.report.bundle import ReportData
from robustbench_fmnist.report.markdown import markdown_table, pct, points
from robustbench_fmnist.report.tables import CELL, seed_mean
from robustbench_fmnist.statistics import (
    mcnemar_exact,
    paired_difference_interval,
    satterthwaite,
    t_test_with_known_spread,
    welch,
)

ALPHA = 0.05
RULES = {
    "paired": "same weights on both sides: exact McNemar test on the images only one side got right",
    "seeds": "different trainings, 2+ seeds a side: Welch's t-test on the seed accuracies",
    "noise-from": "fewer than 2 seeds on a side: t-test with the seed spread of the --noise-from report",
    "none": "fewer than 2 seeds on a side and no --noise-from report: a difference cannot be separated from "
    "training noise, so none is called significant",
}
COLUMNS = [
    *CELL,
    "model_b",
    "parameter_a",
    "parameter_b",
    "seeds_a",
    "seeds_b",
    "accuracy_a",
    "accuracy_b",
    "difference",
    "difference_low",
    "difference_high",
    "p_value",
    "significant",
]


@dataclass
class Comparison:
    table: pd.DataFrame  # COLUMNS, one row per shared cell
    rule: str  # a key of RULES
    note: str = ""  # why a stronger rule was not used, if it was not


def _weights(data: ReportData, model: str) -> dict[int, str | None]:
    records = [m for m in data.run["models"] if m.get("name") == model and m.get("seed") is not None]
    return {int(m["seed"]): m.get("weights_sha256") for m in records}


def _choose_rule(first: ReportData, second: ReportData, model_a: str, model_b: str, merged: pd.DataFrame,
                 noise: ReportData | None) -> tuple[str, str]:  # fmt: skip
    note = ""
    wa, wb = _weights(first, model_a), _weights(second, model_b)
    shared_seeds = set(wa) & set(wb)
    same = bool(shared_seeds) and all(wa[s] is not None and wa[s] == wb[s] for s in shared_seeds)
    if same and set(wa) == set(wb):
        if first.outcomes is not None and second.outcomes is not None:
            return "paired", note
        note = "Both sides hold the same weights, but outcomes.npz is missing on one side, so no paired test. "
    if len(merged) and int(merged[["seeds_a", "seeds_b"]].min().min()) >= 2:
        return "seeds", note
    if noise is not None:
        return "noise-from", note
    return "none", note


def compare_runs(
    first: ReportData,
    second: ReportData,
    *,
    noise: ReportData | None = None,
    model_a: str | None = None,
    model_b: str | None = None,
    alpha: float = ALPHA,
) -> Comparison:
    """Cells both runs have, with accuracy A, B, B - A, its 95 % interval and p-value by one rule.

    `model_a` / `model_b` compare one model of A with another of B (e.g. baseline_cnn vs deep_cnn);
    by default each model is set against the model of the same name.
    """
    a, b = seed_mean(first.results), seed_mean(second.results)
    if model_a is not None:
        a = a[a["model"] == model_a]
        b = b[b["model"] == (model_b or model_a)]
        b = b.assign(model_b=b["model"], model=model_a)
    else:
        b = b.assign(model_b=b["model"])
    keep = [*CELL, "parameter", "seeds", "accuracy"]
    merged = a[keep].merge(b[[*keep, "model_b"]], on=CELL, suffixes=("_a", "_b"), how="inner", sort=False)
    merged["difference"] = merged["accuracy_b"] - merged["accuracy_a"]
    models = list(dict.fromkeys(zip(merged["model"], merged["model_b"], strict=True)))
    rules = {_choose_rule(first, second, ma, mb, merged[merged["model"] == ma], noise) for ma, mb in models}
    # one rule for the whole comparison: the weakest any model pair allows
    order = ["none", "noise-from", "seeds", "paired"]
    rule, note = min(rules, key=lambda r: order.index(r[0])) if rules else ("none", "")
    tests = {"paired": _paired, "seeds": _welch, "noise-from": _with_noise, "none": _untested}
    rows = [tests[rule](row, first, second, noise) for row in merged.to_dict("records")]
    stats = pd.DataFrame(rows, columns=["difference_low", "difference_high", "p_value"], index=merged.index)
    merged = pd.concat([merged, stats], axis=1)
    # None where the rule cannot test a cell: "cannot tell" is not "no difference"
    merged["significant"] = pd.Series(
        [None if pd.isna(p) else bool(p < alpha) for p in merged["p_value"]], index=merged.index, dtype=object
    )
    return Comparison(merged[COLUMNS], rule, note)


def _paired(row: dict, first: ReportData, second: ReportData, noise: ReportData | None) -> tuple[float, float, float]:
    """Exact McNemar over the images of every seed both sides share."""
    ours, theirs = first.outcomes.by_key, second.outcomes.by_key  # type: ignore[union-attr]
    a_only = b_only = pairs = 0
    for seed in first.outcomes.seeds:  # type: ignore[union-attr]
        correct_a = ours.get((row["model"], seed, row["perturbation"], row["severity"]))
        correct_b = theirs.get((row["model_b"], seed, row["perturbation"], row["severity"]))
        if correct_a is None or correct_b is None or len(correct_b) != len(correct_a):
            continue
        a_only += int((correct_a & ~correct_b).sum())
        b_only += int((correct_b & ~correct_a).sum())
        pairs += len(correct_a)
    if pairs == 0:
        return math.nan, math.nan, math.nan
    low, high = paired_difference_interval(a_only, b_only, pairs)
    return low, high, mcnemar_exact(a_only, b_only)


def _seed_values(data: ReportData, model: str, row: dict) -> np.ndarray:
    results = data.results
    chosen = results[
        (results["model"] == model)
        & (results["perturbation"] == row["perturbation"])
        & (results["severity"] == row["severity"])
    ]
    return chosen["accuracy"].dropna().to_numpy(dtype=float)


def _welch(row: dict, first: ReportData, second: ReportData, noise: ReportData | None) -> tuple[float, float, float]:
    a, b = _seed_values(first, row["model"], row), _seed_values(second, row["model_b"], row)
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan, math.nan
    return welch(a, b)


def _with_noise(
    row: dict, first: ReportData, second: ReportData, noise: ReportData | None
) -> tuple[float, float, float]:
    """The variance of each side's seed mean from the noise report's spread for that model and cell."""
    spread_a, spread_b = _seed_values(noise, row["model"], row), _seed_values(noise, row["model_b"], row)  # type: ignore[arg-type]
    if len(spread_a) < 2 or len(spread_b) < 2:
        return math.nan, math.nan, math.nan
    va, vb = spread_a.var(ddof=1) / row["seeds_a"], spread_b.var(ddof=1) / row["seeds_b"]
    if row["model"] == row["model_b"]:
        df = len(spread_a) - 1  # one spread estimate serves both sides
    else:
        df = satterthwaite([(va, len(spread_a) - 1), (vb, len(spread_b) - 1)])
    return t_test_with_known_spread(row["difference"], va + vb, df)


def _untested(row: dict, first: ReportData, second: ReportData, noise: ReportData | None) -> tuple[float, float, float]:
    return math.nan, math.nan, math.nan


def compare_markdown(comparison: Comparison, name_a: str, name_b: str, only_a: int, only_b: int) -> str:
    """The comparison as markdown: the rule, then one row per shared cell."""
    table = comparison.table
    rows = [
        [
            r["model"] if r["model"] == r["model_b"] else f"{r['model']} vs {r['model_b']}",
            r["perturbation"],
            r["severity"],
            f"{pct(r['accuracy_a'])} ({int(r['seeds_a'])})",
            f"{pct(r['accuracy_b'])} ({int(r['seeds_b'])})",
            points(r["difference"]),
            f"{points(r['difference_low'])} to {points(r['difference_high'])}",
            "n/a" if pd.isna(r["p_value"]) else f"{r['p_value']:.3g}",
            {True: "yes", False: "no"}.get(r["significant"], "cannot tell"),
        ]
        for r in table.to_dict("records")
    ]
    flagged = int((table["significant"] == True).sum())  # noqa: E712  (None means untested)
    untested = int(table["significant"].isna().sum())
    parameters_differ = table[~np.isclose(table["parameter_a"].fillna(math.inf), table["parameter_b"].fillna(math.inf))]
    notes = [
        f"# Comparison: {name_a} (A) vs {name_b} (B)",
        "",
        f"Rule: **{comparison.rule}** ({RULES[comparison.rule]}). {comparison.note}".rstrip(),
        "",
        f"{len(table)} cells in both runs; {flagged} differ beyond noise (p < {ALPHA:g})"
        + (f"; {untested} cannot be tested" if untested else "")
        + f". Cells only in A: {only_a}; only in B: {only_b}. Accuracies in %, seeds in brackets; the interval is "
        "the 95 % interval of B - A under the rule.",
    ]
    if len(parameters_differ):
        notes.append(f"Warning: {len(parameters_differ)} shared cells have different parameters in A and B.")
    headers = ["model", "perturbation", "severity", "A (seeds)", "B (seeds)", "B - A", "95 % interval", "p"]
    headers.append("beyond noise")
    return "\n".join([*notes, "", markdown_table(headers, rows)]) + "\n"

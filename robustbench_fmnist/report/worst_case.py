"""The worst-case section of a report: adversaries.csv as tables over seeds, and its curves' data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from robustbench_fmnist.evaluation.consistency import heatmap
from robustbench_fmnist.files import safe_file_name
from robustbench_fmnist.perturbations.space import Space
from robustbench_fmnist.statistics import t_quantile


def seed_curves(adversaries: pd.DataFrame) -> pd.DataFrame:
    """Each grid adversary's curve over seeds: accuracy and its 95 % interval (over seeds: the t interval of the
    mean; one seed: the row's Wilson interval over images)."""
    grid = adversaries[adversaries["search"] == "grid"]
    rows = []
    for key, group in grid.groupby(["model", "adversary", "budget", "budget_label"], sort=False):
        mean = float(group["accuracy"].mean())
        if len(group) > 1:
            half = t_quantile(len(group) - 1) * float(group["accuracy"].std(ddof=1)) / len(group) ** 0.5
            low, high = mean - half, mean + half
        else:
            low, high = float(group["accuracy_low"].iloc[0]), float(group["accuracy_high"].iloc[0])
        rows.append(dict(zip(["model", "adversary", "budget", "budget_label"], key, strict=True)))
        rows[-1].update(accuracy=mean, accuracy_low=low, accuracy_high=high)
    return pd.DataFrame(rows)


HEADERS = ["model", "adversary", "search", "clean", "one random draw", "worst case", "mean over points",
           "orbit consistency"]  # fmt: skip


def worst_case_section(adversaries: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """'## The worst case per image': its opening lines, and per model and adversary a row of HEADERS."""
    whole = adversaries[adversaries["budget"] == 1.0]
    seeds = whole["seed"].nunique()
    out = [
        "## The worst case per image",
        "",
        "Each adversary searches its space for every test image: an image counts as correct only if it is right "
        "on the clean image and at every point the search tried (`random`: one draw per image; `worst_of_k`: k "
        "draws; `grid`: every point; `gradient`: signed-gradient steps on the continuous parameters). "
        f"Mean over {seeds} seed{'s' if seeds != 1 else ''} (min-max in brackets); per-image counts in "
        "`adversaries.csv`, the per-image records in the cache (`run.json` lists them).",
        "",
    ]
    rows = []
    for (model, adversary), group in whole.groupby(["model", "adversary"], sort=False):
        first = group.iloc[0]
        over_points = group["accuracy_over_points"] if "accuracy_over_points" in group else pd.Series(dtype=float)
        rows.append(
            [
                model,
                adversary,
                first["search"],
                _spread(group["accuracy_clean"]),
                _spread(group["accuracy_random_draw"]),
                _spread(group["accuracy"]),
                _spread(over_points) if over_points.notna().any() else "",
                f"{group['orbit_consistency'].mean():.3f}" if group["orbit_consistency"].notna().any() else "",
            ]
        )
    return out, rows


def _spread(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return ""
    if len(values) == 1:
        return f"{100 * values.iloc[0]:.2f}"
    return f"{100 * values.mean():.2f} [{100 * values.min():.2f}-{100 * values.max():.2f}]"


CONSISTENCY_HEADERS = ["condition", "between models: kappa", "pairs", "between seeds of one model: kappa", "pairs"]


def consistency_summary(consistency: pd.DataFrame) -> list[list[str]]:
    """Per condition (clean, each worst case, then the suite cells): mean kappa between different models and
    between seeds of one model, with the range over pairs."""
    rows = []
    order = sorted(set(consistency["condition"]), key=lambda c: (c != "clean", not c.startswith("worst case"), c))
    for condition in order:
        mine = consistency[consistency["condition"] == condition]
        same = mine["model_a"] == mine["model_b"]
        rows.append([condition, *_kappa_cell(mine[~same]["kappa"]), *_kappa_cell(mine[same]["kappa"])])
    return rows


def _kappa_cell(values: pd.Series) -> list[str]:
    values = values.dropna()
    if values.empty:
        return ["", "0"]
    return [f"{values.mean():.3f} [{values.min():.3f}, {values.max():.3f}]", str(len(values))]


def model_matrix(consistency: pd.DataFrame, condition: str) -> pd.DataFrame:
    """Kappa between different models in one condition, averaged over their seed pairs (with the intervals')."""
    mine = consistency[(consistency["condition"] == condition) & (consistency["model_a"] != consistency["model_b"])]
    pairs = mine.assign(first=mine[["model_a", "model_b"]].min(axis=1), second=mine[["model_a", "model_b"]].max(axis=1))
    grouped = pairs.groupby(["first", "second"], sort=False)[["kappa", "kappa_low", "kappa_high"]].mean()
    return grouped.reset_index().rename(columns={"first": "model_a", "second": "model_b"})


@dataclass(frozen=True)
class Heatmap:
    """One model's fooling rates over a grid adversary's first two dimensions (the others averaged)."""

    title: str
    filename: str
    grid: torch.Tensor
    row_values: list[float]
    col_values: list[float]
    row_name: str
    col_name: str


def space_dims(adversaries: list[dict[str, Any]], name: str) -> tuple[str, ...]:
    """The dimensions of the named adversary's space, as run.json's config records it."""
    space = next(a["space"] for a in adversaries if a["name"] == name)
    return _space(space).dims


def _space(space: dict[str, Any]) -> Space:
    return Space(tuple((axis, float(lo), float(hi), int(n)) for axis, (lo, hi, n) in space.items()))


def fooling_heatmaps(fooling: pd.DataFrame, adversaries: list[dict[str, Any]]) -> list[Heatmap]:
    """Per grid adversary of two or more dimensions and per model, the seed-averaged fooling rate of every point."""
    spaces = {a["name"]: a["space"] for a in adversaries}
    maps = []
    for (adversary, model), group in fooling.groupby(["adversary", "model"], sort=False):
        space = _space(spaces[adversary])
        if len(space.dims) < 2:
            continue
        rates = torch.tensor(group.groupby("point")["fooling_rate"].mean().sort_index().to_numpy())
        shape = tuple(len(g) for g in space.grids)
        maps.append(
            Heatmap(
                title=f"How often each point fools {model}: {adversary}",
                filename=f"fooling_{safe_file_name(adversary)}_{safe_file_name(model)}.png",
                grid=heatmap(rates, shape, (0, 1)),
                row_values=space.grids[0].tolist(),
                col_values=space.grids[1].tolist(),
                row_name=space.dims[0],
                col_name=space.dims[1],
            )
        )
    return maps


TRANSFER_HEADERS = ["adversary", "model", "at its own worst points", "at the worst points of", "there", "clean"]


def transfer_table(transfer: pd.DataFrame) -> list[list[str]]:
    """Per adversary and model: its own worst case, and its accuracy at each other model's worst points (seed means)."""
    rows = []
    for (adversary, model, source), group in transfer.groupby(["adversary", "model", "source"], sort=False):
        rows.append(
            [
                adversary,
                model,
                _spread(group["accuracy_own_worst_case"]),
                source,
                _spread(group["accuracy"]),
                _spread(group["accuracy_clean"]),
            ]
        )
    return rows

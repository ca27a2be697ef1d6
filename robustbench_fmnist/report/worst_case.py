"""The worst-case section of a report: adversaries.csv as tables over seeds, and its curves' data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from robustbench_fmnist.evaluation.consistency import heatmap
from robustbench_fmnist.evaluation.metrics import wilson_interval
from robustbench_fmnist.files import safe_file_name
from robustbench_fmnist.perturbations.space import Space
from robustbench_fmnist.statistics import accuracy_half_width


def seed_curves(adversaries: pd.DataFrame) -> pd.DataFrame:
    """Each grid adversary's curve over seeds: accuracy and its 95 % interval (the harness's accuracy interval:
    seeds and test images; one seed: the Wilson interval over images)."""
    grid = adversaries[adversaries["search"] == "grid"]
    rows = []
    for key, group in grid.groupby(["model", "adversary", "budget", "budget_label"], sort=False):
        mean, low, high = seed_interval(group["accuracy"], int(group["n_images"].iloc[0]))
        rows.append(dict(zip(["model", "adversary", "budget", "budget_label"], key, strict=True)))
        rows[-1].update(accuracy=mean, accuracy_low=low, accuracy_high=high)
    return pd.DataFrame(rows)


def seed_interval(values: pd.Series, images: int) -> tuple[float, float, float]:
    """The mean of one share per seed (an accuracy over `images` images) and its 95 % interval, as every accuracy
    of the harness: the t interval over seeds and the sampling of the images; one seed: Wilson over images."""
    values = values.dropna()
    mean = float(values.mean())
    if len(values) == 1:
        low, high = wilson_interval(round(mean * images), images)
        return mean, low, high
    one = pd.Series([mean])
    half = float(
        accuracy_half_width(one, pd.Series([values.std(ddof=1)]), pd.Series([len(values)]), pd.Series([images]))[0]
    )
    return mean, max(0.0, mean - half), min(1.0, mean + half)


HEADERS = ["model", "adversary", "search", "clean", "one random draw", "worst case", "mean over points",
           "orbit consistency"]  # fmt: skip


def worst_case_section(adversaries: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """'## The worst case per image': its opening lines, and per model and adversary a row of HEADERS."""
    whole = adversaries[adversaries["budget"] == 1.0]
    seeds = whole["seed"].nunique()
    spread = (
        f"mean over {seeds} seeds with its 95 % interval (between trainings and over the test images, as every "
        "accuracy here)"
        if seeds > 1
        else "one seed, with the 95 % Wilson interval over the test images (training noise left out)"
    )
    out = [
        "## The worst case per image",
        "",
        "Each adversary searches its space for every test image: an image counts as correct only if it is right "
        "on the clean image and at every point the search tried (`random`: one draw per image; `worst_of_k`: k "
        "draws; `grid`: every point; `gradient`: signed-gradient steps on the continuous parameters). "
        f"Accuracy in %, {spread}. The mean over points and the orbit consistency (the share of images "
        "predicted alike at every point, right or wrong) come from the grid's sample of images, the rest from "
        f"the test images each adversary searched ({_searched_images(whole)}); per-image counts in "
        "`adversaries.csv`, the per-image records in the cache (`run.json` lists them).",
        "",
    ]
    rows = []
    for (model, adversary), group in whole.groupby(["model", "adversary"], sort=False):
        images = int(group["n_images"].iloc[0])
        sample = (
            int(group["sample_images"].iloc[0])
            if "sample_images" in group and group["sample_images"].notna().any()
            else 0
        )
        rows.append(
            [
                model,
                adversary,
                group.iloc[0]["search"],
                _interval_text(group["accuracy_clean"], images),
                _interval_text(group["accuracy_random_draw"], images),
                _interval_text(group["accuracy"], images),
                _interval_text(group.get("accuracy_over_points", pd.Series(dtype=float)), sample),
                _interval_text(group.get("orbit_consistency", pd.Series(dtype=float)), sample),
            ]
        )
    return out, rows


def _searched_images(whole: pd.DataFrame) -> str:
    """How many test images each adversary searched: 'all 10,000', or which searched only the first N."""
    counts = whole.groupby("adversary", sort=False)["n_images"].max()
    most = int(counts.max())
    fewer = [f"`{name}` the first {int(n):,}" for name, n in counts.items() if n < most]
    if not fewer:
        return f"{most:,} each"
    return (
        f"{most:,} each, except {', '.join(fewer)} (its `test_images`: the order grid <= worst-of-k <= random holds "
        "per image, but rows over different images may not keep it)"
    )


def _interval_text(values: pd.Series, images: int) -> str:
    """'mean (low–high)' in %, or blank where the search does not measure it."""
    if values.dropna().empty or images < 1:
        return ""
    mean, low, high = seed_interval(values, images)
    return f"{100 * mean:.2f} ({100 * low:.2f}–{100 * high:.2f})"


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
    return Space.of(space).dims


def fooling_heatmaps(fooling: pd.DataFrame, adversaries: list[dict[str, Any]]) -> list[Heatmap]:
    """Per grid adversary of two or more dimensions and per model, the seed-averaged fooling rate of every point."""
    spaces = {a["name"]: a["space"] for a in adversaries}
    maps = []
    for (adversary, model), group in fooling.groupby(["adversary", "model"], sort=False):
        space = Space.of(spaces[adversary])
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
    """Per adversary and model: its own worst case, and its accuracy at each other model's worst points (seed means
    with their intervals)."""
    rows = []
    for (adversary, model, source), group in transfer.groupby(["adversary", "model", "source"], sort=False):
        images = int(group["n_images"].iloc[0])
        rows.append(
            [
                adversary,
                model,
                _interval_text(group["accuracy_own_worst_case"], images),
                source,
                _interval_text(group["accuracy"], images),
                _interval_text(group["accuracy_clean"], images),
            ]
        )
    return rows

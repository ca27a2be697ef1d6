"""The report's figures as PNG bytes, drawn with matplotlib (Agg) from the saved rows.

Byte for byte reproducible: no timestamps or version strings in the files, fixed size and dpi,
and only inputs that come from the report folder.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from robustbench_fmnist.evaluation.cells import CLEAN
from robustbench_fmnist.files import atomic_path
from robustbench_fmnist.report.leaderboard import ROLES
from robustbench_fmnist.report.tables import (
    class_drop_matrix,
    format_parameter,
    parameter_labels,
    reliability_table,
    severity_table,
)

if TYPE_CHECKING:
    import torch

_DPI = 100
_STYLE = {"font.family": "DejaVu Sans", "font.size": 9, "axes.grid": True, "grid.alpha": 0.3, "svg.hashsalt": "rbfm"}


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None}, bbox_inches=None)
    plt.close(figure)
    return buffer.getvalue()


def severity_curves(cells: pd.DataFrame, perturbations: Sequence[dict], family: str) -> bytes:
    """Accuracy vs severity for the family's perturbations, one panel each, one line per model,
    shaded by the 95 % interval."""
    names = [p["name"] for p in perturbations if p["family"] == family and p["name"] in set(cells.perturbation)]
    units = {p["name"]: p["unit"] for p in perturbations}
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    with plt.rc_context(_STYLE):
        figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
        for axis, name in zip(axes.flat, names, strict=False):
            table = severity_table(cells, name)
            severities = sorted(int(c[1:]) for c in table.columns if c.startswith("s") and c[1:].isdigit())
            x = [0, *severities]
            for record in table.to_dict("records"):
                clean = cells[(cells.model == record["model"]) & (cells.perturbation == CLEAN)].iloc[0]
                y = [record["clean"], *(record[f"s{s}"] for s in severities)]
                low = [clean["accuracy_low"], *(record[f"s{s}_low"] for s in severities)]
                high = [clean["accuracy_high"], *(record[f"s{s}_high"] for s in severities)]
                (line,) = axis.plot(x, np.multiply(y, 100), marker="o", markersize=3, label=record["model"])
                axis.fill_between(x, np.multiply(low, 100), np.multiply(high, 100), color=line.get_color(), alpha=0.2)
            axis.set_title(name)
            axis.set_xlabel(units[name])
            axis.set_ylabel("accuracy (%)")
            parameters = parameter_labels(cells, name)
            axis.set_xticks(x, ["clean", *(format_parameter(parameters[s], units[name]) for s in severities)])
            axis.set_ylim(0, 100)
        for axis in list(axes.flat)[len(names) :]:
            axis.set_visible(False)
        axes.flat[0].legend(loc="lower left", fontsize=8)
        seeds = int(cells["seeds"].max())
        over = f"over {seeds} trainings and the test images" if seeds > 1 else "over the test images, one training"
        figure.suptitle(f"{family}: accuracy by severity (bands: 95 % interval {over})")
        figure.tight_layout()
        return _png(figure)


def class_heatmap(per_class: pd.DataFrame, model: str) -> bytes:
    """Mean drop of each class's accuracy (points) under each perturbation, for one model."""
    matrix = class_drop_matrix(per_class, model) * 100
    with plt.rc_context({**_STYLE, "axes.grid": False}):
        figure, axis = plt.subplots(figsize=(max(4.5, 2.0 + 0.55 * matrix.shape[1]), 4.2))
        values = matrix.to_numpy()
        finite = values[np.isfinite(values)]  # invalid cells (NaN logits) have no drop
        top = max(10.0, float(finite.max())) if finite.size else 10.0
        image = axis.imshow(values, cmap="Reds", vmin=0, vmax=top)
        axis.set_xticks(range(matrix.shape[1]), matrix.columns, rotation=60, ha="right")
        axis.set_yticks(range(matrix.shape[0]), matrix.index)
        for (i, j), value in np.ndenumerate(matrix.to_numpy()):
            if not np.isnan(value):
                axis.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7)
        figure.colorbar(image, ax=axis, label="accuracy drop (points)")
        axis.set_title(f"{model}: per-class drop, mean over severities")
        figure.tight_layout()
        return _png(figure)


def reliability_diagram(calibration: pd.DataFrame, model: str) -> bytes:
    """Accuracy vs confidence per bin: clean, and every perturbation's most severe cell pooled."""
    with plt.rc_context(_STYLE):
        figure, axes = plt.subplots(1, 2, figsize=(8.0, 3.6), sharey=True)
        for axis, (title, severity) in zip(axes, (("clean", 0), ("most severe, pooled", None)), strict=True):
            bins = reliability_table(calibration, model, severity)
            centres = (bins["lower"] + bins["upper"]) / 2
            width = float((bins["upper"] - bins["lower"]).iloc[0])
            axis.bar(
                centres, bins["accuracy"].fillna(0), width=width * 0.9, color="tab:blue", alpha=0.7, label="accuracy"
            )
            axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
            axis.plot(centres, bins["confidence"], marker=".", color="tab:red", linewidth=1, label="mean confidence")
            share = bins["count"] / max(1, int(bins["count"].sum()))
            ece = float((share * (bins["accuracy"] - bins["confidence"]).abs()).fillna(0).sum())
            axis.set_title(f"{title} (ECE {100 * ece:.1f} %)")
            axis.set_xlabel("confidence")
            axis.set_xlim(0, 1)
            axis.set_ylim(0, 1)
        axes[0].set_ylabel("accuracy")
        axes[0].legend(loc="upper left", fontsize=7)
        pooled = ", seeds pooled" if calibration["seed"].nunique() > 1 else ""
        figure.suptitle(f"{model}: reliability, 15 bins{pooled}")
        figure.tight_layout()
        return _png(figure)


def example_grid(
    images: np.ndarray,
    labels: Sequence[int],
    predictions: np.ndarray,
    row_names: Sequence[str],
    class_names: Sequence[str],
    model: str,
) -> bytes:
    """Rows: clean and each perturbation's most severe cell; columns: one test image per class.

    Each tile is titled with the model's prediction; wrong ones, and images whose logits were
    not finite ("no prediction"), are framed and titled in red.
    """
    rows, columns = images.shape[:2]
    with plt.rc_context({**_STYLE, "axes.grid": False}):
        figure, axes = plt.subplots(rows, columns, figsize=(1.0 * columns + 1.6, 1.05 * rows + 0.5), squeeze=False)
        for (r, c), axis in np.ndenumerate(axes):
            predicted = int(predictions[r, c])
            wrong = predicted != int(labels[c])
            axis.imshow(images[r, c], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            # a class index past the names is the evaluator's NO_PREDICTION: the logits were NaN or inf
            title = class_names[predicted] if predicted < len(class_names) else "no prediction"
            axis.set_title(title, fontsize=6, color="red" if wrong else "black")
            for spine in axis.spines.values():
                spine.set_color("red" if wrong else "lightgrey")
                spine.set_linewidth(2.0 if wrong else 0.5)
            if c == 0:
                axis.set_ylabel(row_names[r], fontsize=6, rotation=0, ha="right", va="center")
        figure.suptitle(f"{model}: predictions (red: wrong); true classes: {', '.join(class_names[i] for i in labels)}")
        figure.tight_layout()
        return _png(figure)


def throughput_curves(throughput: pd.DataFrame) -> bytes:
    """Inference images/s against batch size (log-log), one line per model, device, dtype and compile."""
    rows = throughput[(throughput["kind"] == "inference") & (throughput["status"] == "ok")]
    with plt.rc_context(_STYLE):
        figure, axis = plt.subplots(figsize=(7.0, 4.0))
        for key, group in rows.groupby(["model", "device", "dtype", "compiled"], sort=False):
            model, device, dtype, compiled = key
            group = group.sort_values("batch_size")
            label = f"{model} {device} {dtype}" + (" compiled" if compiled else "")
            (line,) = axis.plot(group["batch_size"], group["images_per_second"], marker="o", markersize=3, label=label)
            axis.fill_between(
                group["batch_size"],
                group["images_per_second_low"],
                group["images_per_second_high"],
                color=line.get_color(),
                alpha=0.2,
            )
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("batch size")
        axis.set_ylabel("images / s")
        axis.legend(fontsize=7, loc="lower right")
        axis.set_title("Inference throughput (bands: slowest to fastest repeat)")
        figure.tight_layout()
        return _png(figure)


_ROLE_MARKERS = dict(zip(ROLES, ("o", "^", "s", "D"), strict=True))  # standard, robust, adapted, checkpoint


def accuracy_on_the_line(
    points: pd.DataFrame, fit: object | None, family: str, scale: str, forward: Callable[[np.ndarray], np.ndarray]
) -> bytes:
    """Shifted vs clean accuracy on the fit's axes (`forward`: logit, probit or identity), one point per model
    with its seed interval as error bars, the fit over the standard models with its bootstrap band; the other
    roles get their own markers and are not part of the fit. Ticks are labelled in accuracy."""
    with plt.rc_context(_STYLE):
        figure, axis = plt.subplots(figsize=(7.5, 6.0))
        for role, marker in _ROLE_MARKERS.items():
            mine = points[points.role == role]
            if mine.empty:
                continue
            x, y = mine["clean_accuracy"].to_numpy(), mine["shifted_accuracy"].to_numpy()
            tx, ty = forward(x), forward(y)
            xerr = _error_bars(
                tx,
                forward(mine["clean_accuracy_low"].fillna(mine["clean_accuracy"]).to_numpy()),
                forward(mine["clean_accuracy_high"].fillna(mine["clean_accuracy"]).to_numpy()),
            )
            yerr = _error_bars(
                ty,
                forward(mine["shifted_accuracy_low"].fillna(mine["shifted_accuracy"]).to_numpy()),
                forward(mine["shifted_accuracy_high"].fillna(mine["shifted_accuracy"]).to_numpy()),
            )
            axis.errorbar(tx, ty, xerr=xerr, yerr=yerr, fmt=marker, markersize=5, capsize=2, label=role, alpha=0.85)
            for name, px, py in zip(mine["model"], tx, ty, strict=True):
                axis.annotate(name, (px, py), textcoords="offset points", xytext=(4, 3), fontsize=6.5)
        x_low, x_high = axis.get_xlim()
        y_low, y_high = axis.get_ylim()
        if fit is not None:
            label = f"fit over {len(fit.models)} standard models"
            axis.plot(forward(fit.grid), forward(fit.curve), color="black", linewidth=1.2, label=label)
            axis.fill_between(forward(fit.grid), forward(fit.band_low), forward(fit.band_high), color="black",
                              alpha=0.12, label="95 % bootstrap band")  # fmt: skip
        diagonal = np.linspace(x_low, x_high, 20)
        axis.plot(diagonal, diagonal, linestyle="--", color="grey", linewidth=0.8, label="y = x (no loss)")
        axis.set_xlim(x_low, x_high)
        axis.set_ylim(min(y_low, x_low) if x_low < y_high else y_low, y_high)
        _accuracy_ticks(axis, forward)
        axis.set_xlabel(f"clean accuracy (%, {scale} axis)")
        axis.set_ylabel(f"mean accuracy under {family} shifts (%, {scale} axis)")
        axis.legend(loc="best", fontsize=8)
        seeds = int(points["seeds"].max())
        figure.suptitle(f"{family}: accuracy on the line (error bars: 95 % interval over {seeds} seeds)")
        figure.tight_layout()
        return _png(figure)


_TICKS = np.array([0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.96,
                   0.98, 0.99])  # fmt: skip


def _accuracy_ticks(axis: plt.Axes, forward: Callable[[np.ndarray], np.ndarray]) -> None:
    """Label both transformed axes with the accuracies (in %) that fall inside them."""
    for limits, setter in ((axis.get_xlim(), axis.set_xticks), (axis.get_ylim(), axis.set_yticks)):
        at = forward(_TICKS)
        inside = (at >= limits[0]) & (at <= limits[1])
        setter(at[inside], [f"{100 * t:g}" for t in _TICKS[inside]])


def _error_bars(values: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    below = np.nan_to_num(values - np.asarray(low, dtype=float), nan=0.0)
    above = np.nan_to_num(np.asarray(high, dtype=float) - values, nan=0.0)
    return np.vstack([np.maximum(below, 0.0), np.maximum(above, 0.0)])


def ranking_bars(board: pd.DataFrame, family: str) -> bytes:
    """Mean shifted accuracy per model, best first, with its 95 % interval and the model's clean accuracy."""
    rows = board[board.family == family].sort_values("shifted_accuracy", kind="stable")
    with plt.rc_context(_STYLE):
        figure, axis = plt.subplots(figsize=(7.5, 0.32 * len(rows) + 1.4))
        y = np.arange(len(rows))
        values = rows["shifted_accuracy"].to_numpy() * 100
        errors = _error_bars(values, rows["shifted_accuracy_low"].to_numpy() * 100,
                             rows["shifted_accuracy_high"].to_numpy() * 100)  # fmt: skip
        axis.barh(y, values, xerr=errors, capsize=2, color="#4c72b0", alpha=0.8, label="under shift")
        axis.scatter(rows["clean_accuracy"] * 100, y, marker="|", s=120, color="black", label="clean", zorder=3)
        axis.set_yticks(y, [f"{r} {m}" for r, m in zip(rows["rank_label"], rows["model"], strict=True)])
        axis.set_xlabel("accuracy (%)")
        axis.set_xlim(0, 100)
        axis.legend(loc="lower right", fontsize=8)
        figure.suptitle(f"{family}: mean accuracy under shift, ranked (bars: 95 % interval)")
        figure.tight_layout()
        return _png(figure)


def _save(png: bytes, path: Path) -> None:
    """Write a figure atomically, so an interrupted report never holds half a PNG."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(png)


def _sparse_ticks(values: Sequence[float], most: int = 12) -> tuple[list[int], list[str]]:
    """Positions and labels of at most `most` evenly spaced ticks, so a 31-value axis stays readable."""
    step = max(1, -(-len(values) // most))
    positions = list(range(0, len(values), step))
    return positions, [f"{float(values[i]):g}" for i in positions]


def plot_worst_case_curves(curves: pd.DataFrame, path: Path) -> None:
    """Worst-case accuracy against the search budget, one panel per adversary, one line per model with its
    95 % interval band; x is the share of the space's reach, and the panel's title says what a budget of 1 is."""
    adversaries = list(dict.fromkeys(curves["adversary"]))
    columns = max(1, min(3, len(adversaries)))
    rows = max(1, -(-len(adversaries) // columns))
    models = list(dict.fromkeys(curves["model"]))
    legend_rows = -(-len(models) // 4)
    with plt.rc_context(_STYLE):
        height = 3.2 * rows + 0.3 * legend_rows + 0.4
        figure, axes = plt.subplots(rows, columns, figsize=(4.4 * columns, height), squeeze=False)
        for axis, adversary in zip(axes.flat, adversaries, strict=False):
            mine = curves[curves["adversary"] == adversary]
            for model, line_rows in mine.groupby("model", sort=False):
                line_rows = line_rows.sort_values("budget", kind="stable")
                x = line_rows["budget"].to_numpy(dtype=float)
                (line,) = axis.plot(x, line_rows["accuracy"] * 100, marker="o", markersize=3, label=model)
                axis.fill_between(x, line_rows["accuracy_low"] * 100, line_rows["accuracy_high"] * 100,
                                  color=line.get_color(), alpha=0.2)  # fmt: skip
            ticks = mine.drop_duplicates("budget").sort_values("budget")
            # the budget shares as ticks; the whole reach (budget 1, e.g. "±30 rotation, ±3 translate") in the title,
            # since a label per tick crowds the axis
            axis.set_xticks(ticks["budget"].to_numpy(dtype=float), [f"{b:g}" for b in ticks["budget"]])
            axis.set_title(f"{adversary}\n1 = {ticks['budget_label'].astype(str).iloc[-1]}", fontsize=9)
            axis.set_xlabel("budget (share of the space's reach)")
            axis.set_ylabel("worst-case accuracy (%)")
            axis.set_xlim(-0.02, 1.02)
            axis.set_ylim(0, 100)
        for axis in list(axes.flat)[len(adversaries) :]:
            axis.set_visible(False)
        if adversaries:
            handles, labels = axes.flat[0].get_legend_handles_labels()
            figure.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
        figure.suptitle("Worst case per image: accuracy by budget (bands: 95 % interval)")
        figure.tight_layout(rect=(0, (0.3 * legend_rows + 0.1) / height, 1, 1))
        _save(_png(figure), path)


def plot_fooling_heatmap(
    grid: torch.Tensor,
    row_values: Sequence[float],
    col_values: Sequence[float],
    row_name: str,
    col_name: str,
    title: str,
    path: Path,
) -> None:
    """How often each point of a 2-D slice of the space fools the model (share 0..1 of the images right clean)."""
    values = np.asarray(grid, dtype=float)
    if values.shape != (len(row_values), len(col_values)):
        raise ValueError(f"a {values.shape} grid needs {values.shape[0]} row and {values.shape[1]} column values, "
                         f"got {len(row_values)} and {len(col_values)}")  # fmt: skip
    colours = plt.get_cmap("Reds").with_extremes(bad="lightgrey")  # NaN: no image right clean to fool
    with plt.rc_context({**_STYLE, "axes.grid": False}):
        figure, axis = plt.subplots(
            # grows with the grid but stays page-sized: a 31 x 21 slice is cells, not a poster
            figsize=(min(9.0, max(4.5, 2.0 + 0.3 * values.shape[1])), min(6.0, max(3.6, 1.6 + 0.25 * values.shape[0])))
        )
        image = axis.imshow(np.ma.masked_invalid(values), cmap=colours, vmin=0, vmax=1, aspect="auto")
        axis.set_xticks(*_sparse_ticks(col_values))
        axis.set_yticks(*_sparse_ticks(row_values))
        axis.set_xlabel(col_name)
        axis.set_ylabel(row_name)
        figure.colorbar(image, ax=axis, label="share of images fooled")
        axis.set_title(title)
        figure.tight_layout()
        _save(_png(figure), path)


def plot_consistency_matrix(matrix: pd.DataFrame, path: Path, title: str) -> None:
    """Pairwise error consistency (kappa, -1..1) as a symmetric heatmap, kappa and its 95 % interval in each cell."""
    models = list(dict.fromkeys([*matrix["model_a"], *matrix["model_b"]]))
    if len(models) < 2:
        raise ValueError("a consistency matrix needs at least two models")
    index = {name: i for i, name in enumerate(models)}
    kappa = np.full((len(models), len(models)), np.nan)
    text: dict[tuple[int, int], str] = {}
    for row in matrix.to_dict("records"):
        i, j = index[row["model_a"]], index[row["model_b"]]
        kappa[i, j] = kappa[j, i] = row["kappa"]
        cell = "n/a" if np.isnan(row["kappa"]) else f"{row['kappa']:.2f}"
        if not (np.isnan(row["kappa_low"]) or np.isnan(row["kappa_high"])):
            cell += f"\n[{row['kappa_low']:.2f}, {row['kappa_high']:.2f}]"
        text[i, j] = text[j, i] = cell
    # diverging around 0: kappa 0 is independent errors, the sign says agreement or opposition
    # grey: the diagonal (a model with itself) and undefined pairs
    colours = plt.get_cmap("RdBu").with_extremes(bad="lightgrey")
    size = 2.4 + 0.9 * len(models)
    with plt.rc_context({**_STYLE, "axes.grid": False}):
        figure, axis = plt.subplots(figsize=(size + 1.2, size))
        image = axis.imshow(np.ma.masked_invalid(kappa), cmap=colours, vmin=-1, vmax=1)
        axis.set_xticks(range(len(models)), models, rotation=45, ha="right")
        axis.set_yticks(range(len(models)), models)
        for (i, j), cell in text.items():
            axis.text(j, i, cell, ha="center", va="center", fontsize=6.5 if len(models) <= 6 else 5)
        figure.colorbar(image, ax=axis, label="error consistency (kappa)")
        axis.set_title(title)
        figure.tight_layout()
        _save(_png(figure), path)


def plot_class_heatmaps(by_class: pd.DataFrame, row_name: str, col_name: str, title: str, path: Path) -> None:
    """fooling_by_class.csv's rows of one model and adversary: a heatmap per true class, on one colour scale."""
    classes = list(dict.fromkeys(by_class["class"]))
    row_values = sorted(set(by_class["row_value"]))
    col_values = sorted(set(by_class["col_value"]))
    colours = plt.get_cmap("Reds").with_extremes(bad="lightgrey")  # NaN: no image of the class right clean
    columns = 5
    rows = -(-len(classes) // columns)
    with plt.rc_context({**_STYLE, "axes.grid": False}):
        figure, axes = plt.subplots(rows, columns, figsize=(2.3 * columns, 2.1 * rows + 0.6), squeeze=False)
        image = None
        for axis, name in zip(axes.flat, classes, strict=False):
            mine = by_class[by_class["class"] == name].pivot(
                index="row_value", columns="col_value", values="fooling_rate"
            )
            values = mine.reindex(index=row_values, columns=col_values).to_numpy(dtype=float)
            image = axis.imshow(np.ma.masked_invalid(values), cmap=colours, vmin=0, vmax=1, aspect="auto")
            axis.set_title(name, fontsize=8)
            axis.set_xticks(*_sparse_ticks(col_values, 3))
            axis.set_yticks(*_sparse_ticks(row_values, 3))
            axis.tick_params(labelsize=6)
        for axis in list(axes.flat)[len(classes) :]:
            axis.axis("off")
        figure.supxlabel(col_name, fontsize=8)
        figure.supylabel(row_name, fontsize=8)
        if image is not None:
            figure.colorbar(image, ax=axes, label="share of images fooled", shrink=0.8)
        figure.suptitle(title, fontsize=9)
        _save(_png(figure), path)

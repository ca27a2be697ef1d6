"""The worst-case rows of a run, derived from its stored adversary results: accuracy per budget, invariance.

An image counts as correct under an adversary only if it is right on the clean image and no
point the search evaluated fooled it. Adversaries over one space share their witnesses: a point
that fooled an image in the random or worst-of-k search fools it for the grid too (it is a grid
point), and the random draw is the worst-of-k's first; so grid <= worst-of-k <= random <= clean
holds per image by construction.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from robustbench_fmnist.data import CLASS_NAMES
from robustbench_fmnist.evaluation.adversary import BUDGET_LEVELS, NONE, AdversaryOutputs
from robustbench_fmnist.evaluation.cells import CLEAN
from robustbench_fmnist.evaluation.consistency import (
    consistency_matrix,
    fooling_rate_per_point,
    fooling_rate_per_point_by_class,
    heatmap,
    mean_accuracy_over_points,
    orbit_consistency,
    worst_case_curve,
)
from robustbench_fmnist.evaluation.metrics import wilson_interval
from robustbench_fmnist.orchestration.plan import AdversaryTask, TransferTask
from robustbench_fmnist.orchestration.tasks import Attack, Transfer, adversary_of
from robustbench_fmnist.perturbations.space import Space

# whose witnesses a search counts: those of weaker searches over the same space (gradient counts the random draw,
# its own first point, and nobody counts gradient's off-grid points)
SEARCH_STRENGTH = {"random": 0.0, "gradient": 0.5, "worst_of_k": 1.0, "grid": 2.0}


@dataclass(frozen=True)
class Verdicts:
    """Per image, under one adversary: right on the clean image and never fooled; and its smallest fooling radius."""

    clean: torch.Tensor  # (N,) bool: right on the clean image (in every search that counts for this one)
    correct: torch.Tensor  # (N,) bool
    fooling_radius: torch.Tensor  # (N,) float64; inf where nothing fooled it


def verdicts(attacks: dict[AdversaryTask, Attack], labels: torch.Tensor) -> dict[AdversaryTask, Verdicts]:
    """Each adversary's per-image verdicts, with the witnesses of weaker searches over the same space counted."""
    labels = labels.cpu().long()
    by_space: dict[str, list[AdversaryTask]] = {}
    for task in attacks:
        by_space.setdefault(_space_key(task), []).append(task)
    out = {}
    for task, attack in attacks.items():
        space, search = adversary_of(task.identity)
        clean_ok = attack.outputs.clean_prediction.long() == labels[: len(attack.outputs.clean_prediction)]
        radius = _fooling_radius(attack.outputs, space)
        for other in by_space[_space_key(task)]:
            other_search = adversary_of(other.identity)[1]
            if other is task or SEARCH_STRENGTH[other_search.kind] > SEARCH_STRENGTH[search.kind]:
                continue
            if search.kind != "gradient" and other_search.kind == "gradient":
                continue  # gradient's points lie off the grid
            # each search covers the first N test images of its own `test_images`: the shared ones count
            shared = min(len(radius), len(attacks[other].outputs.clean_prediction))
            clean_ok[:shared] &= attacks[other].outputs.clean_prediction[:shared].long() == labels[:shared]
            witnesses = _draw_radius(attacks[other].outputs, space, search.kind)[:shared]
            radius[:shared] = torch.minimum(radius[:shared], witnesses)
        out[task] = Verdicts(clean_ok, clean_ok & torch.isinf(radius), radius)
    return out


def _space_key(task: AdversaryTask) -> str:
    """The searches whose witnesses count together: one model's weights (model and seed) over one space."""
    return json.dumps([task.label, task.seed, task.identity["adversary"]["space"]], sort_keys=True)


def _fooling_radius(outputs: AdversaryOutputs, space: Space) -> torch.Tensor:
    """The radius of each image's fooling point (0 for an off-grid gradient point); inf where none fooled it."""
    point = outputs.fooling_point.long()
    radius = torch.full(point.shape, math.inf, dtype=torch.float64)
    on_grid = point >= 0
    radius[on_grid] = space.radius[point[on_grid]]
    radius[point < NONE] = 0.0  # gradient found it: no budget below the whole space is claimed
    return radius


def _draw_radius(outputs: AdversaryOutputs, space: Space, kind: str) -> torch.Tensor:
    """A weaker search's witnesses as radii: its fooling points (the random draw alone, for `random`)."""
    if kind == "random":
        radius = torch.full(outputs.random_point.shape, math.inf, dtype=torch.float64)
        return radius  # a random adversary counts only its own draw
    return _fooling_radius(outputs, space).where(outputs.fooling_point.long() >= 0, torch.tensor(math.inf))


def worst_case_rows(
    attacks: dict[AdversaryTask, Attack],
    labels: torch.Tensor,
    verdict_by_task: dict[AdversaryTask, Verdicts],
    budgets: int = BUDGET_LEVELS,
) -> list[dict[str, object]]:
    """adversaries.csv: per model, seed and adversary, the accuracy at each budget (grid) or the whole space."""
    rows: list[dict[str, object]] = []
    for task, verdict in verdict_by_task.items():
        space, search = adversary_of(task.identity)
        attack = attacks[task]
        base = {
            "model": task.label,
            "seed": task.seed,
            "adversary": task.adversary,
            "search": search.kind,
            "points": space.size,
            "forward_passes": attack.outputs.forward_passes,
            "seconds": attack.seconds,
        }
        shares = [round(i / budgets, 9) for i in range(budgets + 1)] if search.kind == "grid" else [1.0]
        curve = worst_case_curve(verdict.fooling_radius, verdict.clean, shares)
        for row in curve.to_dict("records"):
            rows.append({**base, **row, "budget_label": _budget_label(space, row["budget"])})
        rows[-1].update(_whole_space_extras(attack.outputs, labels[: len(verdict.correct)], verdict))
    return rows


def _whole_space_extras(outputs: AdversaryOutputs, labels: torch.Tensor, verdict: Verdicts) -> dict[str, object]:
    """On the full-budget row: the random case, and where the grid's sample saw every point, invariance."""
    random_ok = (outputs.random_prediction.long() == labels.cpu().long()) & (
        outputs.clean_prediction.long() == labels.cpu().long()
    )
    count = len(labels)
    extras: dict[str, object] = {
        "accuracy_random_draw": float(random_ok.float().mean()),
        "accuracy_clean": float((outputs.clean_prediction.long() == labels.cpu().long()).float().mean()),
        "n_correct": int(verdict.correct.sum()),
        "n_images": count,
    }
    extras["accuracy"] = extras["n_correct"] / count
    extras["accuracy_low"], extras["accuracy_high"] = wilson_interval(extras["n_correct"], count)
    if len(outputs.sample_indices):
        sample_labels = labels.cpu()[outputs.sample_indices]
        extras.update(
            sample_images=len(outputs.sample_indices),
            orbit_consistency=orbit_consistency(outputs.sample_predictions),
            accuracy_over_points=mean_accuracy_over_points(outputs.sample_predictions, sample_labels),
        )
    return extras


def _budget_label(space: Space, share: float) -> str:
    """A budget as each axis's range: '±15° rotation, ±1.5 px translate'."""
    parts = []
    for entry, (name, low, high, _) in zip(space.entries, space.axes, strict=True):
        reach = max(abs(low - entry.identity), abs(high - entry.identity)) * share
        parts.append(f"±{reach:g} {name}")
    return ", ".join(parts)


def adversary_frame(rows: Sequence[dict[str, object]]) -> pd.DataFrame:
    """The rows as adversaries.csv's table (empty with its columns when the run has no adversaries)."""
    columns = ["model", "seed", "adversary", "search", "budget", "budget_label", "accuracy", "n_correct", "n_images",
               "accuracy_low", "accuracy_high", "accuracy_clean", "accuracy_random_draw", "orbit_consistency",
               "accuracy_over_points", "sample_images", "points", "forward_passes", "seconds"]  # fmt: skip
    return pd.DataFrame(list(rows)).reindex(columns=columns)


def consistency_rows(
    outcomes: Sequence[tuple[tuple[str, int, str, int], torch.Tensor]],
    verdict_by_task: dict[AdversaryTask, Verdicts],
    *,
    resamples: int = 1000,
) -> pd.DataFrame:
    """consistency.csv: error consistency (kappa) between every two trained models (model, seed), per condition.

    The conditions are the clean test set, each suite cell (perturbation at a severity) and each
    adversary's worst case; pairs of one model's seeds say how much of it is training noise.
    """
    conditions: dict[str, dict[str, torch.Tensor]] = {}
    for (model, seed, perturbation, severity), correct in outcomes:
        condition = perturbation if perturbation == CLEAN else f"{perturbation} s{severity}"
        conditions.setdefault(condition, {})[_unit(model, seed)] = correct.bool()
    for task, verdict in verdict_by_task.items():
        conditions.setdefault(f"worst case: {task.adversary}", {})[_unit(task.label, task.seed)] = verdict.correct
    frames = []
    for condition, correct in conditions.items():
        if len(correct) < 2:
            continue
        matrix = consistency_matrix(correct, seed=0, resamples=resamples)
        units = {side: [_split(u) for u in matrix[f"model_{side}"]] for side in ("a", "b")}
        matrix = matrix.drop(columns=["model_a", "model_b"])
        matrix.insert(0, "condition", condition)
        for place, (side, part) in enumerate([("a", 0), ("a", 1), ("b", 0), ("b", 1)], start=1):
            matrix.insert(place, f"{'model' if part == 0 else 'seed'}_{side}", [u[part] for u in units[side]])
        frames.append(matrix)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _unit(model: str, seed: int) -> str:
    return f"{model}|{seed}"  # model names never hold '|' (config.py)


def _split(unit: str) -> tuple[str, int]:
    model, _, seed = unit.rpartition("|")
    return model, int(seed)


def fooling_rows(attacks: dict[AdversaryTask, Attack], labels: torch.Tensor) -> pd.DataFrame:
    """fooling.csv: per grid adversary, model and seed, how often each point fools the sample's images that are right
    clean (the heatmaps over the space are drawn from it)."""
    frames = []
    for task, attack in attacks.items():
        outputs = attack.outputs
        if not len(outputs.sample_indices):
            continue
        sample_labels = labels.cpu()[outputs.sample_indices]
        clean = outputs.clean_prediction[outputs.sample_indices].long() == sample_labels.long()
        rates = fooling_rate_per_point(outputs.sample_predictions, sample_labels, clean)
        frames.append(
            pd.DataFrame(
                {
                    "model": task.label,
                    "seed": task.seed,
                    "adversary": task.adversary,
                    "point": range(len(rates)),
                    "fooling_rate": rates.numpy(),
                    "n_images": int(clean.sum()),
                }
            )
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def transfer_rows(
    transfers: dict[TransferTask, Transfer], verdict_by_task: dict[AdversaryTask, Verdicts], labels: torch.Tensor
) -> pd.DataFrame:
    """transfer.csv: each model at another's worst points (grid adversaries), beside its own worst case and clean.

    An image counts as correct at the source's worst point only if the model is right on the clean image too.
    """
    own = {(t.label, t.seed, t.adversary): v for t, v in verdict_by_task.items()}
    rows = []
    for task, transfer in transfers.items():
        mine = own.get((task.model, task.seed, task.adversary))
        source = verdict_by_task.get(task.source)
        if mine is None or source is None:
            continue
        correct = mine.clean & (transfer.predictions.long() == labels.cpu().long()[: len(transfer.predictions)])
        low, high = wilson_interval(int(correct.sum()), len(correct))
        rows.append(
            {
                "adversary": task.adversary,
                "seed": task.seed,
                "source": task.source.model,
                "model": task.model,
                "accuracy": float(correct.float().mean()),
                "n_correct": int(correct.sum()),
                "n_images": len(correct),
                "accuracy_low": low,
                "accuracy_high": high,
                "accuracy_clean": float(mine.clean.float().mean()),
                "accuracy_own_worst_case": float(mine.correct.float().mean()),
                "source_worst_case": float(source.correct.float().mean()),
            }
        )
    return pd.DataFrame(rows)


def fooling_by_class_rows(attacks: dict[AdversaryTask, Attack], labels: torch.Tensor) -> pd.DataFrame:
    """fooling_by_class.csv: per grid adversary of 2+ dimensions, model and true class, how often each point of its
    first two dimensions fools the sample's images right clean (other dimensions and seeds averaged)."""
    slices: dict[tuple[str, str], list[torch.Tensor]] = {}
    grids: dict[tuple[str, str], Space] = {}
    for task, attack in attacks.items():
        outputs = attack.outputs
        space = adversary_of(task.identity)[0]
        if not len(outputs.sample_indices) or len(space.dims) < 2:
            continue
        sample_labels = labels.cpu()[outputs.sample_indices]
        clean = outputs.clean_prediction[outputs.sample_indices].long() == sample_labels.long()
        rates = fooling_rate_per_point_by_class(outputs.sample_predictions, sample_labels, clean, len(CLASS_NAMES))
        shape = tuple(len(g) for g in space.grids)
        key = (task.label, task.adversary)
        slices.setdefault(key, []).append(torch.stack([heatmap(r, shape, (0, 1)) for r in rates]))
        grids[key] = space
    rows = []
    for (model, adversary), per_seed in slices.items():
        mean = torch.nanmean(torch.stack(per_seed), dim=0)  # (classes, rows, cols)
        space = grids[model, adversary]
        for c, name in enumerate(CLASS_NAMES):
            for i, row_value in enumerate(space.grids[0].tolist()):
                for j, col_value in enumerate(space.grids[1].tolist()):
                    rows.append([model, adversary, name, row_value, col_value, float(mean[c, i, j])])
    return pd.DataFrame(rows, columns=["model", "adversary", "class", "row_value", "col_value", "fooling_rate"])

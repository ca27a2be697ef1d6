"""What fixes it: each remedy against its standard model, on shifts seen in training and held out.

A remedy is a model label whose architecture matches a standard one (trained without robust
augmentation, evaluated without adaptation): a robust-training recipe, a test-time adaptation,
or both. Per seed, for a set of cells S of one family,

    gap closed = sum_S (remedy - standard) / sum_S (standard's clean - standard)

the share of the standard model's accuracy loss the remedy wins back (1 = all of it, 0 = none,
below 0 = worse; a ratio of means over the cells, so cells where the standard lost more weigh more). Seeds pair by
number: an adaptation shares its standard's weights, a training remedy is an independent
training with the same seed. Every figure is the mean over seeds with a 95 % t-interval
(statistics.across_seeds); the clean cost is the remedy's clean accuracy minus the standard's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from robustbench_fmnist.evaluation.cells import CLEAN
from robustbench_fmnist.statistics import across_seeds
from robustbench_fmnist.training.augmentation import HELD_OUT, PARTLY, SEEN

__all__ = [
    "HELD_OUT",
    "PARTLY",
    "SEEN",
    "cell_gap_table",
    "gap_closed_table",
    "not_applicable",
    "remedies",
    "worst_case_gap_table",
]

ALL_SEVERITIES = -1  # cell_gap_table's severity for a perturbation's severities pooled
MIN_LOSS = 0.02  # cells whose standard model lost under 2 points on average have no gap worth a ratio: n/a


@dataclass(frozen=True)
class Remedy:
    label: str  # the rows' model name
    standard: str  # the label of the standard model it is set against
    architecture: str
    training: str  # standard, checkpoint, or the robust-augmentation method
    adaptation: str  # none, bn, tent or tta
    recipe_differs: tuple[str, ...] = ()  # recipe fields besides robust_augment that differ from the standard's


def remedies(models: list[dict[str, Any]]) -> list[Remedy]:
    """Every remedy in run.json's models, each with the model it is set against.

    A model with `against` (another architecture) is set against that model, and so are its adaptations.
    A robust-training recipe is set against the first standard-trained label of its architecture
    (evaluated without adaptation). An adaptation of a standard-trained model or of a user's
    checkpoint is set against that same model unadapted (the same weights); an adaptation of a
    robust-trained model against the architecture's standard, so the pair measures both remedies.
    """
    seen: dict[str, dict[str, Any]] = {}
    for m in models:
        seen.setdefault(m["name"], m)
    standards: dict[str, str] = {}
    for name, m in seen.items():
        if m.get("training") == "standard" and m.get("adaptation", "none") == "none":
            standards.setdefault(m.get("architecture", name), name)
    found = []
    for name, m in seen.items():
        training, adaptation = m.get("training"), m.get("adaptation", "none")
        architecture = m.get("architecture", name)
        against = seen.get(m.get("base_model", name), m).get("against")  # an adapted copy shares its model's
        if training is None or (adaptation == "none" and training in ("standard", "checkpoint") and not against):
            continue  # an older report, or a model that is no remedy
        if against is not None:
            standard = against  # another architecture, set against the model the YAML names
        elif adaptation != "none" and training in ("standard", "checkpoint"):
            standard = m.get("base_model")
        else:
            standard = standards.get(architecture)
        if standard is None or standard not in seen:
            continue
        differs = _recipe_differences(m.get("recipe"), seen[standard].get("recipe"))
        found.append(Remedy(name, standard, architecture, training, adaptation, differs))
    return found


def _recipe_differences(mine: dict[str, Any] | None, theirs: dict[str, Any] | None) -> tuple[str, ...]:
    if not mine or not theirs:
        return ()
    keys = sorted((set(mine) | set(theirs)) - {"robust_augment"})
    return tuple(k for k in keys if mine.get(k) != theirs.get(k))


def not_applicable(models: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(model, adaptation, reason) for each adaptation a model could not take, once per model."""
    rows: dict[tuple[str, str], str] = {}
    for m in models:
        for adaptation, reason in (m.get("not_applicable") or {}).items():
            rows.setdefault((m["name"], adaptation), reason)
    return [(model, adaptation, reason) for (model, adaptation), reason in rows.items()]


def _paired(results: pd.DataFrame, remedy: Remedy) -> pd.DataFrame:
    """Per (seed, perturbation, severity): the remedy's and the standard's accuracy, and both clean ones."""
    keys = ["seed", "perturbation", "severity"]
    mine = results[results["model"] == remedy.label].set_index(keys)
    base = results[results["model"] == remedy.standard].set_index(keys)
    pairs = pd.DataFrame(
        {
            "remedy": mine["accuracy"],
            "standard": base["accuracy"],
            "status": mine["in_training"].astype(object).fillna(""),  # an all-empty column reads as float
        }
    ).dropna(subset=["remedy", "standard"])
    pairs = pairs.reset_index()
    clean = pairs[pairs["perturbation"] == CLEAN].set_index("seed")
    pairs["standard_clean"] = pairs["seed"].map(clean["standard"])
    pairs["remedy_clean"] = pairs["seed"].map(clean["remedy"])
    return pairs


def _status(status: str) -> str:
    return HELD_OUT if status == HELD_OUT else (SEEN if status in (SEEN, PARTLY) else "")


def gap_closed_table(results: pd.DataFrame, models: list[dict[str, Any]], families: dict[str, str]) -> pd.DataFrame:
    """Per remedy and (family, split): gap closed over seeds, plus the clean cost and time ratios.

    `families` maps each perturbation label to its family. Splits are `held out` and `seen`
    (seen or partly seen in the remedy's training); `all` pools both.
    """
    rows = []
    info = _per_label(models)
    for remedy in remedies(models):
        pairs = _paired(results, remedy)
        shifted = pairs[pairs["perturbation"] != CLEAN].copy()
        shifted["family"] = shifted["perturbation"].map(families)
        shifted["split"] = shifted["status"].map(_status)
        clean = pairs[pairs["perturbation"] == CLEAN]
        per_seed = []
        for seed, own in shifted.groupby("seed"):
            record: dict[str, Any] = {"seed": seed}
            for family in sorted(set(families.values())):
                for split in (HELD_OUT, SEEN, "all"):
                    part = own[own["family"] == family]
                    if split != "all":
                        part = part[part["split"] == split]
                    loss = (part["standard_clean"] - part["standard"]).sum()
                    won = (part["remedy"] - part["standard"]).sum()
                    # a family where the standard lost under MIN_LOSS per cell has no gap to close
                    enough = len(part) and loss >= MIN_LOSS * len(part)
                    record[f"{family}|{split}"] = won / loss if enough else np.nan
                    record[f"{family}|{split}|cells"] = len(part)
            cost = clean[clean["seed"] == seed]
            record["clean_cost"] = float((cost["remedy"] - cost["standard"]).iloc[0]) if len(cost) else np.nan
            record["train_time"] = _ratio(info, remedy.label, remedy.standard, seed, "train_seconds")
            record["eval_time"] = _ratio(info, remedy.label, remedy.standard, seed, "eval_seconds")
            per_seed.append(record)
        if not per_seed:
            continue
        table = pd.DataFrame(per_seed)
        metrics = [c for c in table.columns if c != "seed" and not c.endswith("|cells")]
        table["remedy"] = remedy.label
        summary = across_seeds(table, ["remedy"], metrics).iloc[0].to_dict()
        for metric in metrics:  # a figure some seed could not give (no loss to close) is no figure
            if table[metric].isna().any():
                summary.update({metric: np.nan, f"{metric}_low": np.nan, f"{metric}_high": np.nan})
        for column in (c for c in table.columns if c.endswith("|cells")):
            summary[column] = int(table[column].max())
        summary.update(
            standard=remedy.standard,
            training=remedy.training,
            adaptation=remedy.adaptation,
            recipe_differs=", ".join(remedy.recipe_differs),
        )
        rows.append(summary)
    return pd.DataFrame(rows)


def bench_costs(
    throughput: pd.DataFrame | None, models: list[dict[str, Any]], *, device: str, batch_size: int
) -> pd.DataFrame:
    """Per remedy: its training and inference cost as multiples of its standard's, from `bench` side by side.

    Measured in one process, one after the other, so a load on a shared machine or a slower machine
    in another session does not enter the ratio as it enters recorded wall times. Training: the
    standard's training images/s over the remedy's (its robust augmentation inside each step), times
    the remedy's epochs over the standard's; 1 for an adaptation of the standard's own weights.
    Inference: images/s at the measured batch size nearest `batch_size` (float32, eager), a `+tta`
    label timed behind its k copies. Columns remedy, training_cost, inference_cost, batch_size; NaN
    where `bench` lacks a side.
    """
    columns = ["remedy", "training_cost", "inference_cost", "batch_size"]
    if throughput is None or throughput.empty:
        return pd.DataFrame(columns=columns)
    ok = throughput[(throughput["status"] == "ok") & (throughput["device"] == device)]
    training = ok[ok["kind"] == "training"].groupby("model")["images_per_second"].first()
    eager = ok[(ok["kind"] == "inference") & (ok["dtype"] == "float32") & ~ok["compiled"].astype(bool)]
    # bench's batch sizes are a ladder: the one nearest the evaluation's (on a log scale) stands in for it
    nearest = min(set(eager["batch_size"]), key=lambda b: abs(np.log(b / max(batch_size, 1))), default=batch_size)
    inference = eager[eager["batch_size"] == nearest].groupby("model")["images_per_second"].first()
    first: dict[str, dict[str, Any]] = {}  # each label's first seed, as in remedies()
    for m in models:
        first.setdefault(m["name"], m)

    def epochs(label: str) -> float:
        recipe = first[label].get("recipe")
        return float(recipe["epochs"]) if isinstance(recipe, dict) and recipe.get("epochs") else np.nan

    rows = []
    for remedy in remedies(models):
        mine, base = first[remedy.label], first[remedy.standard]
        if remedy.adaptation != "none" and mine.get("cache_key") == base.get("cache_key"):
            train_cost = 1.0  # the standard's own weights, adapted at test time
        else:
            trained, standard = mine.get("base_model", remedy.label), base.get("base_model", remedy.standard)
            ips_mine, ips_base = training.get(trained, np.nan), training.get(standard, np.nan)
            train_cost = ips_base / ips_mine * epochs(remedy.label) / epochs(remedy.standard)
        inference_cost = inference.get(remedy.standard, np.nan) / inference.get(remedy.label, np.nan)
        rows.append([remedy.label, train_cost, inference_cost, nearest])
    return pd.DataFrame(rows, columns=columns)


def _per_label(models: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    return {(m["name"], int(m.get("seed", 0))): m for m in models}


def _ratio(info: dict[tuple[str, int], dict[str, Any]], label: str, standard: str, seed: int, key: str) -> float:
    mine, base = info.get((label, int(seed)), {}).get(key), info.get((standard, int(seed)), {}).get(key)
    return mine / base if mine and base else np.nan


def cell_gap_table(results: pd.DataFrame, models: list[dict[str, Any]]) -> pd.DataFrame:
    """Per remedy and perturbed cell (and per perturbation, severity ALL_SEVERITIES): gap closed over seeds.

    Each seed's gap is that seed's won-back accuracy over its standard's loss; cells (or
    perturbations) where that loss is under MIN_LOSS on average are NaN for the seed. Columns:
    remedy, standard, perturbation, severity, in_training, remedy_accuracy, standard_accuracy,
    gap_closed with _std, _low, _high, and seeds.
    """
    tables = []
    for remedy in remedies(models):
        pairs = _paired(results, remedy)
        shifted = pairs[pairs["perturbation"] != CLEAN].copy()
        if shifted.empty:
            continue
        pooled = shifted.assign(severity=ALL_SEVERITIES)
        per_seed = []
        for frame in (shifted, pooled):
            grouped = frame.groupby(["perturbation", "severity", "seed"], sort=False)
            sums = grouped.agg(
                remedy=("remedy", "sum"),
                standard=("standard", "sum"),
                standard_clean=("standard_clean", "sum"),
                cells=("remedy", "size"),
                remedy_accuracy=("remedy", "mean"),
                standard_accuracy=("standard", "mean"),
                in_training=("status", "first"),
            ).reset_index()
            loss = sums["standard_clean"] - sums["standard"]
            sums["gap_closed"] = ((sums["remedy"] - sums["standard"]) / loss).where(loss >= MIN_LOSS * sums["cells"])
            per_seed.append(sums)
        every = pd.concat(per_seed, ignore_index=True)
        summary = across_seeds(
            every, ["perturbation", "severity"], ["gap_closed", "remedy_accuracy", "standard_accuracy"]
        )
        grouped = every.groupby(["perturbation", "severity"], sort=False)
        status = grouped["in_training"].first().reset_index()
        # a cell some seed could not score (its standard lost under MIN_LOSS there) is n/a as a whole
        status["complete"] = grouped["gap_closed"].apply(lambda g: bool(g.notna().all())).to_numpy()
        summary = summary.merge(status, on=["perturbation", "severity"])
        gap = ["gap_closed", "gap_closed_std", "gap_closed_low", "gap_closed_high"]
        summary.loc[~summary["complete"], gap] = np.nan
        summary.insert(0, "standard", remedy.standard)
        summary.insert(0, "remedy", remedy.label)
        tables.append(summary)
    if not tables:
        return pd.DataFrame()
    columns = ["remedy", "standard", "perturbation", "severity", "in_training", "seeds", "remedy_accuracy",
               "standard_accuracy", "gap_closed", "gap_closed_std", "gap_closed_low", "gap_closed_high"]  # fmt: skip
    return pd.concat(tables, ignore_index=True)[columns]


def worst_case_gap_table(adversaries: pd.DataFrame, models: list[dict[str, Any]]) -> pd.DataFrame:
    """Per remedy and adversary: the worst-case accuracy of remedy and standard and the worst-case gap closed.

    Per seed, on the whole space (a grid's budget 1, the one row of the other searches):

        worst-case gap closed = (remedy's worst case - standard's) / (standard's clean - standard's worst case)

    over the images the adversary searched, the share of the standard model's worst-case loss the remedy wins
    back (n/a where that loss is under 2 points). Also both models' orbit consistency for a grid. Every figure is
    the mean over seeds with its 95 % t-interval; columns remedy, standard, adversary, search, seeds, then
    remedy_accuracy, standard_accuracy, gap_closed, remedy_orbit, standard_orbit, each with _std, _low, _high.
    """
    if adversaries.empty:
        return pd.DataFrame()
    whole = adversaries[adversaries["budget"] == adversaries.groupby("adversary")["budget"].transform("max")]
    keys = ["seed", "adversary"]
    per_seed = []
    for remedy in remedies(models):
        mine = whole[whole["model"] == remedy.label].set_index(keys)
        base = whole[whole["model"] == remedy.standard].set_index(keys)
        pairs = mine.merge(base, how="inner", left_index=True, right_index=True, suffixes=("_remedy", "_standard"))
        if pairs.empty:
            continue
        loss = pairs["accuracy_clean_standard"] - pairs["accuracy_standard"]
        won = pairs["accuracy_remedy"] - pairs["accuracy_standard"]
        frame = pd.DataFrame(
            {
                "remedy": remedy.label,
                "standard": remedy.standard,
                "search": pairs["search_remedy"],
                "remedy_accuracy": pairs["accuracy_remedy"],
                "standard_accuracy": pairs["accuracy_standard"],
                "gap_closed": (won / loss).where(loss >= MIN_LOSS),
                "remedy_orbit": pairs["orbit_consistency_remedy"],
                "standard_orbit": pairs["orbit_consistency_standard"],
            }
        )
        per_seed.append(frame.reset_index())
    if not per_seed:
        return pd.DataFrame()
    metrics = ["remedy_accuracy", "standard_accuracy", "gap_closed", "remedy_orbit", "standard_orbit"]
    return across_seeds(pd.concat(per_seed), ["remedy", "standard", "adversary", "search"], metrics)

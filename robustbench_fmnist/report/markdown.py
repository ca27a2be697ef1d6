"""Render the report's tables as GitHub markdown. Every number comes from the report's CSV files."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import pandas as pd

from robustbench_fmnist.config import space_point_count
from robustbench_fmnist.evaluation.cells import CLEAN
from robustbench_fmnist.report.agreement import agreement_table, agreement_verdict
from robustbench_fmnist.report.bundle import ReportData
from robustbench_fmnist.report.remedies import (
    ALL_SEVERITIES,
    HELD_OUT,
    PARTLY,
    SEEN,
    bench_costs,
    cell_gap_table,
    gap_closed_table,
    worst_case_gap_table,
)
from robustbench_fmnist.report.remedies import not_applicable as remedy_not_applicable
from robustbench_fmnist.report.tables import (
    class_table,
    confusion_growth,
    format_parameter,
    headline_spread,
    headline_table,
    parameter_labels,
    seed_mean,
    severity_table,
    summary_spread,
    summary_table,
)
from robustbench_fmnist.report.worst_case import (
    CONSISTENCY_HEADERS,
    TRANSFER_HEADERS,
    consistency_summary,
    transfer_table,
    worst_case_section,
)
from robustbench_fmnist.report.worst_case import HEADERS as WORST_CASE_HEADERS
from robustbench_fmnist.statistics import t_quantile


def pct(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{100 * value:.2f}"


def points(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{round(100 * value, 2) + 0.0:+.2f}"  # + 0.0: no "-0.00"


def ratio(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{100 * value:.1f}"


def plain(value: float, digits: int = 3) -> str:
    return "n/a" if pd.isna(value) else f"{value:.{digits}f}"


def interval(low: float, high: float) -> str:
    return "n/a" if pd.isna(low) else f"{100 * low:.1f}–{100 * high:.1f}"


def spread(row: dict[str, Any], metric: str, show: Any = pct, with_interval: bool = True) -> str:
    """`mean ± sd (low–high)` of a metric summarised across seeds (`show` formats each number)."""
    text = f"{show(row[metric])} ± {show(row[f'{metric}_std'])}"
    if with_interval:
        text += f" ({show(row[f'{metric}_low'])}–{show(row[f'{metric}_high'])})"
    return text


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    align = align or "l" + "r" * (len(headers) - 1)
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(marks[a] for a in align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(data: ReportData, figures: dict[str, str]) -> str:
    """The whole report.md; `figures` maps each figure's title to its path inside the report folder."""
    run = data.run
    cfg = run["config"]
    reference = cfg.get("reference_model")
    cells = seed_mean(data.results)
    seeds = sorted(int(s) for s in data.results["seed"].unique())
    env = run["environment"]
    out = [f"# Robustness report: {cfg['name']}", ""]
    if cfg.get("description"):
        out += [cfg["description"].strip(), ""]
    out += [
        f"Fashion-MNIST test set ({int(data.results['n_images'].iloc[0]):,} images), "
        f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}, device {env['device']}, "
        f"evaluation in {cfg['evaluation']['precision']}. Accuracies in %; drops in percentage points from the "
        f"model's own clean accuracy. Made by robustbench_fmnist {env['versions']['robustbench_fmnist']} at "
        f"commit {env['git_commit']}; every number below is computed from `results.csv`, `per_class.csv`, "
        f"`confusion.csv` and `calibration.csv` beside this file, the configuration is in `run.json`.",
        "",
        _noise_note(len(seeds)),
        "",
    ]
    out += _invalid_cells(data.results)
    out += _lock_warning(env)
    # a report of remedies leads with them: their held-out columns are its headline
    remedies = _remedies(data)
    out += remedies
    out += _headline(data.results, cells, reference, seen_too=bool(remedies))
    if data.reference is not None:
        out += _against_reference(data)
    out += _models(cells, run["models"])
    out += _summary(data.results, cells, reference, _exposure(data.results))
    out += _worst_case_sections(data)
    out += ["## Figures", ""]
    out += [f"![{title}]({path})\n" for title, path in figures.items()]
    out += _per_class(data)
    units = {p["name"]: p["unit"] for p in run["perturbations"]}
    exposure = _exposure(data.results)
    for pert in run["perturbations"]:
        if pert["name"] in set(cells["perturbation"]):
            out += _perturbation_section(cells, pert, units[pert["name"]], exposure)
    if data.throughput is not None:
        out += _throughput(data.throughput)
    out += _environment(run)
    return "\n".join(out).rstrip("\n") + "\n"


def _worst_case_sections(data: ReportData) -> list[str]:
    """The worst case, transfer and error consistency sections of a run with adversaries (none otherwise)."""
    out: list[str] = []
    if data.adversaries is not None:
        opening, rows = worst_case_section(data.adversaries)
        out += [*opening, markdown_table(WORST_CASE_HEADERS, rows, "lllrrrrr"), ""]
    if data.transfer is not None:
        out += [
            "## Do the worst points transfer?",
            "",
            "Each model evaluated at the point of each image that another model's grid search found worst (where it "
            "fooled that model, else where that model's true class was least likely); an image counts only if the "
            "model is also right on the clean image. Near its own worst case, the points fool both models; near "
            "clean, each model has worst points of its own. Accuracy in %, the mean over seeds with its 95 % interval "
            "as in the table above; per seed in `transfer.csv`.",
            "",
            markdown_table(TRANSFER_HEADERS, transfer_table(data.transfer), "llrlrr"),
            "",
        ]
    if data.consistency is not None:
        out += [
            "## Do models fail on the same images?",
            "",
            "Error consistency (Geirhos et al. 2020): kappa = (c_obs - c_exp) / (1 - c_exp) over the test images, 0 "
            "where two trainings' errors are as independent as their accuracies allow, 1 where they err on the same "
            "images. Mean over pairs of trainings [lowest, highest]; every pair with its bootstrap interval is in "
            "`consistency.csv`.",
            "",
            markdown_table(CONSISTENCY_HEADERS, consistency_summary(data.consistency), "lrrrr"),
            "",
        ]
    return out


def _invalid_cells(results: pd.DataFrame) -> list[str]:
    """A warning naming every cell whose logits held NaN or inf, and every cell whose task failed: neither is scored."""
    out = []
    invalid = results[results["nonfinite_images"] > 0]
    if not invalid.empty:
        listed = ", ".join(
            f"{r.model} seed {r.seed} {r.perturbation} s{r.severity} ({r.nonfinite_images:,} of {r.n_images:,} images)"
            for r in invalid.itertuples()
        )
        out += [
            f"**Warning: {len(invalid)} invalid cell{'s' if len(invalid) > 1 else ''}.** The model gave NaN or "
            f"infinite logits there, so no accuracy is scored; they show as n/a and every mean leaves them out: "
            f"{listed}.",
            "",
        ]
    failed = results[results["failed"].ne("")] if "failed" in results else results.iloc[:0]
    if not failed.empty:
        listed = ", ".join(f"{r.model} seed {r.seed} {r.perturbation} s{r.severity}" for r in failed.itertuples())
        reasons = sorted(set(failed["failed"]))
        out += [
            f"**Warning: {len(failed)} failed cell{'s' if len(failed) > 1 else ''}.** Their tasks failed after "
            f"every retry, so they show as n/a and every mean leaves them out; run the experiment again to retry "
            f"only them: {listed}. Reason{'s' if len(reasons) > 1 else ''}: {'; '.join(reasons)}.",
            "",
        ]
    return out


def _noise_note(seeds: int) -> str:
    if seeds == 1:
        return (
            "**One training per model: every interval here is over the test images only and leaves training "
            "noise out.** A second training of the same recipe moves shifted accuracies by several points even "
            "where clean accuracy moves by a few tenths; train several seeds (`seeds: [0, 1, 2, 3, 4]`), or set "
            "the run against a multi-seed report of the same recipe (`noise_from:`), before reading a difference."
        )
    t = float(t_quantile(seeds - 1))
    return (
        f"Every number is over {seeds} trainings per model: `a ± s (low–high)` is the mean over seeds, the "
        f"standard deviation between them and a 95 % interval. For accuracies the interval is "
        f"mean ± sqrt((t·s/√{seeds})² + (1.96·√(p(1-p)/n))²) with t = {t:.3f} (Student, {seeds - 1} degrees of "
        f"freedom): the spread between trainings plus the sampling of the n test images, which all seeds share. "
        f"For every other metric it is the t-interval on the seed values, mean ± t·s/√{seeds}."
    )


def _lock_warning(env: dict[str, Any]) -> list[str]:
    lock = env.get("lock") or {}
    if lock.get("matches") is not False:
        return []
    listed = ", ".join(f"{d['package']} {d['installed']} (locked {d['locked']})" for d in lock["differences"][:8])
    more = len(lock["differences"]) - 8
    return [
        f"**Not the locked environment** ({lock.get('file')}): {listed}{f' and {more} more' if more > 0 else ''}. "
        "Weights trained here can differ from the reference's.",
        "",
    ]


_HEADLINE_COLUMNS = ["model", "clean (95 % CI)", "shifted mean", "mCE", "relative mCE", "flip rate", "confidence",
                     "ECE", "NLL (nats)"]  # fmt: skip


def _headline(results: pd.DataFrame, cells: pd.DataFrame, reference: str | None, seen_too: bool = False) -> list[str]:
    note = (
        f"mCE and relative mCE (Hendrycks & Dietterich 2019) are normalised by `{reference}`, so it scores 100."
        if reference and reference in set(cells["model"])
        else "mCE needs a reference model in the experiment (`reference_model`); none is, so it is n/a."
    )
    if int(cells["seeds"].max()) > 1:
        rows = _headline_rows_over_seeds(results, reference)
        seeds_note = (
            " Each seed's headline is computed from its own cells (so mCE is each seed's mCE), then summarised "
            "across seeds."
        )
    else:
        rows = _headline_rows_one_seed(cells, reference)
        seeds_note = " The clean interval is the Wilson interval over the test images."
    return [
        "## Headline",
        "",
        markdown_table(_HEADLINE_COLUMNS, rows),
        "",
        f"Shifted mean and flip rate (share of images whose prediction differs from the clean one) are means "
        f"over every perturbed cell. Confidence (mean top-1 probability), ECE (15 equal-width confidence bins) and "
        f"NLL: clean → mean over perturbed cells. {note}{seeds_note}"
        + (
            " These means pool shifts seen in training with held-out ones; What fixes it, above, separates them."
            if seen_too
            else ""
        ),
        "",
    ]


def _headline_rows_over_seeds(results: pd.DataFrame, reference: str | None) -> list[list[str]]:
    """One row per model: each seed's headline, as mean ± sd over seeds with its interval."""
    return [
        [
            r["model"],
            spread(r, "clean_accuracy"),
            spread(r, "shifted_accuracy"),
            spread(r, "mce", ratio),
            spread(r, "relative_mce", ratio),
            spread(r, "flip_rate"),
            f"{pct(r['clean_confidence'])} → {pct(r['shifted_confidence'])}",
            f"{spread(r, 'clean_ece', with_interval=False)} → {spread(r, 'shifted_ece')}",
            f"{plain(r['clean_nll'])} → {plain(r['shifted_nll'])} ± {plain(r['shifted_nll_std'])}",
        ]
        for r in headline_spread(results, reference).to_dict("records")
    ]


def _headline_rows_one_seed(cells: pd.DataFrame, reference: str | None) -> list[list[str]]:
    """One row per model of a single-seed run, the clean accuracy with its Wilson interval."""
    return [
        [
            r["model"],
            f"{pct(r['clean_accuracy'])} ({interval(r['clean_low'], r['clean_high'])})",
            pct(r["shifted_accuracy"]),
            ratio(r["mce"]),
            ratio(r["relative_mce"]),
            pct(r["flip_rate"]),
            f"{pct(r['clean_confidence'])} → {pct(r['shifted_confidence'])}",
            f"{pct(r['clean_ece'])} → {pct(r['shifted_ece'])}",
            f"{plain(r['clean_nll'])} → {plain(r['shifted_nll'])}",
        ]
        for r in headline_table(cells, reference).to_dict("records")
    ]


def _gap(row: dict[str, Any], column: str) -> str:
    cells = int(row.get(f"{column}|cells", 0) or 0)
    if not cells or pd.isna(row.get(column)):
        return "n/a"
    value = row[column]
    low, high = row.get(f"{column}_low"), row.get(f"{column}_high")
    shown = f"{100 * value:.0f} %"
    if low is not None and not pd.isna(low):
        shown += f" ({100 * low:.0f} to {100 * high:.0f})"
    return f"{shown} [{cells}]"


def _trained_with(row: dict[str, Any]) -> str:
    differs = row.get("recipe_differs")
    return row["training"] + (f" (recipe also differs: {differs})" if isinstance(differs, str) and differs else "")


_RECORDED_TIMES = (
    "Times: the remedy's training and evaluation seconds over the standard's (an adaptation keeps its standard's "
    "weights, so its training time is 1x)."
)
_BENCH_COSTS = (
    "Costs, from `bench` (throughput.csv), each model timed after the other in one process on {device}, so a "
    "load on a shared machine or another session's slower machine does not enter them as it enters recorded "
    "wall times. Training: the standard's training images/s over the remedy's (a batch augmentation such as "
    "worst_of_k inside each step; the data pipeline's per-image augmentation is not), times its epochs over "
    "the standard's; 1x for an adaptation of the standard's own weights. Inference: the standard's images/s "
    "over the remedy's at batch {batch_size} (bench's batch size nearest the evaluation's), float32, a `tta` "
    "model behind its k copies. Where `bench` has no figure for a pair, the recorded wall times' ratio "
    "stands, marked (recorded)."
)


def _times(row: dict[str, Any], column: str) -> str:
    value = row.get(column)
    return "n/a" if value is None or pd.isna(value) else f"{value:.2f}x"


def _bench_or_recorded(bench: Any, row: dict[str, Any], measured: str, recorded: str) -> str:
    """The bench ratio where `bench` has both sides, else the recorded wall times' ratio, marked as such."""
    value = bench.get(measured) if len(bench) else None
    if value is not None and not pd.isna(value):
        return f"{value:.2f}x"
    fallback = _times(row, recorded)
    return fallback if fallback == "n/a" else f"{fallback} (recorded)"


def _remedies(data: ReportData) -> list[str]:
    """The remedies table: gap closed on held-out and seen shifts per family, clean cost and time."""
    families = {p["name"]: p["family"] for p in data.run["perturbations"]}
    table = gap_closed_table(data.results, data.run["models"], families)
    skipped = remedy_not_applicable(data.run["models"])
    if table.empty and not skipped:
        return []
    shown = sorted({f for f in families.values()}, key=lambda f: list(families.values()).index(f))
    headers = ["remedy", "against", "trained with", "adaptation"]
    headers += [f"{family} held out" for family in shown] + [f"{family} seen" for family in shown]
    batch_size = int((data.run["config"].get("evaluation") or {}).get("batch_size") or 0)
    device = (data.run.get("environment") or {}).get("device", "cpu")
    measured = bench_costs(data.throughput, data.run["models"], device=device, batch_size=batch_size)
    if measured[["training_cost", "inference_cost"]].notna().any(axis=None):
        batch_size, measured = int(measured["batch_size"].iloc[0]), measured.set_index("remedy")
        headers += ["clean cost (points)", "training cost (bench)", "inference cost (bench)"]
    else:
        measured = None
        headers += ["clean cost (points)", "training time", "evaluation time"]
    rows = []
    for r in table.to_dict("records"):
        cost = points(r["clean_cost"])
        if not pd.isna(r.get("clean_cost_low")):
            cost += f" ({points(r['clean_cost_low'])} to {points(r['clean_cost_high'])})"
        if measured is None:
            times = [_times(r, "train_time"), _times(r, "eval_time")]
        else:
            bench = measured.loc[r["remedy"]] if r["remedy"] in measured.index else {}
            times = [_bench_or_recorded(bench, r, "training_cost", "train_time"),
                     _bench_or_recorded(bench, r, "inference_cost", "eval_time")]  # fmt: skip
        rows.append(
            [r["remedy"], r["standard"], _trained_with(r), r["adaptation"]]
            + [_gap(r, f"{family}|{HELD_OUT}") for family in shown]
            + [_gap(r, f"{family}|{SEEN}") for family in shown]
            + [cost, *times]
        )
    out = ["## What fixes it", ""]
    if rows:
        out += [markdown_table(headers, rows), ""]
    out += [
        "Gap closed: the share of the standard model's accuracy loss (its clean accuracy minus its accuracy "
        "under shift, summed over the family's cells) that the remedy wins back; 100 % is all of it, below 0 is "
        "worse than doing nothing. Per seed, then the mean over seeds with its 95 % interval (in brackets: the "
        "cells it covers). **Held out**: shifts the remedy's training never performed, the fair test; **seen**: "
        "shifts its training performed in full or in part, at any strength (marked in every table below), where a "
        "remedy is expected to help. Clean cost: the remedy's clean accuracy minus the standard's. "
        + (_RECORDED_TIMES if measured is None else _BENCH_COSTS.format(batch_size=batch_size, device=device)),
        "",
    ]
    for model, adaptation, reason in skipped:
        out += [f"- `{model}` with `{adaptation}`: {reason}; it has no rows.", ""]
    out += _tta_cost(data, "evaluation time" if measured is None else "inference cost")
    out += _gap_per_perturbation(data)
    out += _worst_case_gap(data)
    return out


def _worst_case_gap(data: ReportData) -> list[str]:
    """Each remedy against its standard model in the worst case of every adversary: both accuracies, the gap closed."""
    if data.adversaries is None or data.adversaries.empty:
        return []
    table = worst_case_gap_table(data.adversaries, data.run["models"])
    if table.empty:
        return []
    adversaries = list(dict.fromkeys(zip(table["adversary"], table["search"], strict=True)))
    grids = [name for name, search in adversaries if search == "grid"]
    rows = []
    for (remedy, standard), own in table.groupby(["remedy", "standard"], sort=False):
        by = own.set_index("adversary")
        row = [remedy, standard]
        for name, _ in adversaries:
            if name not in by.index:
                row.append("n/a")
                continue
            r = by.loc[name]
            gap = "n/a" if pd.isna(r["gap_closed"]) else f"{100 * r['gap_closed']:.0f} %"
            if gap != "n/a" and not pd.isna(r["gap_closed_low"]):
                gap += f" ({100 * r['gap_closed_low']:.0f} to {100 * r['gap_closed_high']:.0f})"
            row.append(f"{pct(r['remedy_accuracy'])} vs {pct(r['standard_accuracy'])}; {gap}")
        for name in grids:
            r = by.loc[name] if name in by.index else None
            row.append("n/a" if r is None else f"{pct(r['remedy_orbit'])} vs {pct(r['standard_orbit'])}")
        rows.append(row)
    headers = ["remedy", "against"] + [f"{name} ({search})" for name, search in adversaries]
    headers += [f"{name}: orbit consistency" for name in grids]
    return [
        "The worst case, remedy against standard: each adversary's worst-case accuracy (%) of the remedy vs its "
        "standard model, mean over seeds, then the worst-case gap closed: the share of the standard model's loss "
        "from its clean accuracy to its worst case, on the images the adversary searched, that the remedy wins "
        "back (per seed, then the mean with its 95 % interval; n/a where that loss is under 2 points). Orbit "
        "consistency: the share of the grid's sample predicted as one class at every point of the space, remedy "
        "vs standard. Intervals of each accuracy: The worst case per image, below.",
        "",
        markdown_table(headers, rows),
        "",
    ]


def _tta_cost(data: ReportData, cost_column: str) -> list[str]:
    """What test-time augmentation costs: k copies of every image, k forward passes, where a model used it."""
    if not any(m.get("adaptation") == "tta" for m in data.run["models"]):
        return []
    space = ((data.run["config"].get("evaluation") or {}).get("tta") or {}).get("space")
    if not isinstance(space, dict) or not all(isinstance(r, list) and len(r) == 3 for r in space.values()):
        return ["`tta` averages the logits over k copies of each image: k forward passes per image.", ""]
    copies = space_point_count(space)
    axes = ", ".join(f"{axis} {low:g} to {high:g} in {count}" for axis, (low, high, count) in space.items())
    if "translate" in space:
        axes += "; translate moves x and y, each over its steps"
    return [
        f"`tta` averages the logits over k = {copies} copies of each image ({axes}): "
        f"k forward passes per image, {copies}x a plain evaluation's, which its {cost_column} above shows.",
        "",
    ]


def _gap_per_perturbation(data: ReportData) -> list[str]:
    """Gap closed per remedy and perturbation (over its severities), seen ones marked; per cell in remedies.csv."""
    per_cell = cell_gap_table(data.results, data.run["models"])
    if per_cell.empty:
        return []
    table = per_cell[per_cell["severity"] == ALL_SEVERITIES]
    perturbations = list(dict.fromkeys(table["perturbation"]))
    rows = []
    for remedy, own in table.groupby("remedy", sort=False):
        by = own.set_index("perturbation")
        rows.append(
            [remedy]
            + [
                "n/a"
                if p not in by.index or pd.isna(by.loc[p, "gap_closed"])
                else f"{100 * by.loc[p, 'gap_closed']:.0f}{'*' if by.loc[p, 'in_training'] in (SEEN, PARTLY) else ''}"
                for p in perturbations
            ]
        )
    return [
        "Gap closed per perturbation (%, mean over seeds, each seed pooling the perturbation's severities as "
        "above; * seen or partly seen in the remedy's training; n/a where the standard model lost under 2 points). "
        "Per cell, with 95 % intervals: `remedies.csv`.",
        "",
        markdown_table(["remedy", *perturbations], rows),
        "",
    ]


def _against_reference(data: ReportData) -> list[str]:
    """Each cell of this run set against the seed spread of a multi-seed reference of the same recipes."""
    source = data.run.get("noise_from") or {}
    table = agreement_table(data.results, data.reference)
    verdict = agreement_verdict(table)
    rows = [
        [
            r["model"],
            r["perturbation"],
            r["severity"],
            pct(r["accuracy"]),
            f"{pct(r['reference_accuracy'])} ± {pct(r['reference_std'])}",
            f"{pct(max(0.0, r['reference_accuracy'] - r['half_width']))}–"
            f"{pct(min(1.0, r['reference_accuracy'] + r['half_width']))}",
            points(r["accuracy"] - r["reference_accuracy"]),
            "yes" if r["inside"] else "**no**",
        ]
        for r in table.to_dict("records")
    ]
    skipped = source.get("skipped_models") or []
    return [
        "## Against the reference",
        "",
        f"Each cell set against `{source.get('name', 'the reference')}` ({source.get('path', '')}, "
        f"{len(source.get('seeds', []))} seeds, commit {source.get('git_commit', '?')}): the reference's mean ± "
        "standard deviation over its seeds, and the range the mean of this run's seeds falls in with 95 % "
        "probability when both are trainings of the same recipe (a t prediction interval; both use the same "
        f"test images). {verdict.summary}",
        "",
        *([f"Not compared (their recipe differs from the reference's): {', '.join(skipped)}.", ""] if skipped else []),
        markdown_table(
            ["model", "perturbation", "severity", "this run", "reference", "expected range", "difference", "inside"],
            rows,
        ),
        "",
    ]


def _models(cells: pd.DataFrame, models: list[dict[str, Any]]) -> list[str]:
    clean = cells[cells.perturbation == CLEAN].set_index("model")["accuracy"]
    seen: dict[str, dict[str, Any]] = {}
    seconds: dict[str, list[float]] = {}
    weights: dict[str, list[str]] = {}
    histories: dict[str, list[list[dict[str, Any]]]] = {}
    for m in models:
        seen.setdefault(m["name"], m)
        weights.setdefault(m["name"], []).append(m["weights"])
        if m.get("train_seconds") is not None:
            seconds.setdefault(m["name"], []).append(m["train_seconds"])
        history = (m.get("training_summary") or {}).get("history") or []
        if len(history) >= 2:
            histories.setdefault(m["name"], []).append(history)
    rows = [
        [
            m["name"],
            f"{m['parameters']:,}",
            "n/a" if m.get("macs") is None else f"{m['macs']:,}",
            pct(clean.get(m["name"], float("nan"))),
            ", ".join(f"{n} {w}" if n > 1 else w for w, n in Counter(weights[m["name"]]).items()),
            f"{sum(seconds[m['name']]) / len(seconds[m['name']]):.1f}" if m["name"] in seconds else "n/a",
            (m.get("recipe") or {}).get("augment", "n/a"),
            *([_last_epoch(histories.get(m["name"], []))] if histories else []),
        ]
        for m in seen.values()
    ]
    headers = ["model", "parameters", "MACs / image", "clean accuracy", "weights", "training time (s)", "augmentation"]
    note = "Training time: the mean over seeds of each training's seconds (a cached one keeps its own)."
    if histories:
        headers.append("training accuracy, last epoch")
        note += (
            " Training accuracy, last epoch: the share of its training images (as the training saw them: augmented,"
            " or the worst of k views) a model classified correctly in its last epoch, mean over seeds, and in"
            " brackets its rise in points over the epoch before; a large rise says the training stopped while the"
            " model was still learning."
        )
    return ["## Models", "", markdown_table(headers, rows), "", note, ""]


def _last_epoch(histories: list[list[dict[str, Any]]]) -> str:
    """The last epoch's training accuracy and its rise over the one before, each the mean over `histories`."""
    if not histories:
        return "n/a"
    last = sum(h[-1]["train_accuracy"] for h in histories) / len(histories)
    before = sum(h[-2]["train_accuracy"] for h in histories) / len(histories)
    return f"{100 * last:.2f} ({100 * (last - before):+.2f})"


def _summary(
    results: pd.DataFrame, cells: pd.DataFrame, reference: str | None, exposure: dict[tuple[str, str], str]
) -> list[str]:
    seeds = int(cells["seeds"].max())
    several = seeds > 1
    table = summary_spread(results, reference) if several else summary_table(cells, reference)

    def show(r: dict[str, Any], metric: str, fmt: Any = pct) -> str:
        value = fmt(-r[metric]) if metric == "mean_drop" else fmt(r[metric])
        return f"{value} ± {(pct if metric == 'mean_drop' else fmt)(r[f'{metric}_std'])}" if several else value

    rows = [
        [
            r["model"],
            r["perturbation"] + _mark(exposure.get((r["model"], r["perturbation"]))),
            show(r, "clean_accuracy"),
            show(r, "mean_accuracy"),
            show(r, "mean_drop", points),
            show(r, "mean_relative_drop"),
            show(r, "worst_accuracy"),
            show(r, "auc"),
            show(r, "ce", ratio),
            show(r, "relative_ce", ratio),
            show(r, "flip_rate"),
            show(r, "ece"),
        ]
        for r in table.to_dict("records")
    ]
    headers = [
        "model",
        "perturbation",
        "clean",
        "mean",
        "mean drop",
        "relative drop (%)",
        "worst",
        "AUC",
        "CE",
        "relative CE",
        "flip rate",
        "ECE",
    ]
    spread_note = (
        f" Each value is computed per seed, then given as mean ± standard deviation over the {seeds} seeds; its "
        f"95 % interval is mean ± {float(t_quantile(seeds - 1)):.3f}·sd/√{seeds}."
        if several
        else ""
    )
    return [
        "## Summary",
        "",
        "Per perturbation, over its severities: mean and worst accuracy, area under the accuracy-severity curve "
        "(clean at 0, normalised to 100), corruption error CE and relative CE (100 = the reference model), mean "
        f"flip rate against the clean predictions and mean ECE.{spread_note}",
        "",
        markdown_table(headers, rows),
        "",
    ]


def _per_class(data: ReportData) -> list[str]:
    table = class_table(data.per_class)
    models = list(dict.fromkeys(table["model"]))
    classes = list(dict.fromkeys(table["class"]))
    indexed = table.set_index(["model", "class"])
    headers = ["class"] + [f"{m} {part}" for m in models for part in ("clean", "shifted", "drop")]
    rows = [
        [name]
        + [
            value
            for m in models
            for value in (
                pct(indexed.loc[(m, name), "clean_accuracy"]),
                pct(indexed.loc[(m, name), "shifted_accuracy"]),
                points(-indexed.loc[(m, name), "drop"]),
            )
        ]
        for name in classes
    ]
    growth = confusion_growth(data.confusion, data.per_class)
    pairs = [
        [
            r["model"],
            f"{r['true']} → {r['predicted']}",
            pct(r["clean_rate"]),
            pct(r["shifted_rate"]),
            points(r["growth"]),
        ]
        for r in growth.to_dict("records")
    ]
    return [
        "## Per class",
        "",
        "Accuracy on each class's test images: clean, and the mean over every perturbed cell (`per_class.csv`).",
        "",
        markdown_table(headers, rows),
        "",
        "Confusions that grow most: the share of a class's images given the wrong class, clean and mean over "
        "perturbed cells (`confusion.csv`).",
        "",
        markdown_table(["model", "true → predicted", "clean (%)", "shifted (%)", "growth (points)"], pairs),
        "",
    ]


def _rate(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{value:,.0f}"


def _rate_with_spread(row: dict[str, Any]) -> str:
    low, high = _rate(row["images_per_second_low"]), _rate(row["images_per_second_high"])
    return f"{_rate(row['images_per_second'])} ({low}–{high})"


def _throughput(throughput: pd.DataFrame) -> list[str]:
    ok = throughput[throughput["status"] == "ok"]
    out = _inference_table(ok)
    out += _latency_and_training_table(ok)
    out += _sweep_table(ok)
    out += _adversary_step_table(ok)
    out += _perturbation_table(ok)
    skipped = throughput[throughput["status"] == "skipped"]
    if len(skipped):
        reasons = skipped.groupby(["device", "reason"], sort=False).size()
        out += [
            "Skipped: "
            + "; ".join(f"{device}: {reason} ({n} measurements)" for (device, reason), n in reasons.items()),
            "",
        ]
    return out


def _inference_table(ok: pd.DataFrame) -> list[str]:
    """The section's heading and its inference rows, each set against the device's convolution ceiling."""
    ceilings = ok[ok["kind"] == "ceiling"].set_index("device")["gflops"]
    rows = [
        [
            r["model"],
            r["device"],
            r["dtype"] + (" compiled" if r["compiled"] else ""),
            int(r["batch_size"]),
            _rate_with_spread(r),
            plain(r["ms_per_batch"], 2),
            plain(r["gflops"], 1),
            ratio(r["gflops"] / ceilings[r["device"]])
            if r["device"] in ceilings and not pd.isna(r["gflops"])
            else "n/a",
            plain(r["peak_memory_mb"], 0),
        ]
        for r in ok[ok["kind"] == "inference"].to_dict("records")
    ]
    return [
        "## Throughput",
        "",
        "Inference: median images/s over repeats (slowest–fastest), BatchNorm folded into the convolutions, "
        "`channels_last`; % of ceiling compares the achieved GFLOP/s with a large channels_last 3x3 convolution "
        "timed in the same run. Peak memory: the CUDA allocator's peak, or the process's peak RSS on the CPU.",
        "",
        markdown_table(
            ["model", "device", "dtype", "batch", "images/s", "ms / batch", "GFLOP/s", "% of ceiling", "peak MB"], rows
        ),
        "",
    ]


def _latency_and_training_table(ok: pd.DataFrame) -> list[str]:
    """Single-image latency and training speed, where measured."""
    other = ok[ok["kind"].isin(["latency", "training"])]
    if not len(other):
        return []
    lines = [
        [
            r["model"],
            r["device"],
            r["kind"],
            int(r["batch_size"]),
            _rate(r["images_per_second"]),
            f"{plain(r['latency_p50_ms'], 2)} / {plain(r['latency_p95_ms'], 2)}" if r["kind"] == "latency" else "",
        ]
        for r in other.to_dict("records")
    ]
    return [markdown_table(["model", "device", "what", "batch", "images/s", "p50 / p95 ms"], lines), ""]


def _sweep_table(ok: pd.DataFrame) -> list[str]:
    """The sweep's images/s against the bare forward pass, where both were measured."""
    sweep = ok[ok["kind"].isin(["sweep", "forward"])].pivot_table(
        index="model", columns="kind", values="images_per_second", sort=False
    )
    if not {"sweep", "forward"} <= set(sweep.columns):
        return []
    lines = [
        [model, _rate(r["forward"]), _rate(r["sweep"]), ratio(r["sweep"] / r["forward"])]
        for model, r in sweep.iterrows()
    ]
    return [
        "The evaluation sweep (perturb, forward, score) against the bare forward pass over the same batches:",
        "",
        markdown_table(["model", "forward images/s", "sweep images/s", "sweep / forward (%)"], lines),
        "",
    ]


def _adversary_step_table(ok: pd.DataFrame) -> list[str]:
    """A worst-case search's step against the bare forward pass on the same batch, where both were measured."""
    steps = ok[ok["kind"].isin(["adversary step", "adversary forward"])]
    if steps.empty:
        return []
    table = steps.pivot_table(index="model", columns="kind", values="images_per_second", sort=False)
    lines = [
        [model, _rate(r["adversary forward"]), _rate(r["adversary step"]),
         ratio(r["adversary step"] / r["adversary forward"])]
        for model, r in table.iterrows()
    ]  # fmt: skip
    return [
        "A worst-case search's step (each image at its own point, perturbed, forward, verdicts kept) against the "
        "bare forward pass on the same batch:",
        "",
        markdown_table(["model", "forward images/s", "search step images/s", "step / forward (%)"], lines),
        "",
    ]


def _perturbation_table(ok: pd.DataFrame) -> list[str]:
    """Each perturbation's images/s by its backend, where measured."""
    perturbations = ok[ok["kind"] == "perturbation"]
    if not len(perturbations):
        return []
    lines = [[r["model"], r["reason"], _rate(r["images_per_second"])] for r in perturbations.to_dict("records")]
    return [markdown_table(["perturbation", "backend", "images/s"], lines), ""]


def _lock_row(lock: dict[str, Any] | None) -> str:
    if not lock:
        return "not recorded"
    if lock.get("matches") is None:
        return str(lock.get("note", "no lock file"))
    if lock["matches"]:
        return f"{lock['file']}: every installed package at its locked version"
    return f"{lock['file']}: {len(lock['differences'])} packages differ (see the warning at the top)"


def _cpu_row(cpu: dict[str, Any]) -> str:
    return f"{cpu.get('model', 'n/a')}, {cpu.get('cores', 'n/a')} cores, {cpu.get('capability', 'n/a')}"


def _environment(run: dict[str, Any]) -> list[str]:
    env = run["environment"]
    threads = env.get("threads", {})
    versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items())
    data = run.get("data", {})
    timings = run.get("timings_seconds", {})
    rows = [
        ["device", f"{env['device']} ({env.get('device_name', 'n/a')})"],
        ["threads", ", ".join(f"{k} {v}" for k, v in threads.items()) or "n/a"],
        *([["cpu", _cpu_row(env["cpu"])]] if "cpu" in env else []),
        ["platform", f"{env.get('platform', 'n/a')}, Python {env.get('python', 'n/a')}"],
        ["packages", versions or "n/a"],
        ["lock", _lock_row(env.get("lock"))],
        ["allocator tuned", str(env.get("allocator_tuned", "n/a"))],
        *([["denormals flushed", str(env["cpu_settings"]["flush_denormal"])]] if "cpu_settings" in env else []),
        ["data", f"{data.get('source', 'n/a')} (sha256 {str(data.get('checksum', 'n/a'))[:16]}…)"],
        ["git commit", env["git_commit"]],
        ["wall time (s)", f"{timings['total']:.1f}" if "total" in timings else "n/a"],
    ]
    return ["## Environment", "", markdown_table(["setting", "value"], rows, align="ll"), ""]


def _sd(value: float | None) -> str:
    return "" if value is None or pd.isna(value) else f" ± {pct(value)}"


def _exposure(results: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(model, perturbation) -> seen or partly seen, where the model's training performed that shift."""
    marked = results[results["in_training"].isin([SEEN, PARTLY])]
    return {(r.model, r.perturbation): r.in_training for r in marked.itertuples()}


def _mark(status: str | None) -> str:
    return {SEEN: " (seen in training)", PARTLY: " (partly seen in training)"}.get(status or "", "")


def _perturbation_section(
    cells: pd.DataFrame, pert: dict[str, Any], unit: str, exposure: dict[tuple[str, str], str]
) -> list[str]:
    name = pert["name"]
    several = int(cells["seeds"].max()) > 1
    table = severity_table(cells, name)
    labels = parameter_labels(cells, name)
    severities = sorted(int(c[1:]) for c in table.columns if c.startswith("s") and c[1:].isdigit())
    headers = (
        ["model", "clean"]
        + [f"s{s} ({format_parameter(labels[s], unit)})" for s in severities]
        + ["mean", "mean drop", "relative drop (%)", "flip rate", "step flip rate"]
    )
    rows = []
    for r in table.to_dict("records"):
        values = [
            f"{pct(r[f's{s}'])}{_sd(r.get(f's{s}_std'))} ({points(r[f's{s}'] - r['clean'])}) "
            f"[{interval(r[f's{s}_low'], r[f's{s}_high'])}]"
            for s in severities
        ]
        rows.append(
            [
                r["model"] + _mark(exposure.get((r["model"], name))),
                pct(r["clean"]),
                *values,
                pct(r["mean"]),
                points(-r["mean_drop"]),
                pct(r["relative_drop"]),
                pct(r["flip_rate"]),
                pct(r["flip_rate_step"]),
            ]
        )
    return [
        f"## {name}",
        "",
        f"{pert['description']} Parameter: {unit}. Cells: accuracy{' ± sd over seeds' if several else ''} "
        "(change from clean) [95 % interval]. "
        "Flip rate: predictions that differ from the clean ones; step flip rate: from the previous severity's.",
        "",
        markdown_table(headers, rows),
        "",
    ]

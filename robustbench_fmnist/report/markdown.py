"""Render the report's tables as GitHub markdown. Every number comes from the report's CSV files."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from robustbench_fmnist.evaluation import CLEAN
from robustbench_fmnist.report.bundle import ReportData
from robustbench_fmnist.report.tables import (
    class_table,
    confusion_growth,
    format_parameter,
    headline_table,
    parameter_labels,
    seed_mean,
    seed_spread,
    severity_table,
    summary_table,
)


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
        f"evaluation in {cfg['evaluation']['precision']}. Accuracies in %, with 95 % Wilson intervals over the "
        f"test images{' pooled over seeds' if len(seeds) > 1 else ''}; drops in percentage points from the "
        f"model's own clean accuracy. Made by robustbench_fmnist {env['versions']['robustbench_fmnist']} at "
        f"commit {env['git_commit']}; every number below is computed from `results.csv`, `per_class.csv`, "
        f"`confusion.csv` and `calibration.csv` beside this file, the configuration is in `run.json`.",
        "",
    ]
    out += _invalid_cells(data.results)
    out += _headline(cells, reference)
    if len(seeds) > 1:
        out += _seeds(data.results, reference)
    out += _models(cells, run["models"])
    out += _summary(cells, reference)
    out += ["## Figures", ""]
    out += [f"![{title}]({path})\n" for title, path in figures.items()]
    out += _per_class(data)
    units = {p["name"]: p["unit"] for p in run["perturbations"]}
    for pert in run["perturbations"]:
        if pert["name"] in set(cells["perturbation"]):
            out += _perturbation_section(cells, pert, units[pert["name"]])
    if data.throughput is not None:
        out += _throughput(data.throughput)
    out += _environment(run)
    return "\n".join(out).rstrip("\n") + "\n"


def _invalid_cells(results: pd.DataFrame) -> list[str]:
    """A warning naming every cell whose logits held NaN or inf: such cells are not scored anywhere."""
    invalid = results[results["nonfinite_images"] > 0]
    if invalid.empty:
        return []
    listed = ", ".join(
        f"{r.model} seed {r.seed} {r.perturbation} s{r.severity} ({r.nonfinite_images:,} of {r.n_images:,} images)"
        for r in invalid.itertuples()
    )
    return [
        f"**Warning: {len(invalid)} invalid cell{'s' if len(invalid) > 1 else ''}.** The model gave NaN or "
        f"infinite logits there, so no accuracy is scored; they show as n/a and every mean leaves them out: "
        f"{listed}.",
        "",
    ]


def _headline(cells: pd.DataFrame, reference: str | None) -> list[str]:
    table = headline_table(cells, reference)
    seeds_note = (
        " With several seeds, every number here is from the seed-mean cells (so mCE is the CE of mean "
        "errors); Across seeds gives each seed's own values as mean ± spread."
        if int(cells["seeds"].max()) > 1
        else ""
    )
    note = (
        f"mCE and relative mCE (Hendrycks & Dietterich 2019) are normalised by `{reference}`, so it scores 100."
        if reference and reference in set(cells["model"])
        else "mCE needs a reference model in the experiment (`reference_model`); none is, so it is n/a."
    )
    rows = [
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
        for r in table.to_dict("records")
    ]
    headers = [
        "model",
        "clean (95 % CI)",
        "shifted mean",
        "mCE",
        "relative mCE",
        "flip rate",
        "confidence",
        "ECE",
        "NLL (nats)",
    ]
    return [
        "## Headline",
        "",
        markdown_table(headers, rows),
        "",
        f"Shifted mean and flip rate (share of images whose prediction differs from the clean one) are means "
        f"over every perturbed cell. Confidence (mean top-1 probability), ECE (15 equal-width confidence bins) and "
        f"NLL: clean → mean over perturbed cells. {note}{seeds_note}",
        "",
    ]


def _seeds(results: pd.DataFrame, reference: str | None) -> list[str]:
    spread = seed_spread(results, reference)
    rows = [
        [
            r["model"],
            int(r["seeds"]),
            f"{pct(r['clean_mean'])} ± {pct(r['clean_std'])}",
            f"{pct(r['shifted_mean'])} ± {pct(r['shifted_std'])}",
            f"{ratio(r['mce_mean'])} ± {ratio(r['mce_std'])}",
        ]
        for r in spread.to_dict("records")
    ]
    return [
        "## Across seeds",
        "",
        "Each seed trains its own models and draws its own perturbations: mean ± standard deviation over seeds.",
        "",
        markdown_table(["model", "seeds", "clean", "shifted mean", "mCE"], rows),
        "",
    ]


def _models(cells: pd.DataFrame, models: list[dict[str, Any]]) -> list[str]:
    clean = cells[cells.perturbation == CLEAN].set_index("model")["accuracy"]
    seen: dict[str, dict[str, Any]] = {}
    for m in models:
        seen.setdefault(m["name"], m)
    rows = [
        [
            m["name"],
            f"{m['parameters']:,}",
            f"{m['macs']:,}",
            pct(clean.get(m["name"], float("nan"))),
            m["weights"],
            "n/a" if m.get("train_seconds") is None else f"{m['train_seconds']:.1f}",
            (m.get("recipe") or {}).get("augment", "n/a"),
        ]
        for m in seen.values()
    ]
    headers = ["model", "parameters", "MACs / image", "clean accuracy", "weights", "training time (s)", "augmentation"]
    return ["## Models", "", markdown_table(headers, rows), ""]


def _summary(cells: pd.DataFrame, reference: str | None) -> list[str]:
    table = summary_table(cells, reference)
    rows = [
        [
            r["model"],
            r["perturbation"],
            pct(r["clean_accuracy"]),
            pct(r["mean_accuracy"]),
            points(-r["mean_drop"]),
            pct(r["mean_relative_drop"]),
            pct(r["worst_accuracy"]),
            pct(r["auc"]),
            ratio(r["ce"]),
            ratio(r["relative_ce"]),
            pct(r["flip_rate"]),
            pct(r["ece"]),
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
    return [
        "## Summary",
        "",
        "Per perturbation, over its severities: mean and worst accuracy, area under the accuracy-severity curve "
        "(clean at 0, normalised to 100), corruption error CE and relative CE (100 = the reference model), mean "
        "flip rate against the clean predictions and mean ECE.",
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
    ceilings = ok[ok["kind"] == "ceiling"].set_index("device")["gflops"]
    inference = ok[ok["kind"] == "inference"]
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
        for r in inference.to_dict("records")
    ]
    out = [
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
    other = ok[ok["kind"].isin(["latency", "training"])]
    if len(other):
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
        out += [markdown_table(["model", "device", "what", "batch", "images/s", "p50 / p95 ms"], lines), ""]
    sweep = ok[ok["kind"].isin(["sweep", "forward"])].pivot_table(
        index="model", columns="kind", values="images_per_second", sort=False
    )
    if {"sweep", "forward"} <= set(sweep.columns):
        lines = [
            [model, _rate(r["forward"]), _rate(r["sweep"]), ratio(r["sweep"] / r["forward"])]
            for model, r in sweep.iterrows()
        ]
        out += [
            "The evaluation sweep (perturb, forward, score) against the bare forward pass over the same batches:",
            "",
            markdown_table(["model", "forward images/s", "sweep images/s", "sweep / forward (%)"], lines),
            "",
        ]
    perturbations = ok[ok["kind"] == "perturbation"]
    if len(perturbations):
        lines = [[r["model"], r["reason"], _rate(r["images_per_second"])] for r in perturbations.to_dict("records")]
        out += [markdown_table(["perturbation", "backend", "images/s"], lines), ""]
    skipped = throughput[throughput["status"] == "skipped"]
    if len(skipped):
        reasons = skipped.groupby(["device", "reason"], sort=False).size()
        out += [
            "Skipped: "
            + "; ".join(f"{device}: {reason} ({n} measurements)" for (device, reason), n in reasons.items()),
            "",
        ]
    return out


def _environment(run: dict[str, Any]) -> list[str]:
    env = run["environment"]
    threads = env.get("threads", {})
    versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items())
    data = run.get("data", {})
    timings = run.get("timings_seconds", {})
    rows = [
        ["device", f"{env['device']} ({env.get('device_name', 'n/a')})"],
        ["threads", ", ".join(f"{k} {v}" for k, v in threads.items()) or "n/a"],
        ["platform", f"{env.get('platform', 'n/a')}, Python {env.get('python', 'n/a')}"],
        ["packages", versions or "n/a"],
        ["allocator tuned", str(env.get("allocator_tuned", "n/a"))],
        *([["denormals flushed", str(env["cpu_settings"]["flush_denormal"])]] if "cpu_settings" in env else []),
        ["data", f"{data.get('source', 'n/a')} (sha256 {str(data.get('checksum', 'n/a'))[:16]}…)"],
        ["git commit", env["git_commit"]],
        ["wall time (s)", f"{timings['total']:.1f}" if "total" in timings else "n/a"],
    ]
    return ["## Environment", "", markdown_table(["setting", "value"], rows, align="ll"), ""]


def _perturbation_section(cells: pd.DataFrame, pert: dict[str, Any], unit: str) -> list[str]:
    name = pert["name"]
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
            f"{pct(r[f's{s}'])} ({points(r[f's{s}'] - r['clean'])}) [{interval(r[f's{s}_low'], r[f's{s}_high'])}]"
            for s in severities
        ]
        rows.append(
            [
                r["model"],
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
        f"{pert['description']} Parameter: {unit}. Cells: accuracy (change from clean) [95 % interval]. "
        "Flip rate: predictions that differ from the clean ones; step flip rate: from the previous severity's.",
        "",
        markdown_table(headers, rows),
        "",
    ]

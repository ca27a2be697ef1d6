"""Render the report's tables as GitHub markdown."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from robustbench_fmnist.evaluation import CLEAN
from robustbench_fmnist.report.tables import parameter_labels, severity_table, summary_table


def pct(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{100 * value:.2f}"


def points(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{100 * value:+.2f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    align = align or "l" + "r" * (len(headers) - 1)
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(marks[a] for a in align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt_parameter(value: float, unit: str) -> str:
    text = f"{value:g}"
    if unit.startswith("added"):
        return f"+{text}"
    if unit.startswith("contrast") or unit.startswith("factor"):
        return f"x{text}"
    if unit.startswith("degrees"):
        return f"{text}°"
    return text


def render_markdown(results: pd.DataFrame, models: list[dict[str, Any]], run: dict[str, Any]) -> str:
    """The whole report.md. Every number comes from `results` (results.csv) or run.json."""
    cfg = run["config"]
    units = {p["name"]: p["unit"] for p in run["perturbations"]}
    out = [f"# Robustness report: {cfg['name']}", ""]
    if cfg.get("description"):
        out += [cfg["description"].strip(), ""]
    env = run["environment"]
    out += [
        f"Fashion-MNIST test set ({int(results['n_images'].iloc[0]):,} images), seed {cfg['seed']}, "
        f"device {env['device']}, evaluation in {cfg['evaluation']['precision']}. "
        f"Accuracies in %, drops in percentage points from the model's own clean accuracy. "
        f"Made by robustbench_fmnist {env['versions']['robustbench_fmnist']} at commit {env['git_commit']}; "
        f"raw rows in `results.csv`, full configuration in `run.json`.",
        "",
        "## Models",
        "",
        markdown_table(
            ["model", "parameters", "MACs / image", "clean accuracy", "weights", "training time (s)"],
            [
                [
                    m["name"],
                    f"{m['parameters']:,}",
                    f"{m['macs']:,}",
                    pct(_clean(results, m["name"])),
                    m["weights"],
                    "n/a" if m.get("train_seconds") is None else f"{m['train_seconds']:.1f}",
                ]
                for m in models
            ],
        ),
        "",
        "## Summary",
        "",
        "Mean over severities for each perturbation; worst is the lowest accuracy at any severity.",
        "",
    ]
    summary = summary_table(results)
    out.append(
        markdown_table(
            ["model", "perturbation", "clean", "mean", "mean drop", "relative drop (%)", "worst"],
            [
                [
                    r.model,
                    r.perturbation,
                    pct(r.clean_accuracy),
                    pct(r.mean_accuracy),
                    points(-r.mean_drop),
                    pct(r.mean_relative_drop),
                    pct(r.worst_accuracy),
                ]
                for r in summary.itertuples()
            ],
        )
    )
    for pert in run["perturbations"]:
        name = pert["name"]
        if name not in set(results["perturbation"]):
            continue
        table = severity_table(results, name)
        labels = parameter_labels(results, name)
        severities = [int(c[1:]) for c in table.columns if c.startswith("s") and c[1:].isdigit()]
        headers = (
            ["model", "clean"]
            + [f"s{s} ({_fmt_parameter(labels[s], units[name])})" for s in severities]
            + ["mean", "mean drop", "relative drop (%)"]
        )
        rows = []
        for r in table.to_dict("records"):
            cells = [f"{pct(r[f's{s}'])} ({points(r[f's{s}'] - r['clean'])})" for s in severities]
            rows.append(
                [r["model"], pct(r["clean"]), *cells, pct(r["mean"]), points(-r["mean_drop"]), pct(r["relative_drop"])]
            )
        out += [
            "",
            f"## {name}",
            "",
            f"{pert['description']} Parameter: {pert['unit']}. Cells: accuracy (change from clean).",
            "",
            markdown_table(headers, rows),
        ]
    return "\n".join(out) + "\n"


def _clean(results: pd.DataFrame, model: str) -> float:
    clean = results[(results.model == model) & (results.perturbation == CLEAN)]["accuracy"]
    return float(clean.iloc[0]) if len(clean) else float("nan")

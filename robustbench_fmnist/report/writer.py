"""Write a report folder as a whole: the data files, then everything rendered from them.

Rendering always reads the data back from the folder, so `report` (re-rendering a saved run)
and `run` produce the same bytes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from robustbench_fmnist.data import CLASS_NAMES
from robustbench_fmnist.files import MARKER, REPORT, replace_folder, safe_file_name
from robustbench_fmnist.report import figures
from robustbench_fmnist.report.bundle import (
    DATA_FILES,
    THROUGHPUT_FILE,
    ReportData,
    read_data,
    write_data,
)
from robustbench_fmnist.report.html import render_html
from robustbench_fmnist.report.markdown import render_markdown
from robustbench_fmnist.report.remedies import cell_gap_table
from robustbench_fmnist.report.tables import seed_mean
from robustbench_fmnist.report.worst_case import fooling_heatmaps, model_matrix, seed_curves, space_dims

FAMILY_ORDER = ("lighting", "viewpoint", "noise", "blur", "digital")


def write_report(folder: str | Path, data: ReportData) -> Path:
    """Replace `folder` with a complete report; on any failure the old one stays as it was."""
    folder = Path(folder)
    with replace_folder(folder, REPORT) as staging:
        write_data(staging, data)
        render_files(staging)
    return folder


def rerender_report(folder: str | Path) -> Path:
    """Render report.md, report.html and figures/ again from a report folder's saved data."""
    folder = Path(folder)
    read_data(folder)  # fail on a broken folder before touching it
    with replace_folder(folder, REPORT) as staging:
        _copy_all_but_rendered(folder, staging)
        render_files(staging)
    return folder


def add_throughput(folder: str | Path, throughput: pd.DataFrame) -> Path:
    """Put throughput.csv into a report folder and re-render it; a folder without a report gets the CSV alone."""
    folder = Path(folder)
    complete = all((folder / filename).exists() for filename, _ in DATA_FILES.values())
    if complete:
        read_data(folder)  # fail on a broken folder before touching it
    with replace_folder(folder, REPORT) as staging:
        if folder.exists():
            _copy_all_but_rendered(folder, staging)
        throughput.to_csv(staging / THROUGHPUT_FILE, index=False, float_format="%.6g")
        if complete:
            render_files(staging)
    return folder


REMEDIES_FILE = "remedies.csv"  # gap closed per remedy and cell, when the report has remedies
RENDERED = ("report.md", "report.html", "figures", REMEDIES_FILE)


def _copy_all_but_rendered(folder: Path, staging: Path) -> None:
    """Everything in a report folder except what rendering makes, so a user's own files survive."""
    for path in folder.iterdir():
        if path.name in RENDERED or path.name == MARKER:
            continue
        if path.is_dir():
            shutil.copytree(path, staging / path.name)
        else:
            shutil.copy2(path, staging / path.name)


def render_files(folder: Path) -> None:
    """figures/*.png, report.md and report.html from the data files in `folder`."""
    data = read_data(folder)
    (folder / "figures").mkdir(exist_ok=True)
    drawn: dict[str, str] = {}

    def save(title: str, filename: str, png: bytes) -> None:
        (folder / "figures" / filename).write_bytes(png)
        drawn[title] = f"figures/{filename}"

    cells = seed_mean(data.results)
    families = {p["family"] for p in data.run["perturbations"]}
    for family in FAMILY_ORDER:
        if family in families:
            png = figures.severity_curves(cells, data.run["perturbations"], family)
            save(f"Accuracy by severity: {family}", f"severity_{family}.png", png)
    models = list(dict.fromkeys(data.results["model"]))
    # a model whose every cell is invalid (NaN logits) has no per-class accuracy and no bins to draw
    scored = set(data.per_class.loc[data.per_class["accuracy"].notna(), "model"])
    for model in (m for m in models if m in scored):
        png = figures.class_heatmap(data.per_class, model)
        save(f"Per-class drop: {model}", f"classes_{safe_file_name(model)}.png", png)
    for model in (m for m in models if m in set(data.calibration["model"])):
        png = figures.reliability_diagram(data.calibration, model)
        save(f"Reliability: {model}", f"reliability_{safe_file_name(model)}.png", png)
    if data.examples is not None:
        ex = data.examples
        for m, model in enumerate(ex.models):
            png = figures.example_grid(ex.images, ex.labels, ex.predictions[m], ex.row_names, CLASS_NAMES, model)
            save(f"Examples: {model}", f"examples_{safe_file_name(model)}.png", png)
    drawn.update(_worst_case_figures(data, folder / "figures"))
    if data.throughput is not None and (data.throughput["kind"] == "inference").any():
        save("Inference throughput by batch size", "throughput.png", figures.throughput_curves(data.throughput))
    gaps = cell_gap_table(data.results, data.run["models"])
    if not gaps.empty:
        gaps.to_csv(folder / REMEDIES_FILE, index=False, float_format="%.6g")
    text = render_markdown(data, drawn)
    (folder / "report.md").write_text(text, encoding="utf-8")
    title = f"Robustness report: {data.run['config']['name']}"
    (folder / "report.html").write_text(render_html(text, folder, title), encoding="utf-8")


def _worst_case_figures(data: ReportData, figures_dir: Path) -> dict[str, str]:
    """The worst-case curves, fooling heatmaps and kappa matrices of a run with adversaries: title -> path."""
    drawn: dict[str, str] = {}
    if data.adversaries is not None and (data.adversaries["search"] == "grid").any():
        figures.plot_worst_case_curves(seed_curves(data.adversaries), figures_dir / "worst_case.png")
        drawn["Worst-case accuracy by budget"] = "figures/worst_case.png"
    if data.fooling is not None:
        for shown in fooling_heatmaps(data.fooling, data.run["config"].get("adversaries") or []):
            figures.plot_fooling_heatmap(
                shown.grid, shown.row_values, shown.col_values, shown.row_name, shown.col_name, shown.title,
                figures_dir / shown.filename,
            )  # fmt: skip
            drawn[shown.title] = f"figures/{shown.filename}"
    if data.fooling_by_class is not None:
        adversaries = data.run["config"].get("adversaries") or []
        for (model, adversary), rows in data.fooling_by_class.groupby(["model", "adversary"], sort=False):
            row_name, col_name = space_dims(adversaries, adversary)[:2]
            name = f"fooling_by_class_{safe_file_name(adversary)}_{safe_file_name(model)}.png"
            title = f"How often each point fools {model}, by true class: {adversary}"
            figures.plot_class_heatmaps(rows, row_name, col_name, title, figures_dir / name)
            drawn[title] = f"figures/{name}"
    if data.consistency is not None:
        for condition in dict.fromkeys(data.consistency["condition"]):
            matrix = model_matrix(data.consistency, condition)
            if condition.startswith("worst case") and len(set(matrix["model_a"]) | set(matrix["model_b"])) >= 2:
                name = f"consistency_{safe_file_name(condition.removeprefix('worst case: '))}.png"
                figures.plot_consistency_matrix(matrix, figures_dir / name, f"Error consistency, {condition}")
                drawn[f"Error consistency, {condition}"] = f"figures/{name}"
    return drawn

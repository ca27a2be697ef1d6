"""Write a report folder as a whole: results.csv, report.md, run.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from robustbench_fmnist.files import atomic_directory
from robustbench_fmnist.report.markdown import render_markdown

RESULT_COLUMNS = [
    "model",
    "perturbation",
    "severity",
    "parameter",
    "backend",
    "n_images",
    "n_correct",
    "accuracy",
    "error",
    "seconds",
]


def results_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def write_report(folder: str | Path, results: pd.DataFrame, run: dict[str, Any]) -> Path:
    """Replace `folder` with a complete report; on any failure the old one stays as it was."""
    folder = Path(folder)
    with atomic_directory(folder) as staging:
        results.to_csv(staging / "results.csv", index=False, float_format="%.6g")
        (staging / "run.json").write_text(json.dumps(run, indent=2, sort_keys=False, default=str) + "\n")
        (staging / "report.md").write_text(render_markdown(results, run["models"], run))
    return folder


def load_report(folder: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    folder = Path(folder)
    return pd.read_csv(folder / "results.csv"), json.loads((folder / "run.json").read_text())

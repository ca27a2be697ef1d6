"""What a report folder holds, and reading it back: the data every rendered file comes from."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robustbench_fmnist.errors import HarnessError

RESULT_COLUMNS = [
    "model",
    "seed",
    "perturbation",
    "severity",
    "parameter",
    "backend",
    "n_images",
    "n_correct",
    "accuracy",
    "error",
    "accuracy_low",
    "accuracy_high",
    "flip_rate",
    "flip_rate_step",
    "ece",
    "mean_confidence",
    "nll",
    "seconds",
]
CELL_KEY = ["model", "seed", "perturbation", "severity"]
PER_CLASS_COLUMNS = [*CELL_KEY, "class", "n_images", "n_correct", "accuracy"]
CONFUSION_COLUMNS = [*CELL_KEY, "true", "predicted", "count"]
CALIBRATION_COLUMNS = [*CELL_KEY, "bin", "lower", "upper", "count", "accuracy", "confidence"]
DATA_FILES = {
    "results": ("results.csv", RESULT_COLUMNS),
    "per_class": ("per_class.csv", PER_CLASS_COLUMNS),
    "confusion": ("confusion.csv", CONFUSION_COLUMNS),
    "calibration": ("calibration.csv", CALIBRATION_COLUMNS),
}
EXAMPLES_FILE = "examples.npz"
THROUGHPUT_FILE = "throughput.csv"  # optional: written by `bench`, or by `run` with throughput.enabled


@dataclass
class Examples:
    """Sample test images (one per class) clean and under each perturbation's most severe cell."""

    images: np.ndarray  # (rows, columns, 28, 28) uint8
    labels: np.ndarray  # (columns,) true classes
    row_names: list[str]  # "clean", "rotation s5", ...
    models: list[str]
    predictions: np.ndarray  # (models, rows, columns) predicted classes


@dataclass
class ReportData:
    """The tidy rows of a report, as read back from (or about to be written to) its folder."""

    results: pd.DataFrame
    per_class: pd.DataFrame
    confusion: pd.DataFrame
    calibration: pd.DataFrame
    run: dict[str, Any]
    examples: Examples | None = None
    throughput: pd.DataFrame | None = None


def frame(rows: list[dict[str, Any]], kind: str) -> pd.DataFrame:
    """A DataFrame with the columns of one of the report's CSV files, in their order."""
    return pd.DataFrame(rows, columns=DATA_FILES[kind][1])


def write_data(folder: Path, data: ReportData) -> None:
    """The data files of a report: CSVs, run.json and the example images."""
    for kind, (filename, columns) in DATA_FILES.items():
        getattr(data, kind)[columns].to_csv(folder / filename, index=False, float_format="%.6g")
    (folder / "run.json").write_text(json.dumps(data.run, indent=2, sort_keys=False, default=str) + "\n")
    if data.throughput is not None:
        data.throughput.to_csv(folder / THROUGHPUT_FILE, index=False, float_format="%.6g")
    if data.examples is not None:
        ex = data.examples
        np.savez_compressed(
            folder / EXAMPLES_FILE,
            images=ex.images,
            labels=ex.labels,
            row_names=np.array(ex.row_names),
            models=np.array(ex.models),
            predictions=ex.predictions,
        )


def read_data(folder: str | Path) -> ReportData:
    """Read a report folder's data files back; a missing or broken one raises HarnessError naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HarnessError(f"{folder}: no such report folder (run an experiment first; reports go to reports/<name>)")
    tables: dict[str, pd.DataFrame] = {}
    for kind, (filename, columns) in DATA_FILES.items():
        path = folder / filename
        try:
            table = pd.read_csv(path, keep_default_na=False, na_values=[""])
        except FileNotFoundError:
            raise HarnessError(f"{path}: missing; the report folder is incomplete, re-run its experiment") from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise HarnessError(f"{path}: not a readable CSV ({exc}); re-run its experiment") from None
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise HarnessError(f"{path}: columns {missing} missing; it was written by another version, re-run")
        tables[kind] = table[columns]
    if tables["results"].empty or not (tables["results"]["perturbation"] == "clean").any():
        raise HarnessError(f"{folder / 'results.csv'}: no rows, or no clean row; re-run the experiment")
    try:
        run = json.loads((folder / "run.json").read_text())
    except FileNotFoundError:
        raise HarnessError(f"{folder / 'run.json'}: missing; re-run the experiment") from None
    except json.JSONDecodeError as exc:
        raise HarnessError(f"{folder / 'run.json'}: not valid JSON ({exc}); re-run the experiment") from None
    missing = [key for key in ("config", "environment", "perturbations", "models") if key not in run]
    if missing:
        raise HarnessError(f"{folder / 'run.json'}: keys {missing} missing; re-run the experiment")
    throughput = (
        pd.read_csv(folder / THROUGHPUT_FILE, keep_default_na=False, na_values=[""])
        if (folder / THROUGHPUT_FILE).exists()
        else None
    )
    return ReportData(**tables, run=run, examples=_read_examples(folder / EXAMPLES_FILE), throughput=throughput)


def _read_examples(path: Path) -> Examples | None:
    if not path.exists():
        return None
    try:
        with np.load(path) as saved:
            return Examples(
                images=saved["images"],
                labels=saved["labels"],
                row_names=[str(n) for n in saved["row_names"]],
                models=[str(m) for m in saved["models"]],
                predictions=saved["predictions"],
            )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise HarnessError(f"{path}: unreadable ({exc}); re-run the experiment or delete the file") from None

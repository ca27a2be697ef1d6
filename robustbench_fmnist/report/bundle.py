"""What a report folder holds, and reading it back: the data every rendered file comes from."""

from __future__ import annotations

import json
import math
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
    "nonfinite_images",
]
# columns a report of an earlier version may lack, with the value they had then
OPTIONAL_RESULT_COLUMNS = {"nonfinite_images": 0}
# columns that must hold numbers; an invalid cell (nonfinite_images > 0) has NaN metrics
_NUMERIC_RESULT_COLUMNS = [c for c in RESULT_COLUMNS if c not in ("model", "perturbation", "backend")]
_REQUIRED_RESULT_VALUES = ["seed", "severity", "n_images", "nonfinite_images"]
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
    text = json.dumps(_finite_or_null(data.run), indent=2, sort_keys=False, default=str, allow_nan=False)
    (folder / "run.json").write_text(text + "\n")
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


def _finite_or_null(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None: JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_null(v) for v in value]
    return value


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
        if kind == "results":
            table = table.assign(**{c: v for c, v in OPTIONAL_RESULT_COLUMNS.items() if c not in table.columns})
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise HarnessError(f"{path}: columns {missing} missing; it was written by another version, re-run")
        tables[kind] = table[columns]
    if tables["results"].empty or not (tables["results"]["perturbation"] == "clean").any():
        raise HarnessError(f"{folder / 'results.csv'}: no rows, or no clean row; re-run the experiment")
    _check_results(folder / "results.csv", tables["results"])
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


def _check_results(path: Path, results: pd.DataFrame) -> None:
    """Raise HarnessError naming the first column of results.csv that does not hold what it should."""
    for column in _NUMERIC_RESULT_COLUMNS:
        if not pd.api.types.is_numeric_dtype(results[column]):
            bad = pd.to_numeric(results[column], errors="coerce").isna() & results[column].notna()
            row = int(bad.idxmax()) + 2  # 1-based, after the header line
            raise HarnessError(
                f"{path}: column {column!r} holds {results[column][bad].iloc[0]!r} on line {row}, not a number; "
                "re-run the experiment"
            )
    for column in _REQUIRED_RESULT_VALUES:
        empty = results[column].isna()
        if empty.any():
            raise HarnessError(
                f"{path}: column {column!r} is empty or nan on line {int(empty.idxmax()) + 2}; re-run the experiment"
            )
    valid = results["nonfinite_images"] == 0
    unscored = valid & results[["n_correct", "accuracy"]].isna().any(axis=1)
    if unscored.any():
        raise HarnessError(
            f"{path}: line {int(unscored.idxmax()) + 2} has no accuracy but is not marked invalid "
            "(nonfinite_images 0); re-run the experiment"
        )


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

"""What a report folder holds, and reading it back: the data every rendered file comes from."""

from __future__ import annotations

import functools
import io
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robustbench_fmnist.errors import HarnessError
from robustbench_fmnist.evaluation.throughput import THROUGHPUT_COLUMNS
from robustbench_fmnist.files import read_user_file

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
    "adaptation",
    "in_training",
    "failed",
]
# columns a report of an earlier version may lack, with the value they had then
OPTIONAL_RESULT_COLUMNS = {"nonfinite_images": 0, "adaptation": "none", "in_training": "", "failed": ""}
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
REFERENCE_FILE = "reference.csv"  # optional: the seed spread of a `noise_from:` reference, per cell
REFERENCE_COLUMNS = ["model", "perturbation", "severity", "parameter", "seeds", "accuracy", "accuracy_std"]
OUTCOMES_FILE = "outcomes.npz"  # per-image correct/wrong of every cell (optional: older reports lack it)
ADVERSARIES_FILE = "adversaries.csv"  # optional: written by a run with `adversaries:`
ADVERSARY_COLUMNS = [
    "model",
    "seed",
    "adversary",
    "search",
    "budget",
    "budget_label",
    "accuracy",
    "n_correct",
    "n_images",
    "accuracy_low",
    "accuracy_high",
]  # fmt: skip  (the columns every row has)
_ADVERSARY_TEXT = {"model", "adversary", "search", "budget_label"}
CONSISTENCY_FILE = "consistency.csv"  # optional: error consistency between trained models, for a run with adversaries
CONSISTENCY_COLUMNS = ["condition", "model_a", "seed_a", "model_b", "seed_b", "kappa", "kappa_low", "kappa_high",
                       "c_obs", "c_exp", "accuracy_a", "accuracy_b", "n_images"]  # fmt: skip
_CONSISTENCY_TEXT = {"condition", "model_a", "model_b"}
FOOLING_FILE = "fooling.csv"  # optional: per grid point, how often it fools the grid's sample
FOOLING_COLUMNS = ["model", "seed", "adversary", "point", "fooling_rate", "n_images"]
FOOLING_BY_CLASS_FILE = "fooling_by_class.csv"  # optional: fooling.csv's heatmap slices per true class
FOOLING_BY_CLASS_COLUMNS = ["model", "adversary", "class", "row_value", "col_value", "fooling_rate"]
TRANSFER_FILE = "transfer.csv"  # optional: each model at the points another's grid search found worst
TRANSFER_COLUMNS = ["adversary", "seed", "source", "model", "accuracy", "n_correct", "n_images", "accuracy_low",
                    "accuracy_high", "accuracy_clean", "accuracy_own_worst_case", "source_worst_case"]  # fmt: skip
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
class Outcomes:
    """Which test images each (model, seed, perturbation, severity) cell got right: what paired tests need."""

    keys: list[tuple[str, int, str, int]]
    correct: np.ndarray  # (cells, images) bool

    @functools.cached_property
    def by_key(self) -> dict[tuple[str, int, str, int], np.ndarray]:
        """{cell key: its (images,) bool row}, built once."""
        return dict(zip(self.keys, self.correct, strict=True))

    @functools.cached_property
    def seeds(self) -> list[int]:
        return sorted({key[1] for key in self.keys})


def outcomes_from(pairs: list[tuple[tuple[str, int, str, int], Any]]) -> Outcomes | None:
    """Outcomes from (key, per-image correct) pairs, as `score_cells` collects them; None if there are none."""
    if not pairs:
        return None
    return Outcomes([key for key, _ in pairs], np.stack([np.asarray(correct, dtype=bool) for _, correct in pairs]))


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
    outcomes: Outcomes | None = None
    reference: pd.DataFrame | None = None  # reference.csv
    adversaries: pd.DataFrame | None = None  # adversaries.csv: the worst case per model, seed, adversary, budget
    consistency: pd.DataFrame | None = None  # consistency.csv: error consistency between trained models
    fooling: pd.DataFrame | None = None  # fooling.csv: each grid point's fooling rate on the grid's sample
    transfer: pd.DataFrame | None = None  # transfer.csv: each model at the points worst for another
    fooling_by_class: pd.DataFrame | None = None  # fooling_by_class.csv: the heatmap slices per true class


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
    if data.adversaries is not None and len(data.adversaries):
        data.adversaries.to_csv(folder / ADVERSARIES_FILE, index=False, float_format="%.6g")
    if data.consistency is not None and len(data.consistency):
        data.consistency.to_csv(folder / CONSISTENCY_FILE, index=False, float_format="%.6g")
    if data.fooling is not None and len(data.fooling):
        data.fooling.to_csv(folder / FOOLING_FILE, index=False, float_format="%.6g")
    if data.transfer is not None and len(data.transfer):
        data.transfer.to_csv(folder / TRANSFER_FILE, index=False, float_format="%.6g")
    if data.fooling_by_class is not None and len(data.fooling_by_class):
        data.fooling_by_class.to_csv(folder / FOOLING_BY_CLASS_FILE, index=False, float_format="%.4g")
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
    if data.reference is not None:
        data.reference[REFERENCE_COLUMNS].to_csv(folder / REFERENCE_FILE, index=False, float_format="%.6g")
    if data.outcomes is not None:
        keys = ["|".join(map(str, key)) for key in data.outcomes.keys]  # names never hold '|' (config.py)
        np.savez_compressed(
            folder / OUTCOMES_FILE,
            keys=np.array(keys),
            images=np.array(data.outcomes.correct.shape[1]),
            correct=np.packbits(data.outcomes.correct, axis=1),
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
    tables = {kind: _read_table(folder / filename, columns, kind) for kind, (filename, columns) in DATA_FILES.items()}
    run = _read_run(folder / "run.json")
    _check_results(folder / "results.csv", tables["results"], run)
    throughput = None
    if (folder / THROUGHPUT_FILE).exists():
        throughput = _read_table(folder / THROUGHPUT_FILE, THROUGHPUT_COLUMNS, "throughput")
    reference = None
    if (folder / REFERENCE_FILE).exists():
        reference = _read_table(folder / REFERENCE_FILE, REFERENCE_COLUMNS, "reference")
    adversaries = consistency = fooling = transfer = by_class = None
    if (folder / ADVERSARIES_FILE).exists():
        adversaries = _read_table(folder / ADVERSARIES_FILE, ADVERSARY_COLUMNS, "adversaries")
    if (folder / CONSISTENCY_FILE).exists():
        consistency = _read_table(folder / CONSISTENCY_FILE, CONSISTENCY_COLUMNS, "consistency")
    if (folder / FOOLING_FILE).exists():
        fooling = _read_table(folder / FOOLING_FILE, FOOLING_COLUMNS, "fooling")
    if (folder / TRANSFER_FILE).exists():
        transfer = _read_table(folder / TRANSFER_FILE, TRANSFER_COLUMNS, "transfer")
    if (folder / FOOLING_BY_CLASS_FILE).exists():
        by_class = _read_table(folder / FOOLING_BY_CLASS_FILE, FOOLING_BY_CLASS_COLUMNS, "fooling_by_class")
    return ReportData(
        **tables,
        run=run,
        examples=_read_examples(folder / EXAMPLES_FILE),
        throughput=throughput,
        outcomes=_read_outcomes(folder / OUTCOMES_FILE, tables["results"]),
        reference=reference,
        adversaries=adversaries,
        consistency=consistency,
        fooling=fooling,
        transfer=transfer,
        fooling_by_class=by_class,
    )


# what every other column of each file must hold: numbers (NaN allowed where a metric is undefined)
_TEXT_COLUMNS = {
    "model",
    "perturbation",
    "backend",
    "class",
    "true",
    "predicted",
    "adaptation",
    "in_training",
    "failed",
}
_THROUGHPUT_TEXT = {"kind", "model", "device", "dtype", "status", "reason", "channels_last", "compiled"}


# far above what any report holds (its largest table, confusion.csv, is a few MB), far below memory
MAX_TABLE_BYTES = 1 << 30
MAX_RUN_BYTES = 256 << 20


def _read_table(path: Path, columns: list[str], kind: str) -> pd.DataFrame:
    try:
        text = read_user_file(path, MAX_TABLE_BYTES, "a table the harness wrote")
        table = pd.read_csv(io.BytesIO(text), keep_default_na=False, na_values=[""])
    except FileNotFoundError:
        raise HarnessError(f"{path}: missing; the report folder is incomplete, re-run its experiment") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise HarnessError(f"{path}: not a readable CSV ({type(exc).__name__}); re-run its experiment") from None
    if kind == "results":
        table = table.assign(**{c: v for c, v in OPTIONAL_RESULT_COLUMNS.items() if c not in table.columns})
        # an empty text cell reads as NaN: a cell that did not fail has the empty string
        table["failed"] = table["failed"].astype(object).where(table["failed"].notna(), "")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise HarnessError(f"{path}: columns {missing} missing; it was written by another version, re-run")
    text = {
        "throughput": _THROUGHPUT_TEXT,
        "adversaries": _ADVERSARY_TEXT,
        "consistency": _CONSISTENCY_TEXT,
        "fooling": {"model", "adversary"},
        "transfer": {"adversary", "source", "model"},
        "fooling_by_class": {"model", "adversary", "class"},
    }.get(kind, _TEXT_COLUMNS)
    for column in (c for c in columns if c not in text):
        if not pd.api.types.is_numeric_dtype(table[column]) and not pd.api.types.is_bool_dtype(table[column]):
            bad = pd.to_numeric(table[column], errors="coerce").isna() & table[column].notna()
            if bad.any():
                raise HarnessError(
                    f"{path}: column {column!r} holds {str(table[column][bad].iloc[0])[:40]!r} on line "
                    f"{int(bad.idxmax()) + 2}, not a number; re-run the experiment"
                )
    return table[columns] if kind not in ("throughput", "adversaries") else table


def _read_run(path: Path) -> dict[str, Any]:
    try:
        run = json.loads(read_user_file(path, MAX_RUN_BYTES, "the run.json the harness wrote").decode("utf-8"))
    except FileNotFoundError:
        raise HarnessError(f"{path}: missing; re-run the experiment") from None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise HarnessError(f"{path}: not valid JSON ({type(exc).__name__}); re-run the experiment") from None
    shapes = {"config": dict, "environment": dict, "perturbations": list, "models": list}
    if not isinstance(run, dict):
        raise HarnessError(f"{path}: holds a {type(run).__name__}, not the run record; re-run the experiment")
    wrong = [key for key, kind in shapes.items() if not isinstance(run.get(key), kind)]
    if wrong:
        raise HarnessError(f"{path}: keys {wrong} missing or of the wrong type; re-run the experiment")
    if not all(isinstance(p, dict) and isinstance(p.get("name"), str) for p in run["perturbations"]):
        raise HarnessError(f"{path}: a perturbation record has no name; re-run the experiment")
    return run


def _check_results(path: Path, results: pd.DataFrame, run: dict[str, Any]) -> None:
    """Raise HarnessError naming the first line of results.csv that does not hold what it should."""

    def fail(mask: pd.Series, problem: str) -> None:
        if mask.any():
            raise HarnessError(f"{path}: line {int(mask.idxmax()) + 2} {problem}; re-run the experiment")

    if results.empty or not (results["perturbation"] == "clean").any():
        raise HarnessError(f"{path}: no rows, or no clean row; re-run the experiment")
    for column in _REQUIRED_RESULT_VALUES:
        fail(results[column].isna(), f"has no {column}")
    valid = (results["nonfinite_images"] == 0) & results["failed"].eq("")
    fail(valid & results[["n_correct", "accuracy"]].isna().any(axis=1), "has no accuracy but is not marked invalid")
    fail(results["n_images"] < 1, "counts no images")
    fail((results["n_correct"] < 0) | (results["n_correct"] > results["n_images"]), "has n_correct outside 0..n_images")
    fail(results["severity"] < 0, "has a negative severity")
    shares = [c for c in _PROPORTIONS if c in results]
    fail(((results[shares] < 0) | (results[shares] > 1)).any(axis=1), f"has a share ({', '.join(shares)}) outside 0..1")
    # the board ranks by accuracy: one that its own counts contradict would move a model silently
    counted = results["n_correct"] / results["n_images"]
    fail(
        valid & ((results["accuracy"] - counted).abs() > ACCURACY_TOLERANCE),
        "has an accuracy that is not n_correct / n_images (edited by hand?)",
    )
    fail(results.duplicated(CELL_KEY), "repeats a (model, seed, perturbation, severity) cell")
    known = {"clean"} | {p["name"] for p in run["perturbations"]}
    fail(~results["perturbation"].isin(known), "names a perturbation that run.json does not list")


ACCURACY_TOLERANCE = 1e-5  # the CSV keeps 6 significant digits

_PROPORTIONS = ["accuracy", "error", "accuracy_low", "accuracy_high", "flip_rate", "flip_rate_step", "ece"]


def _read_examples(path: Path) -> Examples | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:  # a received report's arrays: never unpickle
            examples = Examples(
                images=saved["images"],
                labels=saved["labels"],
                row_names=[str(n) for n in saved["row_names"]],
                models=[str(m) for m in saved["models"]],
                predictions=saved["predictions"],
            )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise HarnessError(f"{path}: unreadable ({exc}); re-run the experiment or delete the file") from None
    rows, columns = len(examples.row_names), len(examples.labels)
    shapes_fit = (
        examples.images.ndim == 4
        and examples.images.shape[:2] == (rows, columns)
        and examples.predictions.shape == (len(examples.models), rows, columns)
    )
    if not shapes_fit:
        raise HarnessError(f"{path}: its arrays do not fit together; re-run the experiment or delete the file")
    return examples


def _read_outcomes(path: Path, results: pd.DataFrame) -> Outcomes | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            images = int(saved["images"])
            correct = np.unpackbits(saved["correct"], axis=1, count=images).astype(bool)
            keys = []
            for text in saved["keys"]:
                model, seed, perturbation, severity = str(text).split("|")
                keys.append((model, int(seed), perturbation, int(severity)))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise HarnessError(f"{path}: unreadable ({exc}); re-run the experiment or delete the file") from None
    expected = results.set_index(CELL_KEY)["n_images"].to_dict()
    if len(keys) != len(correct) or any(expected.get(key) != images for key in keys):
        raise HarnessError(f"{path}: its cells do not match results.csv; re-run the experiment or delete the file")
    return Outcomes(keys, correct)

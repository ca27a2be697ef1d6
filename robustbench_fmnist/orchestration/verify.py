"""`verify`: stored evaluation records checked against the weights they name, like `git fsck` for a cache.

Each record is read (its checksum, shapes and ranges checked), its weights are read from the
cache and checked against the SHA-256 the record names, and a random sample of its images is
evaluated again in every cell of the record: the predicted class must be the stored one, and
the two probabilities must agree within float tolerance. For a report folder, the records its
run.json lists are checked the same way, and every count of its results.csv is derived again
from them. Nothing a record or run.json names is imported unless the user passes --trust-code.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from robustbench_fmnist.config import ModelSpec
from robustbench_fmnist.data import FashionMNIST, to_float_images
from robustbench_fmnist.errors import CheckpointError, ConfigError
from robustbench_fmnist.evaluation.sweep import cell_result, evaluate_cells
from robustbench_fmnist.orchestration.received import spec_code
from robustbench_fmnist.orchestration.records import (
    ADVERSARY_TENSORS,
    SUFFIX,
    TRANSFER_TENSORS,
    EvaluationRecord,
    RecordError,
    read_record,
    read_tensors,
    record_kind,
)
from robustbench_fmnist.progress import progress_bar
from robustbench_fmnist.training.checkpoints import read_checkpoint, read_user_checkpoint, state_sha256
from robustbench_fmnist.training.resolution import resolve_model
from robustbench_fmnist.training.weights import seeded_model

log = logging.getLogger(__name__)

# a re-evaluation's softmax differs from the stored one in the last bits: by up to about 1e-4 where a
# record made on an H200 was evaluated again on a CPU (every predicted class equal)
PROBABILITY_TOLERANCE = 1e-3


@dataclass
class Verification:
    """What `verify` found: records re-evaluated, checked for integrity only, and every problem."""

    checked: int = 0  # records whose sample was evaluated again
    images: int = 0  # image-cells evaluated again
    integrity_only: list[str] = field(default_factory=list)  # adapted records without --all: read, not re-run
    adversary_records: list[str] = field(default_factory=list)  # worst-case searches: read and checksummed
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def cache_records(cache_dir: Path) -> list[Path]:
    """The evaluation records under a cache folder; ConfigError if it is not one."""
    root = cache_dir / "evaluations"
    if not root.is_dir():
        raise ConfigError(f"{cache_dir} holds no evaluations/ folder; give a cache folder (--cache-dir of a run)")
    return sorted(root.glob(f"*{SUFFIX}"))


def report_records(folder: Path, cache_dir: Path | None) -> tuple[list[Path], dict[str, str]]:
    """The records a report's run.json lists (in `cache_dir`, default the run's own cache), with their checksums."""
    run = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    listed = (run.get("tasks") or {}).get("records")
    if not isinstance(listed, dict) or not listed:
        raise ConfigError(f"{folder}/run.json lists no evaluation records (made before records); run it again")
    cache = cache_dir or Path(run["config"].get("cache_dir") or _default_cache())
    return [cache / "evaluations" / name for name in sorted(listed)], dict(listed)


def report_data_dir(folder: Path) -> Path | None:
    """The data folder a report's run used (None for the default, or for a cache folder)."""
    if not (folder / "run.json").is_file():
        return None
    try:
        data_dir = json.loads((folder / "run.json").read_text(encoding="utf-8"))["config"]["data"]["dir"]
    except (ValueError, KeyError, TypeError):
        return None
    return Path(data_dir) if isinstance(data_dir, str) else None


def _default_cache() -> Path:
    from robustbench_fmnist.data import user_cache_dir

    return user_cache_dir()


def verify_records(
    paths: list[Path],
    data: FashionMNIST,
    *,
    sample: int | None,
    seed: int = 0,
    trust_code: bool = False,
    listed: dict[str, str] | None = None,
    on_record: Callable[[int], object] | None = None,
) -> tuple[Verification, dict[str, EvaluationRecord]]:
    """Check every record at `paths`; `sample` images each (None: all). `listed`: checksums the records must have."""
    found = Verification()
    records: dict[str, EvaluationRecord] = {}
    models: dict[tuple[str, str], nn.Module | str] = {}
    for path in paths:
        if on_record is not None:
            on_record(1)
        try:
            if record_kind(path) in ("adversary", "transfer"):
                _check_adversary(path, listed)
                found.adversary_records.append(path.name)  # searched again only by running its task again
                continue
            record = _read(path, listed)
            problem = _verify_one(path, record, data, models, sample=sample, seed=seed, trust=trust_code, into=found)
        except RecordError as exc:
            problem = str(exc)
        if problem is not None:
            found.problems.append(f"{path.name}: {problem}")
        else:
            records[path.name] = record
    return found, records


def _check_adversary(path: Path, listed: dict[str, str] | None) -> None:
    """An adversary or transfer record read and its checksum (and run.json's, for a report) checked."""
    if not path.is_file():
        raise RecordError("it is missing")
    sha = read_tensors(path, ADVERSARY_TENSORS if record_kind(path) == "adversary" else TRANSFER_TENSORS)[2]
    if listed is not None and sha != listed[path.name]:
        raise RecordError("it is not the record the report was made from (its SHA-256 differs from run.json's)")


def _read(path: Path, listed: dict[str, str] | None) -> EvaluationRecord:
    if not path.is_file():
        raise RecordError("it is missing")
    record = read_record(path)
    if listed is not None and record.sha256 != listed[path.name]:
        raise RecordError("it is not the record the report was made from (its SHA-256 differs from run.json's)")
    return record


def _verify_one(
    path: Path,
    record: EvaluationRecord,
    data: FashionMNIST,
    models: dict[tuple[str, str], nn.Module | str],
    *,
    sample: int | None,
    seed: int,
    trust: bool,
    into: Verification,
) -> str | None:
    """None if the record's sample re-evaluates to what it stores, else the first problem in one phrase."""
    identity = record.identity
    if identity.get("data") != data.checksum:
        return "it was made on other data than this Fashion-MNIST (its data checksum differs)"
    if identity.get("adaptation", "none") != "none" and sample is not None:
        into.integrity_only.append(path.name)  # adapted predictions depend on the whole cell: only --all re-runs
        return None
    loaded = _model(path, identity, models, trust)
    if isinstance(loaded, str):
        return loaded
    count = int(identity["test_images"])
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(count, generator=generator)
    picked = order if sample is None else order[: min(sample, count)].sort().values
    mismatch = _compare(loaded, record, data, picked)
    into.checked += 1
    into.images += len(picked) * len(record.cells)
    return mismatch


def _model(
    path: Path, identity: dict[str, Any], models: dict[tuple[str, str], nn.Module | str], trust: bool
) -> nn.Module | str:
    """The evaluated model with its stored weights, or why it cannot be had."""
    key = (json.dumps(identity["model"], sort_keys=True), str(identity.get("weights_sha256")))
    if key not in models:
        models[key] = _load_model(path, identity, trust)
    return models[key]


def _load_model(path: Path, identity: dict[str, Any], trust: bool) -> nn.Module | str:
    described = identity["model"]
    spec_fields = {"name": described["name"], "kwargs": described.get("kwargs") or {}}
    outside = "onnx" if described.get("onnx") else "keras" if described.get("keras") else None
    if outside is not None:
        spec_fields = {"name": described["name"], outside: described[outside]}
        spec_fields.update({k: described[k] for k in ("layout", "channels", "normalize") if described.get(k)})
    elif described.get("factory"):
        spec_fields["factory"] = described["factory"]
    elif described["architecture"] != described["name"]:
        spec_fields["architecture"] = described["architecture"]
    try:
        spec = ModelSpec(**spec_fields)
    except ValueError as exc:
        return f"its model cannot be described ({type(exc).__name__})"
    code = spec_code(spec, "its model")
    if code and not trust:  # a record is data: what it names is not imported or loaded unless the user says so
        return f"{code[0]}; pass --trust-code to let verify do that"
    try:
        resolved = resolve_model(spec)
        model = seeded_model(resolved, int(identity["seed"]))
        state = _weights(path, identity, model)
    except (ConfigError, CheckpointError) as exc:
        return f"its weights cannot be had ({exc})"
    if state_sha256(state) != identity.get("weights_sha256"):
        return "its weights file no longer holds the weights it names (their SHA-256 differs)"
    model.load_state_dict(state)
    return model.eval()


def _weights(path: Path, identity: dict[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict the record names: the cache's checkpoint beside it, or the user's checkpoint file."""
    if identity.get("checkpoint"):
        checkpoint = path.parent.parent / "checkpoints" / identity["checkpoint"]
        if not checkpoint.is_file():
            raise CheckpointError(f"{checkpoint} is missing")
        return read_checkpoint(checkpoint)[0]
    if identity["model"].get("onnx") or identity["model"].get("keras"):
        return model.state_dict()  # the file's weights, read again by resolve_model: the hash below checks them
    user = identity["model"].get("checkpoint")
    if not user:
        raise CheckpointError("it names no checkpoint")
    return read_user_checkpoint(Path(user), model)


def _compare(model: nn.Module, record: EvaluationRecord, data: FashionMNIST, picked: torch.Tensor) -> str | None:
    """Evaluate the picked images in every cell as the record's task did; the first disagreement, or None."""
    identity = record.identity
    cells = record.cells
    device = _device_like(identity.get("device", "cpu"))
    images = to_float_images(data.test.images[picked], device)
    labels = data.test.labels[picked]
    _, outputs = evaluate_cells(
        model,
        identity.get("model_label", identity["model"]["name"]),
        images,
        labels,
        cells,
        device=device,
        seed=int(identity["seed"]),
        batch_size=int(identity["batch_size"]),
        precision=identity["precision"],
        channels_last=bool(identity["channels_last"]),
        adaptation=identity.get("adaptation", "none"),
        compile="never",
        show_progress=False,
        image_indices=picked,
    )
    for row, cell in enumerate(cells):
        again, stored = outputs[cell], record.outputs[row]
        classes = stored.predictions[picked]
        differs = (again.predictions != classes).nonzero().flatten()
        if len(differs):
            at = int(picked[differs[0]])
            made_on = identity.get("device")
            where = "" if device.type == made_on else f"; made on {made_on}, evaluated on cpu"
            return (
                f"{len(differs)} of {len(picked)} sampled predictions differ in {cell.label} (image {at}: stored "
                f"class {int(classes[differs[0]])}, evaluated {int(again.predictions[differs[0]])}{where})"
            )
        for name in ("confidence", "true_probability"):
            gap = (getattr(again, name) - getattr(stored, name)[picked]).abs().nan_to_num(0.0)
            if float(gap.max()) > PROBABILITY_TOLERANCE:
                made_on = identity.get("device")
                where = "" if device.type == made_on else f" (made on {made_on}, evaluated on cpu)"
                largest = float(gap.max())
                return f"its {name} differs from the evaluated one by up to {largest:.2g} in {cell.label}{where}"
    return None


def _device_like(made_on: str) -> torch.device:
    """The device type the record was made on where this machine has it (floats differ between kinds), else the CPU."""
    if made_on == "cuda" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def derived_counts(records: dict[str, EvaluationRecord], data: FashionMNIST) -> pd.DataFrame:
    """n_correct of every (model, seed, perturbation, severity) derived from the records and the true labels."""
    rows = []
    for record in records.values():
        identity = record.identity
        labels = data.test.labels[: int(identity["test_images"])]
        for row, cell in enumerate(record.cells):
            result = cell_result(
                identity["model_label"], cell, record.outputs[row], labels, 0.0, identity["adaptation"]
            )
            rows.append(
                {
                    "model": result.model,
                    "seed": int(identity["seed"]),
                    "perturbation": result.perturbation,
                    "severity": result.severity,
                    "n_correct_derived": result.n_correct,
                    "n_images_derived": result.n_images,
                }
            )
    return pd.DataFrame(rows)


def check_report_counts(results: pd.DataFrame, derived: pd.DataFrame) -> list[str]:
    """Every results.csv row whose n_correct, n_images or accuracy disagrees with the records, one line each."""
    keys = ["model", "seed", "perturbation", "severity"]
    merged = results.merge(derived, on=keys, how="left")
    problems = []
    for row in merged.to_dict("records"):
        where = f"results.csv {row['model']} seed {row['seed']} {row['perturbation']} s{row['severity']}"
        if pd.isna(row["n_correct_derived"]):
            if not row.get("failed"):
                problems.append(f"{where}: no record holds this cell")
            continue
        if pd.isna(row["n_correct"]):
            continue  # an invalid cell: nothing scored, nothing to disagree with
        derived_accuracy = row["n_correct_derived"] / row["n_images_derived"]
        if int(row["n_correct"]) != int(row["n_correct_derived"]) or abs(row["accuracy"] - derived_accuracy) > 1e-9:
            problems.append(
                f"{where}: says {int(row['n_correct'])} correct ({100 * row['accuracy']:.2f} %), its record "
                f"{int(row['n_correct_derived'])} ({100 * derived_accuracy:.2f} %)"
            )
    return problems


def verify_path(
    path: Path,
    data: FashionMNIST,
    *,
    cache_dir: Path | None = None,
    sample: int | None = 300,
    seed: int = 0,
    trust_code: bool = False,
) -> Verification:
    """Verify a cache folder's records, or a report folder's (and its results.csv against them)."""
    if (path / "run.json").is_file():
        paths, listed = report_records(path, cache_dir)
    elif (path / "evaluations").exists():
        paths, listed = cache_records(path), None
    else:
        raise ConfigError(f"{path} is neither a report folder (run.json) nor a cache folder (evaluations/)")
    if not paths:
        raise ConfigError(f"{path} holds no evaluation records to verify")
    with progress_bar(len(paths), "verify", unit="record") as bar:
        found, records = verify_records(
            paths, data, sample=sample, seed=seed, trust_code=trust_code, listed=listed, on_record=bar.update
        )
    if listed is not None and records:
        results = pd.read_csv(path / "results.csv")
        complete = {(r.identity["model_label"], int(r.identity["seed"])) for r in records.values()}
        mine = results[[(m, int(s)) in complete for m, s in zip(results["model"], results["seed"], strict=True)]]
        found.problems += check_report_counts(mine, derived_counts(records, data))
    return found

"""Stored results that cannot lie: per-image records, checked checkpoints, metrics derived at assembly, `verify`.

Each test edits a stored file as a person (or a bug) could, then runs the experiment again: the
edit never reaches a reported number; the edited task is done again with one line naming the
file; `verify` passes an untouched cache and catches what the run's own checks cannot.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from robustbench_fmnist.cli import main
from robustbench_fmnist.config import parse_config
from robustbench_fmnist.orchestration.experiment import run_experiment
from robustbench_fmnist.orchestration.records import content_sha256, read_record

TIMING = ["seconds"]


def _config(tiny_experiment: dict[str, Any]) -> dict[str, Any]:
    return {
        **tiny_experiment,
        "models": [{"name": "baseline_cnn_tiny", "train": {"epochs": 1, "batch_size": 64}}],
        "perturbations": [{"name": "brightness_down", "severities": [1, 5]}, {"name": "rotation", "severities": [3]}],
        "threads": 1,
    }


def _results(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "results.csv").drop(columns=TIMING)


def _records(config: dict[str, Any]) -> list[Path]:
    return sorted((Path(config["cache_dir"]) / "evaluations").glob("*.safetensors"))


def _rewrite(path: Path, change: Any, *, fix_checksum: bool) -> None:
    """Edit a record's tensors with `change(tensors, identity)`; with `fix_checksum` as a careful forger would."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
    identity = json.loads(metadata["identity"])
    change(tensors, identity)
    metadata["identity"] = json.dumps(identity, sort_keys=True)
    if fix_checksum:
        metadata["content_sha256"] = content_sha256(identity, tensors)
    save_file(tensors, str(path), metadata=metadata)


def _clean_record(config: dict[str, Any]) -> Path:
    return next(p for p in _records(config) if read_record(p).identity["cells"][0][0] == "clean")


@pytest.fixture
def first_run(tiny_experiment: dict[str, Any]) -> tuple[dict[str, Any], pd.DataFrame]:
    config = _config(tiny_experiment)
    return config, _results(run_experiment(parse_config(config)))


def _rerun(config: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    folder = run_experiment(parse_config(config))
    return _results(folder), json.loads((folder / "run.json").read_text())


def test_a_record_stores_outputs_and_names_what_made_them(first_run: tuple) -> None:
    config, _ = first_run
    records = [read_record(p) for p in _records(config)]
    assert len(records) == 3  # clean, brightness_down (2 severities), rotation
    for record in records:
        assert set(record.tensors) == {"predictions", "confidence", "true_probability", "cell_seconds"}
        assert record.predictions.dtype == torch.uint8
        identity = record.identity
        assert len(identity["weights_sha256"]) == 64 and identity["data"] and identity["code"]
        assert identity["adaptation"] == "none" and identity["seed"] == 0
        assert identity["model"]["architecture"] == "baseline_cnn_tiny"
        assert not {"accuracy", "n_correct", "results"} & set(identity), "no conclusion is stored"
    run = json.loads((Path(config["output_dir"]) / "tiny" / "run.json").read_text())
    assert sorted(run["tasks"]["records"]) == sorted(p.name for p in _records(config))


@pytest.mark.parametrize("fix_checksum", [False, True], ids=["plain edit", "checksum forged"])
def test_an_edited_prediction_never_reaches_the_report_or_verify_catches_it(
    first_run: tuple, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str], fix_checksum: bool
) -> None:
    config, first = first_run
    path = _clean_record(config)

    def all_right(tensors: dict[str, torch.Tensor], identity: dict[str, Any]) -> None:
        tensors["predictions"] = torch.zeros_like(tensors["predictions"])  # every image class 0

    _rewrite(path, all_right, fix_checksum=fix_checksum)
    if fix_checksum:
        # the checksum checks out, so only evaluating again can tell: verify does, and fails
        assert main(["-q", "verify", config["cache_dir"], "--data-dir", config["data"]["dir"]]) == 1
        printed = capsys.readouterr().out
        assert f"MISMATCH {path.name}: " in printed and "sampled predictions differ in clean" in printed
        return
    with caplog.at_level(logging.WARNING):
        again, run = _rerun(config)
    lines = [r.getMessage() for r in caplog.records if path.name in r.getMessage()]
    assert len(lines) == 1 and "does not match the SHA-256" in lines[0] and "evaluating again" in lines[0]
    assert run["tasks"]["ran"] == 1
    pd.testing.assert_frame_equal(again, first)


@pytest.mark.parametrize("how", ["renamed", "truncated", "other weights"])
def test_a_record_of_something_else_is_not_used(first_run: tuple, caplog: pytest.LogCaptureFixture, how: str) -> None:
    config, first = first_run
    path = _clean_record(config)
    if how == "renamed":  # another task's record under this task's name
        other = next(p for p in _records(config) if p != path)
        path.write_bytes(other.read_bytes())
        expected = "its task_key is"
    elif how == "truncated":

        def shorter(tensors: dict[str, torch.Tensor], identity: dict[str, Any]) -> None:
            for name in ("predictions", "confidence", "true_probability"):
                tensors[name] = tensors[name][:, :-10].contiguous()

        _rewrite(path, shorter, fix_checksum=True)
        expected = "outputs, this task"
    else:

        def elsewhere(tensors: dict[str, torch.Tensor], identity: dict[str, Any]) -> None:
            identity["weights_sha256"] = "0" * 64

        _rewrite(path, elsewhere, fix_checksum=True)
        expected = "its weights_sha256 is"
    with caplog.at_level(logging.WARNING):
        again, run = _rerun(config)
    lines = [r.getMessage() for r in caplog.records if "stored evaluation" in r.getMessage()]
    assert len(lines) == 1 and path.name in lines[0] and expected in lines[0], lines
    assert run["tasks"]["ran"] == 1
    pd.testing.assert_frame_equal(again, first)


def test_an_edited_checkpoint_is_retrained_and_its_evaluations_redone(
    first_run: tuple, caplog: pytest.LogCaptureFixture
) -> None:
    config, first = first_run
    (checkpoint,) = (Path(config["cache_dir"]) / "checkpoints").glob("*.pt")
    payload = torch.load(checkpoint, weights_only=True)
    for index, tensor in enumerate(payload["state_dict"].values()):
        if index % 2 == 0 and tensor.is_floating_point():
            tensor.neg_()  # same size, still loads: only the recorded SHA-256 tells
    torch.save(payload, checkpoint)
    with caplog.at_level(logging.WARNING):
        again, run = _rerun(config)
    lines = [r.getMessage() for r in caplog.records if checkpoint.name in r.getMessage()]
    assert lines and "do not match the SHA-256 recorded" in lines[0]
    assert run["tasks"]["ran"] == 4 and run["models"][0]["weights"] == "trained"  # retrained, all 3 evaluated again
    pd.testing.assert_frame_equal(again, first)


def test_a_checkpoint_forged_with_its_checksum_gets_its_own_numbers_not_the_old_ones(first_run: tuple) -> None:
    """Weights replaced together with their recorded SHA-256: the stored evaluations of the old weights are not
    used for them; the report's numbers are the new weights' own."""
    from robustbench_fmnist.training.checkpoints import state_sha256

    config, _ = first_run
    (checkpoint,) = (Path(config["cache_dir"]) / "checkpoints").glob("*.pt")
    payload = torch.load(checkpoint, weights_only=True)
    payload["state_dict"] = {k: torch.zeros_like(v) for k, v in payload["state_dict"].items()}
    payload["metadata"]["weights_sha256"] = state_sha256(payload["state_dict"])
    torch.save(payload, checkpoint)
    _, run = _rerun(config)
    assert run["tasks"]["ran"] == 3 and run["models"][0]["weights"] == "cached"
    assert run["models"][0]["weights_sha256"] == payload["metadata"]["weights_sha256"]
    # every number in the report now comes from records of the weights it names
    assert {read_record(p).identity["weights_sha256"] for p in _records(config)} == {
        state_sha256(payload["state_dict"])
    }


def test_verify_passes_an_untouched_cache_and_report(first_run: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    config, _ = first_run
    assert main(["-q", "verify", config["cache_dir"], "--sample", "50", "--data-dir", config["data"]["dir"]]) == 0
    out = capsys.readouterr().out
    assert "verified 3 records (200 image-cells evaluated again): every prediction matches" in out
    report = str(Path(config["output_dir"]) / "tiny")
    assert main(["-q", "verify", report, "--all"]) == 0
    assert "verified 3 records" in capsys.readouterr().out


def test_verify_of_a_report_catches_an_edited_results_csv(first_run: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    config, _ = first_run
    report = Path(config["output_dir"]) / "tiny"
    results = pd.read_csv(report / "results.csv")
    clean = results.perturbation == "clean"
    results.loc[clean, "n_correct"] = results.loc[clean, "n_images"] - 1
    results.loc[clean, "accuracy"] = results.loc[clean, "n_correct"] / results.loc[clean, "n_images"]
    results.to_csv(report / "results.csv", index=False)
    assert main(["-q", "verify", str(report), "--sample", "20"]) == 1
    printed = capsys.readouterr().out
    assert "MISMATCH results.csv baseline_cnn_tiny seed 0 clean s0: says" in printed


@pytest.mark.parametrize("where", ["a file", "no folder"])
def test_verify_of_something_else_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str) -> None:
    target = tmp_path / "x"
    if where == "a file":
        target.write_text("hello")
    else:
        target.mkdir()
    assert main(["verify", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


def test_a_nan_checkpoint_with_a_forged_checksum_is_retrained(
    first_run: tuple, caplog: pytest.LogCaptureFixture
) -> None:
    """NaN weights whose SHA-256 was rewritten to match: not evaluated (every cell would be invalid), trained again."""
    from robustbench_fmnist.training.checkpoints import state_sha256

    config, first = first_run
    (checkpoint,) = (Path(config["cache_dir"]) / "checkpoints").glob("*.pt")
    payload = torch.load(checkpoint, weights_only=True)
    payload["state_dict"] = {
        k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in payload["state_dict"].items()
    }
    payload["metadata"]["weights_sha256"] = state_sha256(payload["state_dict"])
    torch.save(payload, checkpoint)
    with caplog.at_level(logging.WARNING):
        again, run = _rerun(config)
    lines = [r.getMessage() for r in caplog.records if checkpoint.name in r.getMessage()]
    assert lines and "NaN or infinite" in lines[0]
    assert run["models"][0]["weights"] == "trained"
    pd.testing.assert_frame_equal(again, first)


def test_verify_imports_nothing_a_record_names_without_trust_code(
    first_run: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = first_run
    marker = tmp_path / "imported"
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "received_verify_factory.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\ndef build(): pass\n")
    monkeypatch.syspath_prepend(str(planted))
    path = _clean_record(config)

    def factory(tensors: dict[str, torch.Tensor], identity: dict[str, Any]) -> None:
        identity["model"]["factory"] = "received_verify_factory:build"

    _rewrite(path, factory, fix_checksum=True)
    assert main(["-q", "verify", config["cache_dir"], "--data-dir", config["data"]["dir"]]) == 1
    out = capsys.readouterr().out
    assert "imports module 'received_verify_factory' and calls build; pass --trust-code" in out
    assert not marker.exists(), "verify imported a module a record named"

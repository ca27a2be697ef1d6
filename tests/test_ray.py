"""The Ray executor on a real local cluster: the same results as local, retries, a killed worker, failures kept apart.

`make test` runs the suite under scripts/with-ray-cluster.sh, which starts `ray start --head`
with 2 CPUs on 127.0.0.1 (in a network namespace of its own where it may make one) and sets
RBFM_RAY_ADDRESS; without Ray, or without a cluster, these tests skip and say why.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from robustbench_fmnist.cli import main
from robustbench_fmnist.config import parse_config
from robustbench_fmnist.orchestration.experiment import plan_experiment, run_experiment
from robustbench_fmnist.report.bundle import read_data

ADDRESS = os.environ.get("RBFM_RAY_ADDRESS")
pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed (pip install '.[ray]')"),
    pytest.mark.skipif(
        ADDRESS is None, reason="no Ray cluster: run under scripts/with-ray-cluster.sh (make test does)"
    ),
    pytest.mark.slow,
    pytest.mark.xdist_group("ray"),  # one worker at a time on the one 2-CPU cluster
]


def _grid(tiny_experiment: dict[str, Any], tmp_path: Path, name: str, **changes: Any) -> dict[str, Any]:
    config = {
        **tiny_experiment,
        "seeds": [0, 1],
        "models": [{"name": "baseline_cnn_tiny", "train": {"epochs": 1, "batch_size": 64}}, "deep_cnn_tiny"],
        "perturbations": [{"name": "brightness_down", "severities": [1, 5]}, {"name": "rotation", "severities": [3]}],
        "threads": 1,
        "cache_dir": str(tmp_path / f"{name}-cache"),
        "output_dir": str(tmp_path / f"{name}-reports"),
    }
    config.update(changes)
    return config


def _ray(**changes: Any) -> dict[str, Any]:
    return {"kind": "ray", "address": ADDRESS, "cpus_per_task": 1, **changes}


def _cluster_cpus_free_within(seconds: float) -> bool:
    """Whether every CPU of the test cluster is free again within `seconds`, asked as a driver of its own."""
    import time

    import ray

    ray.init(address=ADDRESS, logging_level="ERROR", log_to_driver=False)
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if ray.available_resources().get("CPU", 0.0) >= ray.cluster_resources().get("CPU", 0.0):
                return True
            time.sleep(0.25)
        return False
    finally:
        ray.shutdown()


def _results(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "results.csv").drop(columns=["seconds"])


def test_the_same_plan_on_ray_gives_the_local_results(tiny_experiment: dict[str, Any], tmp_path: Path) -> None:
    local = run_experiment(parse_config(_grid(tiny_experiment, tmp_path, "local")))
    grid = _grid(tiny_experiment, tmp_path, "ray", executor=_ray())
    on_ray = run_experiment(parse_config(grid))
    pd.testing.assert_frame_equal(_results(on_ray), _results(local))
    run = pd.read_json(on_ray / "run.json", typ="series")
    assert run["tasks"]["executor"] == "ray" and run["tasks"]["ran"] == 16 and not run["tasks"]["failed"]
    for name in ("per_class.csv", "confusion.csv", "calibration.csv"):
        assert (on_ray / name).read_bytes() == (local / name).read_bytes(), name
    assert not plan_experiment(parse_config(grid)).missing, "every result came back and was stored"


def test_adversaries_and_transfers_on_ray_give_the_local_rows(tiny_experiment: dict[str, Any], tmp_path: Path) -> None:
    """Searches and the transfers that wait on them (through Ray's object refs) give what the local executor gives."""
    adversaries = [
        {"name": "spatial", "space": {"rotation": [-20, 20, 5]}, "search": "grid", "images": 20},
        {"name": "spatial_w3", "space": "spatial", "search": "worst_of_k", "k": 3},
    ]
    changes = {"seeds": [0], "perturbations": [{"name": "rotation", "severities": [1]}], "adversaries": adversaries}
    local = run_experiment(parse_config(_grid(tiny_experiment, tmp_path, "adv-local", **changes)))
    on_ray = run_experiment(parse_config(_grid(tiny_experiment, tmp_path, "adv-ray", executor=_ray(), **changes)))
    for name, timing in (("adversaries.csv", ["seconds"]), ("transfer.csv", [])):
        ray_rows, local_rows = (pd.read_csv(f / name).drop(columns=timing) for f in (on_ray, local))
        pd.testing.assert_frame_equal(ray_rows, local_rows)
    assert len(pd.read_csv(on_ray / "transfer.csv")) == 2


def test_a_task_that_raises_is_retried_then_reported_while_the_others_land(
    tiny_experiment: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    attempts = tmp_path / "attempts.log"
    model = {
        "name": "dark_fails",
        "factory": "fault_models:fails_on_dark_images",
        "kwargs": {"attempts": str(attempts)},
        "train": {"epochs": 1, "batch_size": 64},
    }
    grid = _grid(tiny_experiment, tmp_path, "raises", models=[model], executor=_ray(retries=1))
    import yaml

    path = tmp_path / "raises.yaml"
    path.write_text(yaml.safe_dump(grid))
    assert main(["-q", "run", str(path)]) == 1
    err = capsys.readouterr().err
    assert len(attempts.read_text().splitlines()) == 4, "each seed's failing task ran twice (1 retry)"
    lines = sorted(line.strip() for line in err.splitlines() if "failed after" in line)
    assert len(lines) == 2, err
    for seed, line in enumerate(lines):
        expected = (
            f"evaluate dark_fails seed {seed} brightness_down s1-s5 failed after 2 attempts: RuntimeError: a dark"
        )
        assert line.startswith(expected), line
    results = read_data(Path(grid["output_dir"]) / "tiny").results
    assert set(results.loc[results["failed"] != "", "perturbation"]) == {"brightness_down"}
    assert results.loc[results["failed"] == "", "accuracy"].notna().all()
    assert len(results[results["failed"] == ""]) == 2 * 2  # clean and rotation, both seeds


def test_a_worker_killed_mid_task_is_retried(tiny_experiment: dict[str, Any], tmp_path: Path) -> None:
    marker = tmp_path / "killed"
    model = {
        "name": "killed_once",
        "factory": "fault_models:kills_its_worker_once",
        "kwargs": {"marker": str(marker)},
        "train": {"epochs": 1, "batch_size": 64},
    }
    grid = _grid(tiny_experiment, tmp_path, "killed", seeds=[0], models=[model], executor=_ray(retries=2))
    folder = run_experiment(parse_config(grid))
    assert marker.exists(), "a worker was killed"
    run = pd.read_json(folder / "run.json", typ="series")
    assert not run["tasks"]["failed"] and run["tasks"]["ran"] == 4
    assert pd.read_csv(folder / "results.csv")["accuracy"].notna().all()


def test_stopping_the_driver_keeps_finished_tasks_and_the_rerun_does_the_rest(
    tiny_experiment: dict[str, Any], tmp_path: Path
) -> None:
    """SIGTERM (what the CLI treats as Ctrl-C) once an evaluation is stored: exit 130, no report, the CPUs freed."""
    import signal

    from tests.driver_signal import run_until_first_record

    grid = _grid(tiny_experiment, tmp_path, "stopped", executor=_ray())
    returncode, err = run_until_first_record(grid, tmp_path / "stopped.yaml", signal.SIGTERM, wait=240)
    assert returncode == 130, err
    assert "interrupted; every finished task's result is kept" in err
    assert not (Path(grid["output_dir"]) / "tiny").exists()
    assert _cluster_cpus_free_within(60), "the stopped driver's tasks still hold the cluster's CPUs"
    stored = plan_experiment(parse_config(grid))
    assert stored.done and stored.missing
    folder = run_experiment(parse_config(grid))  # the cluster is free again: the rest runs
    run = pd.read_json(folder / "run.json", typ="series")
    assert run["tasks"]["ran"] == len(stored.missing) and not run["tasks"]["failed"]


def test_onnx_and_keras_models_on_ray_give_the_local_results(tiny_experiment: dict[str, Any], tmp_path: Path) -> None:
    """The files' bytes travel with the models to the workers: no worker reads the driver's path."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (make setup installs it)")
    import torch

    from robustbench_fmnist.models import create_model
    from tests.test_keras import small_model
    from tests.test_onnx import export

    torch.manual_seed(0)
    path = export(create_model("baseline_cnn_tiny"), tmp_path / "tiny.onnx")
    models = [
        {"name": "outside", "onnx": str(path)},
        {"name": "theirs", "keras": str(small_model(tmp_path / "s.keras"))},
    ]
    local = run_experiment(parse_config(_grid(tiny_experiment, tmp_path, "local", seeds=[0], models=models)))
    grid = _grid(tiny_experiment, tmp_path, "ray", seeds=[0], models=models, executor=_ray())
    pd.testing.assert_frame_equal(_results(run_experiment(parse_config(grid))), _results(local))

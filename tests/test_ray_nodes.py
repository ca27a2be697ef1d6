"""The Ray executor on a cluster of three nodes on this machine: tasks spread over the nodes give the local
results, run.json names the node of each task, and a worker node killed midway costs nothing but time.

Each node is a raylet of its own (`ray.cluster_utils.Cluster`), so nothing is shared between them but what
Ray ships: the weights, the test images and the results travel through the object store.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from robustbench_fmnist.config import parse_config
from robustbench_fmnist.orchestration.experiment import plan_experiment, run_experiment

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed (pip install '.[ray]')"),
    # the nodes bind the address Ray finds for this machine: the script's network namespace makes it 127.0.0.1
    pytest.mark.skipif(
        os.environ.get("RBFM_RAY_ADDRESS") is None,
        reason="no local Ray network: run under scripts/with-ray-cluster.sh (make test does)",
    ),
    pytest.mark.slow,
    pytest.mark.xdist_group("ray"),  # the machine's cores are shared with the one-node cluster's tests
]

NODE = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False}


@pytest.fixture
def cluster() -> Iterator[Any]:
    from ray.cluster_utils import Cluster

    made = Cluster(initialize_head=True, head_node_args=dict(NODE))
    try:
        for _ in range(2):
            made.add_node(**NODE)
        made.wait_for_nodes()
        yield made
    finally:
        made.shutdown()


def _config(tiny_experiment: dict[str, Any], tmp_path: Path, name: str, **executor: Any) -> dict[str, Any]:
    return {
        **tiny_experiment,
        "seeds": [0, 1, 2],
        "models": [{"name": "baseline_cnn_tiny", "train": {"epochs": 1, "batch_size": 64}}, "deep_cnn_tiny"],
        "perturbations": [{"name": "brightness_down", "severities": [1, 5]}, {"name": "rotation", "severities": [3]}],
        "threads": 1,
        "cache_dir": str(tmp_path / f"{name}-cache"),
        "output_dir": str(tmp_path / f"{name}-reports"),
        **({"executor": executor} if executor else {}),
    }


def _results(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "results.csv").drop(columns=["seconds"])


def test_tasks_spread_over_three_nodes_give_the_local_results(
    cluster: Any, tiny_experiment: dict[str, Any], tmp_path: Path
) -> None:
    local = run_experiment(parse_config(_config(tiny_experiment, tmp_path, "local")))
    spread = _config(tiny_experiment, tmp_path, "nodes", kind="ray", address=cluster.address, spread=True)
    on_nodes = run_experiment(parse_config(spread))
    pd.testing.assert_frame_equal(_results(on_nodes), _results(local))
    tasks = pd.read_json(on_nodes / "run.json", typ="series")["tasks"]
    local_tasks = pd.read_json(local / "run.json", typ="series")["tasks"]
    assert tasks["ran"] == local_tasks["ran"] == 2 * 3 * 4 and not tasks["failed"]  # a training, 3 cell groups
    assert len(tasks["nodes"]) == tasks["ran"]
    alive = {node["NodeID"] for node in _alive_nodes(cluster)}
    assert set(tasks["nodes"].values()) <= alive and len(set(tasks["nodes"].values())) == 3
    assert set(local_tasks["nodes"].values()) == {"local"}


def _alive_nodes(cluster: Any) -> list[dict[str, Any]]:
    import ray

    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    try:
        return [node for node in ray.nodes() if node["Alive"]]
    finally:
        ray.shutdown()


def test_a_worker_node_killed_midway_costs_only_time(
    cluster: Any, tiny_experiment: dict[str, Any], tmp_path: Path
) -> None:
    """Its tasks run again on the other nodes; the report is the local one, and every record is stored once."""
    local = run_experiment(parse_config(_config(tiny_experiment, tmp_path, "local")))
    config = _config(tiny_experiment, tmp_path, "killed", kind="ray", address=cluster.address, spread=True, retries=3)
    evaluations = Path(config["cache_dir"]) / "evaluations"
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["folder"] = run_experiment(parse_config(config))
        except BaseException as exc:  # handed to the test's thread
            outcome["error"] = exc

    driver = threading.Thread(target=run)
    driver.start()
    deadline = time.monotonic() + 300
    while driver.is_alive() and time.monotonic() < deadline and not list(evaluations.glob("*.safetensors")):
        time.sleep(0.05)
    assert driver.is_alive(), "the run ended before a node could be killed"
    victim = cluster.list_all_nodes()[-1]  # a worker node, not the head
    cluster.remove_node(victim, allow_graceful=False)
    remaining = len(list(evaluations.glob("*.safetensors")))
    driver.join(timeout=600)
    assert not driver.is_alive() and "error" not in outcome, outcome.get("error")
    folder = outcome["folder"]
    pd.testing.assert_frame_equal(_results(folder), _results(local))
    tasks = pd.read_json(folder / "run.json", typ="series")["tasks"]
    assert not tasks["failed"] and tasks["ran"] == 2 * 3 * 4
    assert remaining < 2 * 3 * 3, "every evaluation was stored before the node died"
    assert len(list(evaluations.glob("*.safetensors"))) == 2 * 3 * 3  # one record per evaluation, no partial file
    assert not [p for p in evaluations.iterdir() if not p.name.endswith(".safetensors")]


def test_a_driver_killed_midway_is_rerun_for_only_the_rest(
    cluster: Any, tiny_experiment: dict[str, Any], tmp_path: Path
) -> None:
    """SIGKILL, no cleanup at all, once an evaluation is stored: the rerun does only the missing tasks."""
    import signal

    from tests.driver_signal import run_until_first_record

    local = run_experiment(parse_config(_config(tiny_experiment, tmp_path, "local")))
    config = _config(tiny_experiment, tmp_path, "killed", kind="ray", address=cluster.address, spread=True)
    evaluations = Path(config["cache_dir"]) / "evaluations"
    returncode, err = run_until_first_record(config, tmp_path / "killed.yaml", signal.SIGKILL, wait=300)
    assert returncode == -signal.SIGKILL, f"the run ended before its driver could be killed: {err[-2000:]}"
    assert not (Path(config["output_dir"]) / "tiny").exists()
    stored = plan_experiment(parse_config(config))
    assert stored.done and stored.missing
    folder = run_experiment(parse_config(config))
    pd.testing.assert_frame_equal(_results(folder), _results(local))
    tasks = pd.read_json(folder / "run.json", typ="series")["tasks"]
    assert tasks["ran"] == len(stored.missing) and not tasks["failed"]
    assert len(list(evaluations.glob("*.safetensors"))) == 2 * 3 * 3
    assert not [p for p in evaluations.iterdir() if not p.name.endswith(".safetensors")]

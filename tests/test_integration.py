"""On the real Fashion-MNIST files (installed by `make test`; CI fails if they are missing)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch

from robustbench_fmnist.cli import main
from robustbench_fmnist.data import load_fashion_mnist
from tests.conftest import ONE_EPOCH_BASELINE, SharedCheckpoint, requires_real_data

pytestmark = [pytest.mark.integration, requires_real_data]


def test_real_data_is_verified_and_balanced() -> None:
    fm = load_fashion_mnist()
    assert fm.verified
    assert fm.train.images.shape == (60_000, 28, 28) and fm.test.images.shape == (10_000, 28, 28)
    assert torch.equal(torch.bincount(fm.train.labels), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(fm.test.labels), torch.full((10,), 1000))
    # the first test image of the published set is an ankle boot
    assert int(fm.test.labels[0]) == 9


@pytest.mark.slow
def test_short_real_run_learns_and_degrades_under_shift(
    write_yaml: Callable[..., Path], tmp_path: Path, one_epoch_baseline: SharedCheckpoint
) -> None:
    """The one-epoch baseline the session trained, found in the cache by its key, run through a real sweep."""
    config = {
        "name": "smoke",
        "device": "cpu",
        "models": [ONE_EPOCH_BASELINE],
        "perturbations": ["brightness_up", "contrast_down", "rotation"],
        "output_dir": str(tmp_path / "reports"),
        "cache_dir": str(one_epoch_baseline.cache_dir),
    }
    assert main(["-q", "run", str(write_yaml(config))]) == 0
    folder = tmp_path / "reports" / "smoke"
    results = pd.read_csv(folder / "results.csv").set_index(["perturbation", "severity"])
    clean = results.loc[("clean", 0), "accuracy"]
    assert 0.84 < clean < 0.95  # one epoch of the baseline recipe
    assert (results["n_images"] == 10_000).all()
    for pert in ("contrast_down", "rotation"):
        assert results.loc[(pert, 5), "accuracy"] < clean - 0.1
    # rotation gets monotonically worse with the angle
    rotation = [results.loc[("rotation", s), "accuracy"] for s in range(1, 6)]
    assert rotation == sorted(rotation, reverse=True)
    run = json.loads((folder / "run.json").read_text())
    assert run["data"]["verified"] and len(run["data"]["checksum"]) == 64
    # `run` found the weights `obtain_model` (bench's path) cached: both key them alike
    (entry,) = run["models"]
    assert entry["weights"] == "cached" and entry["weights_sha256"] == one_epoch_baseline.record["weights_sha256"]
    # every record the report came from re-evaluates (300 images each, eager against the run's compiled path)
    # to the same classes, and results.csv agrees with them
    assert main(["-q", "verify", str(folder)]) == 0

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from robustbench_fmnist import data as data_module
from robustbench_fmnist.progress import set_progress

REAL_DATA = data_module.DEBIAN_DIR


def write_idx(path: Path, array: np.ndarray, *, compress: bool = True) -> Path:
    """Write a uint8 array as an IDX file (magic 0x08 = unsigned byte)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def synthetic_split(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable images: class k is a bright 6x6 square at one of ten positions, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 40, size=(count, 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        row, col = 3 + 12 * (label // 5), 2 + 5 * (label % 5)
        images[i, row : row + 6, col : col + 6] = 230
    return images, labels.astype(np.uint8)


def write_dataset(folder: Path, train: int = 400, test: int = 200, compress: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, count, seed in (("train", train, 0), ("t10k", test, 1)):
        images, labels = synthetic_split(count, seed)
        write_idx(folder / f"{split}-images-idx3-ubyte", images, compress=compress)
        write_idx(folder / f"{split}-labels-idx1-ubyte", labels, compress=compress)
    return folder


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the user's cache or data variables; progress bars stay quiet."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv(data_module.ENV_CACHE_DIR, str(cache))
    monkeypatch.delenv(data_module.ENV_DATA_DIR, raising=False)
    set_progress(False)


@pytest.fixture
def synthetic_dir(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "fmnist")


@pytest.fixture
def write_yaml(tmp_path: Path) -> Callable[..., Path]:
    def write(config: dict[str, Any], name: str = "exp.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    return write


@pytest.fixture
def tiny_experiment(synthetic_dir: Path, tmp_path: Path) -> dict[str, Any]:
    """A complete experiment on synthetic data with test-sized models."""
    return {
        "name": "tiny",
        "seed": 0,
        "device": "cpu",
        "data": {"dir": str(synthetic_dir), "verify": False},
        "models": [{"name": "baseline_cnn_tiny", "train": {"epochs": 2, "batch_size": 32}}, "deep_cnn_tiny"],
        "perturbations": ["brightness_up", {"name": "rotation", "severities": [1, 5]}],
        "evaluation": {"batch_size": 64},
        "output_dir": str(tmp_path / "reports"),
        "cache_dir": str(tmp_path / "checkpoints"),
    }


def real_data_available() -> bool:
    return all((REAL_DATA / f"{stem}.gz").is_file() for stem in data_module.SHA256)


requires_real_data = pytest.mark.skipif(
    not real_data_available() and not os.environ.get("CI"),
    reason="Fashion-MNIST not installed (make test installs it; in CI its absence fails)",
)

# one epoch of baseline_cnn's own recipe: what the accuracy bands, the backend comparison and the
# short real run all need, so the session trains it once (about 30 s) and they share it
ONE_EPOCH_BASELINE = {"name": "baseline_cnn", "train": {"epochs": 1}}


@dataclass(frozen=True)
class SharedCheckpoint:
    """A model trained once per test session, and the checkpoint cache that holds its weights under their key."""

    model: torch.nn.Module
    cache_dir: Path
    record: dict[str, Any]  # its run.json entry, as the harness wrote it when it trained the model


@pytest.fixture(scope="session")
def one_epoch_baseline(tmp_path_factory: pytest.TempPathFactory) -> SharedCheckpoint:
    """baseline_cnn after one epoch on the real training set, seed 0, trained through the harness's own cache.

    A run whose config names ONE_EPOCH_BASELINE with `cache_dir` set to this cache loads these
    weights instead of training them again. Tests must not change the model in place.
    """
    if not real_data_available():
        pytest.skip("the shared one-epoch baseline trains on the real Fashion-MNIST files")
    from robustbench_fmnist.config import parse_config
    from robustbench_fmnist.runtime import apply_cpu_settings
    from robustbench_fmnist.training.resolution import resolve
    from robustbench_fmnist.training.weights import obtain_model

    apply_cpu_settings()  # as every run does: the bands were recorded with it
    cache_dir = tmp_path_factory.mktemp("shared-checkpoints")
    config = parse_config({"name": "shared", "models": [ONE_EPOCH_BASELINE], "perturbations": ["rotation"]})
    (resolved,) = resolve(config)
    data = data_module.load_fashion_mnist()
    model, record = obtain_model(resolved, data, seed=0, device=torch.device("cpu"), cache_dir=cache_dir)
    return SharedCheckpoint(model.eval(), cache_dir, record)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test` runs `-n auto`), each worker takes its share of the cores.

    Two workers with every core each would oversubscribe the machine: torch's OpenMP threads
    spin while they wait, so two 2-thread workers on 2 cores run slower than one at a time.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        from robustbench_fmnist.runtime import usable_cpus

        torch.set_num_threads(max(1, usable_cpus() // workers))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # a session fixture is built once per xdist worker: keep its users on one worker (--dist loadgroup)
    for item in items:
        if "one_epoch_baseline" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("one_epoch_baseline"))


def pytest_addoption(parser: pytest.Parser) -> None:
    # here, not in tests/benchmarks/conftest.py: pytest only reads options from the root conftest
    parser.addoption(
        "--update-baseline",
        choices=("reset", "append"),
        default=None,
        help="regression benchmarks: record this run's ratios in tests/benchmarks/baseline.json instead of gating "
        "(reset: start from this run; append: add it to the last runs, whose median is committed)",
    )

"""Keras 3 models from .keras files on Keras' torch backend: the scores Keras itself gives, and bad files refused in
one line before any work."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from robustbench_fmnist.cli import main
from robustbench_fmnist.config import parse_config
from robustbench_fmnist.evaluation.cells import perturb_cell, sweep_cells
from robustbench_fmnist.orchestration.experiment import run_experiment
from robustbench_fmnist.perturbations import PERTURBATIONS
from robustbench_fmnist.training.resolution import resolve_model
from tests.conftest import synthetic_split

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is first imported, as the harness sets it
keras = pytest.importorskip("keras", reason="the keras extra is not installed (make setup installs it)")
if keras.backend.backend() != "torch":
    pytest.skip("keras was imported on another backend in this process", allow_module_level=True)


def small_model(path: Path, *, shape: tuple[int, int, int] = (28, 28, 1), classes: int = 10, seed: int = 0) -> Path:
    """A small Keras CNN (conv, BatchNorm, pool, dense) with seeded weights, saved as a .keras file."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape)
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(16, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(classes)(x))
    model.save(path)
    return path


def keras_entry(path: Path, **entry: Any) -> torch.nn.Module:
    config = parse_config(
        {"name": "t", "models": [{"name": "k", "keras": str(path), **entry}], "perturbations": ["rotation"]}
    )
    return resolve_model(config.models[0]).build().eval()


def test_the_harness_gives_keras_own_scores_in_every_cell_of_a_suite_sweep(tmp_path: Path) -> None:
    """2,000 images through every perturbation at every severity: the scores of Keras' own predict, within 1e-4."""
    path = small_model(tmp_path / "small.keras")
    reference = keras.saving.load_model(path)
    harness = keras_entry(path)
    images = torch.from_numpy(synthetic_split(2000, 3)[0]).unsqueeze(1).float().div(255)
    indices = torch.arange(len(images))
    cells = sweep_cells([(name, None) for name in PERTURBATIONS.names()])
    for cell in cells:
        shifted = perturb_cell(cell, images, seed=0, indices=indices) if cell.parameter is not None else images
        expected = reference.predict(shifted.permute(0, 2, 3, 1).numpy(), batch_size=500, verbose=0)
        with torch.inference_mode():
            got = harness(shifted).numpy()
        gap = float(np.abs(expected - got).max())
        assert gap <= 1e-4, f"{cell}: scores differ by {gap:.2e}"


def test_a_keras_entry_runs_as_any_model_and_verifies(tiny_experiment: dict[str, Any], tmp_path: Path) -> None:
    """Cells, tta, a grid search and a gradient search (the backend is torch: gradients exist), then verify."""
    path = small_model(tmp_path / "small.keras")
    config = {
        **tiny_experiment,
        "models": [{"name": "theirs", "keras": str(path), "normalize": {"mean": 0.3, "std": 0.35}}],
        "adversaries": [
            {"name": "turns", "space": {"rotation": [-30, 30, 5]}, "search": "grid"},
            {"name": "pgd", "space": {"brightness": [-0.3, 0.3, 7]}, "search": "gradient", "steps": 3, "restarts": 1},
        ],
        "evaluation": {"batch_size": 64, "adaptation": ["none", "tta"], "tta": {"space": {"rotation": [-10, 10, 3]}}},
    }
    folder = run_experiment(parse_config(config))
    results = pd.read_csv(folder / "results.csv")
    assert set(results["model"]) == {"theirs", "theirs+tta"} and results["accuracy"].notna().all()
    assert set(pd.read_csv(folder / "adversaries.csv")["adversary"]) == {"turns", "pgd"}
    entry = next(m for m in pd.read_json(folder / "run.json", typ="series")["models"] if m["name"] == "theirs")
    assert entry["weights"] == "keras" and entry["parameters"] == keras.saving.load_model(path).count_params()
    assert main(["verify", str(folder), "--cache-dir", config["cache_dir"]]) == 0


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "absent.keras does not exist; give the path of a .keras file"),
        ("not keras", "is not a Keras 3 model Keras can load in safe mode"),
        ("32x32", "has shape [N, 32, 32, 1]; expected [N, 28, 28, C] (nhwc)"),
        ("five classes", "expected [N, 10] class scores"),
        ("rgb unasked", "the model takes 3 channel(s) and the entry says 1; add channels: 3"),
        ("said nchw", "is the layout nhwc? (layout: nhwc)"),
    ],
)
def test_a_bad_keras_file_is_one_line_before_any_work(
    case: str, message: str, tmp_path: Path, write_yaml: Any, capsys: Any
) -> None:
    entry: dict[str, Any] = {}
    if case == "missing":
        path = tmp_path / "absent.keras"
    elif case == "not keras":
        path = tmp_path / "weights.keras"
        path.write_bytes(b"not a zip")
    elif case == "32x32":
        path = small_model(tmp_path / "big.keras", shape=(32, 32, 1))
    elif case == "five classes":
        path = small_model(tmp_path / "five.keras", classes=5)
    elif case == "rgb unasked":
        path = small_model(tmp_path / "rgb.keras", shape=(28, 28, 3))
    else:
        path, entry = small_model(tmp_path / "small.keras"), {"layout": "nchw"}
    config = {"name": "t", "models": [{"name": "k", "keras": str(path), **entry}], "perturbations": ["rotation"]}
    assert main(["validate", str(write_yaml(config))]) == 2
    err = capsys.readouterr().err.strip()
    assert f"models[0].keras: {path}" in err and message in err, err
    assert len(err.splitlines()) == 1


def test_three_channel_models_take_the_grey_channel_repeated(tmp_path: Path) -> None:
    path = small_model(tmp_path / "rgb.keras", shape=(28, 28, 3))
    reference = keras.saving.load_model(path)
    images = torch.rand(16, 1, 28, 28)
    with torch.inference_mode():
        got = keras_entry(path, channels=3)(images)
    expected = reference.predict(images.permute(0, 2, 3, 1).repeat(1, 1, 1, 3).numpy(), verbose=0)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)


def test_onnx_and_keras_together_are_refused(tmp_path: Path, write_yaml: Any, capsys: Any) -> None:
    config = {
        "name": "t",
        "models": [{"name": "k", "keras": "a.keras", "onnx": "a.onnx"}],
        "perturbations": ["rotation"],
    }
    assert main(["validate", str(write_yaml(config))]) == 2
    assert "models[0].keras: give onnx: or keras:, not both" in capsys.readouterr().err

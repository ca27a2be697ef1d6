"""scripts/stn_transforms.py: reading what a spatial transformer undoes, in the suite kernels' own directions."""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from robustbench_fmnist.config import parse_config
from robustbench_fmnist.orchestration.experiment import run_experiment
from tests.conftest import synthetic_split

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "stn_transforms.py"
_spec = importlib.util.spec_from_file_location("stn_transforms", SCRIPT)
assert _spec is not None and _spec.loader is not None
stn_transforms = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stn_transforms)


def _theta(degrees: float = 0.0, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    """(1, 2, 3) an affine_grid transform: the rotation by `degrees` times `scale`, shifted by `shift` both ways."""
    a = math.radians(degrees)
    return torch.tensor(
        [[[scale * math.cos(a), -scale * math.sin(a), shift], [scale * math.sin(a), scale * math.cos(a), shift]]]
    )


def _resampled(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta.expand(len(images), 2, 3), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    pixels, _ = synthetic_split(64, 3)
    return torch.from_numpy(pixels).float().div(255).unsqueeze(1)


@pytest.mark.parametrize(
    ("axis", "value", "theta_of"),
    [
        ("rotation", 20.0, lambda v: _theta(degrees=-v)),
        ("rotation", -20.0, lambda v: _theta(degrees=-v)),
        ("scale", 0.7, lambda v: _theta(scale=v)),
        ("scale", 1.4, lambda v: _theta(scale=v)),
        ("translate", 3.0, lambda v: _theta(shift=v / 14)),
    ],
)
def test_a_transform_read_as_undoing_a_move_undoes_the_suite_kernels_move(
    images: torch.Tensor, axis: str, value: float, theta_of: Callable[[float], torch.Tensor]
) -> None:
    """The transform that reads as undoing `value` brings the kernel's moved images back; the one that reads
    as undoing the opposite move does not (the sign and unit of each reading match the suite's kernels)."""
    right, wrong = theta_of(value), theta_of(1 / value if axis == "scale" else -value)
    assert stn_transforms.undone(right, axis).item() == pytest.approx(value)
    moved = stn_transforms.moved(images, axis, value)
    back = (_resampled(moved, right) - images).abs().mean()
    assert back < 0.75 * (_resampled(moved, wrong) - images).abs().mean()
    assert back < 0.75 * (moved - images).abs().mean()


def test_readings_of_a_general_affine() -> None:
    # a rotation by 30 degrees scaled by 2: the scale is the square root of the determinant 4
    theta = _theta(degrees=30, scale=2.0)
    assert stn_transforms.undone(theta, "rotation").item() == pytest.approx(-30)
    assert stn_transforms.undone(theta, "scale").item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no reading of the transformer along 'shear'"):
        stn_transforms.undone(theta, "shear")


def test_share_counts_from_the_unmoved_reading() -> None:
    assert stn_transforms.share("rotation", 30, 25, 5) == pytest.approx(2 / 3)
    assert stn_transforms.share("translate", -6, -3, 0) == pytest.approx(0.5)
    assert stn_transforms.share("scale", 0.5, 0.5, 1.0) == pytest.approx(1.0)
    assert stn_transforms.share("scale", 0.5, 1.1, 1.1) == pytest.approx(0.0)  # a constant zoom follows nothing
    assert math.isnan(stn_transforms.share("rotation", 0, 4, 4))


def test_across_seeds_gives_each_points_mean_and_t_interval() -> None:
    """Rows of three points interleaved by seed: each point gets its own seeds' mean and spread."""
    undone = {("m", 30): [20.0, 22.0, 24.0], ("m", 60): [1.0, 1.0, 4.0], ("n", 30): [10.0, 30.0, 50.0]}
    rows = [
        {"model": model, "seed": seed, "axis": "rotation", "applied": applied, "undone": values[seed],
         "share": values[seed] / applied}
        for seed in range(3)
        for (model, applied), values in undone.items()
    ]  # fmt: skip
    table = stn_transforms.across_seeds(pd.DataFrame(rows)).set_index(["model", "applied"])
    t = 4.302653  # t(0.975, 2 degrees of freedom)
    for key, values in undone.items():
        row = table.loc[key]
        mean, sd = float(np.mean(values)), float(np.std(values, ddof=1))
        assert row["seeds"] == 3 and row["undone"] == pytest.approx(mean)
        assert row["undone_high"] - mean == pytest.approx(t * sd / math.sqrt(3), rel=1e-5)
        assert mean - row["undone_low"] == pytest.approx(t * sd / math.sqrt(3), rel=1e-5)
        assert row["share"] == pytest.approx(mean / key[1])


def test_the_unmoved_images_are_each_axis_identity() -> None:
    assert [stn_transforms.identity(axis) for axis in ("rotation", "translate", "scale")] == [0.0, 0.0, 1.0]
    assert all(stn_transforms.identity(axis) not in values for axis, values in stn_transforms.POINTS.items())


@pytest.fixture
def stn_report(tiny_experiment: dict[str, Any]) -> Path:
    """A tiny run with a spatial transformer and a model without one, two seeds."""
    config = dict(tiny_experiment, seeds=[0, 1], perturbations=["rotation"])
    config["models"] = [{"name": "stn_cnn_tiny", "train": {"epochs": 1, "batch_size": 64}}, "baseline_cnn_tiny"]
    return run_experiment(parse_config(config, source="test"))


def test_it_reads_every_seed_of_the_reports_transformers(
    stn_report: Path, synthetic_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "readings.csv"
    code = stn_transforms.main([str(stn_report), "--images", "20", "--data-dir", str(synthetic_dir), "--out", str(out)])
    assert code == 0
    per_seed = pd.read_csv(out)
    assert set(per_seed["model"]) == {"stn_cnn_tiny"} and set(per_seed["seed"]) == {0, 1}
    points = sum(len(values) + 1 for values in stn_transforms.POINTS.values())  # and each identity
    assert len(per_seed) == 2 * points
    assert per_seed["undone"].notna().all()
    printed = capsys.readouterr().out
    assert "stn_cnn_tiny, rotation (2 seeds, median of 20 images each)" in printed
    assert "follows" in printed


def test_weights_other_than_the_recorded_ones_are_refused(stn_report: Path, synthetic_dir: Path) -> None:
    """run.json naming another seed's (sound) checkpoint: the weights are not the ones it recorded."""
    run = json.loads((stn_report / "run.json").read_text())
    first, second = [m for m in run["models"] if m["name"] == "stn_cnn_tiny"]
    first["checkpoint"] = second["checkpoint"]
    (stn_report / "run.json").write_text(json.dumps(run))
    with pytest.raises(SystemExit, match=f"not the weights .*run.json records for stn_cnn_tiny seed {first['seed']}"):
        stn_transforms.main([str(stn_report), "--images", "20", "--data-dir", str(synthetic_dir)])


def test_a_missing_checkpoint_says_how_to_get_it(stn_report: Path, synthetic_dir: Path) -> None:
    run = json.loads((stn_report / "run.json").read_text())
    Path(next(m for m in run["models"] if m["name"] == "stn_cnn_tiny")["checkpoint"]).unlink()
    with pytest.raises(SystemExit, match="missing; run the report's experiment to train it"):
        stn_transforms.main([str(stn_report), "--images", "20", "--data-dir", str(synthetic_dir)])


def test_an_edited_checkpoint_is_named_unusable_with_its_problem(stn_report: Path, synthetic_dir: Path) -> None:
    run = json.loads((stn_report / "run.json").read_text())
    path = Path(next(m for m in run["models"] if m["name"] == "stn_cnn_tiny")["checkpoint"])
    checkpoint = torch.load(path, weights_only=True)
    first = next(iter(checkpoint["state_dict"]))
    checkpoint["state_dict"][first] += 1
    torch.save(checkpoint, path)
    with pytest.raises(SystemExit, match=r"unusable \(.*SHA-256.*\); run the report's experiment to train it again"):
        stn_transforms.main([str(stn_report), "--images", "20", "--data-dir", str(synthetic_dir)])


def test_a_report_naming_code_is_refused_before_anything_is_loaded(stn_report: Path) -> None:
    run = json.loads((stn_report / "run.json").read_text())
    run["config"]["models"][0] = {"name": "stn_cnn_tiny", "factory": "evil.module:build"}
    (stn_report / "run.json").write_text(json.dumps(run))
    with pytest.raises(SystemExit, match=r"run.json: its models name code to run \(evil.module:build\)"):
        stn_transforms.main([str(stn_report)])


def test_a_folder_without_run_json_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert stn_transforms.main([str(tmp_path)]) == 2
    assert "no run.json; give a report folder" in capsys.readouterr().err


def test_no_images_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        stn_transforms.main([str(tmp_path), "--images", "0"])
    assert stopped.value.code == 2
    assert "--images 0: give at least 1 test image" in capsys.readouterr().err

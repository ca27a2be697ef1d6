"""The CLI end to end on synthetic data with test-sized models."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from robustbench_fmnist.cli import main
from robustbench_fmnist.files import MARKER
from robustbench_fmnist.perturbations import PERTURBATIONS


def test_run_writes_a_complete_report_and_reuses_the_cache(
    tiny_experiment: dict[str, Any], write_yaml: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_yaml(tiny_experiment)
    assert main(["-q", "run", str(path)]) == 0
    folder = Path(tiny_experiment["output_dir"]) / "tiny"
    results = pd.read_csv(folder / "results.csv")
    # 2 models x (clean + 5 brightness + 2 rotation)
    assert len(results) == 16
    assert set(results.columns) >= {"model", "perturbation", "severity", "accuracy", "error", "n_images"}
    assert (results.n_images == 200).all()
    assert ((results.accuracy + results.error) - 1).abs().max() < 1e-9
    run = json.loads((folder / "run.json").read_text())
    assert run["config"]["seed"] == 0 and run["environment"]["device"] == "cpu"
    assert {"torch", "pandas"} <= set(run["environment"]["versions"])
    assert run["environment"]["threads"]["torch_threads"] >= 1 and run["timings_seconds"]["total"] > 0
    assert [m["weights"] for m in run["models"]] == ["trained", "trained"]
    assert "report written to" in capsys.readouterr().out
    md = (folder / "report.md").read_text()
    assert "## brightness_up" in md and "## rotation" in md and "baseline_cnn_tiny" in md

    assert main(["-q", "run", str(path)]) == 0
    run2 = json.loads((folder / "run.json").read_text())
    assert [m["weights"] for m in run2["models"]] == ["cached", "cached"]
    pd.testing.assert_frame_equal(
        pd.read_csv(folder / "results.csv").drop(columns="seconds"), results.drop(columns="seconds")
    )

    assert main(["-q", "run", str(path), "--retrain"]) == 0
    assert [m["weights"] for m in json.loads((folder / "run.json").read_text())["models"]] == ["trained", "trained"]


def test_a_users_own_model_by_import_path_with_a_checkpoint(
    tiny_experiment: dict[str, Any], write_yaml: Callable[..., Path], tmp_path: Path
) -> None:
    import torch

    from robustbench_fmnist.models import create_model

    torch.save(create_model("deep_cnn_tiny").state_dict(), tmp_path / "mine.pt")
    config = {
        **tiny_experiment,
        "models": [
            {
                "name": "mine",
                "factory": "robustbench_fmnist.models.vgg:deep_cnn_tiny",
                "checkpoint": str(tmp_path / "mine.pt"),
            }
        ],
    }
    assert main(["-q", "run", str(write_yaml(config))]) == 0
    run = json.loads((Path(tiny_experiment["output_dir"]) / "tiny" / "run.json").read_text())
    assert run["models"][0]["weights"] == "checkpoint"


def test_missing_data_fails_cleanly_without_a_report(
    tiny_experiment: dict[str, Any], write_yaml: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = {**tiny_experiment, "data": {"dir": str(tmp_path / "empty")}}
    (tmp_path / "empty").mkdir()
    assert main(["-q", "run", str(write_yaml(config))]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the configured data dir") and err.count("\n") == 1
    assert not (Path(tiny_experiment["output_dir"]) / "tiny").exists()


def test_ls_lists_models_and_perturbations_with_severities(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    assert "baseline_cnn " in out and "deep_cnn " in out and "timm_resnet18" in out
    assert "rotation" in out and "15     30     45     60     75" in out
    assert main(["ls", "models", "*tiny"]) == 0
    listed = capsys.readouterr().out
    assert "baseline_cnn_tiny" in listed and "\n  deep_cnn " not in listed and "perturbations" not in listed


def test_ls_axes_lists_what_an_adversarys_space_can_name(capsys: pytest.CaptureFixture[str]) -> None:
    from robustbench_fmnist.perturbations.space import AXES

    assert main(["ls", "axes"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("axes (adversaries[].space: {axis: [low, high, points]}):")
    assert all(f"  {name} " in out for name in AXES.names())
    assert "  rotation     degrees, counter-clockwise          0  -180..180" in out
    assert "  translate    pixels, x and y                     0  -14..14" in out
    assert "any perturbation with a continuous parameter is an axis too" in out and "gaussian_noise" in out
    assert "models:" not in out and "severities 1..5" not in out  # axes only
    assert main(["ls", "axes", "gam*"]) == 0
    listed = capsys.readouterr().out
    assert "  gamma " in listed and "  rotation " not in listed


def test_python_m_entry_point_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "robustbench_fmnist", "ls", "perturbations"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and "brightness_up" in done.stdout


def test_docs_severity_table_matches_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ls", "--markdown"]) == 0
    table = capsys.readouterr().out
    docs = (Path(__file__).resolve().parent.parent / "docs" / "perturbations.md").read_text()
    assert table in docs, "docs/perturbations.md is stale: regenerate it with `ls --markdown`"
    assert table.count("\n") == len(PERTURBATIONS) + 2


def test_ls_prints_every_severity_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ls", "perturbations", "gamma_*"]) == 0
    out = capsys.readouterr().out
    assert "gamma_up" in out and "gamma_down" in out and "rotation" not in out
    assert "1.5      2    2.5      3      4  gamma exponent" in out


def test_preview_writes_one_png_grid_per_perturbation(synthetic_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "preview"
    args = ["--data-dir", str(synthetic_dir), "--no-verify", "--output-dir", str(out)]
    assert main(["-q", "preview", "turn", *args]) == 0
    grid = Image.open(out / "turn.png")
    # one row per severity 0..3 of 84-pixel tiles, one column per class present in the sample
    assert grid.size[1] == 20 + 4 * (84 + 2)
    assert main(["-q", "preview", "gamma_*", *args]) == 0
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "gamma_down.png", "gamma_up.png", "turn.png"]


def test_preview_of_a_yaml_draws_each_adversary_space(
    synthetic_dir: Path, tmp_path: Path, write_yaml: Callable[..., Path], tiny_experiment: dict[str, Any]
) -> None:
    spatial = {"name": "spatial", "space": {"rotation": [-30, 30, 31], "translate": [-3, 3, 5]}, "search": "grid"}
    light = {"name": "light", "space": {"brightness": [-0.5, 0.5, 3]}, "search": "grid"}
    path = write_yaml({**tiny_experiment, "adversaries": [spatial, light]})
    out = tmp_path / "spaces"
    args = ["--data-dir", str(synthetic_dir), "--no-verify", "--output-dir", str(out), "--image", "3"]
    assert main(["-q", "preview", str(path), *args]) == 0
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "light.png", "spatial.png"]
    # rotation's 31 values sampled to 9 columns, translate_x's 5 to 5 rows; one dimension is one row
    assert Image.open(out / "spatial.png").size == (120 + 9 * 86, 40 + 5 * 86)
    assert Image.open(out / "light.png").size == (120 + 3 * 86, 40 + 86)


def test_preview_of_an_unknown_perturbation_fails_with_a_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preview", "rotaton"]) == 2
    assert "did you mean 'rotation'" in capsys.readouterr().err


@pytest.mark.slow  # over 5 s: in make test, not in make test-fast
def test_seeds_report_and_compare_from_the_command_line(
    tiny_experiment: dict[str, Any], write_yaml: Callable[..., Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = {**tiny_experiment, "seeds": [0, 1], "reference_model": "baseline_cnn_tiny"}
    assert main(["-q", "run", str(write_yaml(config))]) == 0
    folder = Path(tiny_experiment["output_dir"]) / "tiny"
    results = pd.read_csv(folder / "results.csv")
    assert sorted(results["seed"].unique()) == [0, 1] and len(results) == 32
    per_class = pd.read_csv(folder / "per_class.csv")
    assert len(per_class) == 32 * 10  # ten classes per cell
    assert {"ece", "nll", "flip_rate", "accuracy_low", "accuracy_high"} <= set(results.columns)
    md = (folder / "report.md").read_text()
    assert "over 2 trainings per model" in md and "| baseline_cnn_tiny | 100.00" not in md  # mCE: 100.0 ± 0.0
    assert "mCE" in md and "(figures/severity_lighting.png)" in md
    assert (folder / "report.html").exists() and (folder / "figures" / "examples_deep_cnn_tiny.png").exists()
    out = capsys.readouterr().out
    assert "mCE 100.0" in out, "the reference model's own mCE is 100"

    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert main(["-q", "report", str(folder)]) == 0
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before, "re-render is byte-identical"

    other = tmp_path / "other"
    assert main(["-q", "run", str(write_yaml({**config, "seeds": [2]})), "--output-dir", str(other)]) == 0
    capsys.readouterr()
    assert main(["-q", "compare", str(folder), str(other / "tiny"), "--output-dir", str(tmp_path / "cmp")]) == 0
    text = capsys.readouterr().out
    assert "# Comparison: tiny (A) vs tiny (B)" in text and "16 cells in both runs" in text
    assert "Rule: **none**" in text and "cannot be separated from training noise" in text
    compared = pd.read_csv(tmp_path / "cmp" / "compare.csv")
    assert len(compared) == 16 and {"difference", "significant", "p_value"} <= set(compared.columns)
    assert compared["significant"].isna().all(), "one seed on a side and no noise report: nothing is called"
    argv = ["-q", "compare", str(folder), str(other / "tiny"), "--noise-from", str(folder)]
    assert main([*argv, "--output-dir", str(tmp_path / "cmp2")]) == 0
    assert "Rule: **noise-from**" in capsys.readouterr().out
    argv = ["-q", "compare", str(folder), str(folder), "--model-a", "baseline_cnn_tiny", "--model-b", "deep_cnn_tiny"]
    assert main([*argv, "--output-dir", str(tmp_path / "cmp3")]) == 0
    text = capsys.readouterr().out
    assert "Rule: **seeds**" in text and "baseline_cnn_tiny vs deep_cnn_tiny" in text


@pytest.mark.slow  # over 5 s: in make test, not in make test-fast
def test_reproduce_retrains_from_run_json_and_checks_each_cell(
    tiny_experiment: dict[str, Any], write_yaml: Callable[..., Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = {**tiny_experiment, "seeds": [0, 1]}
    assert main(["-q", "run", str(write_yaml(config))]) == 0
    folder = Path(tiny_experiment["output_dir"]) / "tiny"
    out = tmp_path / "again"
    argv = ["-q", "reproduce", str(folder), "--output-dir", str(out), "--data-dir", tiny_experiment["data"]["dir"]]
    assert main([*argv, "--cache-dir", str(tmp_path / "fresh-cache")]) == 0
    text = capsys.readouterr().out
    assert "4 of 4 (model, seed) trainings bit-identical" in text and "16 of 16 cells inside" in text
    assert "this run agrees" in text
    md = (out / "tiny-reproduced" / "report.md").read_text()
    assert "## Against the reference" in md and "**no**" not in md
    # the same weights on both sides: compare pairs the images
    assert main(["-q", "compare", str(folder), str(out / "tiny-reproduced"), "--output-dir", str(tmp_path / "c")]) == 0
    text = capsys.readouterr().out
    assert "Rule: **paired**" in text and "0 differ beyond noise" in text

    # a reference whose every cell sits far from what this recipe gives: reproduce says so, exit 3
    results = pd.read_csv(folder / "results.csv")
    results["n_correct"] = np.where(results["seed"] == 0, 0.999, 0.998) * results["n_images"] // 1
    results["accuracy"] = results["n_correct"] / results["n_images"]  # counts and accuracy agree, or it is refused
    results.to_csv(folder / "results.csv", index=False)
    assert main([*argv, "--cache-dir", str(tmp_path / "fresh-cache")]) == 3
    text = capsys.readouterr().out
    assert "does not agree" in text and "OUT" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["report", "{tmp}/nowhere"], "no such report folder"),
        (["compare", "{tmp}/a", "{tmp}/b"], "no such report folder"),
    ],
)
def test_report_and_compare_name_a_missing_folder(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["-q", *(a.format(tmp=tmp_path) for a in argv)]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from robustbench_fmnist.report import load_report, results_frame, severity_table, summary_table, write_report
from robustbench_fmnist.report import writer as writer_module


def _row(model: str, pert: str, severity: int, correct: int, parameter: float | None = None) -> dict[str, Any]:
    return {
        "model": model,
        "perturbation": pert,
        "severity": severity,
        "parameter": parameter,
        "n_images": 1000,
        "n_correct": correct,
        "accuracy": correct / 1000,
        "error": 1 - correct / 1000,
        "seconds": 0.1,
    }


@pytest.fixture
def results() -> pd.DataFrame:
    rows = [_row("a", "clean", 0, 900), _row("a", "contrast", 1, 800, 0.4), _row("a", "contrast", 2, 600, 0.3)]
    rows += [_row("b", "clean", 0, 950), _row("b", "contrast", 1, 900, 0.4), _row("b", "contrast", 2, 760, 0.3)]
    return results_frame(rows)


@pytest.fixture
def run() -> dict[str, Any]:
    return {
        "config": {"name": "t", "description": "", "seed": 0, "evaluation": {"precision": "float32"}},
        "environment": {"device": "cpu", "versions": {"robustbench_fmnist": "0"}, "git_commit": "abc"},
        "perturbations": [{"name": "contrast", "unit": "contrast factor", "description": "Contrast."}],
        "models": [
            {"name": "a", "parameters": 10, "macs": 20, "weights": "trained", "train_seconds": 1.5},
            {"name": "b", "parameters": 30, "macs": 40, "weights": "cached", "train_seconds": None},
        ],
        "timings_seconds": {"total": 1.0},
    }


def test_severity_table_by_hand(results: pd.DataFrame) -> None:
    table = severity_table(results, "contrast").set_index("model")
    assert table.loc["a", "clean"] == 0.9 and table.loc["a", "s1"] == 0.8 and table.loc["a", "s2"] == 0.6
    assert table.loc["a", "mean"] == pytest.approx(0.7)
    assert table.loc["a", "mean_drop"] == pytest.approx(0.2)  # (0.1 + 0.3) / 2
    assert table.loc["a", "relative_drop"] == pytest.approx((0.1 / 0.9 + 0.3 / 0.9) / 2)
    assert table.loc["b", "mean_drop"] == pytest.approx((0.05 + 0.19) / 2)


def test_summary_table_by_hand(results: pd.DataFrame) -> None:
    table = summary_table(results).set_index("model")
    assert table.loc["b", "clean_accuracy"] == 0.95 and table.loc["b", "worst_accuracy"] == 0.76
    assert table.loc["b", "mean_accuracy"] == pytest.approx(0.83)


def test_report_files_and_numbers_trace_to_results(tmp_path: Path, results: pd.DataFrame, run: dict[str, Any]) -> None:
    folder = write_report(tmp_path / "t", results, run)
    assert sorted(p.name for p in folder.iterdir()) == ["report.md", "results.csv", "run.json"]
    loaded, loaded_run = load_report(folder)
    pd.testing.assert_frame_equal(loaded, results, check_dtype=False)
    assert loaded_run == json.loads(json.dumps(run))
    md = (folder / "report.md").read_text()
    assert "| a | 90.00 | 80.00 (-10.00) | 60.00 (-30.00) | 70.00 | -20.00 | 22.22 |" in md
    assert "s1 (x0.4)" in md and "s2 (x0.3)" in md
    assert "| b | 30 | 40 | 95.00 | cached | n/a |" in md


def test_a_failed_write_keeps_the_old_report_whole(
    tmp_path: Path, results: pd.DataFrame, run: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_report(tmp_path / "t", results, run)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def broken(*args: object) -> str:
        raise RuntimeError("disk full")

    monkeypatch.setattr(writer_module, "render_markdown", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_report(folder, results.iloc[:3], run)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"], "no staging folders left behind"

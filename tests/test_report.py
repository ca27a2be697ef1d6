"""Report tables by hand, the report folder as a whole, re-rendering and comparing runs."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from robustbench_fmnist.errors import HarnessError
from robustbench_fmnist.evaluation.cells import CLEAN, Cell
from robustbench_fmnist.evaluation.scoring import ScoredCells, score_cells
from robustbench_fmnist.evaluation.sweep import CellOutputs, CellResult
from robustbench_fmnist.report import writer as writer_module
from robustbench_fmnist.report.bundle import Examples, ReportData, frame, read_data
from robustbench_fmnist.report.compare import compare_runs
from robustbench_fmnist.report.tables import (
    confusion_growth,
    headline_spread,
    headline_table,
    seed_mean,
    severity_table,
    summary_spread,
    summary_table,
)
from robustbench_fmnist.report.writer import rerender_report, write_report
from tests.browser import chromium_binary, render_in_chromium

CLASSES = ("zero", "one")
LABELS = torch.tensor([0] * 5 + [1] * 5)
CELLS = [Cell(CLEAN, 0), Cell("contrast", 1, 0.4, "contrast_down"), Cell("contrast", 2, 0.3, "contrast_down")]


def _scored(model: str, seed: int, wrong: list[list[int]]) -> ScoredCells:
    """A model that gets the images at the given positions wrong in each cell (confidence 0.9)."""
    results, outputs = [], {}
    for cell, errors in zip(CELLS, wrong, strict=True):
        predictions = LABELS.clone()
        predictions[errors] = 1 - predictions[errors]
        true_probability = torch.where(predictions == LABELS, 0.9, 0.1)
        outputs[cell] = CellOutputs(predictions.to(torch.uint8), torch.full((10,), 0.9), true_probability)
        correct = 10 - len(errors)
        results.append(
            CellResult(
                model,
                cell.perturbation,
                cell.severity,
                cell.parameter,
                "torch",
                10,
                correct,
                correct / 10,
                1 - correct / 10,
                0.1,
            )
        )
    return score_cells(results, outputs, CELLS, LABELS, seed=seed, class_names=CLASSES)


def _examples() -> Examples:
    return Examples(
        images=np.zeros((2, 2, 28, 28), dtype=np.uint8),
        labels=np.array([0, 1]),
        row_names=["clean", "contrast s2"],
        models=["a", "b"],
        predictions=np.zeros((2, 2, 2), dtype=np.int64),
    )


def _data(seeds: tuple[int, ...] = (0,), b_wrong: list[list[int]] | None = None) -> ReportData:
    scored = ScoredCells()
    for seed in seeds:
        # model a: clean 9/10, then 8/10 and 6/10; model b: 10/10, 9/10, 7/10 (or b_wrong)
        scored.extend(_scored("a", seed, [[0], [0, 5], [0, 1, 5, 6]]))
        scored.extend(_scored("b", seed, b_wrong or [[], [5], [5, 6, 7]]))
    run = {
        "config": {
            "name": "t",
            "description": "A test.",
            "seed": seeds[0],
            "reference_model": "a",
            "evaluation": {"precision": "float32"},
        },
        "environment": {"device": "cpu", "versions": {"robustbench_fmnist": "0"}, "git_commit": "abc"},
        "perturbations": [
            {"name": "contrast", "unit": "contrast factor", "description": "Contrast.", "family": "lighting"}
        ],
        "models": [
            {"name": "a", "parameters": 10, "macs": 20, "weights": "trained", "train_seconds": 1.5},
            {"name": "b", "parameters": 30, "macs": 40, "weights": "cached", "train_seconds": None},
        ],
        "timings_seconds": {"total": 1.0},
    }
    return ReportData(
        results=frame(scored.results, "results"),
        per_class=frame(scored.per_class, "per_class"),
        confusion=frame(scored.confusion, "confusion"),
        calibration=frame(scored.calibration, "calibration"),
        run=run,
        examples=_examples(),
    )


def test_severity_and_summary_tables_by_hand() -> None:
    cells = seed_mean(_data().results)
    table = severity_table(cells, "contrast").set_index("model")
    assert table.loc["a", "clean"] == 0.9 and table.loc["a", "s1"] == 0.8 and table.loc["a", "s2"] == 0.6
    assert table.loc["a", "mean_drop"] == pytest.approx(0.2)  # (0.1 + 0.3) / 2
    assert table.loc["a", "relative_drop"] == pytest.approx((0.1 / 0.9 + 0.3 / 0.9) / 2)
    assert table.loc["a", "s1_low"] < 0.8 < table.loc["a", "s1_high"]  # Wilson over 10 images
    summary = summary_table(cells, "a").set_index("model")
    # b: errors 0.1 and 0.3 against a's 0.2 and 0.4 -> CE 0.4 / 0.6; relative (0.4 - 0) / (0.6 - 0.2)
    assert summary.loc["b", "ce"] == pytest.approx(0.4 / 0.6)
    assert summary.loc["b", "relative_ce"] == pytest.approx(1.0)
    assert summary.loc["a", "ce"] == pytest.approx(1.0)
    # AUC of a: ((0.9 + 0.8) / 2 + (0.8 + 0.6) / 2) / 2
    assert summary.loc["a", "auc"] == pytest.approx(0.775)
    assert summary.loc["b", "worst_accuracy"] == pytest.approx(0.7)


def test_flip_rates_against_clean_and_the_previous_severity() -> None:
    rows = _data().results.set_index(["model", "severity"])
    # a: clean wrong on 0; s1 wrong on 0, 5 -> 1 of 10 differs from clean; s2 wrong on 0, 1, 5, 6
    assert rows.loc[("a", 1), "flip_rate"] == pytest.approx(0.1)
    assert rows.loc[("a", 2), "flip_rate"] == pytest.approx(0.3)
    assert rows.loc[("a", 2), "flip_rate_step"] == pytest.approx(0.2)  # 1 and 6 changed since s1
    assert math.isnan(rows.loc[("a", 0), "flip_rate"])


def test_headline_and_confusion_growth_by_hand() -> None:
    data = _data()
    headline = headline_table(seed_mean(data.results), "a").set_index("model")
    assert headline.loc["b", "mce"] == pytest.approx(0.4 / 0.6)
    assert headline.loc["a", "shifted_accuracy"] == pytest.approx(0.7)
    # confidence 0.9 everywhere: clean a is 90 % right -> ECE 0; at s2 60 % right -> 0.3
    assert headline.loc["a", "clean_ece"] == pytest.approx(0.0, abs=1e-6)
    growth = confusion_growth(data.confusion, data.per_class).set_index(["model", "true", "predicted"])
    # a: "one" read as "zero" on 0 of 5 clean, 1 and 2 of 5 shifted -> mean 0.3
    assert growth.loc[("a", "one", "zero"), "shifted_rate"] == pytest.approx(0.3)
    assert growth.loc[("a", "one", "zero"), "growth"] == pytest.approx(0.3)
    assert growth.loc[("a", "zero", "one"), "clean_rate"] == pytest.approx(0.2)


def test_several_seeds_average_and_spread() -> None:
    data = _data(seeds=(0, 1))
    cells = seed_mean(data.results).set_index(["model", "perturbation", "severity"])
    assert cells.loc[("a", "contrast", 1), "n_images"] == 10 and cells.loc[("a", "contrast", 1), "seeds"] == 2
    spread = headline_spread(data.results, "a").set_index("model")
    assert spread.loc["a", "seeds"] == 2 and spread.loc["a", "clean_accuracy_std"] == pytest.approx(0.0)
    # identical seeds: no training spread, so the interval is the test-set term alone, 1.96 sqrt(0.09 / 10)
    half = 1.959964 * math.sqrt(0.9 * 0.1 / 10)
    assert spread.loc["a", "clean_accuracy_low"] == pytest.approx(0.9 - half, abs=1e-6)
    assert spread.loc["a", "clean_accuracy_high"] == 1.0, "clipped to 100 %"
    assert spread.loc["a", "mce_low"] == pytest.approx(1.0) == spread.loc["a", "mce_high"]


def test_seed_spread_widens_every_interval_by_the_t_quantile() -> None:
    """Two seeds of b that differ: the t quantile with 1 degree of freedom (12.706) sets each interval."""
    scored = ScoredCells()
    for seed, wrong in ((0, [[], [5], [5, 6, 7]]), (1, [[], [5, 6, 7], [5, 6, 7, 8, 9]])):
        scored.extend(_scored("a", seed, [[0], [0, 5], [0, 1, 5, 6]]))
        scored.extend(_scored("b", seed, wrong))
    data = _data()
    data.results = frame(scored.results, "results")
    cell = seed_mean(data.results).set_index(["model", "perturbation", "severity"]).loc[("b", "contrast", 1)]
    # b at s1: 0.9 and 0.7 -> mean 0.8, sd 0.1414; t(1) = 12.706
    std = math.sqrt(0.02)
    assert cell["accuracy"] == pytest.approx(0.8) and cell["accuracy_std"] == pytest.approx(std)
    seed_term = 12.706205 * std / math.sqrt(2)
    sampling = 1.959964 * math.sqrt(0.8 * 0.2 / 10)
    assert cell["accuracy_high"] == pytest.approx(min(1.0, 0.8 + math.hypot(seed_term, sampling)), abs=1e-5)
    assert cell["accuracy_low"] == pytest.approx(max(0.0, 0.8 - math.hypot(seed_term, sampling)), abs=1e-5)
    assert cell["flip_rate_high"] - cell["flip_rate"] == pytest.approx(12.706205 * cell["flip_rate_std"] / math.sqrt(2))
    summary = summary_spread(data.results, "a").set_index(["model", "perturbation"])
    # b's mean accuracy over severities per seed: (0.9 + 0.7) / 2 = 0.8 and (0.7 + 0.5) / 2 = 0.6
    assert summary.loc[("b", "contrast"), "mean_accuracy"] == pytest.approx(0.7)
    assert summary.loc[("b", "contrast"), "mean_accuracy_std"] == pytest.approx(std)
    assert summary.loc[("b", "contrast"), "ce_std"] > 0


def test_a_one_seed_report_says_its_intervals_leave_training_noise_out(tmp_path: Path) -> None:
    one = (write_report(tmp_path / "one", _data()) / "report.md").read_text()
    assert "leaves training noise out" in one and "± " not in one.split("## Models")[0]
    two = (write_report(tmp_path / "two", _data(seeds=(0, 1))) / "report.md").read_text()
    assert "leaves training noise out" not in two and "t = 12.706" in two and "over 2 trainings per model" in two


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_report_folder_is_complete_and_re_renders_byte_for_byte(tmp_path: Path) -> None:
    folder = write_report(tmp_path / "t", _data(seeds=(0, 1)))
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        ".robustbench_fmnist",
        "calibration.csv",
        "confusion.csv",
        "examples.npz",
        "figures",
        "per_class.csv",
        "report.html",
        "report.md",
        "results.csv",
        "run.json",
    ]
    assert sorted(p.name for p in (folder / "figures").iterdir()) == [
        "classes_a.png",
        "classes_b.png",
        "examples_a.png",
        "examples_b.png",
        "reliability_a.png",
        "reliability_b.png",
        "severity_lighting.png",
    ]
    before = _digests(folder)
    rerender_report(folder)
    assert _digests(folder) == before


def test_report_numbers_trace_to_the_csv_files(tmp_path: Path) -> None:
    folder = write_report(tmp_path / "t", _data())
    md = (folder / "report.md").read_text()
    results = read_data(folder).results.set_index(["model", "severity"])
    assert f"| a | {100 * results.loc[('a', 0), 'accuracy']:.2f} | 80.00 (-10.00) [" in md
    assert "| b | contrast | 100.00 | 80.00 | -20.00 | 20.00 | 70.00 |" in md
    assert "s1 (x0.4)" in md and "s2 (x0.3)" in md
    assert "| a | one → zero | 0.00 | 30.00 | +30.00 |" in md  # clean 0 of 5, shifted 1 and 2 of 5
    html = (folder / "report.html").read_text()
    assert html.count("<table>") == md.count("| :--- |") and 'src="data:image/png;base64,' in html
    assert "figures/" not in html.split("<body>")[1], "every figure is embedded"


def test_a_failed_write_keeps_the_old_report_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_report(tmp_path / "t", _data())
    before = _digests(folder)

    def broken(*args: object) -> str:
        raise RuntimeError("disk full")

    monkeypatch.setattr(writer_module, "render_markdown", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_report(folder, _data(seeds=(1,)))
    with pytest.raises(RuntimeError, match="disk full"):
        rerender_report(folder)
    assert _digests(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".t.rbfm-lock", "t"], "no staging folders left behind"


def test_re_rendering_keeps_the_users_own_files_and_a_readable_folder(tmp_path: Path) -> None:
    folder = write_report(tmp_path / "t", _data())
    (folder / "NOTES.md").write_text("mine")
    rerender_report(folder)
    assert (folder / "NOTES.md").read_text() == "mine"
    assert folder.stat().st_mode & 0o055, "not left owner-only by the staging folder"


def test_several_seeds_widen_the_interval_to_the_spread_between_seeds() -> None:
    data = _data(seeds=(0, 1))
    data.results.loc[(data.results.seed == 1) & (data.results.model == "a"), "accuracy"] -= 0.2
    cells = seed_mean(data.results).set_index(["model", "perturbation", "severity"])
    row = cells.loc[("a", "contrast", 1)]
    # accuracies 0.8 and 0.6: mean 0.7, sd 0.1414, t(1) 12.706 -> half-width 1.27: the whole range
    assert row["accuracy"] == pytest.approx(0.7) and row["accuracy_low"] == 0.0 and row["accuracy_high"] == 1.0


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "examples.npz").write_bytes(b"PK\x03\x04 truncated"), r"examples.npz: unreadable"),
        (lambda f: (f / "run.json").write_text('{"config": {}}'), r"keys .*'environment'.* missing"),
        (lambda f: (f / "results.csv").write_text((f / "results.csv").read_text().splitlines()[0]), "no rows"),
        (lambda f: (f / "per_class.csv").unlink(), r"per_class.csv: missing"),
        (lambda f: (f / "results.csv").write_text("model,seed\nx,0\n"), r"columns .* missing"),
        (lambda f: (f / "run.json").write_text("{"), r"run.json: not valid JSON"),
    ],
)
def test_a_broken_report_folder_is_named_and_left_alone(tmp_path: Path, damage: Any, message: str) -> None:
    folder = write_report(tmp_path / "t", _data())
    damage(folder)
    before = _digests(folder)
    with pytest.raises(HarnessError, match=message):
        rerender_report(folder)
    assert _digests(folder) == before


def test_compare_of_single_trainings_calls_nothing_significant_without_a_noise_report() -> None:
    a = _data()
    b = _data(b_wrong=[[], [5, 6, 7, 8, 9], [5, 6, 7]])
    comparison = compare_runs(a, b)
    table = comparison.table.set_index(["model", "perturbation", "severity"])
    row = table.loc[("b", "contrast", 1)]
    assert comparison.rule == "none" and row["difference"] == pytest.approx(-0.4)
    assert table["significant"].isna().all() and table["p_value"].isna().all()


def test_read_data_names_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="no such report folder"):
        read_data(tmp_path / "nothing")


def test_seed_mean_keeps_cell_order() -> None:
    cells = seed_mean(_data().results)
    assert list(cells["perturbation"][:3]) == [CLEAN, "contrast", "contrast"]
    assert list(cells["severity"][:3]) == [0, 1, 2] and list(dict.fromkeys(cells["model"])) == ["a", "b"]
    several = seed_mean(_data(seeds=(1, 0)).results)
    assert list(zip(several["model"], several["severity"], strict=True)) == [(m, s) for m in "ab" for s in (0, 1, 2)]


@pytest.mark.skipif(chromium_binary() is None, reason="no chromium (make test installs Debian's package)")
def test_report_html_renders_in_a_real_browser(tmp_path: Path) -> None:
    folder = write_report(tmp_path / "t", _data(seeds=(0, 1)))
    page = render_in_chromium(folder / "report.html")
    md = (folder / "report.md").read_text()
    assert page["errors"] == [] and page["compatMode"] == "CSS1Compat"
    assert len(page["images"]) == md.count("![") and all(image["ok"] for image in page["images"])
    assert all(image["naturalWidth"] >= 300 for image in page["images"])
    assert len(page["tables"]) == md.count("| :--- |") and all(t["bodyRows"] >= 1 for t in page["tables"])
    assert page["tables"][0]["headers"][:2] == ["model", "clean (95 % CI)"]
    # the headline figure first; a click on a header sorts its table by it, a second click the other way
    assert page["figureUnderTitle"]
    sorting = page["sorting"]
    assert sorting["header"] == "clean (95 % CI)" and len(sorting["before"]) >= 2
    leading = [float(text.split()[0]) for text in sorting["ascending"]]
    assert leading == sorted(leading) and sorting["descending"] == sorting["ascending"][::-1]
    assert (sorting["ascendingMark"], sorting["descendingMark"]) == ("ascending", "descending")


@pytest.mark.skipif(chromium_binary() is None, reason="no chromium (make test installs Debian's package)")
def test_the_browser_check_sees_a_broken_image(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><head></head><body><img alt="x" src="data:image/png;base64,AAAA"></body></html>'
    )
    result = render_in_chromium(page)
    assert not result["images"][0]["ok"] and result["errors"]


@pytest.mark.slow  # over 5 s: in make test, not in make test-fast
@pytest.mark.parametrize(
    "name", ["lighting", "viewpoint", "remedies", "viewpoint_remedies", "viewpoint_longer_training"]
)
def test_the_committed_references_re_render_byte_for_byte(tmp_path: Path, name: str) -> None:
    import shutil

    committed = Path(__file__).resolve().parent.parent / "reports" / name
    folder = tmp_path / name
    shutil.copytree(committed, folder)
    rerender_report(folder)
    rendered = ["report.md", *(["remedies.csv"] if (committed / "remedies.csv").exists() else [])]
    for filename in rendered:
        assert (folder / filename).read_bytes() == (committed / filename).read_bytes(), filename


def test_the_models_table_shows_the_last_epochs_training_accuracy_where_histories_were_recorded() -> None:
    import pandas as pd

    from robustbench_fmnist.report.markdown import _models

    cells = pd.DataFrame({"model": ["a", "b"], "perturbation": [CLEAN, CLEAN], "accuracy": [0.9, 0.8]})

    def entry(name: str, accuracies: list[float] | None) -> dict[str, Any]:
        history = None if accuracies is None else {"history": [{"train_accuracy": a} for a in accuracies]}
        return {"name": name, "parameters": 10, "macs": 20, "weights": "trained", "training_summary": history}

    models = [entry("a", [0.80, 0.85]), entry("a", [0.82, 0.89]), entry("b", None)]
    table = "\n".join(_models(cells, models))
    assert "training accuracy, last epoch" in table and "still learning" in table
    assert "| a | 10 | 20 | 90.00 | 2 trained | n/a | n/a | 87.00 (+6.00) |" in table
    assert table.count("| n/a | n/a | n/a |") == 1  # b: no time, no recipe, no history
    # reports made before histories were kept render as they did
    unrecorded = "\n".join(_models(cells, [entry("a", None), entry("b", [0.9])]))
    assert "last epoch" not in unrecorded and "| a | 10 | 20 | 90.00 | trained | n/a | n/a |" in unrecorded

"""The leaderboard: ranks with ties, per-family scores, effective robustness, and the board built from folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import special

from robustbench_fmnist.cli import main
from robustbench_fmnist.errors import ConfigError
from robustbench_fmnist.report.leaderboard import (
    ADAPTATION,
    CHECKPOINT,
    MIN_FIT_MODELS,
    ROBUST_TRAINING,
    SCALES,
    STANDARD,
    board_table,
    effective_robustness,
    family_cells,
    interval_ranks,
    model_role,
    per_seed_scores,
    verdict,
)
from robustbench_fmnist.report.leaderboard_files import write_leaderboard
from tests.browser import chromium_binary, render_in_chromium

ROOT = Path(__file__).resolve().parents[1]
IMAGES = 10_000
FAMILIES = {"brightness_up": "lighting", "contrast_down": "lighting", "rotation": "viewpoint"}


def _row(model: str, seed: int, perturbation: str, severity: int, accuracy: float, ece: float = 0.05) -> dict:
    correct = round(accuracy * IMAGES)
    return {"model": model, "seed": seed, "perturbation": perturbation, "severity": severity,
            "parameter": float(severity) if severity else np.nan, "n_images": IMAGES, "n_correct": correct,
            "accuracy": correct / IMAGES, "accuracy_low": correct / IMAGES - 0.005,
            "accuracy_high": correct / IMAGES + 0.005, "flip_rate": 0.1, "flip_rate_step": 0.1, "ece": ece,
            "mean_confidence": 0.9, "nll": 0.3}  # fmt: skip


def _results(models: dict[str, dict[tuple[str, int], float]], seeds: tuple[int, ...] = (0, 1, 2)) -> pd.DataFrame:
    """Rows for every model, seed and cell; seed s adds s * 0.002 to every accuracy."""
    rows = []
    for model, cells in models.items():
        for seed in seeds:
            for (perturbation, severity), accuracy in cells.items():
                rows.append(_row(model, seed, perturbation, severity, accuracy + 0.002 * seed))
    return pd.DataFrame(rows)


def _cells(clean: float, bright: tuple[float, float], contrast: tuple[float, float], rotation: float) -> dict:
    return {
        ("clean", 0): clean,
        ("brightness_up", 1): bright[0],
        ("brightness_up", 3): bright[1],
        ("contrast_down", 1): contrast[0],
        ("contrast_down", 3): contrast[1],
        ("rotation", 2): rotation,
    }


def test_interval_ranks_count_only_models_wholly_above() -> None:
    mean = pd.Series([0.90, 0.89, 0.85, 0.80])
    low = pd.Series([0.88, 0.87, 0.84, 0.70])
    high = pd.Series([0.92, 0.91, 0.86, 0.90])
    # 0.89 overlaps the leader: both rank 1; 0.85 is below both; 0.80's wide interval reaches the leaders
    assert interval_ranks(mean, low, high) == [1, 1, 3, 1]
    assert interval_ranks(mean, pd.Series([np.nan] * 4), pd.Series([np.nan] * 4)) == [1, 2, 3, 4]


def test_per_seed_scores_are_the_family_means_worst_cells_and_mce_against_the_reference() -> None:
    results = _results({
        "ref": _cells(0.90, (0.80, 0.60), (0.70, 0.50), 0.40),
        "good": _cells(0.92, (0.90, 0.80), (0.85, 0.75), 0.50),
    })  # fmt: skip
    cells, dropped = family_cells(results, FAMILIES)
    assert {f: len(c) for f, c in cells.items()} == {"lighting": 4, "viewpoint": 1} and not any(dropped.values())
    per_seed = per_seed_scores(results, cells, "ref")
    good = per_seed[(per_seed.model == "good") & (per_seed.family == "lighting") & (per_seed.seed == 0)].iloc[0]
    assert good.clean_accuracy == pytest.approx(0.92)
    assert good.shifted_accuracy == pytest.approx((0.90 + 0.80 + 0.85 + 0.75) / 4)
    assert good.worst_accuracy == pytest.approx(0.75)
    ce_bright = (0.10 + 0.20) / (0.20 + 0.40)
    ce_contrast = (0.15 + 0.25) / (0.30 + 0.50)
    assert good.mce == pytest.approx((ce_bright + ce_contrast) / 2)
    relative = ((0.10 - 0.08 + 0.20 - 0.08) / (0.20 - 0.10 + 0.40 - 0.10) + (0.15 - 0.08 + 0.25 - 0.08) / 0.6) / 2
    assert good.relative_mce == pytest.approx(relative)
    ref = per_seed[(per_seed.model == "ref")]
    assert np.allclose(ref["mce"], 1.0)


def test_a_seed_the_reference_lacks_is_set_against_its_mean() -> None:
    ref = _results({"ref": _cells(0.90, (0.80, 0.60), (0.70, 0.50), 0.40)}, seeds=(0, 1))
    other = _results({"other": _cells(0.90, (0.80, 0.60), (0.70, 0.50), 0.40)}, seeds=(5,))
    results = pd.concat([ref, other], ignore_index=True)
    cells, _ = family_cells(results, FAMILIES)
    per_seed = per_seed_scores(results, cells, "ref")
    row = per_seed[(per_seed.model == "other") & (per_seed.family == "viewpoint")].iloc[0]
    # the reference's mean over seeds 0 and 1 is 0.401 on rotation (error 0.599); other's seed 5 has 0.41
    assert row.mce == pytest.approx(0.59 / 0.599)
    assert set(per_seed.loc[per_seed.model == "other", "seed"]) == {5}


def test_cells_some_model_lacks_are_left_out_for_everyone() -> None:
    results = _results({"a": _cells(0.9, (0.8, 0.6), (0.7, 0.5), 0.4), "b": _cells(0.9, (0.8, 0.6), (0.7, 0.5), 0.4)})
    results = results[~((results.model == "b") & (results.perturbation == "contrast_down") & (results.severity == 3))]
    cells, dropped = family_cells(results, FAMILIES)
    assert len(cells["lighting"]) == 3 and dropped["lighting"] == 1
    per_seed = per_seed_scores(results, cells, None)
    a = per_seed[(per_seed.model == "a") & (per_seed.family == "lighting") & (per_seed.seed == 0)].iloc[0]
    assert a.shifted_accuracy == pytest.approx((0.8 + 0.6 + 0.7) / 3)


def test_board_ranks_ties_and_adds_the_seed_spread() -> None:
    results = _results({
        "best": _cells(0.92, (0.90, 0.90), (0.90, 0.90), 0.6),
        "close": _cells(0.92, (0.899, 0.899), (0.899, 0.899), 0.5),
        "worse": _cells(0.92, (0.50, 0.50), (0.50, 0.50), 0.4),
    })  # fmt: skip
    cells, _ = family_cells(results, FAMILIES)
    board = board_table(per_seed_scores(results, cells, None), IMAGES)
    lighting = board[board.family == "lighting"].set_index("model")
    assert lighting.loc["best", "rank"] == lighting.loc["close", "rank"] == 1
    assert bool(lighting.loc["best", "tied"]) and not bool(lighting.loc["worse", "tied"])
    assert lighting.loc["worse", "rank"] == 3
    assert lighting.loc["best", "seeds"] == 3
    assert lighting.loc["best", "shifted_accuracy_std"] == pytest.approx(0.002)
    # the accuracy interval carries the test-set term: wider than the seed term alone
    assert lighting.loc["best", "shifted_accuracy_high"] - lighting.loc["best", "shifted_accuracy"] > 0.005


def _line_models(offsets: dict[str, float], roles: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Models on logit(shifted) = -1 + 1.5 logit(clean), each moved by its offset (accuracy points) at every seed."""
    cleans = {name: 0.70 + 0.04 * i for i, name in enumerate(offsets)}
    rows = []
    for name, clean in cleans.items():
        on_line = special.expit(-1 + 1.5 * special.logit(clean))
        for seed in (0, 1, 2):
            jitter = 0.001 * (seed - 1)
            rows.append({"model": name, "family": "lighting", "seed": seed, "clean_accuracy": clean + jitter,
                         "shifted_accuracy": special.expit(-1 + 1.5 * special.logit(clean + jitter)) + offsets[name],
                         "worst_accuracy": on_line, "mce": 1.0, "relative_mce": 1.0, "shifted_ece": 0.05,
                         "clean_ece": 0.02})  # fmt: skip
    per_seed = pd.DataFrame(rows)
    board = board_table(per_seed, IMAGES).assign(role=lambda b: b.model.map(roles))
    return per_seed, board


def test_effective_robustness_is_the_distance_from_the_standard_models_line() -> None:
    roles = {"a": STANDARD, "b": STANDARD, "c": STANDARD, "d": STANDARD, "e": STANDARD, "robust": ROBUST_TRAINING}
    per_seed, board = _line_models({"a": 0, "b": 0, "c": 0, "d": 0, "e": 0, "robust": 0.05}, roles)
    er, fits = effective_robustness(per_seed, board, roles, SCALES["logit"], resamples=200)
    assert fits[0].slope == pytest.approx(1.5, abs=1e-3) and fits[0].intercept == pytest.approx(-1, abs=1e-3)
    assert sorted(fits[0].models) == ["a", "b", "c", "d", "e"]  # the robust model is not part of the fit
    er = er.set_index("model")
    assert er.loc["robust", "effective_robustness"] == pytest.approx(0.05, abs=1e-4)
    assert np.allclose(er.loc[list("abcde"), "effective_robustness"], 0, atol=1e-4)
    assert verdict(er.loc["robust", "effective_robustness_low"], er.loc["robust", "effective_robustness_high"]) == (
        "above the line"
    )
    # moving the robust model does not move the line
    per_seed2, board2 = _line_models({"a": 0, "b": 0, "c": 0, "d": 0, "e": 0, "robust": -0.2}, roles)
    _, fits2 = effective_robustness(per_seed2, board2, roles, SCALES["logit"], resamples=200)
    assert fits2[0].slope == pytest.approx(fits[0].slope) and fits2[0].intercept == pytest.approx(fits[0].intercept)


def test_an_outlier_among_the_fit_models_widens_the_band() -> None:
    roles = dict.fromkeys("abcdef", STANDARD)
    per_seed, board = _line_models(dict.fromkeys("abcdef", 0.0), roles)
    _, tight = effective_robustness(per_seed, board, roles, SCALES["logit"], resamples=300)
    per_seed, board = _line_models({**dict.fromkeys("abcde", 0.0), "f": -0.15}, roles)
    _, loose = effective_robustness(per_seed, board, roles, SCALES["logit"], resamples=300)
    assert np.mean(loose[0].band_high - loose[0].band_low) > 10 * np.mean(tight[0].band_high - tight[0].band_low)


def test_fewer_than_the_minimum_standard_models_give_no_line() -> None:
    names = "abcdefg"[: MIN_FIT_MODELS - 1]
    roles = {**dict.fromkeys(names, STANDARD), "x": ADAPTATION, "y": CHECKPOINT}
    per_seed, board = _line_models(dict.fromkeys([*names, "x", "y"], 0.0), roles)
    er, fits = effective_robustness(per_seed, board, roles, SCALES["logit"], resamples=200)
    assert not fits and er.empty


@pytest.mark.parametrize("scale", list(SCALES))
def test_scales_round_trip(scale: str) -> None:
    p = np.array([0.1, 0.5, 0.93])
    assert np.allclose(SCALES[scale].inverse(SCALES[scale].forward(p)), p)


def test_roles_come_from_the_run_record() -> None:
    assert model_role({"training": "standard", "adaptation": "none", "recipe": {}}) == (STANDARD, "")
    assert model_role({"training": "augmix", "adaptation": "none", "recipe": {}}) == (ROBUST_TRAINING, "augmix")
    assert model_role({"training": "standard", "adaptation": "bn", "recipe": {}}) == (ADAPTATION, "bn")
    assert model_role({"training": None, "adaptation": "none", "recipe": None, "weights": "user checkpoint"}) == (
        CHECKPOINT,
        "",
    )


# -- the board from real report folders (tiny models on synthetic data) --------------------------------------------


@pytest.fixture
def two_reports(tiny_experiment: dict[str, Any], tmp_path: Path) -> tuple[Path, Path, Path]:
    """Two report folders of one experiment's cells: four standard models and a robust-trained one, 2 seeds."""
    base = {
        **tiny_experiment,
        "seeds": [0, 1],
        "perturbations": ["brightness_up", {"name": "rotation", "severities": [2, 4]}],
    }
    first = {**base, "name": "first", "models": ["baseline_cnn_tiny", "deep_cnn_tiny", "mlp_tiny"]}
    robust = {"name": "mlp_tiny_suite", "architecture": "mlp_tiny",
              "train": {"robust_augment": {"method": "suite", "perturbations": ["rotation"]}}}  # fmt: skip
    second = {**base, "name": "second", "models": ["lenet5_tiny", "resnet8_tiny", "linear", robust]}
    for config in (first, second):
        path = tmp_path / f"{config['name']}.yaml"
        path.write_text(yaml.safe_dump(config))
        assert main(["-q", "run", str(path)]) == 0
    output = Path(tiny_experiment["output_dir"])
    return output / "first", output / "second", tmp_path / "board"


def _board_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow  # over 5 s: in make test, not in make test-fast
def test_the_board_ranks_every_model_and_re_renders_byte_for_byte(two_reports: tuple[Path, Path, Path]) -> None:
    first, second, board = two_reports
    write_leaderboard([first, second], board, reference="baseline_cnn_tiny", resamples=200)
    table = pd.read_csv(board / "leaderboard.csv")
    assert set(table.family) == {"lighting", "viewpoint"}
    assert len(table) == 2 * 7 and set(table.seeds) == {2}
    assert set(table.loc[table.model == "mlp_tiny_suite", "role"]) == {ROBUST_TRAINING}
    text = (board / "leaderboard.md").read_text()
    assert "## lighting" in text and "## viewpoint" in text and "Fit over 6 standard models" in text
    assert (board / "figures" / "line_lighting.png").stat().st_size > 10_000
    assert "data:image/png;base64," in (board / "leaderboard.html").read_text()
    if chromium_binary() is not None:  # make test installs it: the page as a reader's browser shows it
        page = render_in_chromium(board / "leaderboard.html")
        assert page["errors"] == [] and all(image["ok"] for image in page["images"]) and page["figureUnderTitle"]
        sorting = page["sorting"]
        assert sorting["descending"] == sorting["ascending"][::-1] and sorted(sorting["before"]) == sorted(
            sorting["ascending"]
        )
    before = _board_bytes(board)
    write_leaderboard([first, second], board, reference="baseline_cnn_tiny", resamples=200)
    assert _board_bytes(board) == before
    reference = table[(table.model == "baseline_cnn_tiny")]
    assert np.allclose(reference["mce"], 1.0)


def test_the_cli_takes_an_experiment_yaml_for_its_one_model_reports(
    tiny_experiment: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(tiny_experiment))
    for model in ("baseline_cnn_tiny", "deep_cnn_tiny"):
        assert main(["-q", "run", str(path), "--model", model]) == 0
    board = tmp_path / "board"
    assert main(["leaderboard", str(path), "--output-dir", str(board), "--bootstrap", "100"]) == 0
    assert set(pd.read_csv(board / "leaderboard.csv").model) == {"baseline_cnn_tiny", "deep_cnn_tiny"}
    assert "No fit: it needs 4 standard-trained models" in (board / "leaderboard.md").read_text()


@pytest.mark.slow  # over 5 s: in make test, not in make test-fast
def test_bad_board_inputs_stop_with_one_line_before_writing(
    two_reports: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    first, _, board = two_reports
    cases = [
        ([first, first], {}, "model 'baseline_cnn_tiny' is in both"),
        ([first, tmp_path / "nowhere"], {}, "is not a folder"),
        ([first], {"scale": "log"}, "--scale: 'log' is not one of logit, probit, linear"),
        ([first], {"resamples": 10}, "too few for a band"),
        ([first], {"reference": "resnet"}, "--reference: 'resnet' is not on the board"),
        ([], {}, "give at least one report folder"),
    ]
    for folders, options, message in cases:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            write_leaderboard(folders, board, **options)
        assert not board.exists()
    smaller = yaml.safe_load((tmp_path / "first.yaml").read_text())
    smaller.update(name="smaller", models=["linear"], seeds=[0], evaluation={"test_images": 100})
    (tmp_path / "smaller.yaml").write_text(yaml.safe_dump(smaller))
    assert main(["-q", "run", str(tmp_path / "smaller.yaml")]) == 0
    with pytest.raises(ConfigError, match="score different test sets"):
        write_leaderboard([first, first.parent / "smaller"], board)
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.txt").write_text("mine")
    with pytest.raises(ConfigError):
        write_leaderboard([first], mine)
    assert (mine / "thesis.txt").read_text() == "mine"


def _committed_sources() -> list[Path]:
    text = (ROOT / "reports" / "leaderboard" / "leaderboard.md").read_text()
    section = text.split("## Sources", 1)[1]
    return [ROOT / line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| reports/")]


@pytest.mark.skipif(not (ROOT / "reports" / "leaderboard").is_dir(), reason="no committed leaderboard")
def test_the_committed_board_re_renders_byte_for_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the board names its sources relative to the working folder
    sources = _committed_sources()
    assert len(sources) >= 2
    board = tmp_path / "board"
    write_leaderboard([s.relative_to(ROOT) for s in sources], board)
    committed = ROOT / "reports" / "leaderboard"
    for filename in ("leaderboard.md", "leaderboard.csv"):
        assert (board / filename).read_bytes() == (committed / filename).read_bytes(), filename
    assert sorted(p.name for p in (board / "figures").iterdir()) == sorted(
        p.name for p in (committed / "figures").iterdir()
    )


@pytest.mark.skipif(not (ROOT / "reports" / "leaderboard").is_dir(), reason="no committed leaderboard")
def test_the_committed_board_holds_the_zoo_the_issue_asks_for() -> None:
    table = pd.read_csv(ROOT / "reports" / "leaderboard" / "leaderboard.csv")
    standard = table[table.role == STANDARD]
    assert standard.model.nunique() >= 8 and set(table.family) >= {"lighting", "viewpoint"}
    assert table.seeds.min() >= 3
    for source in _committed_sources():
        run = json.loads((source / "run.json").read_text())
        assert run["environment"]["lock"]["matches"], source
        assert not run["environment"]["git_commit"].endswith("+dirty"), source
        assert all(m["weights"] == "trained" for m in run["models"]), f"{source}: weights from a cache"

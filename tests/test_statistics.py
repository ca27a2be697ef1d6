"""Seed-aware intervals and the tests of `compare`, on simulated runs where the truth is known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from robustbench_fmnist.report.agreement import agreement_table, agreement_verdict
from robustbench_fmnist.report.bundle import Outcomes, ReportData
from robustbench_fmnist.report.compare import compare_runs
from robustbench_fmnist.report.tables import seed_mean
from robustbench_fmnist.statistics import prediction_half_width, t_quantile


def test_t_quantiles_are_exact_for_every_number_of_seeds_the_config_allows() -> None:
    # published two-sided 95 % values; 11..19 degrees of freedom once fell back to 1.96
    table = {1: 12.706, 2: 4.303, 4: 2.776, 9: 2.262, 10: 2.228, 11: 2.201, 14: 2.145, 19: 2.093}
    for df, value in table.items():
        assert float(t_quantile(df)) == pytest.approx(value, abs=5e-4)
    assert all(float(t_quantile(df)) > 1.96 for df in range(1, 20))


def _results(accuracies: np.ndarray, images: int, models: list[str], cells: list[tuple[str, int]]) -> pd.DataFrame:
    """results.csv rows from an array (models, cells, seeds) of accuracies."""
    rows = []
    for m, model in enumerate(models):
        for c, (perturbation, severity) in enumerate(cells):
            for seed, accuracy in enumerate(accuracies[m, c]):
                correct = round(accuracy * images)
                rows.append(
                    {
                        "model": model,
                        "seed": seed,
                        "perturbation": perturbation,
                        "severity": severity,
                        "parameter": float(severity),
                        "n_images": images,
                        "n_correct": correct,
                        "accuracy": correct / images,
                        "accuracy_low": np.nan,
                        "accuracy_high": np.nan,
                        **dict.fromkeys(["flip_rate", "flip_rate_step", "ece", "mean_confidence", "nll"], 0.0),
                    }
                )
    return pd.DataFrame(rows)


@pytest.mark.parametrize(("seed_spread", "t_alone_below"), [(0.35, 1.0), (0.03, 0.92)], ids=["shifted", "clean"])
def test_the_accuracy_interval_covers_the_recipe_s_accuracy_at_least_95_percent(
    seed_spread: float, t_alone_below: float
) -> None:
    """Simulated trainings: image difficulty, a per-seed offset and per-image noise; truth by Monte Carlo.

    Under shift the spread between trainings dominates; on clean images (small seed spread) the
    test-set term does, and a t-interval on the seed means alone would miss the truth far too often.
    """
    rng = np.random.default_rng(0)
    difficulty = (1.5, 1.2)  # logit mean and spread over the image population
    image_seed_noise, images, seeds, runs = 0.6, 2000, 5, 400
    pool = rng.normal(*difficulty, 2_000_000) + rng.normal(0, seed_spread, 2_000_000)
    truth = float(np.mean(1 / (1 + np.exp(-(pool + rng.normal(0, image_seed_noise, pool.size))))))
    accuracies = np.empty((runs, 1, seeds))
    for run in range(runs):
        logits = rng.normal(*difficulty, (images, 1)) + rng.normal(0, seed_spread, (1, seeds))
        logits = logits + rng.normal(0, image_seed_noise, (images, seeds))
        correct = rng.random((images, seeds)) < 1 / (1 + np.exp(-logits))
        accuracies[run, 0] = correct.mean(0)
    results = _results(accuracies, images, [f"run{r}" for r in range(runs)], [("shift", 1)])
    cells = seed_mean(results)
    covered = ((cells["accuracy_low"] <= truth) & (truth <= cells["accuracy_high"])).mean()
    assert covered >= 0.93, covered
    # conservative where the images' own noise dominates (the test-set term does not shrink with seeds),
    # but never absurdly: at most about sqrt(seeds) wider than the estimator's actual error needs
    needed = 1.96 * math.sqrt(((cells["accuracy"] - truth) ** 2).mean())
    width = ((cells["accuracy_high"] - cells["accuracy_low"]) / 2).median()
    assert width <= math.sqrt(seeds) * needed, (width, needed)
    # the seed term alone (a t-interval on 5 seed means) ignores the test images all seeds share
    t_only = stats.t.ppf(0.975, seeds - 1) * cells["accuracy_std"] / math.sqrt(seeds)
    alone = ((cells["accuracy"] - t_only <= truth) & (truth <= cells["accuracy"] + t_only)).mean()
    assert alone < t_alone_below, alone


def _report(results: pd.DataFrame, weights: dict[tuple[str, int], str] | None = None) -> ReportData:
    models = [
        {"name": model, "seed": int(seed), "weights_sha256": (weights or {}).get((model, int(seed)))}
        for model, seed in results[["model", "seed"]].drop_duplicates().itertuples(index=False)
    ]
    empty = pd.DataFrame()
    run = {"config": {"name": "sim"}, "environment": {}, "perturbations": [], "models": models}
    return ReportData(results=results, per_class=empty, confusion=empty, calibration=empty, run=run)


CELLS = [(f"p{c}", 1) for c in range(200)]


def _simulated(rng: np.random.Generator, means: np.ndarray, spreads: np.ndarray, seeds: int) -> pd.DataFrame:
    draws = rng.normal(means[:, None], spreads[:, None], (len(means), seeds)).clip(0, 1)
    return _results(draws[None], 10_000, ["m"], CELLS)


def test_noise_from_rule_keeps_its_false_positive_rate_and_finds_a_real_shift() -> None:
    rng = np.random.default_rng(1)
    flagged, found = [], []
    for _ in range(10):
        means, spreads = rng.uniform(0.3, 0.85, len(CELLS)), rng.uniform(0.005, 0.05, len(CELLS))
        noise = _report(_simulated(rng, means, spreads, 5))
        a = _report(_simulated(rng, means, spreads, 1))
        same = compare_runs(a, _report(_simulated(rng, means, spreads, 1)), noise=noise)
        assert same.rule == "noise-from"
        flagged += list(same.table["significant"].astype(bool))
        shifted = compare_runs(a, _report(_simulated(rng, means + 6 * spreads, spreads, 1)), noise=noise)
        found += list(shifted.table["significant"].astype(bool))
    assert 0.03 <= np.mean(flagged) <= 0.07, np.mean(flagged)
    assert np.mean(found) >= 0.7, np.mean(found)


def test_welch_rule_keeps_its_false_positive_rate_and_finds_a_real_shift() -> None:
    rng = np.random.default_rng(2)
    flagged, found = [], []
    for _ in range(5):
        means, spreads = rng.uniform(0.3, 0.85, len(CELLS)), rng.uniform(0.005, 0.05, len(CELLS))
        a = _report(_simulated(rng, means, spreads, 5))
        same = compare_runs(a, _report(_simulated(rng, means, spreads, 5)))
        assert same.rule == "seeds"
        flagged += list(same.table["significant"].astype(bool))
        found += list(compare_runs(a, _report(_simulated(rng, means + 3 * spreads, spreads, 5))).table["significant"])
    assert 0.03 <= np.mean(flagged) <= 0.07, np.mean(flagged)
    assert np.mean(found) >= 0.7, np.mean(found)


def _paired_reports(rng: np.random.Generator, shift: float, cells: int = 200) -> tuple[ReportData, ReportData]:
    """The same weights on both sides; B's evaluation flips 2 % of images each way, plus `shift` net."""
    images = 10_000
    correct_a = rng.random((cells, images)) < 0.8
    flip = rng.random((cells, images))
    correct_b = correct_a.copy()
    correct_b[(flip < 0.02) & correct_a] = False
    correct_b[(flip < 0.02 * 4 + shift * 5) & ~correct_a] = True  # 4x: a fifth of the images are wrong
    keys = [("m", 0, p, s) for p, s in CELLS[:cells]]
    reports = []
    for correct in (correct_a, correct_b):
        accuracies = correct.mean(1)[None, :, None]
        data = _report(_results(accuracies, images, ["m"], CELLS[:cells]), {("m", 0): "same"})
        data.outcomes = Outcomes(keys, correct)
        reports.append(data)
    return reports[0], reports[1]


def test_paired_rule_on_the_same_weights_is_exact_mcnemar_and_far_tighter() -> None:
    rng = np.random.default_rng(3)
    a, b = _paired_reports(rng, shift=0.0)
    same = compare_runs(a, b)
    assert same.rule == "paired"
    assert np.mean(same.table["significant"].astype(bool)) <= 0.07
    a, b = _paired_reports(rng, shift=0.01)
    shifted = compare_runs(a, b)
    assert np.mean(shifted.table["significant"].astype(bool)) >= 0.9, "a 1-point change is found on 10,000 images"
    # independent proportions would need about 1.96 * sqrt(2 * 0.8 * 0.2 / 10000) = 1.1 points to see it
    width = (shifted.table["difference_high"] - shifted.table["difference_low"]).median()
    assert width < 0.011
    b.run["models"][0]["weights_sha256"] = "other"
    assert compare_runs(a, b).rule == "none", "other weights, one seed a side: training noise is unknown"


def test_agreement_flags_a_run_outside_the_reference_spread() -> None:
    rng = np.random.default_rng(4)
    means, spreads = rng.uniform(0.3, 0.85, len(CELLS)), rng.uniform(0.01, 0.05, len(CELLS))
    reference = seed_mean(_simulated(rng, means, spreads, 5))
    reference = reference[["model", "perturbation", "severity", "parameter", "seeds", "accuracy", "accuracy_std"]]
    fresh = agreement_table(_simulated(rng, means, spreads, 1), reference)
    assert len(fresh) == len(CELLS) and agreement_verdict(fresh).agrees
    assert 0.9 <= fresh["inside"].mean() <= 1.0
    off = agreement_table(_simulated(rng, means + 4 * spreads, spreads, 1), reference)
    verdict = agreement_verdict(off)
    assert not verdict.agrees and verdict.outside > 0.3 * len(CELLS) and "does not agree" in verdict.summary
    exact = agreement_table(_results(reference["accuracy"].to_numpy()[None, :, None], 10_000, ["m"], CELLS), reference)
    assert exact["inside"].all(), "the reference's own means lie inside"


def test_prediction_interval_widens_with_fewer_reference_seeds() -> None:
    assert prediction_half_width(0.01, 5, 1) == pytest.approx(2.776445 * 0.01 * math.sqrt(1.2), rel=1e-5)
    assert prediction_half_width(0.01, 3, 1) > prediction_half_width(0.01, 5, 1)
    assert math.isnan(prediction_half_width(0.01, 1, 1))

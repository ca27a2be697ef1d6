"""Error consistency, orbit statistics and the worst-case curve against hand-computed cases; their figures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from robustbench_fmnist.evaluation.consistency import (
    MATRIX_COLUMNS,
    consistency_matrix,
    error_consistency,
    fooled_share_per_image,
    fooling_rate_per_point,
    fooling_rate_per_point_by_class,
    heatmap,
    mean_accuracy_over_points,
    orbit_consistency,
    worst_case_curve,
)
from robustbench_fmnist.evaluation.metrics import wilson_interval
from robustbench_fmnist.report.figures import plot_consistency_matrix, plot_fooling_heatmap, plot_worst_case_curves
from robustbench_fmnist.report.worst_case import seed_interval, worst_case_section
from robustbench_fmnist.statistics import accuracy_half_width


def _bools(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.bool)


# a: 6 of 10 right; b: 5 of 10 right, 3 of them among a's 6 (= 0.6 * 0.5 * 10): independent by construction
A = _bools(1, 1, 1, 1, 1, 1, 0, 0, 0, 0)
B = _bools(1, 1, 1, 0, 0, 0, 1, 1, 0, 0)


def test_identical_error_patterns_have_kappa_1() -> None:
    result = error_consistency(A, A)
    # c_obs 1, c_exp 0.6^2 + 0.4^2 = 0.52: kappa (1 - 0.52) / 0.48 = 1, in every resample too
    assert result["c_obs"] == 1.0 and result["c_exp"] == pytest.approx(0.52)
    assert result["kappa"] == 1.0 and result["kappa_low"] == 1.0 and result["kappa_high"] == 1.0
    assert result["accuracy_a"] == 0.6 and result["n_images"] == 10


def test_independent_errors_at_known_accuracies_have_kappa_0() -> None:
    result = error_consistency(A, B)
    # both right 3, both wrong 2: c_obs 0.5; c_exp 0.6 * 0.5 + 0.4 * 0.5 = 0.5
    assert result["c_obs"] == pytest.approx(0.5) and result["c_exp"] == pytest.approx(0.5)
    assert result["kappa"] == pytest.approx(0.0, abs=1e-12)
    assert result["accuracy_a"] == 0.6 and result["accuracy_b"] == 0.5
    assert result["kappa_low"] < 0 < result["kappa_high"]  # 10 images cannot rule out either sign


def test_opposite_error_patterns_have_negative_kappa() -> None:
    # p1 = p2 = 0.5 and never agreeing: c_obs 0, c_exp 0.5, kappa -0.5 / 0.5 = -1
    result = error_consistency(_bools(1, 1, 0, 0), _bools(0, 0, 1, 1))
    assert result["kappa"] == pytest.approx(-1.0)
    # a (6 right) against its complement (4 right): c_exp 0.6 * 0.4 + 0.4 * 0.6 = 0.48, kappa -0.48 / 0.52
    assert error_consistency(A, ~A)["kappa"] == pytest.approx(-0.48 / 0.52)


@pytest.mark.parametrize("value", [True, False])
def test_kappa_is_nan_when_both_models_are_all_right_or_all_wrong(value: bool) -> None:
    everything = torch.full((8,), value)
    result = error_consistency(everything, everything)
    assert result["c_exp"] == 1.0 and math.isnan(result["kappa"])
    assert math.isnan(result["kappa_low"]) and math.isnan(result["kappa_high"])
    # one all right, the other all wrong is defined: c_exp 0, c_obs 0, kappa 0
    assert error_consistency(everything, ~everything)["kappa"] == 0.0


def test_the_bootstrap_interval_is_seeded_and_narrows_with_more_images() -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(4000, generator=generator) < 0.8
    b = torch.where(torch.rand(4000, generator=generator) < 0.7, a, torch.rand(4000, generator=generator) < 0.8)
    first, again = error_consistency(a, b, seed=3), error_consistency(a, b, seed=3)
    assert first == again
    assert first["kappa_low"] < first["kappa"] < first["kappa_high"]
    small = error_consistency(a[:400], b[:400], seed=3)
    assert first["kappa_high"] - first["kappa_low"] < small["kappa_high"] - small["kappa_low"]


def test_the_bootstrap_matches_resampling_the_images() -> None:
    # the interval comes from multinomial 2x2 tables; resampling image indices must agree within noise
    generator = torch.Generator().manual_seed(1)
    a = torch.rand(500, generator=generator) < 0.7
    b = torch.where(torch.rand(500, generator=generator) < 0.5, a, torch.rand(500, generator=generator) < 0.7)
    rng = np.random.default_rng(0)
    kappas = []
    for _ in range(2000):
        index = torch.from_numpy(rng.integers(0, 500, 500))
        kappas.append(error_consistency(a[index], b[index], resamples=0)["kappa"])
    low, high = np.percentile(kappas, [2.5, 97.5])
    result = error_consistency(a, b, resamples=2000)
    assert result["kappa_low"] == pytest.approx(low, abs=0.02) and result["kappa_high"] == pytest.approx(high, abs=0.02)


def test_error_consistency_refuses_different_lengths_and_non_bool_tensors() -> None:
    with pytest.raises(ValueError, match="10 vs 4"):
        error_consistency(A, A[:4])
    with pytest.raises(ValueError, match="bool"):
        error_consistency(A.long(), A)


def test_consistency_matrix_has_one_row_per_pair_in_dict_order() -> None:
    matrix = consistency_matrix({"x": A, "y": B, "z": ~A, "w": A})
    assert list(matrix.columns) == MATRIX_COLUMNS and len(matrix) == 6
    assert list(zip(matrix.model_a, matrix.model_b, strict=True)) == [
        ("x", "y"), ("x", "z"), ("x", "w"), ("y", "z"), ("y", "w"), ("z", "w"),
    ]  # fmt: skip
    assert matrix.kappa.tolist() == pytest.approx([0.0, -0.48 / 0.52, 1.0, 0.0, 0.0, -0.48 / 0.52], abs=1e-12)
    assert consistency_matrix({"x": A}).empty


def test_consistency_matrix_refuses_models_on_different_images() -> None:
    with pytest.raises(ValueError, match="x 10, y 9") as raised:
        consistency_matrix({"x": A, "y": B[:9]})
    assert "\n" not in str(raised.value)


# 4 images at 3 points; labels 1, 1, 0, 0; 255: no prediction
PREDICTIONS = torch.tensor([[1, 1, 1], [1, 2, 1], [255, 255, 255], [3, 3, 3]], dtype=torch.uint8)
LABELS = torch.tensor([1, 1, 0, 0])
CLEAN = _bools(1, 1, 0, 1)


def test_orbit_consistency_counts_images_with_one_prediction_everywhere() -> None:
    # image 0 (always right) and image 3 (always wrong) are consistent; image 1 changes;
    # image 2 never has a prediction, which is not consistent
    assert orbit_consistency(PREDICTIONS) == 0.5
    partly = torch.tensor([[4, 4, 255]], dtype=torch.uint8)
    assert orbit_consistency(partly) == 0.0


def test_fooled_share_per_image_and_the_average_case() -> None:
    assert fooled_share_per_image(PREDICTIONS, LABELS).tolist() == pytest.approx([0.0, 1 / 3, 1.0, 1.0])
    # 2 of 12 (image 0 at 3 points, image 1 at 2) are right
    assert mean_accuracy_over_points(PREDICTIONS, LABELS) == pytest.approx(5 / 12)


def test_fooling_rate_per_point_over_images_right_clean() -> None:
    # images right clean: 0, 1, 3; point 1 fools images 1 and 3 -> 2/3; points 0 and 2 fool image 3 -> 1/3
    assert fooling_rate_per_point(PREDICTIONS, LABELS, CLEAN).tolist() == pytest.approx([1 / 3, 2 / 3, 1 / 3])
    none = fooling_rate_per_point(PREDICTIONS, LABELS, torch.zeros(4, dtype=torch.bool))
    assert none.shape == (3,) and torch.isnan(none).all()


def test_fooling_rate_per_point_by_class() -> None:
    rates = fooling_rate_per_point_by_class(PREDICTIONS, LABELS, CLEAN, classes=3)
    assert rates.shape == (3, 3)
    assert rates[0].tolist() == [1.0, 1.0, 1.0]  # class 0: image 3 only, wrong everywhere
    assert rates[1].tolist() == [0.0, 0.5, 0.0]  # class 1: images 0 and 1, image 1 fooled at point 1
    assert torch.isnan(rates[2]).all()  # no image of class 2
    with pytest.raises(ValueError, match=r"lie in 0\.\.0, got 0\.\.1"):
        fooling_rate_per_point_by_class(PREDICTIONS, LABELS, CLEAN, classes=1)


def test_heatmap_averages_the_other_dimensions_of_a_2x3x2_space() -> None:
    # point index = 6 * i + 2 * j + k over (2, 3, 2): rate = index
    rates = torch.arange(12, dtype=torch.float64)
    # keep (0, 1): mean over k of 6i + 2j + k = 6i + 2j + 0.5
    assert heatmap(rates, (2, 3, 2), (0, 1)).tolist() == [[0.5, 2.5, 4.5], [6.5, 8.5, 10.5]]
    # keep (1, 2): mean over i of 6i + 2j + k = 3 + 2j + k
    assert heatmap(rates, (2, 3, 2), (1, 2)).tolist() == [[3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]
    # keep (2, 0) is laid out k by i: mean over j of 6i + 2j + k = 6i + 2 + k
    assert heatmap(rates, (2, 3, 2), (2, 0)).tolist() == [[2.0, 8.0], [3.0, 9.0]]


def test_heatmap_is_a_nan_mean_and_refuses_a_wrong_grid() -> None:
    rates = torch.arange(12, dtype=torch.float64)
    rates[1] = math.nan  # point (0, 0, 1): cell (0, 0) keeps only point (0, 0, 0)
    rates[2:4] = math.nan  # both points of cell (0, 1)
    grid = heatmap(rates, (2, 3, 2), (0, 1))
    assert grid[0, 0] == 0.0 and math.isnan(grid[0, 1]) and grid[1, 2] == 10.5
    with pytest.raises(ValueError, match="12 rates"):
        heatmap(rates, (2, 3, 3), (0, 1))
    with pytest.raises(ValueError, match="two different dimensions"):
        heatmap(rates, (2, 3, 2), (1, 1))


RADII = [0.1, 0.5, math.inf, 0.0, math.nan]
RADIUS = torch.tensor(RADII)
RIGHT_CLEAN = _bools(1, 1, 1, 0, 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_worst_case_curve_exact_values(dtype: torch.dtype) -> None:
    # the budget is compared in the radii's precision: a float32 radius 0.1 is not above a budget of 0.1
    curve = worst_case_curve(torch.tensor(RADII, dtype=dtype), RIGHT_CLEAN, [0.0, 0.1, 0.3, 0.5, 1.0])
    assert list(curve.columns) == ["budget", "accuracy", "n_correct", "n_images", "accuracy_low", "accuracy_high"]
    # radius > budget among the 3 images right clean: 3 at 0, 2 at 0.1 (0.1 is not > 0.1), 2, 1 at 0.5, 1 (inf)
    assert curve.n_correct.tolist() == [3, 2, 2, 1, 1]
    assert curve.accuracy.tolist() == pytest.approx([0.6, 0.4, 0.4, 0.2, 0.2])
    assert (curve.n_images == 5).all()
    assert (curve.accuracy_low <= curve.accuracy).all() and (curve.accuracy <= curve.accuracy_high).all()


def test_worst_case_accuracy_never_rises_with_the_budget() -> None:
    generator = torch.Generator().manual_seed(0)
    radius = torch.rand(200, generator=generator)
    radius[::7] = math.inf
    right_clean = torch.rand(200, generator=generator) < 0.9
    curve = worst_case_curve(radius, right_clean, np.linspace(0, 1, 21).tolist())
    assert (curve.accuracy.diff().dropna() <= 0).all()
    assert curve.accuracy.iloc[0] <= right_clean.double().mean().item()
    assert curve.n_correct.iloc[-1] == int(right_clean[::7].sum())  # only the never fooled survive


def test_worst_case_curve_refuses_a_nan_radius_for_an_image_right_clean() -> None:
    with pytest.raises(ValueError, match="NaN fooling radius"):
        worst_case_curve(RADIUS, _bools(1, 1, 1, 0, 1), [0.5])


def _is_png(path: Path) -> bool:
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_worst_case_curves_figure(tmp_path: Path) -> None:
    rows = []
    for adversary in ("grid", "random"):
        for model in ("cnn", "mlp"):
            curve = worst_case_curve(RADIUS, RIGHT_CLEAN, [0.0, 0.5, 1.0])
            curve["budget_label"] = ["0", "±15°", "±30°"]
            rows.append(curve.assign(model=model, adversary=adversary))
    path = tmp_path / "figures" / "worst_case.png"
    plot_worst_case_curves(pd.concat(rows, ignore_index=True), path)
    assert _is_png(path)


def test_fooling_heatmap_figure(tmp_path: Path) -> None:
    grid = heatmap(torch.linspace(0, 1, 12), (2, 3, 2), (0, 1))
    grid[0, 0] = math.nan
    path = tmp_path / "heatmap.png"
    plot_fooling_heatmap(grid, [-15.0, 15.0], [-2.0, 0.0, 2.0], "rotation (°)", "translate x (px)", "cnn", path)
    assert _is_png(path)
    with pytest.raises(ValueError, match="row and"):
        plot_fooling_heatmap(grid, [0.0], [0.0, 1.0, 2.0], "r", "c", "t", tmp_path / "bad.png")


def test_consistency_matrix_figure(tmp_path: Path) -> None:
    path = tmp_path / "consistency.png"
    plot_consistency_matrix(consistency_matrix({"x": A, "y": B, "z": ~A}), path, "error consistency")
    assert _is_png(path)


def test_the_worst_case_tables_give_each_accuracy_the_harness_interval() -> None:
    """Over seeds: the mean with the t interval and the test-set term (statistics.accuracy_half_width); one seed:
    Wilson over the images; a search that does not measure a column leaves it blank."""
    per_seed = pd.Series([0.10, 0.14, 0.12])
    mean, low, high = seed_interval(per_seed, 10_000)
    half = accuracy_half_width(pd.Series([0.12]), pd.Series([0.02]), pd.Series([3]), pd.Series([10_000]))[0]
    assert mean == pytest.approx(0.12) and (low, high) == pytest.approx((0.12 - half, 0.12 + half))
    assert half > 4.303 * 0.02 / 3**0.5  # the seeds' t term (2 degrees of freedom) and the images' on top
    assert seed_interval(pd.Series([0.3]), 500)[1:] == pytest.approx(wilson_interval(150, 500))
    rows = pd.DataFrame(
        {
            "model": "m", "seed": [0, 1, 2, 0], "adversary": ["a", "a", "a", "r"], "search": ["grid"] * 3 + ["random"],
            "budget": 1.0, "accuracy": [0.10, 0.14, 0.12, 0.5], "n_images": 10_000, "accuracy_clean": 0.9,
            "accuracy_random_draw": 0.5, "accuracy_over_points": [0.4, 0.5, 0.6, None], "sample_images": 500,
            "orbit_consistency": [0.2, 0.2, 0.2, None],
        }
    )  # fmt: skip
    _, table = worst_case_section(rows)
    grid, random = table
    assert grid[5] == f"12.00 ({100 * (0.12 - half):.2f}–{100 * (0.12 + half):.2f})"
    assert grid[3].startswith("90.00 (89.") and grid[6].startswith("50.00 (")
    assert random[6] == "" and random[7] == "" and random[5].startswith("50.00 (49.")

"""Each metric against a hand-computed example (numbers worked out in the comments)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from robustbench_fmnist.evaluation.metrics import (
    area_under_curve,
    calibration_bins,
    confusion_matrix,
    corruption_errors,
    expected_calibration_error,
    flip_rate,
    mean_corruption_errors,
    negative_log_likelihood,
    per_class_accuracy,
    wilson_interval,
)


def test_wilson_interval_of_8_in_10() -> None:
    # p = 0.8, z^2 = 3.8415: centre (0.8 + 0.19207) / 1.38415 = 0.71674,
    # half 1.95996 * sqrt(0.016 + 0.0096037) / 1.38415 = 0.22658
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.49016, abs=1e-5) and high == pytest.approx(0.94332, abs=1e-5)


def test_wilson_interval_stays_inside_0_1_and_narrows_with_n() -> None:
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    low, high = wilson_interval(9151, 10_000)
    assert low < 0.9151 < high and high - low < 0.012
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_calibration_bins_and_ece_by_hand() -> None:
    # 15 bins of width 1/15: 0.95 -> bin 14, 0.55 -> bin 8, 0.3 -> bin 4 (upper edges inclusive)
    confidence = torch.tensor([0.95, 0.95, 0.55, 0.3])
    correct = torch.tensor([1, 0, 1, 0])
    bins = calibration_bins(confidence, correct)
    filled = bins[bins["count"] > 0]
    assert filled["bin"].tolist() == [4, 8, 14] and filled["count"].tolist() == [1, 1, 2]
    assert filled["accuracy"].tolist() == [0.0, 1.0, 0.5]
    # ECE = 1/4 * |0 - 0.3| + 1/4 * |1 - 0.55| + 2/4 * |0.5 - 0.95| = 0.075 + 0.1125 + 0.225
    assert expected_calibration_error(bins) == pytest.approx(0.4125)


def test_calibration_bin_edges_belong_to_the_lower_bin() -> None:
    bins = calibration_bins(torch.tensor([1 / 15, 2 / 15, 1.0, 0.0], dtype=torch.float64), torch.tensor([1, 1, 1, 1]))
    assert bins.loc[bins["count"] > 0, "bin"].tolist() == [0, 1, 14]
    assert int(bins.loc[0, "count"]) == 2  # 0 and exactly 1/15


def test_perfectly_calibrated_predictions_have_zero_ece() -> None:
    confidence = torch.full((10,), 0.7)
    correct = torch.tensor([1] * 7 + [0] * 3)
    assert expected_calibration_error(calibration_bins(confidence, correct)) == pytest.approx(0.0, abs=1e-6)


def test_negative_log_likelihood_by_hand() -> None:
    # (-ln 0.5 - ln 0.25) / 2 = 1.5 ln 2
    assert negative_log_likelihood(torch.tensor([0.5, 0.25])) == pytest.approx(1.5 * math.log(2))
    assert negative_log_likelihood(torch.tensor([0.0])) == pytest.approx(-math.log(1e-12))  # finite


def test_flip_rate_counts_changed_predictions() -> None:
    assert flip_rate(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 1, 1])) == 0.5
    assert flip_rate(torch.tensor([4, 4]), torch.tensor([4, 4])) == 0.0


def test_confusion_matrix_and_per_class_accuracy() -> None:
    confusion = confusion_matrix(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 0, 1, 1]), classes=3)
    assert confusion.tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 0]]
    assert per_class_accuracy(confusion) == ([2, 2, 0], [1, 1, 0])


def test_area_under_the_accuracy_severity_curve() -> None:
    # clean 0.9, then 0.8 and 0.6: ((0.9 + 0.8) / 2 + (0.8 + 0.6) / 2) / 2 = 0.775
    assert area_under_curve(0.9, [0.8, 0.6]) == pytest.approx(0.775)
    assert area_under_curve(0.9, [0.9, 0.9, 0.9]) == pytest.approx(0.9)


def test_corruption_error_and_its_mean_by_hand() -> None:
    # model a: errors 0.2 and 0.4 on "blur" (sum 0.6), clean error 0.1 (x2 severities = 0.2);
    # reference: 0.3 and 0.5 (sum 0.8), clean 0.1. CE = 0.6 / 0.8 = 0.75,
    # relative CE = (0.6 - 0.2) / (0.8 - 0.2) = 2/3. On "noise" a has CE 1.5, relative CE 2.
    summary = pd.DataFrame(
        {
            "model": ["a", "ref", "a", "ref"],
            "perturbation": ["blur", "blur", "noise", "noise"],
            "error_sum": [0.6, 0.8, 0.6, 0.4],
            "clean_error_sum": [0.2, 0.2, 0.2, 0.2],
        }
    )
    ce = corruption_errors(summary, "ref").set_index(["model", "perturbation"])
    assert ce.loc[("a", "blur"), "ce"] == pytest.approx(0.75)
    assert ce.loc[("a", "blur"), "relative_ce"] == pytest.approx(2 / 3)
    assert ce.loc[("a", "noise"), "relative_ce"] == pytest.approx(2.0)
    assert ce.loc[("ref", "noise"), "ce"] == pytest.approx(1.0)
    mce = mean_corruption_errors(ce.reset_index()).set_index("model")
    assert mce.loc["a", "mce"] == pytest.approx((0.75 + 1.5) / 2)
    assert mce.loc["a", "relative_mce"] == pytest.approx((2 / 3 + 2.0) / 2)
    assert mce.loc["ref", "mce"] == pytest.approx(1.0)


def test_relative_ce_is_nan_when_the_reference_loses_nothing() -> None:
    summary = pd.DataFrame(
        {
            "model": ["a", "ref"],
            "perturbation": ["flip", "flip"],
            "error_sum": [0.3, 0.1],
            "clean_error_sum": [0.1, 0.1],
        }
    )
    ce = corruption_errors(summary, "ref").set_index("model")
    assert math.isnan(ce.loc["a", "relative_ce"]) and ce.loc["a", "ce"] == pytest.approx(3.0)


def test_area_under_the_curve_follows_uneven_severities() -> None:
    # severities 1 and 5: (1 * (0.9 + 0.8) / 2 + 4 * (0.8 + 0.6) / 2) / 5 = (0.85 + 2.8) / 5
    assert area_under_curve(0.9, [0.8, 0.6], [1, 5]) == pytest.approx(0.73)


def test_ece_of_nothing_is_nan_and_nan_confidences_fall_in_no_bin() -> None:
    assert math.isnan(expected_calibration_error(calibration_bins(torch.tensor([]), torch.tensor([]))))
    bins = calibration_bins(torch.tensor([0.95, float("nan")]), torch.tensor([1, 0]))
    assert int(bins["count"].sum()) == 1

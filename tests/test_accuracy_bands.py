"""Accuracy is gated like speed: a short real training and evaluation must land inside committed bands."""

from __future__ import annotations

import pytest

from tests.accuracy_bands import BANDS_PATH, bands, cells, load_bands, measure
from tests.conftest import requires_real_data

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@requires_real_data
def test_short_training_and_sweep_stay_inside_the_committed_bands() -> None:
    committed = load_bands()
    measured = measure(seed=0)
    assert set(measured) == set(committed), (
        f"cells changed; regenerate {BANDS_PATH.name} (python -m tests.accuracy_bands)"
    )
    outside = {
        cell: f"{100 * value:.1f} % not in [{100 * committed[cell][0]:.1f}, {100 * committed[cell][1]:.1f}]"
        for cell, value in measured.items()
        if not committed[cell][0] <= value <= committed[cell][1]
    }
    assert not outside, f"accuracies outside their bands: {outside}"


def test_bands_cover_every_perturbation_and_widen_with_the_spread_between_seeds() -> None:
    committed = load_bands()
    assert {f"{c.perturbation}/{c.severity}" for c in cells()} == set(committed)
    assert all(0 <= low < high <= 1 for low, high in committed.values())
    made = bands([{"a/1": 0.50}, {"a/1": 0.52}, {"a/1": 0.54}])
    assert made["a/1"] == pytest.approx([0.50 - 0.02 - 0.04, 0.54 + 0.02 + 0.04])


def test_a_broken_perturbation_would_leave_its_band() -> None:
    """A no-op rotation scores the clean accuracy at its strongest severity: far outside its band."""
    committed = load_bands()
    clean_low = committed["clean/0"][0]
    strongest = max((c for c in committed if c.startswith("rotation/")), key=lambda c: int(c.split("/")[1]))
    assert committed[strongest][1] < clean_low

"""Accuracy is gated like speed: a short real training and evaluation must land inside committed bands."""

from __future__ import annotations

import pytest
import torch

from robustbench_fmnist.evaluation import sweep as evaluation
from tests.accuracy_bands import BANDS_PATH, bands, cells, evaluate, load_bands
from tests.conftest import SharedCheckpoint, requires_real_data

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def trained(one_epoch_baseline: SharedCheckpoint) -> torch.nn.Module:
    """`train(seed=0)`, the model the bands were recorded for, as the session trained it once for every test."""
    return one_epoch_baseline.model


@requires_real_data
def test_short_training_and_sweep_stay_inside_the_committed_bands(trained: torch.nn.Module) -> None:
    committed = load_bands()
    measured = evaluate(trained)
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


@requires_real_data
def test_a_broken_perturbation_leaves_its_band(trained: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same trained model, with rotation made a no-op: its strongest severity scores near clean, far out."""
    committed = load_bands()
    perturb = evaluation.perturb_cell
    monkeypatch.setattr(
        evaluation,
        "perturb_cell",
        lambda cell, images, **kw: images if cell.name == "rotation" else perturb(cell, images, **kw),
    )
    measured = evaluate(trained)
    rotation = [c for c in committed if c.startswith("rotation/")]
    outside = [c for c in rotation if not committed[c][0] <= measured[c] <= committed[c][1]]
    strongest = max(rotation, key=lambda c: int(c.split("/")[1]))
    assert strongest in outside and measured[strongest] == measured["clean/0"]

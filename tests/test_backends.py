"""The torch kernels against the albumentations reference.

Conventions matched on both sides (and stated in geometry.py / blur.py / digital.py):
bilinear sampling with a black border for warps (grid_sample align_corners=False ==
cv2.warpAffine INTER_LINEAR BORDER_CONSTANT 0); BORDER_REFLECT_101 for blurs; cv2's
INTER_AREA / INTER_NEAREST for pixelate; libjpeg's quality scaling for JPEG.
"""

from __future__ import annotations

import pytest
import torch

from robustbench_fmnist.data import load_fashion_mnist, to_float_images
from robustbench_fmnist.perturbations import PERTURBATIONS
from robustbench_fmnist.perturbations.albumentations_backend import ADAPTERS, apply_albumentations
from tests.conftest import SharedCheckpoint, requires_real_data, synthetic_split

PHOTOMETRIC = [n for n in PERTURBATIONS.names() if PERTURBATIONS.get(n).family == "lighting"]
GEOMETRIC = [n for n in PERTURBATIONS.names() if PERTURBATIONS.get(n).family == "viewpoint"]
EXACT_FILTERS = ["gaussian_blur", "motion_blur", "pixelate"]
DRAWN_BY_ALBUMENTATIONS = ["gaussian_noise", "impulse_noise", "elastic"]


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    raw, _ = synthetic_split(24, seed=5)
    return torch.from_numpy(raw).float().div(255).unsqueeze(1)


def _both(name: str, images: torch.Tensor, severity: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    entry = PERTURBATIONS.get(name)
    value = entry.parameter(severity)
    return entry.apply_value(images, value, seed=seed), apply_albumentations(entry, images, value, seed=seed)


def test_every_perturbation_but_shot_noise_has_an_albumentations_adapter() -> None:
    assert set(PERTURBATIONS.names()) - set(ADAPTERS) == {"shot_noise"}


def test_shot_noise_names_why_it_has_no_albumentations_backend(images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"no albumentations backend: .*gamma-2\.2"):
        apply_albumentations(PERTURBATIONS.get("shot_noise"), images, 12.0)


@pytest.mark.parametrize("name", PHOTOMETRIC + EXACT_FILTERS)
def test_photometric_and_filters_agree_within_one_level(name: str, images: torch.Tensor) -> None:
    for severity in range(1, PERTURBATIONS.get(name).max_severity + 1):
        ours, theirs = _both(name, images, severity)
        assert float((ours - theirs).abs().max()) <= 1 / 255, f"{name} severity {severity}"


@pytest.mark.parametrize("name", GEOMETRIC)
def test_warps_agree_pixel_by_pixel(name: str, images: torch.Tensor) -> None:
    for severity in range(1, PERTURBATIONS.get(name).max_severity + 1):
        ours, theirs = _both(name, images, severity, seed=3)
        assert float((ours - theirs).abs().max()) < 1e-4, f"{name} severity {severity}"


def test_jpeg_matches_libjpeg_on_almost_every_pixel(images: torch.Tensor) -> None:
    for severity in range(1, 6):
        ours, theirs = _both("jpeg", images, severity)
        off = (ours - theirs).abs() > 1 / 255 + 1e-6
        # libjpeg's integer DCT rounds differently from the exact one on a few pixels
        assert float(off.float().mean()) < 0.03, f"severity {severity}"


@pytest.mark.parametrize("name", DRAWN_BY_ALBUMENTATIONS)
def test_noise_and_elastic_agree_in_distribution(name: str) -> None:
    raw, _ = synthetic_split(200, seed=1)
    images = torch.from_numpy(raw).float().div(255).unsqueeze(1)
    for severity in (1, 5):
        ours, theirs = _both(name, images, severity, seed=2)
        change_ours = float((ours - images).abs().mean())
        change_theirs = float((theirs - images).abs().mean())
        assert change_ours == pytest.approx(change_theirs, rel=0.1), f"{name} severity {severity}"
        assert not torch.equal(ours, theirs)  # drawn independently: same law, different draws


def test_albumentations_backend_keeps_the_contract(images: torch.Tensor) -> None:
    entry = PERTURBATIONS.get("rotation")
    before = images.clone()
    out = apply_albumentations(entry, images.double(), 30.0, seed=1)
    assert torch.equal(images, before) and out.dtype == torch.float64
    whole = apply_albumentations(entry, images, 30.0, seed=1)
    single = apply_albumentations(entry, images[5:6], 30.0, seed=1, indices=torch.tensor([5]))
    torch.testing.assert_close(single, whole[5:6])
    assert torch.equal(apply_albumentations(entry, images, 0.0), images)


@pytest.mark.integration
@pytest.mark.slow
@requires_real_data
def test_baseline_accuracy_on_both_backends_differs_by_at_most_0_3_points(one_epoch_baseline: SharedCheckpoint) -> None:
    """The issue's acceptance test: a baseline CNN (one epoch of its recipe) sees both copies of the test set alike."""
    data = load_fashion_mnist()
    model = one_epoch_baseline.model
    images = to_float_images(data.test.images, "cpu")
    labels = data.test.labels

    def accuracy(batch: torch.Tensor) -> float:
        with torch.inference_mode():
            return float((model(batch).argmax(1) == labels).float().mean())

    gaps = {}
    for name in [*GEOMETRIC, "jpeg"]:
        entry = PERTURBATIONS.get(name)
        for severity in sorted({1, entry.max_severity}):
            ours, theirs = _both(name, images, severity, seed=0)
            gaps[(name, severity)] = abs(accuracy(ours) - accuracy(theirs))
    worst = max(gaps, key=gaps.get)
    assert gaps[worst] <= 0.003, f"largest gap {100 * gaps[worst]:.2f} points at {worst}"

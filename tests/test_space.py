"""Perturbation spaces: points enumerated as documented, and a point equal to a suite cell gives its images exactly."""

from __future__ import annotations

import pytest
import torch

from robustbench_fmnist.perturbations import PERTURBATIONS
from robustbench_fmnist.perturbations.geometry import rotation_angles, translation_offsets
from robustbench_fmnist.perturbations.space import Space, axis_entry, perturb_at

SPATIAL = Space((("rotation", -30, 30, 31), ("translate", -3, 3, 5)))
LIGHT = Space((("brightness", -0.5, 0.5, 21), ("contrast", 0.5, 1.5, 11)))


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def _index(space: Space, **values: float) -> int:
    hit = torch.ones(space.size, dtype=torch.bool)
    for dim, value in values.items():
        hit &= (space.points[:, space.dims.index(dim)] - value).abs() < 1e-12
    (index,) = hit.nonzero().flatten().tolist()
    return index


def test_points_are_the_product_of_the_axes_row_major() -> None:
    assert SPATIAL.size == 31 * 5 * 5 and SPATIAL.dims == ("rotation", "translate_x", "translate_y")
    assert SPATIAL.points[0].tolist() == [-30, -3, -3] and SPATIAL.points[1].tolist() == [-30, -3, -1.5]
    assert SPATIAL.describe(SPATIAL.identity_index) == "rotation=0 translate_x=0 translate_y=0"
    assert LIGHT.grids[0].tolist()[10] == 0.0 and LIGHT.grids[0].tolist()[12] == 0.1  # exact, not 0.1000000003
    # the budget's radius: a share of each axis's reach, the largest over the dimensions
    assert float(SPATIAL.radius[_index(SPATIAL, rotation=10, translate_x=0, translate_y=1.5)]) == pytest.approx(0.5)
    assert float(LIGHT.radius[_index(LIGHT, brightness=0.1, contrast=0.6)]) == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("space", "point", "cell"),
    [
        (LIGHT, {"brightness": 0.2, "contrast": 1.0}, ("brightness_up", 0.2)),
        (LIGHT, {"brightness": -0.3, "contrast": 1.0}, ("brightness_down", -0.3)),
        (LIGHT, {"brightness": 0.0, "contrast": 0.5}, ("contrast_down", 0.5)),
        (Space((("gamma", 0.5, 2.0, 4),)), {"gamma": 1.5}, ("gamma_up", 1.5)),
    ],
)
def test_a_point_equal_to_a_suite_cell_gives_its_images_bit_for_bit(
    images: torch.Tensor, space: Space, point: dict[str, float], cell: tuple[str, float]
) -> None:
    name, value = cell
    expected = PERTURBATIONS.get(name).apply_value(images, value)
    assert torch.equal(perturb_at(images, space, space.points[_index(space, **point)]), expected)


def test_rotation_and_translation_points_give_the_suite_cells_images_per_image(images: torch.Tensor) -> None:
    """The suite draws each image's direction; the space's point with that direction gives the same image."""
    rotation = PERTURBATIONS.get("rotation")
    angles = rotation_angles(15.0, rotation.random_draws(len(images), 15.0))
    space = Space((("rotation", -30, 30, 5),))
    assert torch.equal(perturb_at(images, space, angles.view(-1, 1)), rotation.apply_value(images, 15.0))
    translation = PERTURBATIONS.get("translation")
    offsets = translation_offsets(3.0, translation.random_draws(len(images), 3.0))
    values = torch.stack([offsets["translate_x"], offsets["translate_y"]], 1)
    space = Space((("translate", -3, 3, 7),))
    assert torch.equal(perturb_at(images, space, values), translation.apply_value(images, 3.0))


def test_a_perturbation_with_a_continuous_parameter_is_an_axis(images: torch.Tensor) -> None:
    space = Space((("gaussian_noise", 0.0, 0.2, 5),))
    expected = PERTURBATIONS.get("gaussian_noise").apply_value(images, 0.1, seed=3)
    assert torch.equal(perturb_at(images, space, space.points[2], seed=3), expected)
    with pytest.raises(ValueError, match="unknown axis 'rotaton'; did you mean 'rotation'"):
        axis_entry("rotaton")
    with pytest.raises(ValueError, match="continuous parameter"):
        axis_entry("turn")  # quarter turns only: no axis


def test_the_identity_point_leaves_images_unchanged_and_inputs_untouched(images: torch.Tensor) -> None:
    before = images.clone()
    for space in (SPATIAL, LIGHT):
        assert torch.equal(perturb_at(images, space, space.points[space.identity_index]), images)
    assert torch.equal(images, before)

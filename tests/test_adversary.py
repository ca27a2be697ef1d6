"""The worst case per image: the searches' per-image ordering, the grid against brute force, what is stored."""

from __future__ import annotations

import pytest
import torch

from robustbench_fmnist.evaluation.adversary import NONE, Search, budget_level, draws, search_space
from robustbench_fmnist.evaluation.inference import prepare_for_inference
from robustbench_fmnist.models import create_model
from robustbench_fmnist.perturbations.space import Space, perturb_at

SPACE = Space((("rotation", -30, 30, 7), ("translate", -2, 2, 3)))
LIGHT = Space((("brightness", -0.4, 0.4, 5), ("contrast", 0.5, 1.5, 3)))


@pytest.fixture(scope="module")
def setup() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """An untrained tiny model and images it labels itself: every image right on the clean image, many fooled."""
    torch.manual_seed(0)
    model = create_model("baseline_cnn_tiny").eval()
    images = torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        labels = model(images).argmax(1)
    return model, images, labels


def _correct(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, space: Space, search: Search):
    prepared = prepare_for_inference(model, torch.device("cpu"), compile="never")
    out = search_space(prepared, images, labels, space, search, name="m", seed=3, batch_size=128, show_progress=False)
    return (out.clean_prediction.long() == labels) & (out.fooling_point == NONE), out


@pytest.mark.parametrize("space", [SPACE, LIGHT], ids=["spatial", "light"])
def test_grid_le_worst_of_k_le_random_le_clean_per_image(setup: tuple, space: Space) -> None:
    model, images, labels = setup
    random, _ = _correct(model, images, labels, space, Search("random"))
    worst_of_k, _ = _correct(model, images, labels, space, Search("worst_of_k", k=5))
    grid, out = _correct(model, images, labels, space, Search("grid", images=30))
    clean = out.clean_prediction.long() == labels
    assert bool((grid <= worst_of_k).all() and (worst_of_k <= random).all() and (random <= clean).all())
    assert grid.sum() < worst_of_k.sum() < random.sum() < clean.sum(), "each search finds more than the weaker one"


@pytest.mark.parametrize("space", [SPACE, LIGHT], ids=["spatial", "light"])
def test_the_grid_with_early_exits_finds_what_brute_force_finds(setup: tuple, space: Space) -> None:
    """Every image at every point: right at all of them exactly where the grid search says so, and the grid's first
    fooling point lies in the smallest budget level that fools the image."""
    model, images, labels = setup
    grid, out = _correct(model, images, labels, space, Search("grid", images=30))
    wrong = torch.zeros(len(labels), space.size, dtype=torch.bool)
    with torch.no_grad():
        for point in range(space.size):
            wrong[:, point] = model(perturb_at(images, space, space.points[point])).argmax(1) != labels
    assert torch.equal(grid, ~wrong.any(1))
    fooled = out.fooling_point >= 0
    level = budget_level(space).double()
    smallest = torch.where(wrong, level.unsqueeze(0), torch.tensor(float("inf"))).min(1).values
    assert torch.equal(level[out.fooling_point[fooled].long()], smallest[fooled]), "found in the smallest budget"
    assert out.forward_passes < len(labels) * (space.size + 2), "early exits spend fewer passes than brute force"
    assert out.sample_predictions.shape == (30, space.size)
    assert torch.equal(
        out.sample_predictions.long() != labels[out.sample_indices].unsqueeze(1), wrong[out.sample_indices]
    )


def test_draws_are_grid_points_shared_by_every_search_over_a_space() -> None:
    indices = torch.arange(100)
    first = draws(SPACE, 100, 5, seed=0, indices=indices)
    assert first.shape == (100, 5) and int(first.min()) >= 0 and int(first.max()) < SPACE.size
    assert torch.equal(draws(SPACE, 100, 1, seed=0, indices=indices)[:, 0], first[:, 0]), "random = draw 0"
    assert not torch.equal(draws(SPACE, 100, 1, seed=1, indices=indices), first[:, :1]), "the seed changes them"


def test_the_gradient_search_finds_more_than_the_random_draw(setup: tuple) -> None:
    model, images, labels = setup
    random, _ = _correct(model, images, labels, LIGHT, Search("random"))
    gradient, out = _correct(model, images, labels, LIGHT, Search("gradient", steps=5, restarts=2))
    assert bool((gradient <= random).all()) and gradient.sum() < random.sum()
    assert out.found_values.shape == (len(labels), 2)
    low, high = LIGHT.points.min(0).values.float(), LIGHT.points.max(0).values.float()
    assert bool(((out.found_values >= low - 1e-6) & (out.found_values <= high + 1e-6)).all()), "inside the space"

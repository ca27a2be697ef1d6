"""Training over a space of transformations: a random point per image, or the worst of k under the model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from robustbench_fmnist.config import TrainRecipe, parse_config
from robustbench_fmnist.data import Split
from robustbench_fmnist.models import create_model
from robustbench_fmnist.orchestration.experiment import run_experiment
from robustbench_fmnist.perturbations.space import perturb_at
from robustbench_fmnist.training.augmentation import (
    AUGMENTATIONS,
    build_augmentation,
    build_batch_augmentation,
    cell_exposure,
    space_draws,
    space_of,
    training_exposure,
)
from robustbench_fmnist.training.loop import train_model
from tests.conftest import synthetic_split

CPU = torch.device("cpu")
SPATIAL = {"rotation": [-30, 30, 7], "translate": [-2, 2, 3]}


def _split(count: int = 192) -> Split:
    images, labels = synthetic_split(count, 4)
    return Split(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))


def _trained(augment: dict[str, Any] | None, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = create_model("baseline_cnn_tiny")
    recipe = TrainRecipe(epochs=2, batch_size=64, precision="float32", robust_augment=augment)
    train_model(model, _split(), recipe, seed=seed, device=CPU, name="tiny")
    return model.state_dict()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_worst_of_k_with_k_1_trains_exactly_as_random_point_with_the_same_seed() -> None:
    random_point = _trained({"method": "random_point", "space": SPATIAL})
    assert _same(_trained({"method": "worst_of_k", "space": SPATIAL, "k": 1}), random_point)
    assert not _same(_trained({"method": "worst_of_k", "space": SPATIAL, "k": 4}), random_point)
    assert not _same(_trained(None), random_point), "the space changes what the model sees"
    assert not _same(_trained({"method": "random_point", "space": SPATIAL}, seed=1), random_point)


def test_worst_of_k_trains_each_image_at_the_draw_of_highest_loss_under_the_current_model() -> None:
    torch.manual_seed(0)
    model = create_model("baseline_cnn_tiny").train()
    spec = TrainRecipe(robust_augment={"method": "worst_of_k", "space": SPATIAL, "k": 5}).robust_augment
    augment = build_batch_augmentation(TrainRecipe(robust_augment=spec))
    split = _split(48)
    images, labels, indices = split.images.float().div(255).unsqueeze(1), split.labels, torch.arange(100, 148)
    chosen = augment(model, images, labels, indices, 3, 2)
    assert model.training, "the model is left in training mode"
    space = space_of(spec)
    draws = space_draws(space, 3, 2, indices, 5)
    model.eval()
    with torch.no_grad():
        copies = [perturb_at(images, space, space.points[draws[:, j]]) for j in range(5)]
        losses = torch.stack([F.cross_entropy(model(c), labels, reduction="none") for c in copies])
    worst = losses.argmax(0)
    expected = torch.stack([copies[int(worst[i])][i] for i in range(len(images))])
    torch.testing.assert_close(chosen, expected)
    assert len(set(worst.tolist())) > 1, "the worst draw differs between images"


def test_the_draws_are_keyed_by_seed_epoch_and_image_so_any_batching_gives_the_same() -> None:
    space = space_of(TrainRecipe(robust_augment={"method": "random_point", "space": SPATIAL}).robust_augment)
    indices = torch.arange(1000, 1064)
    whole = space_draws(space, 5, 1, indices, 10)
    assert torch.equal(torch.cat([space_draws(space, 5, 1, indices[i : i + 16], 10) for i in range(0, 64, 16)]), whole)
    assert not torch.equal(space_draws(space, 5, 2, indices, 10), whole)
    assert torch.equal(space_draws(space, 5, 1, indices, 1), whole[:, :1]), "the first draw is random_point's"
    assert int(whole.max()) < space.size and len(whole.unique()) > space.size // 2


def test_space_trainings_run_per_batch_and_say_which_shifts_they_performed() -> None:
    for method in ("random_point", "worst_of_k"):
        assert AUGMENTATIONS.get(method).per_batch
        recipe = TrainRecipe(robust_augment={"method": method, "space": SPATIAL})
        assert build_augmentation(recipe) is None and build_batch_augmentation(recipe) is not None
    spatial = training_exposure(TrainRecipe(robust_augment={"method": "worst_of_k", "space": SPATIAL}))
    assert spatial == {"rotation": "seen", "translation": "seen", "viewpoint": "partly seen"}
    darker = training_exposure(
        TrainRecipe(
            robust_augment={"method": "random_point", "space": {"brightness": [-0.3, 0, 4], "scale": [1, 1.5, 3]}}
        )
    )
    assert darker == {
        "brightness_down": "seen",
        "lighting": "partly seen",
        "viewpoint": "partly seen",
        "zoom_in": "seen",
    }


@pytest.mark.parametrize(
    ("augment", "message"),
    [
        ({"method": "random_point", "space": SPATIAL, "k": 3}, "only method worst_of_k takes k"),
        ({"method": "worst_of_k", "space": SPATIAL, "k": 0}, "greater than or equal to 1"),
        ({"method": "worst_of_k", "space": {}}, "empty; name at least one axis"),
    ],
)
def test_a_bad_space_training_is_refused_by_the_recipe(augment: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainRecipe(robust_augment=augment)


def test_a_space_training_sees_the_cells_inside_its_range_and_not_those_beyond() -> None:
    recipe = TrainRecipe(
        robust_augment={"method": "worst_of_k", "space": {**SPATIAL, "scale": [1, 1.3, 3], "brightness": [-0.3, 0, 4]}}
    )
    seen = {
        (p, v): cell_exposure(recipe, p, v)
        for p, v in [("rotation", 15), ("rotation", 30), ("rotation", 45), ("translation", 2), ("translation", 3),
                     ("shear", 10), ("zoom_in", 1.15), ("zoom_in", 1.5), ("zoom_out", 0.85), ("brightness_down", -0.2),
                     ("brightness_up", 0.1), ("viewpoint", 0.4)]
    }  # fmt: skip
    assert seen == {
        ("rotation", 15): "seen", ("rotation", 30): "seen", ("rotation", 45): "held out", ("translation", 2): "seen",
        ("translation", 3): "held out", ("shear", 10): "held out", ("zoom_in", 1.15): "seen",
        ("zoom_in", 1.5): "held out", ("zoom_out", 0.85): "held out", ("brightness_down", -0.2): "seen",
        ("brightness_up", 0.1): "held out", ("viewpoint", 0.4): None,
    }  # fmt: skip
    one_sided = TrainRecipe(
        robust_augment={"method": "random_point", "space": {"rotation": [0, 30, 4], "shear": [-20, 20, 5]}}
    )
    assert cell_exposure(one_sided, "rotation", 15) == "partly seen", "the cell turns half its images the other way"
    assert cell_exposure(one_sided, "shear", 10) == "partly seen", "the cell shears half its images along y"
    suite = TrainRecipe(robust_augment={"method": "suite", "perturbations": ["rotation"]})
    assert cell_exposure(suite, "rotation", 75) is None, "other recipes: the perturbation's status at any strength"
    rotations = {"method": "worst_of_k", "space": {"rotation": [-30, 30, 7]}}
    cropped = TrainRecipe(augment="flip_crop", robust_augment=rotations)
    assert cell_exposure(cropped, "translation", 3) is None, "the recipe's crops shift it: not held out"
    assert training_exposure(cropped)["translation"] == "seen"


@pytest.mark.slow
def test_results_mark_each_cell_of_a_space_trained_model_by_its_strength(tiny_experiment: dict[str, Any]) -> None:
    tiny_experiment["models"] = [
        {"name": "baseline_cnn_tiny_turned", "architecture": "baseline_cnn_tiny",
         "train": {"epochs": 1, "robust_augment": {"method": "random_point", "space": {"rotation": [-30, 30, 7]}}}},
    ]  # fmt: skip
    tiny_experiment["perturbations"] = [{"name": "rotation", "severities": [1, 2, 3]}, "brightness_up"]
    folder = run_experiment(parse_config(tiny_experiment))
    results = pd.read_csv(folder / "results.csv", keep_default_na=False).set_index(["perturbation", "severity"])
    marks = results["in_training"]
    assert (marks[("rotation", 1)], marks[("rotation", 2)], marks[("rotation", 3)]) == ("seen", "seen", "held out")
    assert marks[("brightness_up", 1)] == "held out" and marks[("clean", 0)] == ""

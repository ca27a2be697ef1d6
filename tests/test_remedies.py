"""Remedies: test-time adaptation (bn, tent), robust-training augmentation, and the seen/held-out report."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageOps
from torch import nn

from robustbench_fmnist.config import BatchNormAdaptation, TentAdaptation, TrainRecipe, TtaAdaptation, load_config
from robustbench_fmnist.data import Split
from robustbench_fmnist.evaluation.adaptation import (
    AdaptationSettings,
    batch_norm_predict,
    configure_tent,
    entropy,
    not_applicable,
    reestimate_batch_norm,
    tent_predict,
    tta_predict,
    tta_space,
)
from robustbench_fmnist.evaluation.cells import sweep_cells
from robustbench_fmnist.evaluation.sweep import evaluate_cells
from robustbench_fmnist.models import create_model
from robustbench_fmnist.orchestration.experiment import run_experiment
from robustbench_fmnist.perturbations.space import perturb_at
from robustbench_fmnist.report.bundle import read_data
from robustbench_fmnist.report.remedies import gap_closed_table
from robustbench_fmnist.training.augmentation import (
    HELD_OUT,
    PARTLY,
    SEEN,
    augmentation_random,
    autocontrast,
    build_augmentation,
    equalize,
    jensen_shannon,
    posterize,
    solarize,
    training_exposure,
)
from robustbench_fmnist.training.loop import train_model

CPU = torch.device("cpu")


def _settings(**bn: Any) -> AdaptationSettings:
    return AdaptationSettings(BatchNormAdaptation(**bn), TentAdaptation(), batch_size=64)


class OneNorm(nn.Module):
    """A fixed 1x1 conv into one BatchNorm layer: its input statistics are known in closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1)
        self.norm = nn.BatchNorm2d(3)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 28 * 28, 10))
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -2.0, 0.5]).view(3, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
            self.norm.running_mean.copy_(torch.tensor([5.0, 6.0, 7.0]))
            self.norm.running_var.copy_(torch.tensor([2.0, 3.0, 4.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.conv(x)))


def _shifted_images(count: int = 300) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return (torch.rand(count, 1, 28, 28, generator=generator) * 0.5 + 0.3).clamp(0, 1)


def _conv_statistics(model: OneNorm, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        features = model.conv(images).double()
    return features.mean((0, 2, 3)), features.var((0, 2, 3), correction=1)


@pytest.mark.parametrize("batch_size", [7, 64, 1000])
def test_bn_recovers_the_shifted_statistics_exactly_whatever_the_batch_size(batch_size: int) -> None:
    model = OneNorm().eval()
    images = _shifted_images()
    adapted = reestimate_batch_norm(model, images, prior=0.0, batch_size=batch_size)
    mean, variance = _conv_statistics(model, images)
    assert torch.allclose(adapted.norm.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
    assert torch.allclose(adapted.norm.running_var.double(), variance, rtol=1e-5, atol=1e-6)
    assert torch.equal(model.norm.running_mean, torch.tensor([5.0, 6.0, 7.0])), "the caller's model is untouched"
    assert not adapted.norm.training and adapted.norm.momentum == model.norm.momentum


def test_bn_prior_mixes_training_and_test_statistics_as_schneider_et_al() -> None:
    model = OneNorm().eval()
    images = _shifted_images(300)
    adapted = reestimate_batch_norm(model, images, prior=100.0, batch_size=64)
    mean, variance = _conv_statistics(model, images)
    share = 300 / (100 + 300)
    expected_mean = (1 - share) * torch.tensor([5.0, 6.0, 7.0]).double() + share * mean
    expected_var = (1 - share) * torch.tensor([2.0, 3.0, 4.0]).double() + share * variance
    assert torch.allclose(adapted.norm.running_mean.double(), expected_mean, rtol=1e-5)
    assert torch.allclose(adapted.norm.running_var.double(), expected_var, rtol=1e-5)


def test_bn_scores_each_half_with_statistics_of_the_other_half_unless_transductive() -> None:
    model = OneNorm().eval()
    images = torch.cat([_shifted_images(200), _shifted_images(200) * 0.3])  # two halves, different statistics
    logits = batch_norm_predict(model, images, _settings())
    with torch.no_grad():
        first = reestimate_batch_norm(model, images[200:], prior=0.0, batch_size=64)(images[:200])
        second = reestimate_batch_norm(model, images[:200], prior=0.0, batch_size=64)(images[200:])
        own = reestimate_batch_norm(model, images, prior=0.0, batch_size=64)(images)
    assert torch.allclose(logits, torch.cat([first, second]), atol=1e-4)
    assert torch.allclose(batch_norm_predict(model, images, _settings(transductive=True)), own, atol=1e-4)
    limited = batch_norm_predict(model, images, _settings(images=50))
    with torch.no_grad():
        expected = reestimate_batch_norm(model, images[200:250], prior=0.0, batch_size=64)(images[:200])
    assert torch.allclose(limited[:200], expected, atol=1e-4), "images: N takes the first N of the other half"


def _trained_tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model("deep_cnn_tiny")
    images, labels = _learnable(600)
    recipe = TrainRecipe(epochs=2, batch_size=64, lr=3e-3, precision="float32")
    train_model(model, Split(images, labels), recipe, seed=seed, device=CPU, name="tiny")
    return model.eval()


def _learnable(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    from tests.conftest import synthetic_split

    images, labels = synthetic_split(count, 3)
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def test_tent_lowers_the_entropy_of_a_batch_it_adapts_on() -> None:
    model = _trained_tiny()
    images = _learnable(128)[0].float().div(255).unsqueeze(1) * 0.4 + 0.5  # a lighting shift
    settings = AdaptationSettings(BatchNormAdaptation(), TentAdaptation(lr=1e-2, batch_size=128))
    repeated = images.repeat(8, 1, 1, 1)  # the same batch eight times: each pass sees the updated affines
    logits = tent_predict(model, repeated, settings)
    per_pass = entropy(logits).view(8, 128).mean(1)
    assert per_pass[-1] < per_pass[0] - 1e-3, per_pass
    adapted, parameters = configure_tent(model)
    assert parameters and all(p.requires_grad for p in parameters)
    assert sum(p.requires_grad for p in adapted.parameters()) == len(parameters), "only the norm affines train"


@pytest.mark.parametrize("adaptation", ["bn", "tent"])
def test_adapted_cells_do_not_leak_into_each_other_nor_into_the_model(adaptation: str) -> None:
    model = _trained_tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = _learnable(256)[0].float().div(255).unsqueeze(1)
    labels = _learnable(256)[1]
    both = sweep_cells([("brightness_up", [3]), ("rotation", [2])])
    alone = [both[0], both[2]]
    kwargs = {"device": CPU, "batch_size": 64, "adaptation": adaptation}
    after_a, outputs_a = evaluate_cells(model, "m", images, labels, both, **kwargs)
    only_b, outputs_b = evaluate_cells(model, "m", images, labels, alone, **kwargs)
    assert after_a[2].n_correct == only_b[1].n_correct
    assert torch.equal(outputs_a[both[2]].confidence, outputs_b[alone[1]].confidence)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert after_a[0].adaptation == adaptation


def test_tta_with_one_copy_at_the_identity_is_the_plain_evaluation() -> None:
    model = _trained_tiny()
    images, labels = _learnable(256)[0].float().div(255).unsqueeze(1), _learnable(256)[1]
    cells = sweep_cells([("brightness_up", [3]), ("rotation", [2])])
    one_copy = AdaptationSettings(BatchNormAdaptation(), TentAdaptation(), TtaAdaptation(space={"rotation": [0, 0, 1]}))
    kwargs = {"device": CPU, "batch_size": 64, "compile": "never"}
    plain, plain_outputs = evaluate_cells(model, "m", images, labels, cells, **kwargs)
    tta, tta_outputs = evaluate_cells(
        model, "m", images, labels, cells, adaptation="tta", adaptation_settings=one_copy, **kwargs
    )
    for cell in cells:
        assert torch.equal(tta_outputs[cell].predictions, plain_outputs[cell].predictions)
        torch.testing.assert_close(tta_outputs[cell].confidence, plain_outputs[cell].confidence)
    assert [r.n_correct for r in tta] == [r.n_correct for r in plain] and tta[0].adaptation == "tta"


def test_tta_averages_the_logits_of_a_copy_at_every_point_of_its_space() -> None:
    model = _trained_tiny()
    images = _learnable(64)[0].float().div(255).unsqueeze(1)
    config = TtaAdaptation(space={"rotation": [-20, 20, 3], "translate": [-1, 1, 2]})
    space = tta_space(config)
    assert config.copies == space.size == 12
    with torch.no_grad():
        expected = torch.stack([model(perturb_at(images, space, values)) for values in space.points]).mean(0)
        copies = [perturb_at(images, space, values) for values in space.points]
        logits = tta_predict(model, images, AdaptationSettings(BatchNormAdaptation(), TentAdaptation(), config))
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits, model(images))
    assert not torch.equal(copies[0], copies[-1])  # the copies differ: turned and shifted


def test_a_model_without_normalisation_is_not_applicable_not_a_copy_of_none() -> None:
    assert (
        not_applicable("bn", create_model("baseline_cnn_tiny")) == "not applicable: the model has no BatchNorm layers"
    )
    assert not_applicable("tent", create_model("baseline_cnn_tiny")).endswith("no normalisation layers")
    assert not_applicable("bn", create_model("deep_cnn_tiny")) is None
    assert not_applicable("none", create_model("baseline_cnn_tiny")) is None


# ---- robust training ----

SPECS = [
    {"method": "suite", "perturbations": ["brightness_up", "rotation", "gaussian_noise"], "severities": [1, 5]},
    {"method": "augmix"},
    {"method": "augmix", "jsd": True, "operations": ["equalize", "rotate", "shear", "translate", "solarize"]},
    {"method": "trivialaugment"},
    {"method": "randaugment", "num_ops": 2, "magnitude": 9},
    {"method": "gaussian_noise", "sigma": 0.2, "p": 0.5},
]


def _train_images(count: int = 96) -> torch.Tensor:
    return _learnable(count)[0].float().div(255).unsqueeze(1)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s["method"] + ("+jsd" if s.get("jsd") else ""))
def test_augmentation_is_deterministic_for_a_seed_and_independent_of_the_batch_size(spec: dict[str, Any]) -> None:
    recipe = TrainRecipe(robust_augment=spec)
    augment = build_augmentation(recipe)
    images = _train_images()
    indices = torch.arange(100, 196)
    method = recipe.robust_augment.method
    whole = augment(images, augmentation_random(7, method, 1, indices))
    parts = [augment(images[i : i + 32], augmentation_random(7, method, 1, indices[i : i + 32])) for i in (0, 32, 64)]
    for view, whole_view in enumerate(whole):
        assert torch.equal(whole_view, torch.cat([p[view] for p in parts]))
        assert whole_view.shape == images.shape and whole_view.min() >= 0 and whole_view.max() <= 1
    again = augment(images, augmentation_random(7, method, 1, indices))
    assert all(torch.equal(a, b) for a, b in zip(whole, again, strict=True))
    other_epoch = augment(images, augmentation_random(7, method, 2, indices))
    assert not torch.equal(whole[0], other_epoch[0]), "each epoch draws afresh"
    assert not torch.equal(whole[0], images), "it changes something"
    assert len(whole) == (2 if spec.get("jsd") else 1)


def test_suite_augmentation_perturbs_a_share_p_of_the_images_with_the_named_perturbation() -> None:
    images = _train_images(400)
    indices = torch.arange(400)
    none = build_augmentation(TrainRecipe(robust_augment={"method": "suite", "perturbations": ["turn"], "p": 0.0}))
    assert torch.equal(none(images, augmentation_random(0, "suite", 1, indices))[0], images)
    spec = {"method": "suite", "perturbations": ["turn"], "severities": [2, 2], "p": 0.5}
    augmented = build_augmentation(TrainRecipe(robust_augment=spec))(
        images, augmentation_random(0, "suite", 1, indices)
    )
    changed = (augmented[0] != images).flatten(1).any(1)
    assert 0.4 < changed.float().mean() < 0.6
    assert torch.equal(augmented[0][changed], images[changed].rot90(2, (-2, -1))), "turn s2 is the half turn"


def _pil(levels: torch.Tensor, operation: Callable[[Image.Image], Image.Image]) -> torch.Tensor:
    out = [np.asarray(operation(Image.fromarray(img[0].numpy().astype(np.uint8)))) for img in levels]
    return torch.from_numpy(np.stack(out)).unsqueeze(1).float()


def test_batched_augmix_operations_match_pil() -> None:
    levels = (_train_images(40) * 255).round()
    levels[0] = 77  # a flat image: equalize and autocontrast leave it alone
    levels[1] = (levels[1] * 0.5 + 20).round()  # a low-contrast one
    assert torch.equal(equalize(levels), _pil(levels, ImageOps.equalize))
    assert torch.equal(autocontrast(levels), _pil(levels, ImageOps.autocontrast))
    bits = torch.tensor([1, 2, 3, 4] * 10)
    expected = torch.cat(
        [_pil(levels[i : i + 1], lambda im, b=int(bits[i]): ImageOps.posterize(im, b)) for i in range(40)]
    )
    assert torch.equal(posterize(levels, bits), expected)
    thresholds = torch.tensor([0.0, 64.0, 128.0, 200.0] * 10)
    expected = torch.cat(
        [_pil(levels[i : i + 1], lambda im, t=int(thresholds[i]): ImageOps.solarize(im, t)) for i in range(40)]
    )
    assert torch.equal(solarize(levels, thresholds), expected)


def test_jensen_shannon_is_zero_for_agreeing_views_and_positive_otherwise() -> None:
    logits = torch.randn(16, 10, generator=torch.Generator().manual_seed(0))
    assert float(jensen_shannon([logits, logits, logits])) == pytest.approx(0.0, abs=1e-6)
    assert float(jensen_shannon([logits, logits.flip(1), logits])) > 0.01


def test_training_with_augmix_jsd_is_seeded_and_changes_the_weights() -> None:
    images, labels = _learnable(256)
    recipe = TrainRecipe(epochs=1, batch_size=64, precision="float32", robust_augment={"method": "augmix", "jsd": True})
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        model = create_model("deep_cnn_tiny")
        train_model(model, Split(images, labels), recipe, seed=3, device=CPU)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.manual_seed(0)
    plain = create_model("deep_cnn_tiny")
    train_model(plain, Split(images, labels), recipe.model_copy(update={"robust_augment": None}), seed=3, device=CPU)
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], torch.cat([p.detach().flatten() for p in plain.parameters()]))


@pytest.mark.parametrize(
    ("recipe", "expected"),
    [
        (TrainRecipe(), {}),
        (TrainRecipe(augment="flip"), {"hflip": SEEN}),
        (TrainRecipe(augment="flip_crop"), {"hflip": SEEN, "translation": SEEN, "viewpoint": PARTLY}),
        (
            TrainRecipe(robust_augment={"method": "suite", "perturbations": ["brightness_up"]}),
            {"brightness_up": SEEN, "lighting": PARTLY},
        ),
        (
            TrainRecipe(robust_augment={"method": "suite", "perturbations": ["lighting"]}),
            {
                p: SEEN
                for p in [
                    "lighting",
                    "gamma_up",
                    "gamma_down",
                    "contrast_down",
                    "contrast_up",
                    "brightness_up",
                    "brightness_down",
                ]
            },
        ),
        (TrainRecipe(robust_augment="augmix"), {}),
        (
            TrainRecipe(robust_augment={"method": "augmix", "operations": ["rotate"]}),
            {"rotation": SEEN, "viewpoint": PARTLY},
        ),
        (TrainRecipe(robust_augment="gaussian_noise"), {"gaussian_noise": SEEN}),
    ],
)
def test_what_a_recipe_lets_a_model_see_follows_the_recipe(recipe: TrainRecipe, expected: dict[str, str]) -> None:
    assert training_exposure(recipe) == dict(sorted(expected.items()))


def test_torchvision_policies_see_the_shifts_their_operations_perform() -> None:
    seen = training_exposure(TrainRecipe(robust_augment="trivialaugment"))
    assert {p for p, s in seen.items() if s == SEEN} == {
        "rotation", "shear", "translation", "exposure_up", "exposure_down", "contrast_down", "contrast_up"
    }  # fmt: skip
    assert seen["lighting"] == seen["viewpoint"] == PARTLY
    assert training_exposure(None) == {}, "a user's checkpoint: its history is unknown"


# ---- the report ----


def _synthetic_results(rows: list[tuple[str, int, str, int, float, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"model": m, "seed": s, "perturbation": p, "severity": v, "accuracy": a, "in_training": t}
            for m, s, p, v, a, t in rows
        ]
    )


def test_gap_closed_is_the_share_of_the_standard_loss_won_back_per_family_and_split() -> None:
    models = [
        {"name": "std", "seed": seed, "architecture": "a", "training": "standard", "adaptation": "none",
         "train_seconds": 10.0, "eval_seconds": 2.0}
        for seed in (0, 1)
    ] + [
        {"name": "aug", "seed": seed, "architecture": "a", "training": "suite", "adaptation": "none",
         "train_seconds": 13.0, "eval_seconds": 2.0}
        for seed in (0, 1)
    ]  # fmt: skip
    rows = []
    for seed in (0, 1):
        rows += [("std", seed, "clean", 0, 0.9, ""), ("aug", seed, "clean", 0, 0.88, "")]
        rows += [("std", seed, "brightness_up", 1, 0.5, "held out"), ("aug", seed, "brightness_up", 1, 0.7, "seen")]
        rows += [("std", seed, "exposure_up", 1, 0.6, ""), ("aug", seed, "exposure_up", 1, 0.6 + 0.1 * seed, HELD_OUT)]
    families = {"brightness_up": "lighting", "exposure_up": "lighting"}
    table = gap_closed_table(_synthetic_results(rows), models, families).set_index("remedy")
    assert table.loc["aug", "lighting|seen"] == pytest.approx(0.5)  # (0.7 - 0.5) / (0.9 - 0.5)
    assert table.loc["aug", "lighting|held out"] == pytest.approx((0.0 + 1 / 3) / 2)  # seeds 0 and 1
    assert table.loc["aug", "lighting|all"] == pytest.approx(((0.2 / 0.7) + (0.3 / 0.7)) / 2)
    assert table.loc["aug", "clean_cost"] == pytest.approx(-0.02)
    assert table.loc["aug", "train_time"] == pytest.approx(1.3)
    assert table.loc["aug", "lighting|held out_low"] < table.loc["aug", "lighting|held out"]
    assert table.loc["aug", "standard"] == "std" and "std" not in table.index


def _throughput_rows(training: dict[str, float], inference: dict[tuple[str, int], float]) -> pd.DataFrame:
    """A throughput.csv as `bench` writes it: training images/s per model, inference per (model, batch size)."""
    from robustbench_fmnist.evaluation.throughput import THROUGHPUT_COLUMNS, ThroughputRow

    rows = [ThroughputRow("training", m, "cpu", 128, "bfloat16", images_per_second=v) for m, v in training.items()]
    rows += [ThroughputRow("inference", m, "cpu", b, images_per_second=v) for (m, b), v in inference.items()]
    rows += [ThroughputRow("inference", "std", "cuda", 1024, images_per_second=1.0)]  # another device: not used
    return pd.DataFrame([r.to_row() for r in rows], columns=THROUGHPUT_COLUMNS)


def test_bench_costs_are_side_by_side_ratios_to_the_standard_scaled_by_epochs() -> None:
    from robustbench_fmnist.report.remedies import bench_costs

    def model(name: str, training: str, adaptation: str = "none", epochs: int = 4, key: str = "k") -> dict[str, Any]:
        return {"name": name, "seed": 0, "architecture": "a", "training": training, "adaptation": adaptation,
                "base_model": name.split("+")[0], "cache_key": key, "recipe": {"epochs": epochs}}  # fmt: skip

    models = [model("std", "standard"), model("std+tta", "standard", "tta"), model("w10", "worst_of_k", key="w"),
              model("w10+tta", "worst_of_k", "tta", key="w"), model("long", "suite", epochs=8, key="l"),
              model("std+bn", "standard", "bn")]  # fmt: skip
    throughput = _throughput_rows(
        {"std": 1000.0, "w10": 250.0, "long": 500.0},
        {("std", 256): 4000.0, ("std", 1024): 5000.0, ("std+tta", 1024): 1000.0, ("w10", 1024): 5000.0,
         ("w10+tta", 1024): 1250.0, ("long", 1024): 2500.0},
    )  # fmt: skip
    costs = bench_costs(throughput, models, device="cpu", batch_size=1000).set_index("remedy")
    assert set(costs["batch_size"]) == {1024}, "bench's batch nearest the evaluation's 1000"
    assert costs.loc["std+tta", "training_cost"] == 1.0 and costs.loc["std+tta", "inference_cost"] == 5.0
    assert costs.loc["w10", "training_cost"] == 4.0 and costs.loc["w10", "inference_cost"] == 1.0
    assert costs.loc["w10+tta", "training_cost"] == 4.0, "tta on robust weights: the weights' training cost"
    assert costs.loc["w10+tta", "inference_cost"] == 4.0
    assert costs.loc["long", "training_cost"] == 4.0, "twice as slow a step, twice the epochs"
    assert costs.loc["std+bn", "training_cost"] == 1.0 and np.isnan(costs.loc["std+bn", "inference_cost"])
    assert bench_costs(None, models, device="cpu", batch_size=1000).empty
    on_256 = bench_costs(throughput, models, device="cpu", batch_size=300).set_index("remedy")
    assert set(on_256["batch_size"]) == {256} and np.isnan(on_256.loc["std+tta", "inference_cost"])


@pytest.fixture
def remedy_experiment(tiny_experiment: dict[str, Any]) -> dict[str, Any]:
    tiny_experiment.update(seeds=[0, 1])
    tiny_experiment["models"] = [
        {"name": "baseline_cnn_tiny", "adaptation": ["none", "bn", "tent", "tta"]},
        {"name": "deep_cnn_tiny", "adaptation": ["none", "bn", "tent"], "train": {"epochs": 2}},
        {"name": "deep_cnn_tiny_suite", "architecture": "deep_cnn_tiny",
         "train": {"epochs": 2, "robust_augment": {"method": "suite", "perturbations": ["brightness_up"]}}},
    ]  # fmt: skip
    tiny_experiment["perturbations"] = [{"name": "brightness_up", "severities": [2, 5]},
                                        {"name": "contrast_down", "severities": [3]},
                                        {"name": "rotation", "severities": [2]}]  # fmt: skip
    tiny_experiment["reference_model"] = "baseline_cnn_tiny"
    tiny_experiment["evaluation"]["tta"] = {"space": {"rotation": [-10, 10, 3]}}
    return tiny_experiment


@pytest.mark.slow  # over 5 s: in make test, not in make test-fast
def test_a_remedies_run_files_adaptations_as_rows_and_marks_what_training_saw(
    remedy_experiment: dict[str, Any], write_yaml: Callable[..., Path]
) -> None:
    folder = run_experiment(load_config(write_yaml(remedy_experiment)))
    data = read_data(folder)
    results = data.results
    assert set(results["model"]) == {"baseline_cnn_tiny", "baseline_cnn_tiny+tta", "deep_cnn_tiny", "deep_cnn_tiny+bn",
                                     "deep_cnn_tiny+tent", "deep_cnn_tiny_suite"}  # fmt: skip
    assert set(results.loc[results["model"] == "deep_cnn_tiny+tent", "adaptation"]) == {"tent"}
    suite = results[(results["model"] == "deep_cnn_tiny_suite") & (results["seed"] == 0)].set_index(
        ["perturbation", "severity"]
    )["in_training"]
    assert suite[("brightness_up", 2)] == SEEN and suite[("contrast_down", 3)] == HELD_OUT
    assert suite[("rotation", 2)] == HELD_OUT
    # deep_cnn_tiny trains with flip_crop: nothing of these shifts, and clean is neither seen nor held out
    assert pd.isna(suite[("clean", 0)])
    run = json.loads((folder / "run.json").read_text())
    baseline = next(m for m in run["models"] if m["name"] == "baseline_cnn_tiny")
    assert set(baseline["not_applicable"]) == {"bn", "tent"}
    # the training method names the row; the training's own record (every epoch) stays beside it
    assert baseline["training"] == "standard" and len(baseline["training_summary"]["history"]) == 1
    assert 0 < baseline["training_summary"]["history"][-1]["train_accuracy"] <= 1
    report = (folder / "report.md").read_text()
    assert "## What fixes it" in report
    assert "`baseline_cnn_tiny` with `bn`: not applicable: the model has no BatchNorm layers" in report
    assert "| deep_cnn_tiny_suite (seen in training) |" in report
    assert "| deep_cnn_tiny+bn | deep_cnn_tiny | standard | bn |" in report
    assert "| deep_cnn_tiny_suite | brightness_up (seen in training) |" in report, "marked in the summary too"
    assert "Gap closed per perturbation" in report
    assert "`tta` averages the logits over k = 3 copies of each image (rotation -10 to 10 in 3): " in report
    gaps = pd.read_csv(folder / "remedies.csv")
    assert set(gaps["remedy"]) == {"baseline_cnn_tiny+tta", "deep_cnn_tiny+bn", "deep_cnn_tiny+tent",
                                   "deep_cnn_tiny_suite"}  # fmt: skip
    suite_gaps = gaps[gaps["remedy"] == "deep_cnn_tiny_suite"].set_index(["perturbation", "severity"])
    assert suite_gaps.loc[("brightness_up", 2), "in_training"] == SEEN
    assert (suite_gaps.loc[("brightness_up", -1), "seeds"]) == 2
    before = report
    from robustbench_fmnist.report.writer import rerender_report

    csv_before = (folder / "remedies.csv").read_bytes()
    rerender_report(folder)
    assert (folder / "report.md").read_text() == before, "the report re-renders byte for byte"
    assert (folder / "remedies.csv").read_bytes() == csv_before

    # with bench's side-by-side figures the costs come from them; a pair bench lacks keeps its recorded ratio
    from robustbench_fmnist.report.writer import add_throughput

    bench = {("baseline_cnn_tiny", 1024): 4000.0, ("baseline_cnn_tiny+tta", 1024): 1000.0,
             ("deep_cnn_tiny", 1024): 2000.0, ("deep_cnn_tiny_suite", 1024): 2000.0}  # fmt: skip
    add_throughput(folder, _throughput_rows({"deep_cnn_tiny": 600.0, "deep_cnn_tiny_suite": 300.0}, bench))
    costed = (folder / "report.md").read_text()
    assert "| training cost (bench) | inference cost (bench) |" in costed and "| training time |" not in costed
    assert "| baseline_cnn_tiny+tta | baseline_cnn_tiny | standard | tta |" in costed
    assert "| 1.00x | 4.00x |" in costed, "tta: the standard's weights, k copies' inference"
    assert "| 2.00x | 1.00x |" in costed, "the suite's training steps at half the standard's rate"
    assert "x (recorded) |" in costed, "bn has no bench row: its recorded evaluation time stands, marked"


# ---- review follow-ups: small cells, tent's protocol, the JSD formula, pairing ----


def test_tent_and_bn_handle_a_last_batch_of_one_image_and_odd_halves() -> None:
    from robustbench_fmnist.evaluation.adaptation import batch_bounds

    assert batch_bounds(129, 128) == [(0, 129)]
    assert batch_bounds(130, 128) == [(0, 128), (128, 130)]
    assert batch_bounds(1, 128) == [(0, 1)]
    model = _trained_tiny()
    images = _learnable(129)[0].float().div(255).unsqueeze(1)
    assert tent_predict(model, images, _settings()).shape == (129, 10)
    assert batch_norm_predict(model, images[:5], _settings()).shape == (5, 10)


def test_tent_scores_each_batch_by_the_forward_before_its_own_update() -> None:
    model = _trained_tiny()
    images = _learnable(256)[0].float().div(255).unsqueeze(1) * 0.5
    settings = AdaptationSettings(BatchNormAdaptation(), TentAdaptation(lr=0.05, batch_size=128))
    logits = tent_predict(model, images, settings)
    unadapted, _ = configure_tent(model)  # batch statistics, affines as trained
    with torch.no_grad():
        first = unadapted(images[:128].contiguous(memory_format=torch.channels_last))
        second = unadapted(images[128:].contiguous(memory_format=torch.channels_last))
    assert torch.allclose(logits[:128], first, atol=1e-5), "the first batch is scored before any update"
    assert not torch.allclose(logits[128:], second, atol=1e-3), "the second by affines the first batch updated"


def test_jensen_shannon_is_augmix_s_mean_kl_to_the_mixture() -> None:
    generator = torch.Generator().manual_seed(1)
    views = [torch.randn(8, 10, generator=generator) for _ in range(3)]
    p = [v.double().softmax(1).numpy() for v in views]
    mixture = np.clip(sum(p) / 3, 1e-7, 1)
    expected = np.mean([np.sum(q * (np.log(q) - np.log(mixture)), axis=1).mean() for q in p])
    assert float(jensen_shannon(views)) == pytest.approx(expected, rel=1e-5)


def _record(name: str, training: str, adaptation: str = "none", **extra: Any) -> dict[str, Any]:
    return {"name": name, "seed": 0, "architecture": extra.pop("architecture", "deep_cnn"), "training": training,
            "adaptation": adaptation, "base_model": extra.pop("base_model", name), **extra}  # fmt: skip


def test_remedies_pair_adaptations_with_their_own_weights_and_recipes_with_the_standard() -> None:
    from robustbench_fmnist.report.remedies import remedies

    recipe = {"epochs": 4, "lr": 0.003, "robust_augment": None}
    models = [
        _record("deep_cnn", "standard", recipe=recipe),
        _record("deep_cnn_long", "standard", recipe={**recipe, "epochs": 10}),
        _record("deep_cnn+bn", "standard", "bn", base_model="deep_cnn", recipe=recipe),
        _record("deep_cnn_augmix", "augmix", recipe={**recipe, "epochs": 10, "robust_augment": {"method": "augmix"}}),
        _record("deep_cnn_augmix+tent", "augmix", "tent", base_model="deep_cnn_augmix", recipe=recipe),
        _record("mine", "checkpoint", architecture="pkg:build"),
        _record("mine+bn", "checkpoint", "bn", architecture="pkg:build", base_model="mine"),
        _record("old", None),
    ]
    found = {r.label: r for r in remedies(models)}
    assert set(found) == {"deep_cnn+bn", "deep_cnn_augmix", "deep_cnn_augmix+tent", "mine+bn"}
    assert found["deep_cnn+bn"].standard == "deep_cnn" and found["mine+bn"].standard == "mine"
    assert found["deep_cnn_augmix+tent"].standard == "deep_cnn", "both remedies against the standard"
    assert found["deep_cnn_augmix"].recipe_differs == ("epochs",), "a longer recipe is not credited silently"


def test_another_architecture_is_a_remedy_against_the_model_it_names_and_so_are_its_adaptations() -> None:
    from robustbench_fmnist.report.remedies import remedies

    recipe = {"epochs": 4, "robust_augment": None}
    models = [
        _record("deep_cnn", "standard", recipe=recipe),
        _record("p4_deep_cnn", "standard", architecture="p4_deep_cnn", against="deep_cnn", recipe=recipe),
        _record("p4_deep_cnn+tta", "standard", "tta", architecture="p4_deep_cnn", base_model="p4_deep_cnn"),
        _record("p4_deep_cnn_wok", "worst_of_k", architecture="p4_deep_cnn", recipe=recipe),
        _record("p4_cnn", "standard", architecture="p4_cnn", recipe=recipe),
    ]
    found = {r.label: r for r in remedies(models)}
    assert set(found) == {"p4_deep_cnn", "p4_deep_cnn+tta", "p4_deep_cnn_wok"}, "p4_cnn names no model: no remedy"
    assert found["p4_deep_cnn"].standard == "deep_cnn" and found["p4_deep_cnn+tta"].standard == "deep_cnn"
    assert found["p4_deep_cnn_wok"].standard == "p4_deep_cnn", "a recipe against its own architecture's standard"


def test_the_worst_case_gap_closed_is_the_share_of_the_standards_worst_case_loss_won_back() -> None:
    from robustbench_fmnist.report.remedies import worst_case_gap_table

    recipe = {"epochs": 4, "robust_augment": None}
    models = [
        _record("deep_cnn", "standard", recipe=recipe),
        _record("p4_deep_cnn", "standard", architecture="p4_deep_cnn", against="deep_cnn", recipe=recipe),
    ]
    rows = []
    # per seed: (model, clean on the searched images, worst case at budget 1, orbit consistency)
    for seed, standard, remedy in [
        (0, (0.90, 0.10, 0.2), (0.88, 0.50, 0.6)),
        (1, (0.92, 0.12, 0.3), (0.90, 0.56, 0.7)),
    ]:
        for model, (clean, worst, orbit) in (("deep_cnn", standard), ("p4_deep_cnn", remedy)):
            # a grid's curve: only the whole space (budget 1) is the worst case
            for budget, accuracy in ((0.0, clean), (0.5, (clean + worst) / 2), (1.0, worst)):
                whole = budget == 1.0
                rows.append(
                    dict(model=model, seed=seed, adversary="spatial", search="grid", budget=budget,
                         accuracy=accuracy, accuracy_clean=clean if whole else np.nan,
                         orbit_consistency=orbit if whole else np.nan)
                )  # fmt: skip
            rows.append(dict(model=model, seed=seed, adversary="light", search="random", budget=1.0,
                             accuracy=clean - 0.005, accuracy_clean=clean, orbit_consistency=np.nan))  # fmt: skip
    table = worst_case_gap_table(pd.DataFrame(rows), models).set_index("adversary")
    spatial = table.loc["spatial"]
    assert spatial["remedy"] == "p4_deep_cnn" and spatial["standard"] == "deep_cnn" and spatial["seeds"] == 2
    assert spatial["gap_closed"] == pytest.approx(np.mean([0.40 / 0.80, 0.44 / 0.80]))  # its own clean, per seed
    assert spatial["remedy_accuracy"] == pytest.approx(0.53) and spatial["standard_accuracy"] == pytest.approx(0.11)
    assert spatial["remedy_orbit"] == pytest.approx(0.65) and spatial["standard_orbit"] == pytest.approx(0.25)
    assert spatial["gap_closed_low"] < spatial["gap_closed"] < spatial["gap_closed_high"]
    assert np.isnan(table.loc["light", "gap_closed"]), "the standard lost half a point: no gap worth a ratio"
    assert worst_case_gap_table(pd.DataFrame(rows).query("model == 'deep_cnn'"), models).empty


def test_noise_from_matches_models_by_architecture_and_adaptation_settings() -> None:
    from robustbench_fmnist.report.agreement import _architecture

    assert _architecture({"name": "baseline_cnn"}) == "baseline_cnn", "a report from before labels"
    assert _architecture({"name": "x", "architecture": "deep_cnn"}) == "deep_cnn"


def test_a_run_today_still_matches_the_committed_lighting_reference_recorded_before_remedies() -> None:
    """The quickstart's noise_from: recipes recorded before robust_augment existed are the same recipes."""
    from robustbench_fmnist.report.agreement import agreement_table, reference_cells

    reference = read_data(Path(__file__).resolve().parent.parent / "reports" / "lighting")
    ours = []
    for record in reference.run["models"]:
        today = {**record, "recipe": TrainRecipe.model_validate(record["recipe"]).model_dump(mode="json")}
        today.update(architecture=record["name"], training="standard", adaptation="none", base_model=record["name"])
        ours.append(today)
    assert "robust_augment" in ours[0]["recipe"] and "robust_augment" not in reference.run["models"][0]["recipe"]
    cells, skipped = reference_cells(reference, ours)
    assert skipped == [] and set(cells["model"]) == {"baseline_cnn", "deep_cnn"}
    table = agreement_table(reference.results, cells)
    assert len(table) == len(cells) and table["inside"].all()
    empty, skipped = reference_cells(reference, [{**ours[0], "kwargs": {"width": 8}}])
    assert skipped == ["baseline_cnn"] and agreement_table(reference.results, empty).empty


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        (
            {"rotation": [-20, 20, 5]},
            "k = 5 copies of each image (rotation -20 to 20 in 5): k forward passes per image, 5x",
        ),
        (
            {"rotation": [-10, 10, 3], "translate": [-2, 2, 3]},
            "k = 27 copies of each image (rotation -10 to 10 in 3, translate -2 to 2 in 3; translate moves x and y, "
            "each over its steps): k forward passes per image, 27x",
        ),
    ],
)
def test_the_tta_note_counts_its_copies_and_explains_translate_only_where_the_space_has_it(
    space: dict[str, list[float]], expected: str
) -> None:
    from types import SimpleNamespace

    from robustbench_fmnist.report.markdown import _tta_cost

    data = SimpleNamespace(run={"models": [{"adaptation": "tta"}], "config": {"evaluation": {"tta": {"space": space}}}})
    assert expected in " ".join(_tta_cost(data, "evaluation time"))
    # the cost column the note points to is the one the remedies table shows
    assert "which its inference cost above shows" in " ".join(_tta_cost(data, "inference cost"))

"""The model zoo: every registered model and a sample of timm families build, run and train at 28 px."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from robustbench_fmnist.cli import main
from robustbench_fmnist.config import load_config, parse_config, select_models
from robustbench_fmnist.models import MODELS, count_parameters, create_model
from robustbench_fmnist.models.timm_models import adapted_timm_model, timm_adaptation
from robustbench_fmnist.training.resolution import resolve

ROOT = Path(__file__).resolve().parents[1]


def _one_training_step(model: torch.nn.Module) -> None:
    """Two AdamW steps on a random batch: the losses are finite, the parameters move and the logits change.

    Two, because timm's ResNets start each block's last BatchNorm scale at zero: the layers before
    it get their first gradient on the second step.
    """
    torch.manual_seed(0)
    images, labels = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        logits_before = model.eval()(images)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(2):
        optimizer.zero_grad()
        loss = F.cross_entropy(model.train()(images), labels)
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert len(moved) >= 0.95 * len(before), f"only {len(moved)} of {len(before)} parameters trained"
    with torch.no_grad():
        assert not torch.equal(model.eval()(images), logits_before)


@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_model_trains_at_28_pixels(name: str) -> None:
    _one_training_step(create_model(name))


TIMM_SAMPLE = {  # one per family, narrowed where timm's defaults would make the test slow
    "resnet18": {},
    "mobilenetv3_small_050": {},
    "efficientnet_b0": {},
    "regnetx_002": {},
    "convnext_atto": {"dims": (8, 16, 32, 64), "depths": (1, 1, 1, 1)},
    "vit_tiny_patch16_224": {"embed_dim": 32, "depth": 1, "num_heads": 2},
    "deit_tiny_patch16_224": {"embed_dim": 32, "depth": 1, "num_heads": 2},
}


@pytest.mark.parametrize("arch", list(TIMM_SAMPLE))
def test_a_sample_of_timm_families_runs_and_trains_at_28_pixels(arch: str) -> None:
    model = adapted_timm_model(arch, **TIMM_SAMPLE[arch])
    with torch.no_grad():
        assert model.eval()(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    _one_training_step(model)


def test_stride_32_cnns_get_a_stride_1_stem_and_keep_a_2x2_map() -> None:
    model = adapted_timm_model("resnet18")
    net = model[-1]
    assert net.conv1.stride == (1, 1) and net.conv1.in_channels == 1
    features = net.eval().forward_features(torch.rand(1, 1, 28, 28))
    assert features.shape[-2:] == (2, 2)
    # timm's own stem would leave one pixel: that is what the registered timm_resnet18 keeps
    plain = create_model("timm_resnet18")[-1]
    assert plain.eval().forward_features(torch.rand(1, 1, 28, 28)).shape[-2:] == (1, 1)


def test_vits_get_28_pixel_images_of_4_pixel_patches_and_kwargs_win() -> None:
    kwargs, unstride = timm_adaptation("vit_tiny_patch16_224", {})
    assert kwargs == {"img_size": 28, "patch_size": 4} and not unstride
    kwargs, _ = timm_adaptation("vit_tiny_patch16_224", {"patch_size": 7})
    assert kwargs["patch_size"] == 7
    vit = adapted_timm_model("vit_tiny_patch16_224", embed_dim=32, depth=1, num_heads=2)[-1]
    assert vit.patch_embed.grid_size == (7, 7)


def test_convnext_is_resized_to_32_pixels_and_input_size_resizes_any_family() -> None:
    convnext = adapted_timm_model("convnext_atto", dims=(8, 16, 32, 64), depths=(1, 1, 1, 1))
    assert convnext[1].size == 32
    swin = adapted_timm_model(
        "swin_tiny_patch4_window7_224", input_size=56, embed_dim=24, depths=(1, 1), num_heads=(1, 2)
    )
    assert swin[1].size == 56
    assert swin(torch.rand(1, 1, 28, 28)).shape == (1, 10)


def test_registered_zoo_models_have_the_documented_sizes() -> None:
    sizes = {name: count_parameters(create_model(name)) for name in ("mlp", "lenet5", "resnet8", "deep_cnn_gn")}
    assert sizes["mlp"] == 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10
    assert sizes["lenet5"] == (6 * 25 + 6) + (16 * 6 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    assert sizes["deep_cnn_gn"] == count_parameters(create_model("deep_cnn"))  # GroupNorm has BatchNorm's affines
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in create_model("deep_cnn_gn").modules())
    assert 70_000 < sizes["resnet8"] < 80_000
    assert 0.26e6 < count_parameters(create_model("resnet8", blocks=3)) < 0.28e6  # ResNet-20's 0.27M


def _experiment(tmp_path: Path, models: list[Any]) -> dict[str, Any]:
    return {"name": "zoo", "models": models, "perturbations": ["brightness_up"], "output_dir": str(tmp_path)}


def test_timm_names_resolve_with_timms_recipe_and_a_cache_key_of_their_own(tmp_path: Path) -> None:
    from robustbench_fmnist.training.checkpoints import code_digest

    config = parse_config(_experiment(tmp_path, ["timm:resnet18", {"name": "r", "architecture": "timm:resnet18"}]))
    first, second = resolve(config)
    assert first.architecture == "timm:resnet18" and first.recipe.precision == "float32"
    assert first.build()[-1].conv1.stride == (1, 1)
    assert code_digest(first.builder) == code_digest(second.builder)
    assert code_digest(first.builder) != code_digest(MODELS.get("baseline_cnn").builder)  # timm's version counts


def test_select_models_keeps_one_model_and_names_the_report_after_it() -> None:
    config = load_config(ROOT / "experiments" / "zoo.yaml")
    one = select_models(config, ["timm_vit"])
    assert [m.name for m in one.models] == ["timm_vit"] and one.name == "timm_vit"
    assert one.perturbations == config.perturbations and one.run_seeds == config.run_seeds
    both = select_models(config, ["mlp", "lenet5"])
    assert [m.name for m in both.models] == ["mlp", "lenet5"] and both.name == "zoo"
    timm = select_models(parse_config(_experiment(Path("/tmp"), ["timm:resnet18", "mlp"])), ["timm:resnet18"])
    assert timm.name == "timm_resnet18"


def test_run_with_model_writes_only_that_models_report(tiny_experiment: dict[str, Any], tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(tiny_experiment))
    assert main(["-q", "run", str(path), "--model", "deep_cnn_tiny"]) == 0
    run = json.loads((Path(tiny_experiment["output_dir"]) / "deep_cnn_tiny" / "run.json").read_text())
    assert {m["name"] for m in run["models"]} == {"deep_cnn_tiny"}
    assert not (Path(tiny_experiment["output_dir"]) / "tiny").exists()


def test_ls_timm_lists_timms_names_as_yaml_writes_them(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ls", "models", "--timm", "convnext_at*"]) == 0
    out = capsys.readouterr().out
    assert "  timm:convnext_atto\n" in out and "resnet" not in out


def test_one_model_of_an_experiment_that_names_another_reference_still_runs(tmp_path: Path) -> None:
    config = parse_config({**_experiment(tmp_path, ["baseline_cnn", "deep_cnn"]), "reference_model": "deep_cnn"})
    alone = select_models(config, ["baseline_cnn"])
    assert alone.reference_model == "baseline_cnn"
    # the recorded config of a one-model report parses again (as `reproduce` does)
    assert parse_config(alone.model_dump(mode="json")).models == alone.models
    only_mlp = parse_config(_experiment(tmp_path, ["mlp"]))
    assert parse_config(only_mlp.model_dump(mode="json")).reference_model == "baseline_cnn"

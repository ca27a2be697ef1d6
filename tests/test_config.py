"""Bad configs fail with one clear line naming the key; good ones resolve."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from robustbench_fmnist.cli import main
from robustbench_fmnist.config import load_config
from robustbench_fmnist.errors import ConfigError
from robustbench_fmnist.experiment import resolve

EXPERIMENTS = sorted(Path(__file__).resolve().parent.parent.glob("experiments/*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_shipped_experiments_validate(path: Path) -> None:
    config = load_config(path)
    assert resolve(config)
    assert config.name == path.stem


def test_lighting_experiment_names_both_models_and_three_shifts() -> None:
    config = load_config(Path(__file__).resolve().parent.parent / "experiments/lighting.yaml")
    assert [m.name for m in config.models] == ["baseline_cnn", "deep_cnn"]
    assert [p.name for p in config.perturbations] == ["brightness", "contrast", "rotation"]
    assert all(p.severities == (1, 2, 3, 4, 5) for p in config.perturbations)
    assert config.evaluation.precision == "float32"


def test_shorthand_names_and_defaults(tiny_experiment: dict[str, Any], write_yaml: Callable[..., Path]) -> None:
    config = load_config(write_yaml(tiny_experiment))
    assert config.models[1].name == "deep_cnn_tiny" and config.models[1].train is None
    assert config.perturbations[0].severities == (1, 2, 3, 4, 5)
    assert config.perturbations[1].severities == (1, 5)


def test_recipe_overrides_only_the_keys_given(tiny_experiment: dict[str, Any], write_yaml: Callable[..., Path]) -> None:
    resolved = resolve(load_config(write_yaml(tiny_experiment)))
    recipe = resolved[0].recipe
    assert recipe is not None and recipe.epochs == 2 and recipe.batch_size == 32
    assert recipe.lr == 2e-3 and recipe.schedule == "onecycle"  # from the registered recipe


def test_cli_overrides_win_over_the_yaml(tiny_experiment: dict[str, Any], write_yaml: Callable[..., Path]) -> None:
    config = load_config(write_yaml(tiny_experiment), {"seed": 9, "data.dir": "/elsewhere"})
    assert config.seed == 9 and str(config.data.dir) == "/elsewhere"
    assert config.data.verify is False  # untouched keys stay


BAD_CONFIGS = [
    ({"modles": ["baseline_cnn"]}, "unknown key 'modles'; did you mean 'models'?"),
    ({"models": [{"name": "baseline_cnn", "trian": {}}]}, "unknown key 'models[0].trian'; did you mean 'train'?"),
    ({"evaluation": {"batchsize": 5}}, "unknown key 'evaluation.batchsize'; did you mean 'batch_size'?"),
    ({"perturbations": [{"name": "contrast", "severities": [1, 7]}]}, "severity 7 is impossible"),
    ({"perturbations": [{"name": "contrast", "severities": [2, 2]}]}, "severities repeat"),
    (
        {"models": [{"name": "baseline_cnn", "train": {"epochs": -3}}]},
        "models[0].train.epochs: Input should be greater",
    ),
    ({"models": [{"name": "baseline_cnn", "train": {"lr": "fast"}}]}, "models[0].train.lr: Input should be a valid"),
    ({"models": [{"name": "baseline_cnn", "train": {"optimizer": "lion"}}]}, "models[0].train.optimizer: Input should"),
    ({"seed": "abc"}, "seed: Input should be a valid integer"),
    ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
    ({"device": "tpu"}, "device must be auto, cpu, cuda or cuda:N"),
    ({"evaluation": {"precision": "int8"}}, "evaluation.precision: Input should be 'float32'"),
    ({"models": []}, "models: Tuple should have at least 1 item"),
    ({"models": ["baseline_cnn", "baseline_cnn"]}, "model 'baseline_cnn' is listed twice"),
    ({"models": [{"name": "x", "factory": "not a path"}]}, "factory must look like 'package.module:function'"),
    ({"name": "has space"}, "name: String should match pattern"),
]


@pytest.mark.parametrize(("change", "message"), BAD_CONFIGS, ids=[m for _, m in BAD_CONFIGS])
def test_bad_configs_give_one_line_with_the_key_path(
    change: dict[str, Any], message: str, tiny_experiment: dict[str, Any], write_yaml: Callable[..., Path]
) -> None:
    path = write_yaml({**tiny_experiment, **change})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert message in text
    assert "\n" not in text and text.startswith(str(path))


UNKNOWN_NAMES = [
    ({"models": ["deep_cn"]}, "models[0].name: unknown model 'deep_cn'; did you mean 'deep_cnn'? Available:"),
    ({"perturbations": ["brightnes"]}, "perturbations[0].name: unknown perturbation 'brightnes'; did you mean"),
    ({"models": [{"name": "x", "factory": "no_such_module_xyz:build"}]}, "cannot import 'no_such_module_xyz'"),
    ({"models": [{"name": "x", "factory": "tests.conftest:no_such_fn"}]}, "has no callable 'no_such_fn'"),
]


@pytest.mark.parametrize(("change", "message"), UNKNOWN_NAMES, ids=[m for _, m in UNKNOWN_NAMES])
def test_unknown_names_are_caught_before_running(
    change: dict[str, Any], message: str, tiny_experiment: dict[str, Any], write_yaml: Callable[..., Path]
) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        resolve(load_config(write_yaml({**tiny_experiment, **change})))
    assert message in str(info.value)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such experiment file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [baseline_cnn\nseed: 1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)


@pytest.mark.parametrize(
    "change",
    [{"modles": []}, {"perturbations": [{"name": "rotation", "severities": [7]}]}, {"models": ["deep_cn"]}],
)
def test_cli_validate_exits_2_with_one_line(
    change: dict[str, Any],
    tiny_experiment: dict[str, Any],
    write_yaml: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["validate", str(write_yaml({**tiny_experiment, **change}))])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert captured.out == ""


def test_cli_validate_accepts_a_good_file(
    tiny_experiment: dict[str, Any], write_yaml: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(write_yaml(tiny_experiment))]) == 0
    assert "ok - 2 model(s) (baseline_cnn_tiny, deep_cnn_tiny), 2 perturbation(s)" in capsys.readouterr().out


def test_cli_run_refuses_cuda_without_a_gpu(
    tiny_experiment: dict[str, Any], write_yaml: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["-q", "run", str(write_yaml(tiny_experiment)), "--device", "cuda"]) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err

"""The C8 and C16 steerable CNNs (e2cnn, an optional extra): invariant to quarter turns, exported for inference."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from robustbench_fmnist.cli import main
from robustbench_fmnist.errors import ConfigError
from robustbench_fmnist.evaluation.inference import prepare_for_inference
from robustbench_fmnist.models import count_parameters, create_model

try:
    import e2cnn  # noqa: F401
except ImportError:
    HAVE_E2CNN = False
else:
    HAVE_E2CNN = True

# make setup installs the extra, so in CI its absence fails these tests instead of skipping them
needs_e2cnn = pytest.mark.skipif(not HAVE_E2CNN and not os.environ.get("CI"), reason="the e2cnn extra is not installed")
STEERABLE = ["c8_cnn_tiny", "c16_cnn_tiny"]


def _trained_a_little(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(name).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(model(torch.rand(16, 1, 28, 28)), torch.randint(0, 10, (16,)))
    loss.backward()
    optimizer.step()
    return model.eval()


@needs_e2cnn
@pytest.mark.parametrize("name", STEERABLE)
def test_the_logits_of_an_image_and_of_its_quarter_turns_agree_to_float_rounding(name: str) -> None:
    model = _trained_a_little(name)
    images = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        logits = [model(torch.rot90(images, r, dims=(-2, -1))) for r in range(4)]
    for turned in logits[1:]:
        torch.testing.assert_close(turned, logits[0], rtol=1e-4, atol=1e-4)


@needs_e2cnn
@pytest.mark.parametrize("name", STEERABLE)
def test_the_inference_path_runs_the_exported_plain_torch_network(name: str) -> None:
    model = _trained_a_little(name)
    prepared = prepare_for_inference(model, torch.device("cpu"), compile="never")
    from e2cnn.nn import EquivariantModule

    # e2cnn's layers exported to Conv2d and BatchNorm2d (then folded) and max-pools; its group pooling
    # exports to a plain torch module of its own
    assert not any(isinstance(m, EquivariantModule) for m in prepared.module.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in prepared.module.modules()), "BatchNorm folded"
    images = torch.rand(8, 1, 28, 28)
    with torch.inference_mode():
        torch.testing.assert_close(prepared(images.contiguous(memory_format=torch.channels_last)), model(images))


@needs_e2cnn
def test_a_checkpoint_holds_the_same_keys_in_either_mode_and_loads_into_a_fresh_model() -> None:
    model = _trained_a_little("c8_cnn_tiny")
    saved = model.state_dict()
    assert set(saved) == set(model.train().state_dict()) == set(create_model("c8_cnn_tiny").state_dict())
    fresh = create_model("c8_cnn_tiny")
    fresh.load_state_dict(saved)
    images = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(images), model.eval()(images))


@needs_e2cnn
@pytest.mark.parametrize(("name", "standard"), [("c8_cnn", "deep_cnn"), ("c16_cnn", "deep_cnn")])
def test_each_steerable_model_has_its_standard_models_parameters_within_20_percent(name: str, standard: str) -> None:
    ratio = count_parameters(create_model(name)) / count_parameters(create_model(standard))
    assert 0.8 <= ratio <= 1.2, f"{name} has {ratio:.2f}x {standard}'s parameters"


def test_without_the_extra_the_models_are_listed_and_building_one_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "e2cnn", None)  # import e2cnn now raises ImportError
    assert main(["ls", "models", "c*_cnn"]) == 0
    listed = capsys.readouterr().out
    assert "c8_cnn" in listed and "c16_cnn" in listed and "needs the e2cnn extra" in listed
    with pytest.raises(ConfigError, match=r"need the e2cnn extra: pip install 'robustbench_fmnist\[e2cnn\]'"):
        create_model("c8_cnn_tiny")


def test_running_a_steerable_model_without_the_extra_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "e2cnn", None)
    config = tmp_path / "c8.yaml"
    config.write_text("name: c8\nmodels: [c8_cnn]\nperturbations: [rotation]\n")
    assert main(["validate", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "need the e2cnn extra" in err[0] and "Traceback" not in err[0], err

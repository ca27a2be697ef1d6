"""Models from any framework as ONNX files: the same predictions as the torch model they came from, and bad files
refused in one line before any work."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from robustbench_fmnist.cli import main
from robustbench_fmnist.config import parse_config
from robustbench_fmnist.data import load_fashion_mnist
from robustbench_fmnist.evaluation.cells import perturb_cell, sweep_cells
from robustbench_fmnist.models import create_model
from robustbench_fmnist.models.onnx_model import OnnxModel
from robustbench_fmnist.orchestration.experiment import run_experiment
from robustbench_fmnist.perturbations import PERTURBATIONS
from robustbench_fmnist.training.resolution import resolve_model
from tests.conftest import SharedCheckpoint, requires_real_data

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (make setup installs it)")
pytest.importorskip("onnx", reason="the onnx extra is not installed (make setup installs it)")


def export(model: nn.Module, path: Path, *, batch: int | None = None, shape: tuple[int, ...] = (1, 28, 28)) -> Path:
    """`model` as an ONNX file taking float32 batches of `shape`: a free batch axis, or fixed at `batch`."""
    example = torch.rand(batch or 2, *shape)
    axes = None if batch else {"images": {0: "n"}, "scores": {0: "n"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice: it needs no onnxscript
        torch.onnx.export(
            model.eval(), (example,), str(path), input_names=["images"], output_names=["scores"],
            dynamic_axes=axes, dynamo=False,
        )  # fmt: skip
    return path


def onnx_model(path: Path, **entry: Any) -> OnnxModel:
    """The harness's model for an onnx: entry, built as a run builds it."""
    spec = parse_config(
        {"name": "t", "models": [{"name": "mine", "onnx": str(path), **entry}], "perturbations": ["rotation"]}
    )
    return resolve_model(spec.models[0]).build().eval()


class ChannelsLast(nn.Module):
    """A model that takes NHWC batches, as Keras and TensorFlow export them."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.permute(0, 3, 1, 2))


class ThreeChannels(nn.Module):
    """A model that takes RGB: the mean of its three channels, then a grey model."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.mean(1, keepdim=True))


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    model = create_model("baseline_cnn_tiny").eval()
    return model, export(model, tmp_path / "tiny.onnx")


@pytest.mark.slow
@requires_real_data
def test_the_onnx_export_of_baseline_cnn_gives_its_logits_on_every_image_of_a_suite_sweep(
    one_epoch_baseline: SharedCheckpoint, tmp_path: Path
) -> None:
    """2,000 test images through every perturbation of the suite at every severity: logits within 1e-4."""
    torch_model = one_epoch_baseline.model
    outside = onnx_model(export(torch_model, tmp_path / "baseline.onnx"))
    test = load_fashion_mnist().test
    images = test.images[:2000].unsqueeze(1).float().div(255)
    indices = torch.arange(2000)
    cells = sweep_cells([(name, None) for name in PERTURBATIONS.names()])
    assert len(cells) > 100
    compared = 0
    for cell in cells:
        shifted = perturb_cell(cell, images, seed=0, indices=indices) if cell.parameter is not None else images
        with torch.inference_mode():
            expected, got = torch_model(shifted), outside(shifted)
        gap = (expected - got).abs().max().item()
        assert gap <= 1e-4, f"{cell}: logits differ by {gap:.2e}"
        top2 = expected.topk(2, dim=1).values
        clear = (top2[:, 0] - top2[:, 1]) > 1e-4  # a tie within rounding may go either way
        assert torch.equal(expected.argmax(1)[clear], got.argmax(1)[clear]), cell
        compared += len(shifted)
    assert compared == 2000 * len(cells)


def test_a_file_fixed_at_batch_1_gives_the_same_scores_for_any_batch(
    tiny: tuple[nn.Module, Path], tmp_path: Path
) -> None:
    model, _ = tiny
    fixed = onnx_model(export(model, tmp_path / "one.onnx", batch=1))
    assert fixed.signature.batch == 1
    images = torch.rand(37, 1, 28, 28)
    with torch.inference_mode():
        torch.testing.assert_close(fixed(images), model(images), atol=1e-5, rtol=0)


def test_nhwc_three_channel_and_normalised_inputs_reach_the_model_as_it_expects(
    tiny: tuple[nn.Module, Path], tmp_path: Path
) -> None:
    model, _ = tiny
    images = torch.rand(20, 1, 28, 28)
    nhwc = onnx_model(export(ChannelsLast(model), tmp_path / "nhwc.onnx", shape=(28, 28, 1)), layout="nhwc")
    rgb = onnx_model(export(ThreeChannels(model), tmp_path / "rgb.onnx", shape=(3, 28, 28)), channels=3)
    normalised = onnx_model(tmp_path / "nhwc.onnx", layout="nhwc", normalize={"mean": 0.5, "std": 0.25})
    with torch.inference_mode():
        torch.testing.assert_close(nhwc(images), model(images), atol=1e-5, rtol=0)
        torch.testing.assert_close(rgb(images), model(images), atol=1e-5, rtol=0)
        torch.testing.assert_close(normalised(images), model((images - 0.5) / 0.25), atol=1e-4, rtol=0)


def test_an_onnx_entry_gives_the_results_of_its_torch_checkpoint(
    tiny_experiment: dict[str, Any], tiny: tuple[nn.Module, Path], tmp_path: Path
) -> None:
    """A model is a model: cells, adaptations and the worst case of the ONNX file equal the torch weights'."""
    model, path = tiny
    checkpoint = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), checkpoint)
    config = {
        **tiny_experiment,
        "models": [
            {"name": "outside", "onnx": str(path)},
            {"name": "inside", "architecture": "baseline_cnn_tiny", "checkpoint": str(checkpoint)},
        ],
        "adversaries": [{"name": "turns", "space": {"rotation": [-30, 30, 5]}, "search": "grid"}],
        "evaluation": {"batch_size": 64, "adaptation": ["none", "tta"], "tta": {"space": {"rotation": [-10, 10, 3]}}},
    }
    folder = run_experiment(parse_config(config))
    results = pd.read_csv(folder / "results.csv")
    columns = ["perturbation", "severity", "accuracy"]
    for suffix in ("", "+tta"):
        outside = results[results["model"] == f"outside{suffix}"][columns].reset_index(drop=True)
        inside = results[results["model"] == f"inside{suffix}"][columns].reset_index(drop=True)
        assert len(outside) == 8  # clean, brightness_up's 5 severities, rotation's 2
        pd.testing.assert_frame_equal(outside, inside)
    worst = pd.read_csv(folder / "adversaries.csv")
    by_model = {name: rows["n_correct"].tolist() for name, rows in worst.groupby("model")}
    assert by_model["outside"] == by_model["inside"]
    run = pd.read_json(folder / "run.json", typ="series")
    entry = next(m for m in run["models"] if m["name"] == "outside")
    assert entry["weights"] == "onnx" and entry["macs"] is None
    # the file's float initializers: the weights and the Normalize layer's two constants
    assert entry["parameters"] == sum(p.numel() for p in model.parameters()) + 2
    # verify builds the file's model again from the path the records name, and re-evaluates them
    assert main(["verify", str(folder), "--cache-dir", config["cache_dir"]]) == 0


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"train": {"epochs": 1}}, "models[0].train: an onnx: model is evaluated as the file gives it, with no train"),
        ({"checkpoint": "x.pt"}, "models[0].checkpoint: an onnx: model is evaluated as the file gives it"),
    ],
)
def test_keys_an_onnx_model_cannot_take_are_refused(
    entry: dict[str, Any], message: str, tiny: tuple[nn.Module, Path], write_yaml: Any, capsys: Any
) -> None:
    _, path = tiny
    yaml_path = write_yaml(
        {"name": "t", "models": [{"name": "m", "onnx": str(path), **entry}], "perturbations": ["rotation"]}
    )
    assert main(["validate", str(yaml_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_layout_without_an_onnx_file_is_refused(write_yaml: Any, capsys: Any) -> None:
    path = write_yaml(
        {"name": "t", "models": [{"name": "baseline_cnn", "layout": "nhwc"}], "perturbations": ["rotation"]}
    )
    assert main(["validate", str(path)]) == 2
    assert "models[0].layout: layout is for an onnx: or keras: model" in capsys.readouterr().err


class FiveScores(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :5]


class TwoInputs(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x + y).flatten(1)[:, :10]


def _bad_file(case: str, tmp_path: Path, tiny: tuple[nn.Module, Path]) -> tuple[Path, dict[str, Any], str]:
    """A bad file (and entry keys) for `case`, and what the one line must say."""
    model, path = tiny
    if case == "missing":
        return tmp_path / "absent.onnx", {}, "absent.onnx does not exist; give the path of an .onnx file"
    if case == "not onnx":
        not_onnx = tmp_path / "weights.onnx"
        not_onnx.write_bytes(b"PK\x03\x04 a zip, not a protobuf")
        return not_onnx, {}, "is not an ONNX model ONNX Runtime can load"
    if case == "32x32":
        pooled = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 10))
        return (
            export(pooled, tmp_path / "big.onnx", shape=(1, 32, 32)),
            {},
            "has shape [n, 1, 32, 32]; expected [N, C, 28, 28] (nchw)",
        )
    if case == "five scores":
        return export(FiveScores(), tmp_path / "five.onnx"), {}, "expected [N, 10] class scores"
    if case == "two inputs":
        two = tmp_path / "two.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pair = (torch.rand(2, 1, 28, 28), torch.rand(2, 1, 28, 28))
            torch.onnx.export(TwoInputs(), pair, str(two), dynamo=False)
        return two, {}, "takes 2 inputs"
    if case == "rgb unasked":
        rgb = export(ThreeChannels(model), tmp_path / "rgb.onnx", shape=(3, 28, 28))
        return rgb, {}, "the model takes 3 channel(s) and the entry says 1; add channels: 3 to repeat the grey channel"
    if case == "nhwc unasked":
        nhwc = export(ChannelsLast(model), tmp_path / "nhwc.onnx", shape=(28, 28, 1))
        return nhwc, {}, "is the layout nhwc? (layout: nhwc)"
    assert case == "nchw said nhwc"
    return path, {"layout": "nhwc"}, "expected [N, 28, 28, C] (nhwc)"


@pytest.mark.parametrize(
    "case",
    ["missing", "not onnx", "32x32", "five scores", "two inputs", "rgb unasked", "nhwc unasked", "nchw said nhwc"],
)
def test_a_bad_onnx_file_is_one_line_before_any_work(
    case: str, tiny: tuple[nn.Module, Path], tmp_path: Path, write_yaml: Any, capsys: Any
) -> None:
    path, entry, message = _bad_file(case, tmp_path, tiny)
    yaml_path = write_yaml(
        {"name": "t", "models": [{"name": "m", "onnx": str(path), **entry}], "perturbations": ["rotation"]}
    )
    assert main(["validate", str(yaml_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"models[0].onnx: {path}" in err and message in err, err
    assert len(err.splitlines()) == 1


def test_without_the_extra_an_onnx_entry_says_how_to_install_it(
    tiny: tuple[nn.Module, Path], write_yaml: Any, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, path = tiny
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    yaml_path = write_yaml({"name": "t", "models": [{"name": "m", "onnx": str(path)}], "perturbations": ["rotation"]})
    assert main(["validate", str(yaml_path)]) == 2
    assert "ONNX models need the onnx extra: pip install 'robustbench_fmnist[onnx]'" in capsys.readouterr().err


def test_a_gradient_search_on_an_onnx_model_is_refused(
    tiny: tuple[nn.Module, Path], write_yaml: Any, capsys: Any
) -> None:
    _, path = tiny
    config = {
        "name": "t",
        "models": [{"name": "m", "onnx": str(path)}],
        "perturbations": ["rotation"],
        "adversaries": [{"name": "pgd", "space": {"brightness": [-0.3, 0.3, 7]}, "search": "gradient"}],
    }
    assert main(["validate", str(write_yaml(config))]) == 2
    assert "adversaries pgd search by gradient, which ONNX Runtime cannot give" in capsys.readouterr().err


def test_the_model_copies_and_pickles_without_its_session(tiny: tuple[nn.Module, Path]) -> None:
    """Inference copies (deepcopy) and Ray (pickle) need a model whose ONNX Runtime session is built on use."""
    import copy
    import pickle

    _, path = tiny
    outside = onnx_model(path)
    images = torch.rand(8, 1, 28, 28)
    with torch.inference_mode():
        first = outside(images)  # builds the session
        copied, pickled = copy.deepcopy(outside), pickle.loads(pickle.dumps(outside))
        torch.testing.assert_close(copied(images), first)
        torch.testing.assert_close(pickled(images), first)
    assert np.array_equal(pickled.state_dict()["onnx_bytes"].numpy(), np.frombuffer(path.read_bytes(), np.uint8))


def test_an_onnx_entry_read_back_from_its_dump_is_the_same(tiny: tuple[nn.Module, Path]) -> None:
    """run.json holds the config with every default spelt out; reproduce parses it again."""
    _, path = tiny
    entry = {"name": "m", "onnx": str(path), "layout": "nchw", "normalize": {"mean": 0.5, "std": 0.25}}
    config = parse_config({"name": "t", "models": [entry, "baseline_cnn"], "perturbations": ["rotation"]})
    assert parse_config(config.model_dump(mode="json")).models == config.models

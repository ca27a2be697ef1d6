from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch import nn

from robustbench_fmnist.evaluation.cells import CLEAN, perturbation_cells, sweep_cells
from robustbench_fmnist.evaluation.sweep import evaluate_cells
from robustbench_fmnist.models import create_model
from robustbench_fmnist.perturbations import apply_perturbation
from tests.conftest import synthetic_split

CPU = torch.device("cpu")


class ConstantClass(nn.Module):
    def __init__(self, label: int) -> None:
        super().__init__()
        self.label = label
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(x), 10, device=x.device) + self.dummy
        logits[:, self.label] = 1.0
        return logits


@pytest.fixture(scope="module")
def test_set() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = synthetic_split(150, seed=4)
    return torch.from_numpy(images).float().div(255).unsqueeze(1), torch.from_numpy(labels).long()


def test_sweep_cells_start_clean_and_skip_severity_zero() -> None:
    cells = sweep_cells([("brightness_up", [0, 1, 5]), ("rotation", [2])])
    assert [(c.perturbation, c.severity) for c in cells] == [
        (CLEAN, 0), ("brightness_up", 1), ("brightness_up", 5), ("rotation", 2)
    ]  # fmt: skip
    assert cells[0].parameter is None and cells[2].parameter == 0.5 and cells[3].parameter == 30
    # None means the whole table; fixed probes have fewer levels
    assert [c.severity for c in sweep_cells([("turn", None)])[1:]] == [1, 2, 3]


def test_perturbation_cells_take_custom_values_and_reject_bad_ones() -> None:
    cells = perturbation_cells("rotation", values=[0, 10, 20])
    assert [(c.severity, c.parameter) for c in cells] == [(1, 0.0), (2, 10.0), (3, 20.0)]
    with pytest.raises(ValueError, match="outside"):
        perturbation_cells("rotation", values=[400])
    with pytest.raises(ValueError, match=r"severity must be an integer 0\.\.1"):
        perturbation_cells("hflip", severities=[2])


def test_accuracy_is_exact_for_a_model_with_known_answers(test_set: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = test_set
    results, outputs = evaluate_cells(
        ConstantClass(3), "const", images, labels, sweep_cells([("contrast_down", [5])]), device=CPU, batch_size=40
    )
    expected = int((labels == 3).sum())
    for result in results:
        assert result.n_images == 150 and result.n_correct == expected
        assert result.accuracy == pytest.approx(expected / 150) and result.error == pytest.approx(1 - expected / 150)
    assert all(torch.equal(o.predictions, torch.full((150,), 3, dtype=torch.uint8)) for o in outputs.values())
    # logits 1 for class 3 and 0 elsewhere: softmax e / (e + 9) on class 3, 1 / (e + 9) on the rest
    top, other = math.e / (math.e + 9), 1 / (math.e + 9)
    for o in outputs.values():
        torch.testing.assert_close(o.confidence, torch.full((150,), top))
        torch.testing.assert_close(o.true_probability, torch.where(labels == 3, top, other).float())


def test_results_do_not_depend_on_batch_size(test_set: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = test_set
    torch.manual_seed(0)
    model = create_model("deep_cnn_tiny").eval()
    cells = sweep_cells([("rotation", [1, 4]), ("brightness_up", [2])])
    small, pred_small = evaluate_cells(model, "m", images, labels, cells, device=CPU, batch_size=7, seed=3)
    large, pred_large = evaluate_cells(model, "m", images, labels, cells, device=CPU, batch_size=150, seed=3)
    assert [r.n_correct for r in small] == [r.n_correct for r in large]
    assert all(torch.equal(pred_small[c].predictions, pred_large[c].predictions) for c in cells)
    assert all(torch.allclose(pred_small[c].confidence, pred_large[c].confidence, atol=1e-5) for c in cells)


def test_each_cell_sees_the_perturbed_images(test_set: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = test_set
    seen: list[torch.Tensor] = []

    class Recorder(ConstantClass):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.clone())
            return super().forward(x)

    cells = perturbation_cells("rotation", severities=[3]) + perturbation_cells(
        "rotation", severities=[3], backend="albumentations", label="rotation@albumentations"
    )
    evaluate_cells(Recorder(0), "rec", images, labels, cells, device=CPU, batch_size=150, seed=1)
    expected = apply_perturbation("rotation", images, 3, seed=1)
    torch.testing.assert_close(seen[0], expected)
    torch.testing.assert_close(seen[1], expected, rtol=0, atol=1e-4)  # the albumentations backend, same draws


def test_rows_are_tidy(test_set: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = test_set
    results, _ = evaluate_cells(
        ConstantClass(1), "c", images, labels, sweep_cells([("brightness_up", [1, 2])]), device=CPU
    )
    frame = pd.DataFrame([r.to_row() for r in results])
    assert list(frame.perturbation) == ["clean", "brightness_up", "brightness_up"]
    assert list(frame.severity) == [0, 1, 2] and frame.model.unique().tolist() == ["c"]


def test_folding_batch_norm_keeps_the_outputs_and_the_original(test_set: tuple[torch.Tensor, torch.Tensor]) -> None:
    from robustbench_fmnist.models.fusion import fold_batch_norm

    torch.manual_seed(0)
    model = create_model("deep_cnn_tiny")
    model.train()
    with torch.no_grad():  # give the BN layers non-trivial running statistics
        for _ in range(3):
            model(test_set[0][:50] * 2)
    model.eval()
    folded = fold_batch_norm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(test_set[0]), model(test_set[0]), rtol=1e-4, atol=1e-4)

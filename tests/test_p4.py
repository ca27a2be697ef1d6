"""The p4 group CNNs: exactly invariant to quarter turns of the image, equivariant layer by layer, sized fairly."""

from __future__ import annotations

import pytest
import torch

from robustbench_fmnist.evaluation.inference import prepare_for_inference
from robustbench_fmnist.models import count_parameters, create_model
from robustbench_fmnist.models.p4 import ROTATIONS, GroupConv, LiftingConv

P4_MODELS = ["p4_cnn", "p4_deep_cnn", "p4_cnn_tiny", "p4_deep_cnn_tiny"]


def _turn(x: torch.Tensor, quarter_turns: int) -> torch.Tensor:
    return torch.rot90(x, quarter_turns, dims=(-2, -1))


def _roll_rotations(maps: torch.Tensor, shift: int) -> torch.Tensor:
    """(N, C * 4, H, W) with each channel's rotation axis rolled by `shift`."""
    return torch.roll(maps.unflatten(1, (-1, ROTATIONS)), shifts=shift, dims=2).flatten(1, 2)


@pytest.mark.parametrize("name", P4_MODELS)
def test_the_logits_of_an_image_and_of_its_quarter_turns_are_the_same(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name).double()
    with torch.no_grad():  # BatchNorm with statistics of its own, not the initial ones
        model.train()
        model(torch.rand(32, 1, 28, 28, dtype=torch.float64))
    model.eval()
    images = torch.rand(6, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        logits = [model(_turn(images, r)) for r in range(4)]
    for turned in logits[1:]:
        torch.testing.assert_close(turned, logits[0], rtol=0, atol=1e-12)
    assert not torch.allclose(logits[0][0], logits[0][1])  # and it does tell images apart


def test_in_float32_the_quarter_turns_differ_by_rounding_only_and_give_the_same_classes() -> None:
    torch.manual_seed(1)
    model = create_model("p4_cnn").eval()
    images = torch.rand(64, 1, 28, 28)
    with torch.no_grad():
        logits = [model(_turn(images, r)) for r in range(4)]
    for turned in logits[1:]:
        torch.testing.assert_close(turned, logits[0], rtol=1e-5, atol=1e-5)
        assert torch.equal(turned.argmax(1), logits[0].argmax(1))


def test_an_ordinary_cnn_is_not_invariant_which_the_check_above_would_see() -> None:
    torch.manual_seed(0)
    model = create_model("baseline_cnn").double().eval()
    images = torch.rand(6, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        assert (model(_turn(images, 1)) - model(images)).abs().max() > 1e-3


def test_each_layer_turns_its_maps_and_rolls_their_rotation_axis_with_the_input() -> None:
    torch.manual_seed(0)
    lifting, group = LiftingConv(2, 3).double(), GroupConv(3, 5).double()
    x = torch.rand(2, 2, 8, 8, dtype=torch.float64)
    lifted, lifted_turned = lifting(x), lifting(_turn(x, 1))
    torch.testing.assert_close(lifted_turned, _roll_rotations(_turn(lifted, 1), 1), rtol=0, atol=1e-12)
    out, out_turned = group(lifted), group(lifted_turned)
    torch.testing.assert_close(out_turned, _roll_rotations(_turn(out, 1), 1), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("name", "standard"), [("p4_cnn", "baseline_cnn"), ("p4_deep_cnn", "deep_cnn")])
def test_each_p4_model_has_its_standard_models_parameters_within_20_percent(name: str, standard: str) -> None:
    ratio = count_parameters(create_model(name)) / count_parameters(create_model(standard))
    assert 0.8 <= ratio <= 1.2, f"{name} has {ratio:.2f}x {standard}'s parameters"


def test_an_input_a_quarter_turn_does_not_map_onto_itself_is_refused_in_one_line() -> None:
    model = create_model("p4_cnn_tiny").eval()
    with pytest.raises(ValueError, match=r"square inputs whose side divides by 4 \(28 x 28 does\), got 28 x 30"):
        model(torch.rand(1, 1, 28, 30))
    with pytest.raises(ValueError, match="got 30 x 30"):
        model(torch.rand(1, 1, 30, 30))


def test_a_p4_model_trains_and_goes_through_the_inference_path() -> None:
    torch.manual_seed(0)
    model = create_model("p4_cnn_tiny").to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    images, labels = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    model.eval()
    prepared = prepare_for_inference(model, torch.device("cpu"), compile="never")
    with torch.inference_mode():
        torch.testing.assert_close(prepared(images.contiguous(memory_format=torch.channels_last)), model(images))

"""The spatial transformer front end: the identity at the start, able to undo a turn, 28 x 28 only."""

from __future__ import annotations

import pytest
import torch

from robustbench_fmnist.models import count_parameters, create_model


def test_at_initialisation_stn_cnn_is_its_baseline_behind_the_identity() -> None:
    torch.manual_seed(0)
    model = create_model("stn_cnn").eval()
    transformer, body = model
    images = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(transformer(images), images, rtol=0, atol=1e-5)
        torch.testing.assert_close(model(images), body(images), rtol=0, atol=1e-5)
    assert 1.0 <= count_parameters(model) / count_parameters(create_model("baseline_cnn")) <= 1.2


def test_a_transform_can_undo_a_quarter_turn_to_float_rounding() -> None:
    torch.manual_seed(0)
    transformer = create_model("stn_cnn")[0].eval()
    # affine_grid's theta maps output coordinates to input ones: reading the turned image along the
    # turned coordinates gives back the original (pixel centres land on pixel centres)
    with torch.no_grad():
        transformer.localisation[-1].bias.copy_(torch.tensor([0.0, 1.0, 0.0, -1.0, 0.0, 0.0]))
    images = torch.rand(4, 1, 28, 28)
    turned = torch.rot90(images, 1, dims=(-2, -1))
    with torch.no_grad():
        undone = transformer(turned)
    assert not torch.allclose(turned, images)
    torch.testing.assert_close(undone, images, rtol=0, atol=1e-5)


def test_another_input_size_is_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match="reads 28 x 28 images, got 32 x 32"):
        create_model("stn_cnn_tiny")(torch.rand(1, 1, 32, 32))

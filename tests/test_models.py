from __future__ import annotations

import copy

import pytest
import torch

from robustbench_fmnist.models import MODELS, count_macs, count_parameters, create_model, register_model
from robustbench_fmnist.models.baseline import PoolAlignedConv2d
from robustbench_fmnist.models.registry import FMNIST_MEAN, FMNIST_STD, Normalize


@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_model_builds_and_runs_forward(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name).eval()
    with torch.no_grad():
        logits = model(torch.rand(3, 1, 28, 28))
    assert logits.shape == (3, 10)
    assert torch.isfinite(logits).all()
    assert count_parameters(model) > 0 and count_macs(model) > 0
    assert MODELS.get(name).description


@pytest.mark.parametrize("name", [n for n in MODELS.names() if "tiny" not in MODELS.get(n).tags])
def test_every_model_family_has_a_tiny_variant(name: str) -> None:
    family = name.rsplit("_", 1)[0]
    tiny = [n for n in MODELS.names(f"{family}*") if "tiny" in MODELS.get(n).tags]
    assert tiny, f"{name} has no tiny test variant"
    smallest = min(count_parameters(create_model(n)) for n in tiny)
    assert smallest < count_parameters(create_model(name)) / 10


def test_baseline_is_the_classic_two_block_cnn() -> None:
    model = create_model("baseline_cnn")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 32, (3, 3)), (32, 64, (3, 3))]
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == 2
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [lin.out_features for lin in linears] == [128, 10]
    assert any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    # hand count: conv 1*32*9+32, conv 32*64*9+64, dense 1600*128+128, head 128*10+10
    assert count_parameters(model) == 320 + 18_496 + 204_928 + 1_290


def test_deep_cnn_is_vgg_style_with_batch_norm() -> None:
    model = create_model("deep_cnn")
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) >= 6
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) >= 6


def test_macs_match_a_hand_count_for_a_single_linear_layer() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    assert count_macs(model) == 784 * 10


def test_models_normalise_their_input_internally() -> None:
    norm = Normalize()
    x = torch.full((1, 1, 2, 2), FMNIST_MEAN + FMNIST_STD)
    assert torch.allclose(norm(x), torch.ones_like(x))


def test_kwargs_reach_the_builder() -> None:
    model = create_model("baseline_cnn", width=8, hidden=32)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert count_parameters(model) < count_parameters(create_model("baseline_cnn"))


def test_register_model_uses_the_function_name_and_docstring() -> None:
    @register_model()
    def _test_only_linear() -> torch.nn.Module:
        """A linear probe for tests."""
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))

    try:
        entry = MODELS.get("_test_only_linear")
        assert entry.description == "A linear probe for tests." and entry.recipe.epochs >= 1
    finally:
        MODELS._entries.pop("_test_only_linear")


def test_pool_aligned_conv_changes_neither_outputs_nor_gradients() -> None:
    """The baseline skips the conv outputs its max-pool drops; a plain-Conv2d copy must agree exactly."""
    torch.manual_seed(0)
    model = create_model("baseline_cnn").eval()
    plain = copy.deepcopy(model)
    for index, layer in enumerate(plain):
        if isinstance(layer, PoolAlignedConv2d):
            conv = torch.nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size)
            conv.load_state_dict(layer.state_dict())
            plain[index] = conv
    assert not any(isinstance(m, PoolAlignedConv2d) for m in plain.modules())
    images = torch.rand(8, 1, 28, 28)
    torch.testing.assert_close(model(images), plain(images), rtol=1e-5, atol=1e-5)
    for net in (model, plain):
        net.zero_grad()
        net(images).square().sum().backward()
    for ours, theirs in zip(model.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-5)
    assert count_macs(model) < count_macs(plain)
    assert list(model.state_dict()) == list(plain.state_dict())  # checkpoints load either way


def test_pool_aligned_conv_rejects_padded_or_strided_convolutions() -> None:
    with pytest.raises(ValueError, match="unpadded stride-1"):
        PoolAlignedConv2d(1, 4, 3, padding=1)

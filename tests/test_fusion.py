"""The inference rewrite that fuses a small conv, its 2x2 max-pool and ReLU for torch.compile."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustbench_fmnist.evaluation.throughput import inference_model
from robustbench_fmnist.models import create_model
from robustbench_fmnist.models.baseline import PoolAlignedConv2d
from robustbench_fmnist.models.fusion import ConvPoolReLU, fuse_conv_pool


@pytest.mark.parametrize("pool_first", [True, False])
@pytest.mark.parametrize(
    ("in_channels", "kernel", "size", "bias"), [(1, 3, 28, True), (3, 3, 27, True), (1, 5, 17, False)]
)
def test_conv_pool_relu_equals_the_modules_it_replaces(
    pool_first: bool, in_channels: int, kernel: int, size: int, bias: bool
) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(in_channels, 8, kernel, bias=bias)
    block = (
        nn.Sequential(conv, nn.MaxPool2d(2), nn.ReLU())
        if pool_first
        else nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2))
    )
    images = torch.randn(4, in_channels, size, size)
    fused = ConvPoolReLU(conv, torch.contiguous_format)
    expected = block(images)
    got = fused(images)
    assert got.shape == expected.shape  # odd sizes floored, as MaxPool2d does
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_conv_pool_relu_writes_the_requested_memory_format() -> None:
    conv = nn.Conv2d(1, 8, 3)
    out = ConvPoolReLU(conv, torch.channels_last)(torch.rand(2, 1, 28, 28))
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_fusing_the_baseline_keeps_its_outputs_and_leaves_the_original_alone() -> None:
    torch.manual_seed(0)
    model = create_model("baseline_cnn").eval()
    fused = fuse_conv_pool(model)
    blocks = [m for m in fused.modules() if isinstance(m, ConvPoolReLU)]
    assert len(blocks) == 1  # the 1-channel first layer; conv2 (288 taps) stays with oneDNN
    assert sum(isinstance(m, nn.Conv2d) for m in fused.modules()) == 1
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 2
    # conv2 is pool-aligned and reads 12 of the 13 pooled rows, so only those are computed
    images = torch.rand(16, 1, 28, 28)
    assert blocks[0](fused[0](images)).shape[-2:] == (12, 12)
    with torch.no_grad():
        torch.testing.assert_close(fused(images), model(images), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "block",
    [
        nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(2), nn.ReLU()),
        nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.MaxPool2d(2), nn.ReLU()),
        nn.Sequential(nn.Conv2d(4, 8, 3), nn.MaxPool2d(2), nn.ReLU()),  # 36 taps: oneDNN's job
        nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(3), nn.ReLU()),
        nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(2, ceil_mode=True), nn.ReLU()),
        nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(2), nn.GELU()),
        nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()),
    ],
)
def test_blocks_the_rewrite_cannot_reproduce_are_left_alone(block: nn.Sequential) -> None:
    fused = fuse_conv_pool(block)
    assert not any(isinstance(m, ConvPoolReLU) for m in fused.modules())
    images = torch.rand(2, block[0].in_channels, 20, 20)
    torch.testing.assert_close(fused(images), block(images))


def test_consumer_crop_only_follows_a_pool_aligned_conv() -> None:
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(2), nn.ReLU(), nn.Conv2d(4, 4, 3))
    aligned = nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(2), nn.ReLU(), PoolAlignedConv2d(4, 4, 3))
    images = torch.rand(2, 1, 28, 28)
    assert fuse_conv_pool(plain)[0](images).shape[-2:] == (13, 13)
    assert fuse_conv_pool(aligned)[0](images).shape[-2:] == (12, 12)


@pytest.mark.slow
def test_compiled_inference_matches_eager() -> None:
    """The rewrite is applied under torch.compile on the CPU; its logits must be the eager model's."""
    torch.manual_seed(0)
    model = create_model("baseline_cnn").eval()
    cpu = torch.device("cpu")
    images = torch.rand(32, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    eager = inference_model(model, cpu, channels_last=True, compiled=False)
    compiled = inference_model(model, cpu, channels_last=True, compiled=True)
    assert compiled.compiled and any(isinstance(m, ConvPoolReLU) for m in compiled.module.modules())
    with torch.inference_mode():
        torch.testing.assert_close(compiled(images), eager(images), rtol=1e-4, atol=1e-4)

"""Inference rewrites that let torch.compile fuse a model's first conv block into one kernel.

A convolution with one input channel (Fashion-MNIST's first layer) is memory-bound, not
compute-bound: oneDNN writes its full-resolution output (88 KB per image for 32 channels on
26x26), and the max-pool reads it all back to keep a quarter. Written instead as a sum of
shifted input slices times per-tap weight vectors, maxed over the four pool offsets, the whole
conv + pool + ReLU block is pointwise arithmetic that inductor generates as one loop: it reads
the 28x28 input and writes only the pooled output. On the 2-core CPU here that took the
compiled baseline from about 28k to about 37k images/s (issue 5's closing note).

Eager PyTorch would run the same expression as dozens of separate tensor ops, so the rewrite is
only for compiled inference (`throughput.inference_model` applies it there).
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from robustbench_fmnist.models.baseline import PoolAlignedConv2d

# The generated loop does taps x 4 multiply-adds per pooled output with no blocking or reuse: a
# win for memory-bound first layers (measured for the baseline's 9 taps), while compute-bound
# layers (conv2's 288 taps) belong to oneDNN's blocked kernels. Layers beyond an RGB 3x3's 27 taps
# are left alone; only the 9-tap case was measured.
MAX_FUSED_TAPS = 27


class ConvPoolReLU(nn.Module):
    """Conv2d (stride 1, unpadded) -> MaxPool2d(2) -> ReLU, as one expression inductor fuses.

    Equal to the three modules it replaces up to float rounding (the sum runs in a different
    order); the pool floors odd sizes, as MaxPool2d does. The bias is added after the max,
    which is exact: it is the same for every position of a pooling window.
    """

    def __init__(
        self, conv: nn.Conv2d, memory_format: torch.memory_format, consumer_kernel: tuple[int, int] | None = None
    ) -> None:
        super().__init__()
        if not fusable_conv(conv):
            raise ValueError(f"ConvPoolReLU needs a small stride-1 unpadded Conv2d, got {conv}")
        weight = conv.weight.detach()
        # tap-major (kh, kw, c_in, c_out): each tap's weights over output channels are contiguous,
        # which is the innermost loop of a channels_last output and so vectorises
        self.register_buffer("taps", weight.permute(2, 3, 1, 0).contiguous())
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels)
        self.register_buffer("bias", bias.clone())
        self.memory_format = memory_format
        # a PoolAlignedConv2d next reads only an even number of rows and columns: compute just those
        self.consumer_kernel = consumer_kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel_h, kernel_w, in_channels, out_channels = self.taps.shape
        out_h, out_w = (x.shape[-2] - kernel_h + 1) // 2, (x.shape[-1] - kernel_w + 1) // 2
        if self.consumer_kernel is not None:
            out_h = PoolAlignedConv2d.used_input_size(out_h, self.consumer_kernel[0])
            out_w = PoolAlignedConv2d.used_input_size(out_w, self.consumer_kernel[1])
        pooled = None
        for dy, dx in itertools.product((0, 1), repeat=2):
            conv = None
            for i, j, c in itertools.product(range(kernel_h), range(kernel_w), range(in_channels)):
                # the conv's outputs at rows dy, dy+2, ... and columns dx, dx+2, ... of each window
                window = x[:, c : c + 1, dy + i : dy + i + 2 * out_h - 1 : 2, dx + j : dx + j + 2 * out_w - 1 : 2]
                term = window * self.taps[i, j, c].view(1, out_channels, 1, 1)
                conv = term if conv is None else conv + term
            pooled = conv if pooled is None else torch.maximum(pooled, conv)
        out = torch.relu(pooled + self.bias.view(1, out_channels, 1, 1))
        return out.contiguous(memory_format=self.memory_format)


def fusable_conv(module: nn.Module) -> bool:
    """Whether `module` is a conv ConvPoolReLU can stand in for (stride 1, unpadded, few taps)."""
    return (
        isinstance(module, nn.Conv2d)
        and module.stride == (1, 1)
        and module.padding == (0, 0)
        and module.dilation == (1, 1)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and module.in_channels * module.kernel_size[0] * module.kernel_size[1] <= MAX_FUSED_TAPS
    )


def _is_pool2(module: nn.Module) -> bool:
    def pair(value: int | tuple[int, ...]) -> tuple[int, ...]:
        return tuple(value) if isinstance(value, tuple | list) else (value, value)

    return (
        isinstance(module, nn.MaxPool2d)
        and pair(module.kernel_size) == (2, 2)
        and pair(module.stride or module.kernel_size) == (2, 2)
        and pair(module.padding) == (0, 0)
        and pair(module.dilation) == (1, 1)
        and not module.ceil_mode
        and not module.return_indices
    )


def fuse_conv_pool(model: nn.Module, memory_format: torch.memory_format = torch.channels_last) -> nn.Module:
    """A copy of `model` whose Sequential runs of small conv, 2x2 max-pool and ReLU (in either
    order of pool and ReLU, which commute) are one ConvPoolReLU each. For compiled inference;
    the caller's model is not touched."""
    fused = copy.deepcopy(model)
    _fuse_in_place(fused, memory_format)
    return fused


def _fuse_in_place(module: nn.Module, memory_format: torch.memory_format) -> None:
    for child in module.children():
        _fuse_in_place(child, memory_format)
    if not isinstance(module, nn.Sequential):
        return
    names = list(module._modules)
    for index, (first, second, third) in enumerate(zip(names, names[1:], names[2:], strict=False)):
        conv, a, b = (module._modules[n] for n in (first, second, third))
        pool_and_relu = (_is_pool2(a) and isinstance(b, nn.ReLU)) or (isinstance(a, nn.ReLU) and _is_pool2(b))
        if fusable_conv(conv) and pool_and_relu:
            after = [module._modules[n] for n in names[index + 3 :] if not isinstance(module._modules[n], nn.Identity)]
            consumer = after[0] if after else None
            consumer_kernel = consumer.kernel_size if isinstance(consumer, PoolAlignedConv2d) else None
            module._modules[first] = ConvPoolReLU(conv, memory_format, consumer_kernel)
            module._modules[second] = nn.Identity()
            module._modules[third] = nn.Identity()


def inference_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` for inference: exported to plain torch modules where it can be (`inference_module()`, as
    the steerable CNNs give), then with BatchNorm folded. The caller's model is not touched."""
    export = getattr(model, "inference_module", None)
    return fold_batch_norm(export() if callable(export) else model)


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """An inference copy of `model` with each Conv2d directly followed by BatchNorm2d folded into one conv.

    Equivalent in eval mode (up to float rounding) and saves a memory-bound pass per BN layer,
    about a third of a VGG-style CNN's CPU inference time. Only nn.Sequential chains are
    rewritten; other modules are copied unchanged. The caller's model is not touched.
    """
    folded = copy.deepcopy(model).eval()
    _fold_in_place(folded)
    return folded


def _fold_in_place(module: nn.Module) -> None:
    for child in module.children():
        _fold_in_place(child)
    if not isinstance(module, nn.Sequential):
        return
    names = list(module._modules)
    for first, second in itertools.pairwise(names):
        conv, norm = module._modules[first], module._modules[second]
        if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats:
            module._modules[first] = fuse_conv_bn_eval(conv, norm)
            module._modules[second] = nn.Identity()

"""Blur: Gaussian (defocus-like) and linear motion blur.

Borders follow OpenCV's default, BORDER_REFLECT_101 (`dcb|abcd|cba`), which albumentations
uses too. On 28x28 images a separable blur is fastest as two small matrix products with the
border folded into the matrix; a per-image motion kernel as one depthwise convolution.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from robustbench_fmnist.perturbations.random import ImageRandom
from robustbench_fmnist.perturbations.registry import register_perturbation


def reflect101(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map out-of-range indices back into 0..size-1 as OpenCV's BORDER_REFLECT_101 does."""
    period = 2 * (size - 1)
    index = index.remainder(period) if period else torch.zeros_like(index)
    return torch.where(index >= size, period - index, index)


def replicate(index: torch.Tensor, size: int) -> torch.Tensor:
    """OpenCV's BORDER_REPLICATE (`aaa|abcd|ddd`)."""
    return index.clamp(0, size - 1)


def gaussian_kernel_1d(sigma: float, size: int) -> torch.Tensor:
    """cv2.getGaussianKernel(size, sigma) in float64: normalised exp(-t^2 / 2 sigma^2)."""
    taps = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    weights = torch.exp(-(taps**2) / (2.0 * sigma**2))
    return weights / weights.sum()


def gaussian_kernel_size(sigma: float) -> int:
    """2 * ceil(3 sigma) + 1 taps: the kernel holds 99.7 % of the Gaussian's mass."""
    return 2 * math.ceil(3.0 * sigma) + 1


@lru_cache(maxsize=64)
def filter_matrix(kernel: tuple[float, ...], size: int, border: str = "reflect101") -> torch.Tensor:
    """(size, size) float64 matrix B with (B @ x) = the 1-D correlation of x with `kernel`."""
    radius = len(kernel) // 2
    rows = torch.arange(size).repeat_interleave(len(kernel))
    taps = torch.arange(len(kernel)).repeat(size)
    fold = reflect101 if border == "reflect101" else replicate
    cols = fold(rows + taps - radius, size)
    matrix = torch.zeros(size, size, dtype=torch.float64)
    matrix.index_put_((rows, cols), torch.tensor(kernel, dtype=torch.float64)[taps], accumulate=True)
    return matrix


def separable_filter(images: torch.Tensor, kernel: torch.Tensor, border: str = "reflect101") -> torch.Tensor:
    """Filter rows and columns of every image with the same 1-D kernel; dtype and device kept."""
    height, width = images.shape[-2:]
    taps = tuple(kernel.tolist())
    rows = filter_matrix(taps, height, border).to(device=images.device, dtype=torch.float32)
    cols = filter_matrix(taps, width, border).to(device=images.device, dtype=torch.float32)
    return (rows @ images.float() @ cols.T).to(images.dtype)


# CIFAR-10-C and Tiny-ImageNet-C scale ImageNet-C's sigmas down with the image; on 28 pixels
# these run from a slight softening to strokes and textures merging
@register_perturbation(
    levels=(0.5, 0.75, 1.0, 1.5, 2.0), identity=0.0, unit="kernel sigma (pixels)", family="blur",
    values_key="sigmas", bounds=(0.0, 10.0),
)  # fmt: skip
def gaussian_blur(images: torch.Tensor, sigma: float, rng: ImageRandom) -> torch.Tensor:
    """Gaussian blur, 2*ceil(3 sigma)+1 taps, mirrored border (an out-of-focus lens)."""
    kernel = gaussian_kernel_1d(sigma, gaussian_kernel_size(sigma))
    return separable_filter(images, kernel).clamp_(0.0, 1.0)


MOTION_ANGLES = tuple(22.5 * i for i in range(8))  # a line is symmetric, so 0..180 covers every direction


@lru_cache(maxsize=64)
def motion_kernel(length: int, angle: float) -> torch.Tensor:
    """(length, length) line kernel through the centre, normalised to sum 1.

    The same rasterisation as albumentations' `create_motion_kernel` with a centred,
    unshifted line: `length` points along the direction, rounded half-to-even, deduplicated.
    """
    centre = length // 2
    t = torch.linspace(-float(centre), float(centre), length, dtype=torch.float64)
    radians = math.radians(angle)
    xs = torch.round(centre + math.cos(radians) * t).clamp(0, length - 1).long()
    ys = torch.round(centre + math.sin(radians) * t).clamp(0, length - 1).long()
    kernel = torch.zeros(length, length, dtype=torch.float64)
    kernel[ys, xs] = 1.0
    return kernel / kernel.sum()


def motion_directions(rng: ImageRandom) -> torch.Tensor:
    """(N,) positions in MOTION_ANGLES, drawn per image."""
    return rng.choice(len(MOTION_ANGLES)).cpu()


def motion_kernel_size(length: float) -> int:
    return int(length) if int(length) % 2 == 1 else int(length) + 1


def correlate_per_image(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Correlate image n with kernels[n] (N, k, k), mirrored border, as OpenCV's filter2D does."""
    count, channels, height, width = images.shape
    radius = kernels.shape[-1] // 2
    if radius < min(height, width):
        # torch's "reflect" leaves the edge pixel out, which is OpenCV's BORDER_REFLECT_101
        padded = F.pad(images.float(), (radius, radius, radius, radius), mode="reflect")
    else:  # a kernel wider than the image reflects more than once
        rows = reflect101(torch.arange(-radius, height + radius, device=images.device), height)
        cols = reflect101(torch.arange(-radius, width + radius, device=images.device), width)
        padded = images.float()[:, :, rows[:, None], cols[None, :]]
    weight = kernels.to(device=images.device, dtype=torch.float32).repeat_interleave(channels, 0).unsqueeze(1)
    out = F.conv2d(padded.reshape(1, count * channels, *padded.shape[-2:]), weight, groups=count * channels)
    return out.view(count, channels, height, width).to(images.dtype)


@register_perturbation(
    levels=(3, 5, 7, 9, 11), identity=1.0, unit="streak length (pixels; even -> next odd), random direction",
    family="blur", values_key="lengths", bounds=(1.0, 27.0), step=1.0, random=True,
)  # fmt: skip
def motion_blur(images: torch.Tensor, length: float, rng: ImageRandom) -> torch.Tensor:
    """Linear motion blur along one of 8 directions drawn per image (camera shake)."""
    size = motion_kernel_size(length)
    bank = torch.stack([motion_kernel(size, angle) for angle in MOTION_ANGLES])
    kernels = bank[motion_directions(rng)]
    return correlate_per_image(images, kernels).clamp_(0.0, 1.0)

"""Digital artefacts: pixelation, JPEG compression and elastic deformation, batched in torch.

Each follows the OpenCV routine that albumentations calls, so the two backends agree:
pixelate is INTER_AREA down and INTER_NEAREST up (cv2.resize), JPEG is baseline libjpeg at
the IJG quality scale, elastic is Simard's smoothed random displacement field, sampled bilinearly as cv2.remap does.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from robustbench_fmnist.perturbations.blur import filter_matrix, gaussian_kernel_1d
from robustbench_fmnist.perturbations.geometry import sample_bilinear, to_normalised
from robustbench_fmnist.perturbations.random import ImageRandom
from robustbench_fmnist.perturbations.registry import register_perturbation


@lru_cache(maxsize=64)
def area_matrix(source: int, target: int) -> torch.Tensor:
    """(target, source) weights of OpenCV's INTER_AREA shrink (computeResizeAreaTab).

    cv2.resize(fx=target/source) uses scale = 1 / fx, and each output pixel averages the input
    cells it covers, fractional cells weighted by their overlap.
    """
    scale = 1.0 / (target / source)
    weights = torch.zeros(target, source, dtype=torch.float64)
    for out in range(target):
        start, end = out * scale, out * scale + scale
        cell = min(scale, source - start)
        first, last = math.ceil(start), min(math.floor(end), source - 1)
        first = min(first, last)
        if first - start > 1e-3:
            weights[out, first - 1] += (first - start) / cell
        for column in range(first, last):
            weights[out, column] += 1.0 / cell
        if end - last > 1e-3:
            weights[out, last] += min(min(end - last, 1.0), cell) / cell
    return weights


@lru_cache(maxsize=64)
def nearest_matrix(source: int, target: int) -> torch.Tensor:
    """(target, source) 0/1 weights of OpenCV's INTER_NEAREST: output x reads floor(x * source / target)."""
    picks = torch.clamp((torch.arange(target, dtype=torch.float64) * (source / target)).floor().long(), max=source - 1)
    return F.one_hot(picks, source).to(torch.float64)


def pixelation_matrix(size: int, resolution: int) -> torch.Tensor:
    """(size, size) matrix: shrink to `resolution` by area averaging, enlarge back by nearest."""
    return nearest_matrix(resolution, size) @ area_matrix(size, resolution)


@register_perturbation(
    levels=(20, 16, 13, 10, 7), identity=28, unit="pixels across after shrinking", family="digital",
    values_key="resolutions", bounds=(1.0, 28.0), step=1.0,
)  # fmt: skip
def pixelate(images: torch.Tensor, resolution: float, rng: ImageRandom) -> torch.Tensor:
    """Shrink by area averaging and enlarge back with nearest neighbours: square blocks."""
    height, width = images.shape[-2:]
    rows = pixelation_matrix(height, round(resolution * height / 28)).to(images.device, torch.float32)
    cols = pixelation_matrix(width, round(resolution * width / 28)).to(images.device, torch.float32)
    return (rows @ images.float() @ cols.T).to(images.dtype).clamp_(0.0, 1.0)


# the luminance table of the JPEG standard (ITU T.81, Annex K)
_LUMINANCE = torch.tensor(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=torch.float64,
)


def quantisation_table(quality: int) -> torch.Tensor:
    """libjpeg's jpeg_set_quality(quality, force_baseline=TRUE) scaling of the luminance table."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return torch.clamp(torch.floor((_LUMINANCE * scale + 50) / 100), 1, 255)


@lru_cache(maxsize=1)
def _dct_matrix() -> torch.Tensor:
    # JPEG's 8x8 DCT is the orthonormal DCT-II applied to rows and columns
    k = torch.arange(8, dtype=torch.float64)
    basis = torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    basis[0] /= math.sqrt(2)
    return basis


@lru_cache(maxsize=8)
def _jpeg_operators(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(padded, size) forward and (size, padded) inverse operators for one image axis.

    Forward pads by repeating the last row/column (what libjpeg does to fill partial blocks)
    and applies the 8x8 DCT block by block; inverse undoes the DCT and crops the padding.
    """
    padded = -(-size // 8) * 8
    repeat_edge = F.one_hot(torch.arange(padded).clamp(max=size - 1), size).to(torch.float64)
    block_dct = torch.block_diag(*[_dct_matrix()] * (padded // 8))
    return block_dct @ repeat_edge, (block_dct.T)[:size]


# JPEG makes a dozen passes over its data (two products each way, two transposes, rounding);
# in slices of this many 28x28 images those stay in the CPU's cache: ~20 % faster on 10,000
_JPEG_SLICE = 1024


def jpeg_roundtrip(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode and decode as 8-bit grayscale baseline JPEG, in floating point (batched, any device)."""
    height, width = images.shape[-2:]
    operators = [m.to(images.device, torch.float32) for axis in (height, width) for m in _jpeg_operators(axis)]
    table = quantisation_table(quality).repeat(operators[0].shape[0] // 8, operators[2].shape[0] // 8)
    table_t = table.T.contiguous().to(images.device, torch.float32)
    out = torch.empty(images.shape, device=images.device, dtype=torch.float32)
    for first in range(0, len(images), _JPEG_SLICE):
        out[first : first + _JPEG_SLICE] = _jpeg_slice(images[first : first + _JPEG_SLICE], *operators, table_t)
    return out.to(images.dtype)


def _jpeg_slice(
    images: torch.Tensor,
    row_dct: torch.Tensor,
    row_idct: torch.Tensor,
    col_dct: torch.Tensor,
    col_idct: torch.Tensor,
    table_t: torch.Tensor,
) -> torch.Tensor:
    levels = images.float().clamp(0, 1).mul_(255.0).round_().sub_(128.0)
    # block DCT of the padded image, R X C^T, quantised, then back. A product from the right is
    # one GEMM over the whole batch; one from the left is done on the transpose, (X^T R^T)^T,
    # so the coefficients are held transposed: ~25 % faster than broadcasting R @ X
    coefficients_t = (levels @ col_dct.T).transpose(-1, -2) @ row_dct.T
    coefficients_t = coefficients_t.div_(table_t).round_().mul_(table_t)
    pixels = (coefficients_t @ row_idct.T).transpose(-1, -2) @ col_idct.T
    return pixels.add_(128.0).round_().clamp_(0.0, 255.0).div_(255.0)


# ImageNet-C's JPEG qualities
@register_perturbation(
    levels=(20, 15, 10, 7, 5), identity=math.inf, unit="JPEG quality (1-100; inf = not compressed)", family="digital",
    values_key="qualities", bounds=(1.0, 100.0), step=1.0,
)  # fmt: skip
def jpeg(images: torch.Tensor, quality: float, rng: ImageRandom) -> torch.Tensor:
    """JPEG compression artefacts: 8x8 blocking and ringing at low quality."""
    return jpeg_roundtrip(images, int(quality))


ELASTIC_SIGMA = 4.0  # pixels of smoothing: Simard et al.'s value for MNIST


def elastic_kernel_size(sigma: float) -> int:
    """The size cv2.GaussianBlur picks for float images when given none: round(8 sigma + 1) | 1."""
    return round(sigma * 8 + 1) | 1


ELASTIC_RANK = 10  # the smoothing's 11th singular value is 7e-4 of the first: the rest carries no variance


@lru_cache(maxsize=8)
def _smoothing_basis(size: int) -> torch.Tensor:
    """(size, rank) U_k S_k of the sigma-4 Gaussian smoothing matrix (replicated border)."""
    kernel = gaussian_kernel_1d(ELASTIC_SIGMA, elastic_kernel_size(ELASTIC_SIGMA))
    u, s, _ = torch.linalg.svd(filter_matrix(tuple(kernel.tolist()), size, "replicate"))
    rank = min(ELASTIC_RANK, size)
    return u[:, :rank] * s[:rank]


def elastic_grid(shape: tuple[int, int], alpha: float, rng: ImageRandom) -> torch.Tensor:
    """(N, H, W, 2) normalised sampling positions: each pixel moved by a smoothed random field.

    The displacements are uniform(-1, 1) noise, Gaussian-smoothed, times alpha (in pixels).
    Smoothing white noise U as R U C^T equals U_R S_R (V_R^T U V_C) S_C U_C^T, and the middle
    factor is again white noise of the same variance (exactly for Gaussian U; for uniform U
    up to the normal approximation of a sum of ~800 terms). So the field is drawn in the
    smoothing's rank-10 basis directly: 200 draws per image instead of 1,568, same distribution.
    """
    height, width = shape
    device = rng.indices.device
    rows = _smoothing_basis(height).to(device, torch.float32)
    cols = _smoothing_basis(width).to(device, torch.float32)
    white = rng.pixel_normal(2, rows.shape[1], cols.shape[1]) * (alpha / math.sqrt(3.0))  # uniform(-1, 1) variance
    count = len(white)
    (x_scale, x_offset), (y_scale, y_offset) = to_normalised(width), to_normalised(height)
    white *= torch.tensor([x_scale, y_scale], device=device).view(1, 2, 1, 1)  # pixels -> grid units
    # grid[n, h, w, c] = base + (rows @ white[n, c] @ cols^T)[h, w] as two plain matrix products
    # over the whole batch (batched products of 10x10 blocks are ~10x slower). The second one
    # writes the (w, c)-interleaved grid directly: its right factor holds cols^T once per axis,
    # plus a row adding each pixel row's y position, and its bias is each column's x position.
    rank = cols.shape[1]
    along_height = (white.transpose(-1, -2).reshape(-1, rows.shape[1]) @ rows.T).view(count, 2, rank, height)
    left = torch.empty(count, height, 2 * rank + 1, device=device)
    left[..., : 2 * rank].view(count, height, 2, rank).copy_(along_height.permute(0, 3, 1, 2))
    left[..., 2 * rank] = torch.arange(height, device=device, dtype=torch.float32).mul_(y_scale).add_(y_offset)
    right = torch.zeros(2 * rank + 1, width, 2, device=device)
    right[:rank, :, 0] = cols.T
    right[rank : 2 * rank, :, 1] = cols.T
    right[2 * rank, :, 1] = 1.0
    bias = torch.zeros(width, 2, device=device)
    bias[:, 0] = torch.arange(width, device=device, dtype=torch.float32).mul_(x_scale).add_(x_offset)
    grid = torch.addmm(bias.view(1, -1), left.view(count * height, -1), right.view(2 * rank + 1, -1))
    return grid.view(count, height, width, 2)


@register_perturbation(
    levels=(10, 16, 22, 28, 34), identity=0.0, unit="displacement scale alpha (pixels), sigma 4",
    family="digital", values_key="alphas", bounds=(0.0, 200.0), random=True,
)  # fmt: skip
def elastic(images: torch.Tensor, alpha: float, rng: ImageRandom) -> torch.Tensor:
    """Elastic deformation (Simard et al. 2003): a smooth random warp, like a crumpled garment."""
    return sample_bilinear(images, elastic_grid(tuple(images.shape[-2:]), alpha, rng))

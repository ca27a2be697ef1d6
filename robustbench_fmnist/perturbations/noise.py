"""Sensor noise, with ImageNet-C's severity tables. One hashed draw per pixel, so any batch agrees."""

from __future__ import annotations

import math

import torch

from robustbench_fmnist.perturbations.random import ImageRandom
from robustbench_fmnist.perturbations.registry import register_perturbation


def _pixel_shape(images: torch.Tensor) -> tuple[int, ...]:
    return tuple(images.shape[1:])


@register_perturbation(
    levels=(0.08, 0.12, 0.18, 0.26, 0.38), identity=0.0, unit="noise std (intensity)", family="noise",
    values_key="sigmas", bounds=(0.0, 10.0), random=True,
)  # fmt: skip
def gaussian_noise(images: torch.Tensor, sigma: float, rng: ImageRandom) -> torch.Tensor:
    """Additive white Gaussian noise, clip(x + sigma * z) (ImageNet-C)."""
    noise = rng.pixel_normal(*_pixel_shape(images)).to(images.device)
    return (images + noise.to(images.dtype) * sigma).clamp_(0.0, 1.0)


# Below this many expected counts the sampler walks the exact Poisson CDF; above it, a rounded
# normal N(rate, rate) is within 2 % total variation of Poisson and needs no loop.
_EXACT_POISSON_BELOW = 10.0


def poisson_counts(rate: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Poisson(rate) counts (float32) from one uniform in (0, 1) per element.

    Inverse CDF for rates below 10; a rounded normal N(rate, rate) above, within 2 % total
    variation of Poisson there and loop-free.
    """
    shape = rate.shape
    rate = rate.to(torch.float32).reshape(-1)
    uniform = uniform.to(device=rate.device, dtype=torch.float32).reshape(-1)
    z = torch.erfinv(uniform * 2.0 - 1.0) * math.sqrt(2.0)
    counts = (rate + rate.sqrt() * z).round_().clamp_(min=0.0)
    # rate 0 gives 0; only positive small rates need the walk along the CDF
    position = ((rate > 0) & (rate < _EXACT_POISSON_BELOW)).nonzero().squeeze(1)
    counts[(rate == 0).nonzero().squeeze(1)] = 0.0
    lam, u = rate[position], uniform[position]
    term = torch.exp(-lam)  # P(K = k), from k = 0
    cdf, count = term.clone(), torch.zeros_like(lam)
    k = 0
    while len(position) and k < 200:  # 16-bit uniforms end the walk by k ~ 25 for rates below 10
        # a few dense passes, then keep only the elements whose CDF is still below their uniform
        for _ in range(3):
            k += 1
            count += u > cdf
            term = term * lam / k
            cdf += term
        counts[position] = count
        active = (u > cdf).nonzero().squeeze(1)
        position, lam, u, term, cdf, count = (v[active] for v in (position, lam, u, term, cdf, count))
    return counts.view(shape)


@register_perturbation(
    levels=(60, 25, 12, 5, 3), identity=math.inf, unit="photons per unit intensity", family="noise",
    values_key="photons", bounds=(0.1, math.inf), random=True,
)  # fmt: skip
def shot_noise(images: torch.Tensor, photons: float, rng: ImageRandom) -> torch.Tensor:
    """Photon (Poisson) noise, Poisson(x * c) / c (ImageNet-C); fewer photons is noisier."""
    uniform = rng.pixel_uniform(*_pixel_shape(images)).to(images.device)
    rate = images.float().clamp(0.0, 1.0) * photons
    return (poisson_counts(rate, uniform) / photons).to(images.dtype).clamp_(0.0, 1.0)


@register_perturbation(
    levels=(0.03, 0.06, 0.09, 0.17, 0.27), identity=0.0, unit="fraction of pixels", family="noise",
    values_key="fractions", bounds=(0.0, 1.0), random=True,
)  # fmt: skip
def impulse_noise(images: torch.Tensor, fraction: float, rng: ImageRandom) -> torch.Tensor:
    """Salt-and-pepper noise: a fraction of pixels set to black or white, half each (ImageNet-C)."""
    u = rng.pixel_uniform(*_pixel_shape(images)).to(images.device)
    out = images.clone()
    out[u < fraction / 2] = 0.0
    out[(u >= fraction / 2) & (u < fraction)] = 1.0
    return out.clamp_(0.0, 1.0)

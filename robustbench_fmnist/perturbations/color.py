"""Lighting perturbations: intensity changes that keep geometry, in both directions.

Each primitive takes a scalar or a per-image (N,) tensor, so the `lighting` mix reuses them.
Every step clips to [0, 1], as a camera or an 8-bit file would.
"""

from __future__ import annotations

import math

import torch

from robustbench_fmnist.perturbations.random import ImageRandom
from robustbench_fmnist.perturbations.registry import register_perturbation

Amount = float | torch.Tensor


def _per_image(value: Amount, images: torch.Tensor) -> Amount:
    if isinstance(value, torch.Tensor):
        return value.to(device=images.device, dtype=images.dtype).view(-1, 1, 1, 1)
    return value


def add_brightness(images: torch.Tensor, amount: Amount) -> torch.Tensor:
    """clip(x + b): also lifts (or sinks) the black background."""
    return (images + _per_image(amount, images)).clamp_(0.0, 1.0)


def scale_intensity(images: torch.Tensor, factor: Amount) -> torch.Tensor:
    """clip(x * k): multiplicative brightness (exposure); black stays black."""
    return (images * _per_image(factor, images)).clamp_(0.0, 1.0)


def adjust_contrast(images: torch.Tensor, factor: Amount) -> torch.Tensor:
    """clip((x - mean) * c + mean) with each image's own mean, so its mean brightness is kept."""
    mean = images.mean(dim=(-3, -2, -1), keepdim=True)
    factor = _per_image(factor, images)
    # x * c + mean * (1 - c): the same, in one pass over the images instead of three
    return torch.addcmul(mean * (1 - factor), images, torch.as_tensor(factor, dtype=images.dtype)).clamp_(0.0, 1.0)


def adjust_gamma(images: torch.Tensor, gamma: Amount) -> torch.Tensor:
    """x ** gamma: gamma > 1 darkens mid-tones, gamma < 1 lifts them; 0 and 1 stay put."""
    return images.clamp(0.0, 1.0).pow_(_per_image(gamma, images))


# ImageNet-C's brightness table, additive as in ImageNet-C and MNIST-C: on Fashion-MNIST this
# greys the black background, which a model trained on a dark backdrop never saw
@register_perturbation(
    levels=(0.1, 0.2, 0.3, 0.4, 0.5), identity=0.0, unit="added to intensity", family="lighting",
    values_key="amounts", bounds=(-1.0, 1.0),
)  # fmt: skip
def brightness_up(images: torch.Tensor, amount: float, rng: ImageRandom) -> torch.Tensor:
    """Additive brightening, clip(x + b) (ImageNet-C's brightness)."""
    return add_brightness(images, amount)


@register_perturbation(
    levels=(-0.1, -0.2, -0.3, -0.4, -0.5), identity=0.0, unit="added to intensity", family="lighting",
    values_key="amounts", bounds=(-1.0, 1.0),
)  # fmt: skip
def brightness_down(images: torch.Tensor, amount: float, rng: ImageRandom) -> torch.Tensor:
    """Additive darkening, clip(x - b): the background stays black, faint texture vanishes."""
    return add_brightness(images, amount)


# up and down use reciprocal factors, so the two directions are equally far in log-exposure
@register_perturbation(
    levels=(1.25, 1.5, 2.0, 2.5, 3.0), identity=1.0, unit="intensity factor", family="lighting",
    values_key="factors", bounds=(0.0, 100.0),
)  # fmt: skip
def exposure_up(images: torch.Tensor, factor: float, rng: ImageRandom) -> torch.Tensor:
    """Multiplicative brightening, clip(x * k) (torchvision's brightness): bright parts saturate."""
    return scale_intensity(images, factor)


@register_perturbation(
    levels=(0.8, 0.667, 0.5, 0.4, 0.333), identity=1.0, unit="intensity factor", family="lighting",
    values_key="factors", bounds=(0.0, 100.0),
)  # fmt: skip
def exposure_down(images: torch.Tensor, factor: float, rng: ImageRandom) -> torch.Tensor:
    """Multiplicative dimming, x * k: an under-exposed shot with a black background kept black."""
    return scale_intensity(images, factor)


# ImageNet-C's contrast table
@register_perturbation(
    levels=(0.4, 0.3, 0.2, 0.1, 0.05), identity=1.0, unit="contrast factor", family="lighting",
    values_key="factors", bounds=(0.0, 100.0),
)  # fmt: skip
def contrast_down(images: torch.Tensor, factor: float, rng: ImageRandom) -> torch.Tensor:
    """Lower contrast about each image's mean, (x - mean) * c + mean (ImageNet-C's contrast)."""
    return adjust_contrast(images, factor)


@register_perturbation(
    levels=(1.5, 2.0, 2.5, 3.0, 4.0), identity=1.0, unit="contrast factor", family="lighting",
    values_key="factors", bounds=(0.0, 100.0),
)  # fmt: skip
def contrast_up(images: torch.Tensor, factor: float, rng: ImageRandom) -> torch.Tensor:
    """Higher contrast about each image's mean: texture is exaggerated, highlights clip."""
    return adjust_contrast(images, factor)


@register_perturbation(
    levels=(1.5, 2.0, 2.5, 3.0, 4.0), identity=1.0, unit="gamma exponent", family="lighting",
    values_key="gammas", bounds=(0.01, 100.0),
)  # fmt: skip
def gamma_up(images: torch.Tensor, gamma: float, rng: ImageRandom) -> torch.Tensor:
    """Gamma above 1, x ** g: mid-tones darken while black and white stay fixed."""
    return adjust_gamma(images, gamma)


@register_perturbation(
    levels=(0.667, 0.5, 0.4, 0.333, 0.25), identity=1.0, unit="gamma exponent", family="lighting",
    values_key="gammas", bounds=(0.01, 100.0),
)  # fmt: skip
def gamma_down(images: torch.Tensor, gamma: float, rng: ImageRandom) -> torch.Tensor:
    """Gamma below 1, x ** g: mid-tones and faint texture brighten."""
    return adjust_gamma(images, gamma)


# At strength 1 the mix spans the severity-5 range of each single shift, in both directions
LIGHTING_MIX_BRIGHTNESS = 0.5  # +-b
LIGHTING_MIX_CONTRAST = 4.0  # c in [1/4, 4]
LIGHTING_MIX_GAMMA = 3.0  # g in [1/3, 3]


def lighting_mix_draws(strength: float, rng: ImageRandom) -> dict[str, torch.Tensor]:
    """Per-image (gamma, contrast, brightness), each drawn uniformly (log-uniform for factors)."""
    return {
        "gamma": torch.exp(rng.symmetric(stream=0) * (strength * math.log(LIGHTING_MIX_GAMMA))),
        "contrast": torch.exp(rng.symmetric(stream=1) * (strength * math.log(LIGHTING_MIX_CONTRAST))),
        "brightness": rng.symmetric(stream=2) * (strength * LIGHTING_MIX_BRIGHTNESS),
    }


@register_perturbation(
    levels=(0.2, 0.4, 0.6, 0.8, 1.0), identity=0.0, unit="mix strength", family="lighting",
    values_key="strengths", bounds=(0.0, 1.0), random=True,
)  # fmt: skip
def lighting(images: torch.Tensor, strength: float, rng: ImageRandom) -> torch.Tensor:
    """Lighting mix: gamma, then contrast, then additive brightness, all drawn jointly per image."""
    draws = lighting_mix_draws(strength, rng)
    out = adjust_gamma(images, draws["gamma"])
    out = adjust_contrast(out, draws["contrast"])
    return add_brightness(out, draws["brightness"])

"""The albumentations backend: the same perturbations through albumentations 2.0.x, one image at a time.

It is the reference the torch kernels are checked against, and an option in the YAML
(`backend: albumentations`). Every adapter feeds albumentations the draws the torch kernel
uses (the same rotation direction, shear axis, blur direction for image n), through the
transform's own `apply` and parameter helpers, so differences come only from the kernels.
Noise and elastic fields are drawn by albumentations itself, seeded per image from the same
key, so they agree in distribution rather than pixel by pixel.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import torch

from robustbench_fmnist.perturbations import blur, color, digital, geometry
from robustbench_fmnist.perturbations.random import ImageRandom
from robustbench_fmnist.perturbations.registry import PerturbationEntry, check_images

# adapter(value, rng) -> per_image(n, image HxW float32) -> perturbed HxW float32
PerImage = Callable[[int, np.ndarray], np.ndarray]
Adapter = Callable[[float, ImageRandom], PerImage]

ADAPTERS: dict[str, Adapter] = {}
# perturbations albumentations 2.0 has no equivalent for, and why
NO_EQUIVALENT: dict[str, str] = {
    "shot_noise": "albumentations' ShotNoise adds Poisson noise in gamma-2.2 linear light, not ImageNet-C's "
    "Poisson(x * c) / c on stored intensities",
}


def _albumentations():
    import albumentations

    return albumentations


def adapter(*names: str) -> Callable[[Adapter], Adapter]:
    def decorate(function: Adapter) -> Adapter:
        for name in names:
            ADAPTERS[name] = function
        return function

    return decorate


def transform_name(name: str) -> str | None:
    """The albumentations transform that backs `name`, for tables; None if there is none."""
    return _TRANSFORM_NAMES.get(name)


def apply_albumentations(
    entry: PerturbationEntry,
    images: torch.Tensor,
    value: float,
    *,
    seed: int = 0,
    indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """Perturb a batch image by image through albumentations; same contract as the torch kernels."""
    check_images(images)
    value = entry.check_value(value)
    if entry.name not in ADAPTERS:
        reason = NO_EQUIVALENT.get(entry.name, "it has no adapter")
        raise ValueError(f"{entry.name} has no albumentations backend: {reason}; use backend: torch")
    if value == entry.identity:
        return images.clone()
    rng = entry.random_draws(len(images), value, seed=seed, indices=indices, device="cpu")
    per_image = ADAPTERS[entry.name](value, rng)
    array = images.detach().to("cpu", torch.float32).numpy()
    out = np.empty_like(array)
    for n in range(array.shape[0]):
        for c in range(array.shape[1]):
            out[n, c] = per_image(n, np.ascontiguousarray(array[n, c]))
    return torch.from_numpy(out).to(device=images.device, dtype=images.dtype).clamp_(0.0, 1.0)


def _seeds(rng: ImageRandom) -> list[int]:
    # albumentations draws noise itself; seed it per image from the same key (stream 99 is unused elsewhere)
    return (rng.bits(stream=99) & 0x7FFFFFFF).tolist()


def _seeded(transform: object, rng: ImageRandom) -> PerImage:
    seeds = _seeds(rng)

    def per_image(n: int, image: np.ndarray) -> np.ndarray:
        transform.set_random_seed(seeds[n])
        return transform(image=image)["image"]

    return per_image


# --- lighting ---


@adapter("brightness_up", "brightness_down")
def _brightness(amount: float, rng: ImageRandom) -> PerImage:
    t = _albumentations().RandomBrightnessContrast(brightness_limit=(amount, amount), contrast_limit=0, p=1)
    return lambda n, image: t.apply(image, alpha=1.0, beta=amount)


@adapter("exposure_up", "exposure_down")
def _exposure(factor: float, rng: ImageRandom) -> PerImage:
    # RandomBrightnessContrast's "contrast" multiplies about 0, which is exactly exposure
    t = _albumentations().RandomBrightnessContrast(brightness_limit=0, contrast_limit=0, p=1)
    return lambda n, image: t.apply(image, alpha=factor, beta=0.0)


def _contrast_transform():
    return _albumentations().ColorJitter(brightness=0, contrast=(0.0, 10.0), saturation=0, hue=0, p=1)


def _apply_contrast(t: object, image: np.ndarray, factor: float) -> np.ndarray:
    # ColorJitter's contrast is torchvision's: about the image's mean, as ours is
    return t.apply(image, brightness=1.0, contrast=factor, saturation=1.0, hue=0.0, order=[1])


@adapter("contrast_down", "contrast_up")
def _contrast(factor: float, rng: ImageRandom) -> PerImage:
    t = _contrast_transform()
    return lambda n, image: _apply_contrast(t, image, factor)


@adapter("gamma_up", "gamma_down")
def _gamma(gamma: float, rng: ImageRandom) -> PerImage:
    t = _albumentations().RandomGamma(p=1)
    return lambda n, image: t.apply(image, gamma=gamma)


@adapter("lighting")
def _lighting(strength: float, rng: ImageRandom) -> PerImage:
    draws = {k: v.tolist() for k, v in color.lighting_mix_draws(strength, rng).items()}
    gamma, contrast = _albumentations().RandomGamma(p=1), _contrast_transform()
    brightness = _albumentations().RandomBrightnessContrast(brightness_limit=0, contrast_limit=0, p=1)

    def per_image(n: int, image: np.ndarray) -> np.ndarray:
        out = gamma.apply(image, gamma=draws["gamma"][n])
        out = _apply_contrast(contrast, out, draws["contrast"][n])
        return brightness.apply(out, alpha=1.0, beta=draws["brightness"][n])

    return per_image


# --- viewpoint: the matrix comes from albumentations' own composition of the same parameters ---


_AFFINE_DEFAULTS = {"rotate": 0.0, "shear_x": 0.0, "shear_y": 0.0, "scale": 1.0, "translate_x": 0.0, "translate_y": 0.0}


def _affine(params: dict[str, list[float]]) -> PerImage:
    from albumentations.augmentations.geometric import functional as fgeometric

    count = len(next(iter(params.values())))
    p = {key: params.get(key, [default] * count) for key, default in _AFFINE_DEFAULTS.items()}
    t = _albumentations().Affine(interpolation=1, border_mode=0, fill=0, p=1)

    def per_image(n: int, image: np.ndarray) -> np.ndarray:
        matrix = fgeometric.create_affine_transformation_matrix(
            translate={"x": p["translate_x"][n], "y": p["translate_y"][n]},
            shear={"x": p["shear_x"][n], "y": p["shear_y"][n]},
            scale={"x": p["scale"][n], "y": p["scale"][n]},
            rotate=p["rotate"][n],
            shift=fgeometric.center(image.shape[:2]),
        )
        return t.apply(image, matrix=matrix, output_shape=image.shape[:2])

    return per_image


def _lists(draws: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    return {k: v.tolist() for k, v in draws.items()}


@adapter("rotation")
def _rotation(degrees: float, rng: ImageRandom) -> PerImage:
    return _affine({"rotate": geometry.rotation_angles(degrees, rng).tolist()})


@adapter("shear")
def _shear(degrees: float, rng: ImageRandom) -> PerImage:
    return _affine(_lists(geometry.shear_angles(degrees, rng)))


@adapter("zoom_in", "zoom_out")
def _zoom(factor: float, rng: ImageRandom) -> PerImage:
    return _affine({"scale": [factor] * len(rng.indices)})


@adapter("translation")
def _translation(pixels: float, rng: ImageRandom) -> PerImage:
    return _affine(_lists(geometry.translation_offsets(pixels, rng)))


@adapter("viewpoint")
def _viewpoint(strength: float, rng: ImageRandom) -> PerImage:
    return _affine(_lists(geometry.viewpoint_mix_draws(strength, rng)))


@adapter("hflip")
def _hflip(flipped: float, rng: ImageRandom) -> PerImage:
    t = _albumentations().HorizontalFlip(p=1)
    return lambda n, image: t.apply(image)


@adapter("turn")
def _turn(degrees: float, rng: ImageRandom) -> PerImage:
    t = _albumentations().RandomRotate90(p=1)
    factor = round(degrees / 90.0)
    return lambda n, image: t.apply(image, factor=factor)


# --- noise: albumentations draws it, seeded per image ---


@adapter("gaussian_noise")
def _gaussian_noise(sigma: float, rng: ImageRandom) -> PerImage:
    t = _albumentations().GaussNoise(std_range=(sigma, sigma), mean_range=(0.0, 0.0), per_channel=False, p=1)
    return _seeded(t, rng)


@adapter("impulse_noise")
def _impulse_noise(fraction: float, rng: ImageRandom) -> PerImage:
    t = _albumentations().SaltAndPepper(amount=(fraction, fraction), salt_vs_pepper=(0.5, 0.5), p=1)
    return _seeded(t, rng)


# --- blur ---


@adapter("gaussian_blur")
def _gaussian_blur(sigma: float, rng: ImageRandom) -> PerImage:
    from albumentations.augmentations.blur import functional as fblur

    size = blur.gaussian_kernel_size(sigma)
    t = _albumentations().GaussianBlur(blur_limit=(size, size), sigma_limit=(sigma, sigma), p=1)
    kernel = fblur.create_gaussian_kernel_1d(sigma, size)
    return lambda n, image: t.apply(image, kernel=kernel)


@adapter("motion_blur")
def _motion_blur(length: float, rng: ImageRandom) -> PerImage:
    from albumentations.augmentations.blur import functional as fblur

    size = blur.motion_kernel_size(length)
    t = _albumentations().MotionBlur(blur_limit=(size, size), allow_shifted=False, p=1)
    kernels = []
    for angle in blur.MOTION_ANGLES:
        kernel = fblur.create_motion_kernel(size, angle, 0.0, False, random.Random(0)).astype(np.float32)
        kernels.append(kernel / kernel.sum())
    directions = blur.motion_directions(rng).tolist()
    return lambda n, image: t.apply(image, kernel=kernels[directions[n]])


# --- digital ---


@adapter("pixelate")
def _pixelate(resolution: float, rng: ImageRandom) -> PerImage:
    import cv2

    scale = resolution / 28.0
    t = _albumentations().Downscale(
        scale_range=(scale, scale), interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_NEAREST}, p=1
    )
    return lambda n, image: t.apply(image, scale=scale)


@adapter("jpeg")
def _jpeg(quality: float, rng: ImageRandom) -> PerImage:
    q = int(quality)
    t = _albumentations().ImageCompression(quality_range=(q, q), p=1)
    return lambda n, image: t.apply(image, quality=q, image_type=".jpg")


@adapter("elastic")
def _elastic(alpha: float, rng: ImageRandom) -> PerImage:
    t = _albumentations().ElasticTransform(
        alpha=alpha,
        sigma=digital.ELASTIC_SIGMA,
        noise_distribution="uniform",
        approximate=False,
        interpolation=1,
        border_mode=0,
        fill=0,
        p=1,
    )
    return _seeded(t, rng)


_TRANSFORM_NAMES = {
    "brightness_up": "RandomBrightnessContrast (beta)",
    "brightness_down": "RandomBrightnessContrast (beta)",
    "exposure_up": "RandomBrightnessContrast (alpha)",
    "exposure_down": "RandomBrightnessContrast (alpha)",
    "contrast_down": "ColorJitter (contrast)",
    "contrast_up": "ColorJitter (contrast)",
    "gamma_up": "RandomGamma",
    "gamma_down": "RandomGamma",
    "lighting": "RandomGamma + ColorJitter + RandomBrightnessContrast",
    "rotation": "Affine (rotate)",
    "shear": "Affine (shear)",
    "zoom_in": "Affine (scale)",
    "zoom_out": "Affine (scale)",
    "translation": "Affine (translate)",
    "viewpoint": "Affine",
    "hflip": "HorizontalFlip",
    "turn": "RandomRotate90",
    "gaussian_noise": "GaussNoise",
    "impulse_noise": "SaltAndPepper",
    "gaussian_blur": "GaussianBlur",
    "motion_blur": "MotionBlur",
    "pixelate": "Downscale (area, nearest)",
    "jpeg": "ImageCompression",
    "elastic": "ElasticTransform",
}

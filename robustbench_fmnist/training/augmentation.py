"""Robust-training augmentations, batched and seeded per image, and which test shifts each lets a model see.

Every draw is keyed by (seed, epoch, the image's training-set index), as the perturbations key
theirs by test-set index: a batch gives the same images however the training set is batched,
and the same seed gives the same augmentation on every run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.special
import torch
from torch import nn

from robustbench_fmnist.config import (
    AugMixAugment,
    NoiseAugment,
    PolicyAugment,
    SpaceAugment,
    SuiteAugment,
    TrainRecipe,
)
from robustbench_fmnist.models.fusion import inference_copy
from robustbench_fmnist.perturbations import PERTURBATIONS, ImageRandom, derive_key
from robustbench_fmnist.perturbations.geometry import affine_matrices, warp_affine
from robustbench_fmnist.perturbations.space import Space, axis_entry, perturb_at
from robustbench_fmnist.registry import Registry

# augment(images (N, 1, 28, 28) in [0, 1], rng) -> views; one view, or two for AugMix's JSD loss
Augment = Callable[[torch.Tensor, ImageRandom], list[torch.Tensor]]
# batch_augment(model, a batch's images on its device, their labels, their training-set indices, seed, epoch) -> the
# images to train on: an augmentation that reads the model being trained, so it runs batch by batch
BatchAugment = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, int, int], torch.Tensor]

# The mixes draw several single shifts jointly: training on a mix shows all its parts; training on
# some of the parts shows the mix in part
MIX_COMPONENTS = {
    "lighting": ("gamma_up", "gamma_down", "contrast_down", "contrast_up", "brightness_up", "brightness_down"),
    "viewpoint": ("rotation", "shear", "zoom_in", "zoom_out", "translation"),
}
SEEN, PARTLY, HELD_OUT = "seen", "partly seen", "held out"

# Which test perturbations an operation of AugMix or torchvision's policies performs. torchvision's
# brightness multiplies (our exposure) and its contrast blends with the image's mean (our contrast).
OPERATION_SHIFTS = {
    "rotate": ("rotation",),
    "shear": ("shear",),
    "translate": ("translation",),
    "brightness": ("exposure_up", "exposure_down"),
    "contrast": ("contrast_down", "contrast_up"),
}
POLICY_OPERATIONS = ("rotate", "shear", "translate", "brightness", "contrast", "sharpness", "posterize", "solarize",
                     "autocontrast", "equalize")  # fmt: skip


@dataclass(frozen=True)
class AugmentationEntry:
    name: str
    build: Callable[[object], Augment | BatchAugment]
    seen: Callable[[object], set[str]]  # the suite's perturbations the augmentation performs
    description: str
    per_batch: bool = False  # build gives a BatchAugment (it reads the model), not an epoch's Augment


AUGMENTATIONS: Registry[AugmentationEntry] = Registry("augmentation")


def register_augmentation(name: str, *, seen: Callable[[object], set[str]], per_batch: bool = False) -> Callable:
    """Register a builder `spec -> augment` under the `robust_augment.method` word `name` (`per_batch`: the builder
    gives a BatchAugment, run on each training batch with the model as it is then)."""

    def decorate(build: Callable[[object], Augment]) -> Callable[[object], Augment]:
        doc = (build.__doc__ or "").strip().splitlines()
        AUGMENTATIONS.add(name, AugmentationEntry(name, build, seen, doc[0] if doc else "", per_batch))
        return build

    return decorate


def exposure(performed: set[str]) -> dict[str, str]:
    """SEEN or PARTLY for each test perturbation that training performed, given what it performed."""
    seen = set(performed)
    for mix, parts in MIX_COMPONENTS.items():
        if mix in performed:
            seen.update(parts)
    status = dict.fromkeys(seen, SEEN)
    for mix, parts in MIX_COMPONENTS.items():
        if mix not in seen and seen.intersection(parts):
            status[mix] = PARTLY
    return dict(sorted(status.items()))


# the suite's perturbations each plain `augment:` setting performs
PLAIN_AUGMENT_PERFORMS = {"flip": {"hflip"}, "flip_crop": {"hflip", "translation"}}


def training_exposure(recipe: TrainRecipe | None) -> dict[str, str]:
    """The test perturbations a model trained by `recipe` has seen (or partly seen); all others are held out.

    A user's checkpoint has an unknown history: nothing is marked, so its report claims nothing either way.
    """
    if recipe is None:
        return {}
    performed = set(PLAIN_AUGMENT_PERFORMS.get(recipe.augment, set()))
    if recipe.robust_augment is not None:
        spec = recipe.robust_augment
        performed |= AUGMENTATIONS.get(spec.method).seen(spec)
    return exposure(performed)


def augmentation_random(seed: int, method: str, epoch: int, indices: torch.Tensor) -> ImageRandom:
    """The per-image random source of one epoch's augmentation."""
    return ImageRandom(derive_key(seed, "robust_augment", method, epoch), indices)


def _sub_seed(rng: ImageRandom, stream: int) -> int:
    """A non-negative seed for a perturbation applied inside an augmentation."""
    return derive_key(rng.key, stream) & 0x7FFFFFFF


@register_augmentation("suite", seen=lambda spec: set(spec.perturbations))
def suite_augmentation(spec: SuiteAugment) -> Augment:
    """The suite's own perturbations: with chance p, one of them at a severity drawn from the range."""
    entries = [PERTURBATIONS.get(name) for name in spec.perturbations]
    low, high = spec.severities

    def augment(images: torch.Tensor, rng: ImageRandom) -> list[torch.Tensor]:
        out = images.clone()
        chosen = rng.uniform(stream=0) < spec.p
        which = rng.choice(len(entries), stream=1)
        severity = low + rng.choice(high - low + 1, stream=2)
        for k, entry in enumerate(entries):
            for level in range(low, high + 1):
                rows = (chosen & (which == k) & (severity == level)).nonzero().squeeze(1)
                if len(rows):
                    # a fixed probe with fewer levels (hflip, turn) takes its strongest
                    out[rows] = entry(
                        images[rows], min(level, entry.max_severity), seed=_sub_seed(rng, 3), indices=rng.indices[rows]
                    )
        return [out]

    return augment


@register_augmentation("gaussian_noise", seen=lambda spec: {"gaussian_noise"})
def gaussian_noise_augmentation(spec: NoiseAugment) -> Augment:
    """Gaussian noise (Rusak et al. 2020): clip(x + sigma * z) on a share p of the images."""

    def augment(images: torch.Tensor, rng: ImageRandom) -> list[torch.Tensor]:
        noise = rng.pixel_normal(*images.shape[1:], stream=1).to(images.device)
        noisy = (images + spec.sigma * noise).clamp_(0.0, 1.0)
        chosen = (rng.uniform(stream=0) < spec.p).to(images.device).view(-1, 1, 1, 1)
        return [torch.where(chosen, noisy, images)]

    return augment


# ---- AugMix, batched: each operation runs once per step on the images that drew it ----


def _quantise(images: torch.Tensor) -> torch.Tensor:
    # AugMix's operations are PIL's, on 8-bit images: every step rounds to the 256 levels
    return images.mul(255.0).round_().clamp_(0, 255)


def autocontrast(levels: torch.Tensor) -> torch.Tensor:
    """PIL's autocontrast (no cutoff): each image's darkest level to 0 and brightest to 255."""
    flat = levels.flatten(1)
    low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    # PIL's lookup table: int(level * scale + offset), truncated, in double precision
    scale = 255.0 / (high - low).double().clamp_(min=1)
    stretched = (flat.double() * scale - low.double() * scale).floor_().clamp_(0, 255).to(levels.dtype)
    return torch.where(high > low, stretched, flat).view_as(levels)


def equalize(levels: torch.Tensor) -> torch.Tensor:
    """PIL's ImageOps.equalize per image: the lookup table from the cumulative histogram."""
    flat = levels.flatten(1).long()
    histogram = torch.zeros(len(flat), 256, dtype=torch.long, device=flat.device).scatter_add_(
        1, flat, torch.ones_like(flat)
    )
    # PIL: step = (pixels - count of the brightest used level) // 255; identity when step is 0
    brightest = 255 - histogram.flip(1).ne(0).long().argmax(1)
    step = (flat.shape[1] - histogram.gather(1, brightest.unsqueeze(1)).squeeze(1)) // 255
    before = histogram.cumsum(1) - histogram
    table = ((before + (step // 2).unsqueeze(1)) // step.clamp(min=1).unsqueeze(1)).clamp_(max=255)
    mapped = table.gather(1, flat).to(levels.dtype)
    return torch.where((step > 0).unsqueeze(1), mapped, flat.to(levels.dtype)).view_as(levels)


def posterize(levels: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep each image's top `bits` bits of every level."""
    mask = (256 - 2 ** (8 - bits.long())).view(-1, 1, 1, 1)
    return (levels.long() & mask).to(levels.dtype)


def solarize(levels: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Invert every level at or above each image's threshold."""
    return torch.where(levels >= threshold.view(-1, 1, 1, 1), 255.0 - levels, levels)


def _geometric(levels: torch.Tensor, **parameters: torch.Tensor) -> torch.Tensor:
    size = levels.shape[-1]
    matrices = affine_matrices(size, size, **{k: v.cpu().double() for k, v in parameters.items()})
    return _quantise(warp_affine(levels / 255.0, matrices))


def _augmix_operation(name: str, levels: torch.Tensor, strength: torch.Tensor, sign: torch.Tensor,
                      axis: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """One AugMix operation at per-image strength in (0, severity]; as augmentations.py of AugMix scales it."""
    if name == "autocontrast":
        return autocontrast(levels)
    if name == "equalize":
        return equalize(levels)
    if name == "posterize":
        return posterize(levels, 4 - (strength * 4 / 10).long())
    if name == "solarize":
        return solarize(levels, 256 - (strength * 256 / 10).long().to(levels.dtype))
    if name == "rotate":
        return _geometric(levels, rotate=sign * (strength * 30 / 10).long().double())
    if name == "shear":
        # AugMix shears by a factor of up to 0.3; affine_matrices takes the angle whose tangent it is
        angle = torch.rad2deg(torch.atan(sign * strength.double() * 0.3 / 10))
        zero = torch.zeros_like(angle)
        return _geometric(levels, shear_x=torch.where(axis, angle, zero), shear_y=torch.where(axis, zero, angle))
    shift = sign * (strength * (levels.shape[-1] / 3) / 10).long().double()
    zero = torch.zeros_like(shift)
    return _geometric(levels, translate_x=torch.where(axis, shift, zero), translate_y=torch.where(axis, zero, shift))


def _gamma(alpha: float, uniform: torch.Tensor) -> torch.Tensor:
    """Gamma(alpha, 1) draws by the inverse CDF of hashed uniforms, so they are keyed per image like the rest."""
    u = uniform.double().cpu().numpy().clip(1e-12, 1 - 1e-12)
    return torch.from_numpy(np.asarray(scipy.special.gammaincinv(alpha, u)))


def augmix_view(spec: AugMixAugment, images: torch.Tensor, rng: ImageRandom, view: int) -> torch.Tensor:
    """One AugMix view: (1 - m) x + m * sum_i w_i chain_i(x), w ~ Dirichlet(alpha), m ~ Beta(alpha, alpha).

    As AugMix's augment_and_mix, with two differences in the optional geometric operations: shear and
    translate are one operation each with a random axis (AugMix lists x and y separately, so they
    are drawn a little less often here), and shear is about the image centre (PIL's about the corner).
    The training loop flips and crops after mixing, where AugMix's preprocessing does it before.
    """
    count, width = len(images), spec.width
    base = 100 * (view + 1)
    weights = _gamma(spec.alpha, rng.uniform(width, stream=base))
    weights = (weights / weights.sum(1, keepdim=True)).float().to(images.device)
    pair = _gamma(spec.alpha, rng.uniform(2, stream=base + 1))
    m = (pair[:, 0] / pair.sum(1)).float().to(images.device).view(-1, 1, 1, 1)
    clean = _quantise(images)
    mix = torch.zeros_like(images)
    for chain in range(width):
        stream = base + 10 * (chain + 1)
        depth = torch.full((count,), spec.depth) if spec.depth > 0 else 1 + rng.choice(3, stream=stream)
        levels = clean.clone()
        for step in range(int(depth.max())):
            which = rng.choice(len(spec.operations), stream=stream + 1 + 4 * step)
            # AugMix's sample_level: uniform in [0.1, severity]
            strength = 0.1 + rng.uniform(stream=stream + 2 + 4 * step) * (spec.severity - 0.1)
            sign = rng.sign(stream=stream + 3 + 4 * step)
            axis = rng.uniform(stream=stream + 4 + 4 * step) < 0.5
            for k, name in enumerate(spec.operations):
                rows = ((which == k) & (depth.to(which.device) > step)).nonzero().squeeze(1)
                if len(rows):
                    levels[rows] = _augmix_operation(name, levels[rows], strength[rows], sign[rows], axis[rows])
        mix += weights[:, chain].view(-1, 1, 1, 1) * levels
    return (((1 - m) * clean + m * mix) / 255.0).clamp_(0.0, 1.0)


@register_augmentation("augmix", seen=lambda spec: {s for op in spec.operations for s in OPERATION_SHIFTS.get(op, ())})
def augmix_augmentation(spec: AugMixAugment) -> Augment:
    """AugMix (Hendrycks et al. 2020), batched; two independent views when the JSD loss is on."""

    def augment(images: torch.Tensor, rng: ImageRandom) -> list[torch.Tensor]:
        return [augmix_view(spec, images, rng, view) for view in range(2 if spec.jsd else 1)]

    return augment


def _policy_seen(spec: PolicyAugment) -> set[str]:
    return {s for op in POLICY_OPERATIONS for s in OPERATION_SHIFTS.get(op, ())}


def _per_image(transform: Callable[[torch.Tensor], torch.Tensor]) -> Augment:
    """Apply a torchvision transform image by image, each seeded from its own key (it draws from torch's RNG)."""

    def augment(images: torch.Tensor, rng: ImageRandom) -> list[torch.Tensor]:
        seeds = rng.bits(stream=0).cpu().long().tolist()
        levels = images.mul(255).round_().to(torch.uint8).cpu()
        out = torch.empty_like(levels)
        with torch.random.fork_rng(devices=[]):  # torch's own RNG (dropout, init) is left as it was
            for i, seed in enumerate(seeds):
                torch.default_generator.manual_seed(seed & 0xFFFFFFFF)
                out[i] = transform(levels[i])
        return [out.to(images.device).float().div_(255.0)]

    return augment


@register_augmentation("trivialaugment", seen=_policy_seen)
def trivial_augment(spec: PolicyAugment) -> Augment:
    """torchvision's TrivialAugmentWide (Müller and Hutter 2021): one operation at a random strength per image."""
    from torchvision.transforms import v2

    return _per_image(v2.TrivialAugmentWide())


@register_augmentation("randaugment", seen=_policy_seen)
def rand_augment(spec: PolicyAugment) -> Augment:
    """torchvision's RandAugment (Cubuk et al. 2020): num_ops operations at one magnitude per image."""
    from torchvision.transforms import v2

    return _per_image(v2.RandAugment(num_ops=spec.num_ops, magnitude=spec.magnitude))


def build_augmentation(recipe: TrainRecipe) -> Augment | None:
    """The recipe's robust augmentation of a whole epoch, ready to apply; None when it has none or runs per batch."""
    spec = recipe.robust_augment
    if spec is None or AUGMENTATIONS.get(spec.method).per_batch:
        return None
    return AUGMENTATIONS.get(spec.method).build(spec)


def build_batch_augmentation(recipe: TrainRecipe) -> BatchAugment | None:
    """The recipe's robust augmentation that reads the model, batch by batch; None when it has none."""
    spec = recipe.robust_augment
    if spec is None or not AUGMENTATIONS.get(spec.method).per_batch:
        return None
    return AUGMENTATIONS.get(spec.method).build(spec)


# ---- a space of transformations: a random point per image, or the worst of k (Engstrom et al. 2019) ----


def space_of(spec: SpaceAugment) -> Space:
    """The space a `random_point` or `worst_of_k` recipe draws from, built as the adversaries' are."""
    return Space.of(spec.space)


def _space_seen(spec: SpaceAugment) -> set[str]:
    """The suite's perturbations the space performs at some strength: a perturbation axis itself; a shift in a random
    direction where its axis moves at all; one with a direction where its axis reaches that side of the identity."""
    seen = {axis_entry(axis).perturbation for axis in spec.space} - {None}
    for perturbation, axis in {**SAME_VALUE, **RANDOM_DIRECTION}.items():
        if axis not in spec.space:
            continue
        low, high, _ = spec.space[axis]
        identity = axis_entry(axis).identity
        entry = PERTURBATIONS.get(perturbation)
        above = entry.levels[0] > entry.identity
        if perturbation in RANDOM_DIRECTION:
            reaches = low < identity or high > identity
        else:
            reaches = high > identity if above else low < identity
        if reaches:
            seen.add(perturbation)
    return seen


# the suite's perturbations whose parameter is a magnitude applied in a random direction (and, for
# translation and shear, along a random axis), and the axis of a space that performs them
RANDOM_DIRECTION = {"rotation": "rotation", "translation": "translate", "shear": "shear"}
# those whose parameter is the axis's own value (an added brightness, a contrast or scale factor, ...)
SAME_VALUE = {
    "brightness_up": "brightness", "brightness_down": "brightness", "contrast_up": "contrast",
    "contrast_down": "contrast", "gamma_up": "gamma", "gamma_down": "gamma", "exposure_up": "exposure",
    "exposure_down": "exposure", "zoom_in": "scale", "zoom_out": "scale",
}  # fmt: skip


def cell_exposure(recipe: TrainRecipe | None, perturbation: str, parameter: float | None) -> str | None:
    """For training over a space: whether one cell's strength lies inside the space (seen), on one side of it only
    (partly seen: a random direction, or shear along y where the space shears along x) or beyond it (held out).

    None where the recipe is no space training or the cell is no single axis's (a mix, a probe): the
    perturbation's status then holds, as for the other recipes.
    """
    spec = None if recipe is None else recipe.robust_augment
    if not isinstance(spec, SpaceAugment) or parameter is None or np.isnan(parameter):
        return None
    if perturbation in PLAIN_AUGMENT_PERFORMS.get(recipe.augment, set()):
        return None  # the recipe's own flips and crops perform it: its whole-perturbation status holds, as elsewhere
    if perturbation in SAME_VALUE:
        reach = spec.space.get(SAME_VALUE[perturbation])
        return SEEN if reach is not None and reach[0] <= parameter <= reach[1] else HELD_OUT
    if perturbation in RANDOM_DIRECTION:
        reach = spec.space.get(RANDOM_DIRECTION[perturbation])
        sides = 0 if reach is None else (reach[0] <= -abs(parameter)) + (abs(parameter) <= reach[1])
        # shear draws its axis too, and a space's shear is along x: at most half of the cell's images
        return HELD_OUT if sides == 0 else SEEN if sides == 2 and perturbation != "shear" else PARTLY
    return None


def space_draws(space: Space, seed: int, epoch: int, indices: torch.Tensor, k: int) -> torch.Tensor:
    """(N, k) point indices: each training image's k draws this epoch, keyed by (seed, epoch, space, image index).

    The first draw is the same for `random_point` and for `worst_of_k` at any k, so the two differ
    only by the worst-of-k choice.
    """
    rng = ImageRandom(derive_key(seed, "space_augment", epoch, repr(space.axes)), indices.cpu())
    return torch.stack([rng.bits(stream=j).long() % space.size for j in range(k)], 1)


@register_augmentation("random_point", seen=_space_seen, per_batch=True)
def random_point_augmentation(spec: SpaceAugment) -> BatchAugment:
    """One random point of a space per image and epoch (the control for worst_of_k)."""
    return _space_augment(space_of(spec), k=1)


@register_augmentation("worst_of_k", seen=_space_seen, per_batch=True)
def worst_of_k_augmentation(spec: SpaceAugment) -> BatchAugment:
    """Worst-of-k (Engstrom et al. 2019): of k random points per image, the one of highest loss under the model."""
    return _space_augment(space_of(spec), k=spec.k)


def _space_augment(space: Space, k: int) -> BatchAugment:
    def augment(
        model: nn.Module, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, seed: int, epoch: int
    ) -> torch.Tensor:
        points = space.points[space_draws(space, seed, epoch, indices, k)]  # (N, k, D)
        count = len(images)
        # every image's k copies in one batch: draw j of every image, then draw j + 1, ...
        candidates = perturb_at(
            images.repeat(k, 1, 1, 1),
            space,
            points.transpose(0, 1).reshape(count * k, -1),
            seed=derive_key(seed, "space_augment_kernels", epoch) & 0x7FFFFFFF,
            indices=indices.cpu().repeat(k),
        )
        if k == 1:
            return candidates
        # the worst copy under the model as it is now, in evaluation mode (no dropout, BatchNorm's
        # running statistics) on an inference copy with BatchNorm folded: choosing costs k forward
        # passes at inference speed and leaves the model being trained as it was
        selector = inference_copy(model)
        channels_last = images.is_contiguous(memory_format=torch.channels_last)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        with torch.inference_mode():
            logits = selector(candidates.contiguous(memory_format=memory_format))
            losses = torch.nn.functional.cross_entropy(logits.float(), labels.repeat(k), reduction="none")
        worst = losses.view(k, count).argmax(0)
        return candidates.view(k, count, *images.shape[1:])[worst, torch.arange(count, device=images.device)]

    return augment


def jensen_shannon(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """AugMix's consistency loss: mean KL of each view's softmax to their average, clamped as AugMix does."""
    probabilities = [x.float().softmax(1) for x in logits]
    mixture = torch.stack(probabilities).mean(0).clamp(1e-7, 1).log()
    return sum(torch.nn.functional.kl_div(mixture, p, reduction="batchmean") for p in probabilities) / len(logits)


__all__ = ["AUGMENTATIONS", "augmentation_random", "build_augmentation", "jensen_shannon", "training_exposure"]

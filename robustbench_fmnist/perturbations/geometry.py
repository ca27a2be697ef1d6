"""Viewpoint perturbations: affine warps (rotation, shear, zoom, translation) and fixed probes.

Conventions, shared with the albumentations backend so the two agree:
- matrices map input to output pixel coordinates (OpenCV's convention), with pixel centres at
  integer coordinates and the image centre at ((W - 1) / 2, (H - 1) / 2);
- they are composed as albumentations' `Affine` composes them:
  centre <- translate <- shear <- rotate <- scale <- to-origin;
- positive angles rotate counter-clockwise as the image is displayed (y pointing down);
- sampling is bilinear with a zero (black) border, the same as `grid_sample(align_corners=False,
  padding_mode="zeros")` and OpenCV's `warpAffine(INTER_LINEAR, BORDER_CONSTANT, 0)`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from robustbench_fmnist.perturbations.random import ImageRandom
from robustbench_fmnist.perturbations.registry import register_perturbation


def pixel_coordinates(height: int, width: int, device: torch.device | str) -> torch.Tensor:
    """(H, W, 2) float32 (x, y) coordinates of the pixel centres."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32),
        torch.arange(width, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([xs, ys], -1)


def affine_matrices(
    height: int,
    width: int,
    *,
    rotate: torch.Tensor | float = 0.0,
    shear_x: torch.Tensor | float = 0.0,
    shear_y: torch.Tensor | float = 0.0,
    scale: torch.Tensor | float = 1.0,
    translate_x: torch.Tensor | float = 0.0,
    translate_y: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """(N, 3, 3) float64 forward matrices in pixel coordinates; angles in degrees, shifts in pixels."""
    params = [
        torch.as_tensor(p, dtype=torch.float64) for p in (rotate, shear_x, shear_y, scale, translate_x, translate_y)
    ]
    rotate, shear_x, shear_y, scale, translate_x, translate_y = torch.broadcast_tensors(*params)
    rotate, shear_x, shear_y, scale, translate_x, translate_y = (
        p.reshape(-1) for p in (rotate, shear_x, shear_y, scale, translate_x, translate_y)
    )
    count = len(rotate)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0

    def matrix(rows: list[list[torch.Tensor | float]]) -> torch.Tensor:
        return torch.stack(
            [torch.stack([torch.as_tensor(v, dtype=torch.float64).expand(count) for v in row], -1) for row in rows], -2
        )

    radians = torch.deg2rad(rotate)
    cos, sin = torch.cos(radians), torch.sin(radians)
    to_origin = matrix([[1.0, 0.0, -cx], [0.0, 1.0, -cy], [0.0, 0.0, 1.0]])
    scaling = matrix([[scale, 0.0, 0.0], [0.0, scale, 0.0], [0.0, 0.0, 1.0]])
    rotation = matrix([[cos, sin, 0.0], [-sin, cos, 0.0], [0.0, 0.0, 1.0]])
    shearing = matrix(
        [[1.0, torch.tan(torch.deg2rad(shear_x)), 0.0], [torch.tan(torch.deg2rad(shear_y)), 1.0, 0.0], [0.0, 0.0, 1.0]]
    )
    translation = matrix([[1.0, 0.0, translate_x], [0.0, 1.0, translate_y], [0.0, 0.0, 1.0]])
    back = matrix([[1.0, 0.0, cx], [0.0, 1.0, cy], [0.0, 0.0, 1.0]])
    return back @ translation @ shearing @ rotation @ scaling @ to_origin


def to_normalised(size: int) -> tuple[float, float]:
    """(scale, offset) taking pixel coordinates to grid_sample's: x * scale + offset.

    With align_corners=False the centre of pixel x sits at (2x + 1) / size - 1.
    """
    return 2.0 / size, 1.0 / size - 1.0


def sample_bilinear(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Read each image at its grid's normalised (x, y) positions: bilinear, black outside, dtype kept."""
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.to(images.dtype).clamp_(0.0, 1.0)


def warp_affine(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Warp each image by its forward matrix (N, 3, 3): bilinear, black border, dtype kept."""
    count, _, height, width = images.shape
    inverse = torch.linalg.inv(matrices.to(torch.float64))
    (x_scale, x_offset), (y_scale, y_offset) = to_normalised(width), to_normalised(height)
    normalise = torch.tensor([[x_scale, 0.0, x_offset], [0.0, y_scale, y_offset], [0.0, 0.0, 1.0]], dtype=torch.float64)
    theta = (normalise @ inverse)[:, :2, :].to(device=images.device, dtype=torch.float32)
    # grid = theta @ (x, y, 1) per pixel, as a column term plus a row term written straight into
    # each channel: 3x faster on the CPU than one (HW, 3) x (3, 2N) product, 10x than F.affine_grid
    xs = torch.arange(width, device=images.device, dtype=torch.float32)
    ys = torch.arange(height, device=images.device, dtype=torch.float32)
    grid = torch.empty(count, height, width, 2, device=images.device)
    for axis in range(2):
        along_x = theta[:, axis, 0:1] * xs
        along_y = theta[:, axis, 1:2] * ys + theta[:, axis, 2:3]
        torch.add(along_y.unsqueeze(2), along_x.unsqueeze(1), out=grid[..., axis])
    return sample_bilinear(images, grid)


def rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image counter-clockwise by its own angle (degrees) about the centre."""
    return warp_affine(images, affine_matrices(images.shape[-2], images.shape[-1], rotate=degrees.cpu()))


def rotation_angles(degrees: float, rng: ImageRandom) -> torch.Tensor:
    """(N,) signed angles: the magnitude from the table, the direction drawn per image."""
    return rng.sign().cpu().double() * degrees


# 15-degree steps (Ovadia et al. sweep MNIST in 15-degree steps); the direction is drawn per
# image from the seed, so a model cannot profit from a bias towards one direction
@register_perturbation(
    levels=(15, 30, 45, 60, 75), identity=0.0, unit="degrees, random direction", family="viewpoint",
    values_key="angles", bounds=(-360.0, 360.0), random=True,
)  # fmt: skip
def rotation(images: torch.Tensor, degrees: float, rng: ImageRandom) -> torch.Tensor:
    """Rotation by a fixed angle, clockwise or counter-clockwise per image."""
    return rotate(images, rotation_angles(degrees, rng))


def shear_angles(degrees: float, rng: ImageRandom) -> dict[str, torch.Tensor]:
    """Per image: shear along x or along y (equal chance), in a random direction."""
    signed = rng.sign(stream=0).cpu().double() * degrees
    along_x = rng.uniform(stream=1).cpu() < 0.5
    zero = torch.zeros_like(signed)
    return {"shear_x": torch.where(along_x, signed, zero), "shear_y": torch.where(along_x, zero, signed)}


@register_perturbation(
    levels=(10, 20, 30, 40, 50), identity=0.0, unit="degrees, random axis and direction", family="viewpoint",
    values_key="angles", bounds=(-80.0, 80.0), random=True,
)  # fmt: skip
def shear(images: torch.Tensor, degrees: float, rng: ImageRandom) -> torch.Tensor:
    """Shear along x or y about the centre: the object is seen slanted."""
    return warp_affine(images, affine_matrices(images.shape[-2], images.shape[-1], **shear_angles(degrees, rng)))


def bilinear_matrix(size: int, factor: float) -> torch.Tensor:
    """(size, size) float64 weights of a bilinear resample scaling one axis about its centre.

    Output pixel i reads input position p = (i - c) / factor + c with weights max(0, 1 - |p - r|)
    on input pixels r, so positions past the edge read black: grid_sample's zero border.
    """
    centre = (size - 1) / 2.0
    pixels = torch.arange(size, dtype=torch.float64)
    source = (pixels - centre) / factor + centre
    return (1.0 - (source[:, None] - pixels[None, :]).abs()).clamp_(min=0.0)


def _zoom(images: torch.Tensor, factor: float) -> torch.Tensor:
    # scaling about the centre is separable: the bilinear warp equals rows @ X @ cols^T, two
    # small products (~2x faster on the CPU than a sampling grid and grid_sample)
    height, width = images.shape[-2:]
    rows, cols = (bilinear_matrix(size, factor).to(images.device, torch.float32) for size in (height, width))
    return (rows @ (images.float() @ cols.T)).clamp_(0.0, 1.0).to(images.dtype)


@register_perturbation(
    levels=(1.15, 1.3, 1.5, 1.75, 2.0), identity=1.0, unit="scale factor", family="viewpoint",
    values_key="factors", bounds=(0.05, 20.0),
)  # fmt: skip
def zoom_in(images: torch.Tensor, factor: float, rng: ImageRandom) -> torch.Tensor:
    """Scale up about the centre (a closer camera): the object's edges leave the frame."""
    return _zoom(images, factor)


@register_perturbation(
    levels=(0.85, 0.7, 0.6, 0.5, 0.4), identity=1.0, unit="scale factor", family="viewpoint",
    values_key="factors", bounds=(0.05, 20.0),
)  # fmt: skip
def zoom_out(images: torch.Tensor, factor: float, rng: ImageRandom) -> torch.Tensor:
    """Scale down about the centre (a farther camera): the object shrinks in a black frame."""
    return _zoom(images, factor)


_DIRECTIONS = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)


def translation_offsets(pixels: float, rng: ImageRandom) -> dict[str, torch.Tensor]:
    """Per image: a shift of `pixels` right, left, down or up (equal chance)."""
    offsets = _DIRECTIONS[rng.choice(4).cpu()] * pixels
    return {"translate_x": offsets[:, 0], "translate_y": offsets[:, 1]}


# whole pixels along an axis, so sampling lands on pixel centres: a pure shift, no blur (any
# fractional custom shift is resampled bilinearly)
@register_perturbation(
    levels=(2, 3, 4, 6, 8), identity=0.0, unit="pixels, random axis direction", family="viewpoint",
    values_key="shifts", bounds=(-28.0, 28.0), random=True,
)  # fmt: skip
def translation(images: torch.Tensor, pixels: float, rng: ImageRandom) -> torch.Tensor:
    """Shift right, left, down or up, filling with black: the object is off-centre."""
    offsets = translation_offsets(pixels, rng)
    if float(pixels).is_integer():
        return shift_whole_pixels(images, offsets["translate_x"].long(), offsets["translate_y"].long())
    return warp_affine(images, affine_matrices(images.shape[-2], images.shape[-1], **offsets))


def shift_whole_pixels(images: torch.Tensor, shift_x: torch.Tensor, shift_y: torch.Tensor) -> torch.Tensor:
    """Move image n by (shift_x[n], shift_y[n]) whole pixels, black fill: no resampling.

    Equal to the bilinear warp by the same offsets (its samples land on pixel centres), at a
    slice copy per distinct offset instead of a sampling grid per image.
    """
    height, width = images.shape[-2:]
    out = torch.zeros_like(images)
    pairs, group = torch.unique(torch.stack([shift_x, shift_y], 1), dim=0, return_inverse=True)
    for (dx, dy), members in zip(pairs.tolist(), range(len(pairs)), strict=True):
        chosen = (group == members).nonzero().squeeze(1).to(images.device)
        if abs(dx) >= width or abs(dy) >= height:
            continue  # shifted wholly out of the frame: black
        source = images.index_select(0, chosen)
        moved = torch.zeros_like(source)
        moved[..., max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = source[
            ..., max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)
        ]
        out.index_copy_(0, chosen, moved)
    return out


@register_perturbation(
    levels=(1,), identity=0.0, unit="1 = mirrored", family="viewpoint", values_key=None, bounds=(0.0, 1.0), step=1.0
)
def hflip(images: torch.Tensor, flipped: float, rng: ImageRandom) -> torch.Tensor:
    """Horizontal mirror image (a fixed probe; Fashion-MNIST-C uses it)."""
    return images.flip(-1)


@register_perturbation(
    levels=(90, 180, 270), identity=0.0, unit="degrees counter-clockwise", family="viewpoint",
    values_key="angles", bounds=(0.0, 270.0), step=90.0,
)  # fmt: skip
def turn(images: torch.Tensor, degrees: float, rng: ImageRandom) -> torch.Tensor:
    """Exact quarter, half and three-quarter turns (fixed probes; no resampling)."""
    return torch.rot90(images, round(degrees / 90.0), dims=(-2, -1)).clone()


# At strength 1 the mix reaches about the middle of each single shift's table, jointly
VIEWPOINT_MIX_ROTATE = 45.0  # degrees, +-
VIEWPOINT_MIX_SHEAR = 20.0  # degrees along x, +-
VIEWPOINT_MIX_SCALE = 1.4  # factor in [1/1.4, 1.4], log-uniform
VIEWPOINT_MIX_TRANSLATE = 4.0  # pixels per axis, +-


def viewpoint_mix_draws(strength: float, rng: ImageRandom) -> dict[str, torch.Tensor]:
    """Per-image rotation, shear, scale and translation, each uniform (log-uniform for scale)."""
    draws = {
        "rotate": rng.symmetric(stream=0) * (strength * VIEWPOINT_MIX_ROTATE),
        "shear_x": rng.symmetric(stream=1) * (strength * VIEWPOINT_MIX_SHEAR),
        "scale": torch.exp(rng.symmetric(stream=2) * (strength * math.log(VIEWPOINT_MIX_SCALE))),
        "translate_x": rng.symmetric(stream=3) * (strength * VIEWPOINT_MIX_TRANSLATE),
        "translate_y": rng.symmetric(stream=4) * (strength * VIEWPOINT_MIX_TRANSLATE),
    }
    return {k: v.cpu().double() for k, v in draws.items()}


@register_perturbation(
    levels=(0.2, 0.4, 0.6, 0.8, 1.0), identity=0.0, unit="mix strength", family="viewpoint",
    values_key="strengths", bounds=(0.0, 1.0), random=True,
)  # fmt: skip
def viewpoint(images: torch.Tensor, strength: float, rng: ImageRandom) -> torch.Tensor:
    """Viewpoint mix: rotation, shear, scale and translation drawn jointly per image, one warp."""
    draws = viewpoint_mix_draws(strength, rng)
    return warp_affine(images, affine_matrices(images.shape[-2], images.shape[-1], **draws))

"""One property checker over every registered perturbation, then each kernel's own maths."""

from __future__ import annotations

import pytest
import torch

from robustbench_fmnist.perturbations import PERTURBATIONS, apply_perturbation
from robustbench_fmnist.perturbations.geometry import rotate
from tests.conftest import cuda, synthetic_split

NAMES = PERTURBATIONS.names()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    raw, _ = synthetic_split(12, seed=3)
    return torch.from_numpy(raw).float().div(255).unsqueeze(1)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("severity", [1, 3, 5])
def test_input_untouched_shape_dtype_range_kept(name: str, severity: int, images: torch.Tensor) -> None:
    before = images.clone()
    out = apply_perturbation(name, images, severity, seed=1)
    assert torch.equal(images, before)
    assert out.shape == images.shape and out.dtype == images.dtype and out.device == images.device
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, images), "severity > 0 must change the images"


@pytest.mark.parametrize("name", NAMES)
def test_float64_input_keeps_its_dtype(name: str, images: torch.Tensor) -> None:
    assert apply_perturbation(name, images.double(), 2).dtype == torch.float64


@pytest.mark.parametrize("name", NAMES)
def test_batched_equals_one_at_a_time(name: str, images: torch.Tensor) -> None:
    whole = apply_perturbation(name, images, 4, seed=7)
    singles = [
        apply_perturbation(name, images[i : i + 1], 4, seed=7, indices=torch.tensor([i])) for i in range(len(images))
    ]
    torch.testing.assert_close(torch.cat(singles), whole, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_output(name: str, images: torch.Tensor) -> None:
    assert torch.equal(apply_perturbation(name, images, 3, seed=5), apply_perturbation(name, images, 3, seed=5))


@pytest.mark.parametrize("name", [n for n in NAMES if PERTURBATIONS.get(n).random])
def test_different_seed_different_output_for_random_perturbations(name: str, images: torch.Tensor) -> None:
    assert not torch.equal(apply_perturbation(name, images, 3, seed=0), apply_perturbation(name, images, 3, seed=1))


@pytest.mark.parametrize("name", NAMES)
def test_severity_zero_is_the_identity(name: str, images: torch.Tensor) -> None:
    out = apply_perturbation(name, images, 0)
    assert torch.equal(out, images) and out is not images
    entry = PERTURBATIONS.get(name)
    # through the kernel itself: resampling at the identity may round by ~1e-6, far below 1/255
    torch.testing.assert_close(entry.kernel(images, entry.identity, None), images, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("severity", [-1, 6, 7, 2.5, True, "3"])
def test_impossible_severity_raises_value_error(name: str, severity: object, images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"severity must be an integer 0\.\.5"):
        apply_perturbation(name, images, severity)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", NAMES)
def test_bad_images_raise_value_error(name: str, images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        apply_perturbation(name, images[0], 1)
    with pytest.raises(ValueError, match="floating point"):
        apply_perturbation(name, (images * 255).to(torch.uint8), 1)


@pytest.mark.parametrize("name", NAMES)
def test_severity_table_has_five_levels_and_a_unit(name: str) -> None:
    entry = PERTURBATIONS.get(name)
    assert len(entry.levels) == 5 and entry.unit and entry.description and entry.family


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
def test_cpu_equals_cuda(name: str, images: torch.Tensor) -> None:
    cpu = apply_perturbation(name, images, 4, seed=2)
    gpu = apply_perturbation(name, images.cuda(), 4, seed=2).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=0, atol=1e-5)


# --- the kernels' maths ---


def test_brightness_adds_and_clips() -> None:
    x = torch.tensor([0.0, 0.5, 0.8, 1.0]).view(1, 1, 2, 2)
    out = apply_perturbation("brightness", x, 3)  # +0.3
    torch.testing.assert_close(out.flatten(), torch.tensor([0.3, 0.8, 1.0, 1.0]))


def test_contrast_scales_about_each_images_own_mean() -> None:
    x = torch.stack([torch.linspace(0.3, 0.7, 16), torch.linspace(0.1, 0.3, 16)]).view(2, 1, 4, 4)
    out = apply_perturbation("contrast", x, 1)  # x0.4
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)))
    torch.testing.assert_close(out.std(dim=(1, 2, 3)), 0.4 * x.std(dim=(1, 2, 3)))


def test_rotation_by_90_degrees_is_an_exact_quarter_turn(images: torch.Tensor) -> None:
    # pixel centres land on pixel centres, so bilinear sampling is exact
    turned = rotate(images, torch.full((len(images),), 90.0))
    torch.testing.assert_close(turned, torch.rot90(images, 1, dims=(-2, -1)), rtol=0, atol=1e-5)


def test_rotation_direction_is_drawn_per_image_with_equal_chance() -> None:
    x = torch.zeros(400, 1, 28, 28)
    x[:, :, 2:10, 13:15] = 1.0  # a bar above the centre
    out = apply_perturbation("rotation", x, 5, seed=0)  # 75 degrees, either way
    left = out[:, 0, :, :14].sum(dim=(1, 2)) > out[:, 0, :, 14:].sum(dim=(1, 2))
    assert 150 < int(left.sum()) < 250


def test_rotation_angles_follow_the_15_degree_table() -> None:
    assert PERTURBATIONS.get("rotation").levels == (15, 30, 45, 60, 75)
    assert PERTURBATIONS.get("rotation").parameter(0) == 0.0


def test_kernels_reject_impossible_parameters(images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="brightness amount"):
        PERTURBATIONS.get("brightness").kernel(images, 3.0, None)
    with pytest.raises(ValueError, match="contrast factor"):
        PERTURBATIONS.get("contrast").kernel(images, -0.5, None)
    with pytest.raises(ValueError, match="rotation angle"):
        PERTURBATIONS.get("rotation").kernel(images, 720.0, None)


def test_indices_must_match_the_batch(images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="indices must have shape"):
        apply_perturbation("rotation", images, 1, indices=torch.arange(3))

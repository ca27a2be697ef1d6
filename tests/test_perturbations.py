"""One property checker over every registered perturbation, then each kernel's own maths."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from robustbench_fmnist.perturbations import PERTURBATIONS, apply_perturbation
from robustbench_fmnist.perturbations.blur import correlate_per_image, reflect101
from robustbench_fmnist.perturbations.digital import _smoothing_basis, elastic_grid
from robustbench_fmnist.perturbations.geometry import _zoom, affine_matrices, rotate, shift_whole_pixels, warp_affine
from robustbench_fmnist.perturbations.noise import _walk_counts, photon_counts
from robustbench_fmnist.perturbations.random import ImageRandom, derive_key
from tests.conftest import cuda, synthetic_split

NAMES = PERTURBATIONS.names()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    raw, _ = synthetic_split(12, seed=3)
    return torch.from_numpy(raw).float().div(255).unsqueeze(1)


@pytest.mark.parametrize("name", NAMES)
def test_input_untouched_shape_dtype_range_kept(name: str, images: torch.Tensor) -> None:
    for severity in range(1, PERTURBATIONS.get(name).max_severity + 1):
        before = images.clone()
        out = apply_perturbation(name, images, severity, seed=1)
        assert torch.equal(images, before)
        assert out.shape == images.shape and out.dtype == images.dtype and out.device == images.device
        assert out.min() >= 0 and out.max() <= 1
        assert not torch.equal(out, images), f"severity {severity} must change the images"


@pytest.mark.parametrize("name", NAMES)
def test_float64_input_keeps_its_dtype(name: str, images: torch.Tensor) -> None:
    assert apply_perturbation(name, images.double(), 1).dtype == torch.float64


@pytest.mark.parametrize("name", NAMES)
def test_batched_equals_one_at_a_time(name: str, images: torch.Tensor) -> None:
    severity = PERTURBATIONS.get(name).max_severity
    whole = apply_perturbation(name, images, severity, seed=7)
    singles = [
        apply_perturbation(name, images[i : i + 1], severity, seed=7, indices=torch.tensor([i]))
        for i in range(len(images))
    ]
    # matrix products may block differently per batch size: float rounding only, far below 1/255
    torch.testing.assert_close(torch.cat(singles), whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_output(name: str, images: torch.Tensor) -> None:
    assert torch.equal(apply_perturbation(name, images, 1, seed=5), apply_perturbation(name, images, 1, seed=5))


@pytest.mark.parametrize("name", [n for n in NAMES if PERTURBATIONS.get(n).random])
def test_different_seed_different_output_for_random_perturbations(name: str, images: torch.Tensor) -> None:
    assert not torch.equal(apply_perturbation(name, images, 3, seed=0), apply_perturbation(name, images, 3, seed=1))


@pytest.mark.parametrize("name", [n for n in NAMES if not PERTURBATIONS.get(n).random])
def test_deterministic_perturbations_ignore_the_seed(name: str, images: torch.Tensor) -> None:
    assert torch.equal(apply_perturbation(name, images, 1, seed=0), apply_perturbation(name, images, 1, seed=1))


@pytest.mark.parametrize("name", NAMES)
def test_severity_zero_is_the_identity(name: str, images: torch.Tensor) -> None:
    out = apply_perturbation(name, images, 0)
    assert torch.equal(out, images) and out is not images
    entry = PERTURBATIONS.get(name)
    assert torch.equal(entry.apply_value(images, entry.identity), images)


@pytest.mark.parametrize("name", NAMES)
def test_impossible_severity_raises_value_error(name: str, images: torch.Tensor) -> None:
    top = PERTURBATIONS.get(name).max_severity
    for severity in (-1, top + 1, 7, 2.5, True, "3"):
        with pytest.raises(ValueError, match=rf"severity must be an integer 0\.\.{top}"):
            apply_perturbation(name, images, severity)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", NAMES)
def test_bad_images_raise_value_error(name: str, images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        apply_perturbation(name, images[0], 1)
    with pytest.raises(ValueError, match="floating point"):
        apply_perturbation(name, (images * 255).to(torch.uint8), 1)


@pytest.mark.parametrize("name", NAMES)
def test_severity_table_and_documentation(name: str) -> None:
    entry = PERTURBATIONS.get(name)
    assert entry.unit and entry.description and entry.family
    # graded perturbations have the standard five levels; only fixed probes (no custom values) have fewer
    assert len(entry.levels) == 5 or entry.name in {"hflip", "turn"}


@pytest.mark.parametrize("name", NAMES)
def test_severity_grows_the_change(name: str, images: torch.Tensor) -> None:
    entry = PERTURBATIONS.get(name)
    if entry.max_severity < 5:
        pytest.skip("fixed probe")
    change = [float((apply_perturbation(name, images, s, seed=2) - images).abs().mean()) for s in (1, 5)]
    assert change[1] > change[0], f"severity 5 must change the images more than severity 1: {change}"


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
def test_cpu_equals_cuda(name: str, images: torch.Tensor) -> None:
    severity = PERTURBATIONS.get(name).max_severity
    cpu = apply_perturbation(name, images, severity, seed=2)
    gpu = apply_perturbation(name, images.cuda(), severity, seed=2).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=0, atol=1e-5)


# --- the kernels' maths ---


def test_brightness_adds_and_clips_in_both_directions() -> None:
    x = torch.tensor([0.0, 0.5, 0.8, 1.0]).view(1, 1, 2, 2)
    torch.testing.assert_close(apply_perturbation("brightness_up", x, 3).flatten(), torch.tensor([0.3, 0.8, 1.0, 1.0]))
    torch.testing.assert_close(
        apply_perturbation("brightness_down", x, 3).flatten(), torch.tensor([0.0, 0.2, 0.5, 0.7])
    )


def test_exposure_multiplies_and_keeps_black_black() -> None:
    x = torch.tensor([0.0, 0.2, 0.5, 0.9]).view(1, 1, 2, 2)
    torch.testing.assert_close(apply_perturbation("exposure_up", x, 3).flatten(), torch.tensor([0.0, 0.4, 1.0, 1.0]))
    torch.testing.assert_close(
        apply_perturbation("exposure_down", x, 3).flatten(), torch.tensor([0.0, 0.1, 0.25, 0.45])
    )


def test_contrast_scales_about_each_images_own_mean() -> None:
    x = torch.stack([torch.linspace(0.3, 0.7, 16), torch.linspace(0.1, 0.3, 16)]).view(2, 1, 4, 4)
    for name, factor in (("contrast_down", 0.4), ("contrast_up", 1.5)):
        out = apply_perturbation(name, x, 1)
        torch.testing.assert_close(out.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)))
        torch.testing.assert_close(out.std(dim=(1, 2, 3)), factor * x.std(dim=(1, 2, 3)))


def test_gamma_raises_to_a_power_and_keeps_black_and_white() -> None:
    x = torch.tensor([0.0, 0.25, 0.5, 1.0]).view(1, 1, 2, 2)
    torch.testing.assert_close(apply_perturbation("gamma_up", x, 2).flatten(), x.flatten() ** 2.0)
    torch.testing.assert_close(apply_perturbation("gamma_down", x, 2).flatten(), x.flatten() ** 0.5)


def test_rotation_by_90_degrees_is_an_exact_quarter_turn(images: torch.Tensor) -> None:
    # pixel centres land on pixel centres, so bilinear sampling is exact
    turned = rotate(images, torch.full((len(images),), 90.0))
    torch.testing.assert_close(turned, torch.rot90(images, 1, dims=(-2, -1)), rtol=0, atol=1e-5)
    torch.testing.assert_close(apply_perturbation("turn", images, 1), turned, rtol=0, atol=1e-5)


def test_rotation_direction_is_drawn_per_image_with_equal_chance() -> None:
    x = torch.zeros(400, 1, 28, 28)
    x[:, :, 2:10, 13:15] = 1.0  # a bar above the centre
    out = apply_perturbation("rotation", x, 5, seed=0)  # 75 degrees, either way
    left = out[:, 0, :, :14].sum(dim=(1, 2)) > out[:, 0, :, 14:].sum(dim=(1, 2))
    assert 150 < int(left.sum()) < 250


def test_rotation_angles_follow_the_15_degree_table() -> None:
    assert PERTURBATIONS.get("rotation").levels == (15, 30, 45, 60, 75)
    assert PERTURBATIONS.get("rotation").parameter(0) == 0.0


def test_custom_value_equal_to_a_level_reproduces_that_severity(images: torch.Tensor) -> None:
    entry = PERTURBATIONS.get("rotation")
    assert torch.equal(entry.apply_value(images, 30.0, seed=4), entry(images, 2, seed=4))


def test_translation_is_a_whole_pixel_shift_along_one_axis(images: torch.Tensor) -> None:
    out = apply_perturbation("translation", images, 1, seed=0)  # 2 pixels
    for i in range(len(images)):
        shifted = [torch.roll(images[i], shifts=s, dims=d) for d in (-1, -2) for s in (2, -2)]
        # compare away from the border, which is filled with black
        assert any(torch.allclose(out[i, :, 3:-3, 3:-3], c[:, 3:-3, 3:-3], atol=1e-5) for c in shifted)


def test_zoom_out_shrinks_into_a_black_frame() -> None:
    x = torch.ones(1, 1, 28, 28)
    out = apply_perturbation("zoom_out", x, 4)  # x0.5
    assert float(out[0, 0, 0, 0]) == 0.0 and float(out[0, 0, 14, 14]) == 1.0
    assert 0.2 < float(out.mean()) < 0.3


def test_separable_zoom_and_whole_pixel_shift_equal_the_general_warp(images: torch.Tensor) -> None:
    height, width = images.shape[-2:]
    for factor in (0.4, 0.85, 1.3, 2.0):
        matrices = affine_matrices(height, width, scale=torch.full((len(images),), factor))
        torch.testing.assert_close(_zoom(images, factor), warp_affine(images, matrices), rtol=0, atol=1e-5)
    shift_x = torch.tensor([3, -2, 0, 0, 27, 0] * 2)
    shift_y = torch.tensor([0, 0, 5, -8, 0, -30] * 2)
    matrices = affine_matrices(height, width, translate_x=shift_x.double(), translate_y=shift_y.double())
    torch.testing.assert_close(
        shift_whole_pixels(images, shift_x, shift_y), warp_affine(images, matrices), rtol=0, atol=1e-5
    )


def test_elastic_grid_is_the_smoothed_field_added_to_the_pixel_positions() -> None:
    rng = ImageRandom(derive_key(0, "elastic"), torch.arange(6))
    grid = elastic_grid((20, 28), 22.0, rng)
    rows, cols = _smoothing_basis(20).float(), _smoothing_basis(28).float()
    white = rng.pixel_normal(2, 10, 10) * (22.0 / 3**0.5)
    field = torch.einsum("hi,ncij,wj->nhwc", rows, white, cols)  # displacement in pixels
    xs, ys = torch.arange(28.0), torch.arange(20.0)
    pixels = torch.stack(torch.broadcast_tensors(xs.view(1, 28), ys.view(20, 1)), -1) + field
    expected = (2 * pixels + 1) / torch.tensor([28.0, 20.0]) - 1  # grid_sample, align_corners=False
    torch.testing.assert_close(grid, expected, rtol=0, atol=1e-5)


def test_hflip_and_turn_are_exact(images: torch.Tensor) -> None:
    assert torch.equal(apply_perturbation("hflip", images, 1), images.flip(-1))
    assert torch.equal(apply_perturbation("turn", images, 2), torch.rot90(images, 2, dims=(-2, -1)))


def test_gaussian_noise_has_the_tabled_std() -> None:
    x = torch.full((64, 1, 28, 28), 0.5)
    out = apply_perturbation("gaussian_noise", x, 1, seed=3)  # sigma 0.08, far from the clip
    assert abs(float((out - x).std()) - 0.08) < 0.002 and abs(float((out - x).mean())) < 0.002


def test_shot_noise_is_poisson_with_mean_kept_and_variance_x_over_c() -> None:
    # rates 3.6, 30 and 0.3; x on the 8-bit grid (the table) and off it (the CDF walk)
    for level, x_value in ((3, 77 / 255), (1, 0.5), (5, 0.1), (3, 0.3)):
        photons = PERTURBATIONS.get("shot_noise").parameter(level)
        x = torch.full((256, 1, 28, 28), x_value)
        out = apply_perturbation("shot_noise", x, level, seed=1).double()
        counts = out * photons
        rate = x_value * photons
        assert torch.allclose(counts, counts.round(), atol=1e-4), "counts must be whole photons"
        assert abs(float(counts.mean()) - rate) < 0.02 * max(rate, 1)
        assert abs(float(counts.var()) - rate) < 0.05 * max(rate, 1)


@pytest.mark.parametrize("rate", [0.4, 3.0, 9.5, 60.0, 900.0])
def test_photon_counts_follow_the_poisson_pmf(rate: float) -> None:
    # exact inverse CDF at every rate: no normal approximation, even far from the tabled ones
    photons = rate / (200 / 255)
    intensity = torch.full((2000, 1, 28, 28), 200 / 255)
    halfwords = ImageRandom(derive_key(0, "pmf", rate), torch.arange(len(intensity))).pixel_halfwords(1, 28, 28)
    counts = photon_counts(intensity, photons, halfwords).double().flatten()
    k = torch.arange(int(rate + 6 * rate**0.5 + 10), dtype=torch.float64)
    pmf = torch.exp(torch.xlogy(k, torch.tensor(rate, dtype=torch.float64)) - rate - torch.lgamma(k + 1))
    observed = torch.bincount(counts.long(), minlength=len(k))[: len(k)].double() / len(counts)
    assert float((observed - pmf).abs().sum()) / 2 < 0.005  # total variation, 1.6M draws


def test_photon_counts_table_and_cdf_walk_agree() -> None:
    # stored images read a table; any other intensity walks the CDF: the same counts either way
    intensity = torch.arange(256, dtype=torch.float32).div(255).repeat(64)
    halfwords = ImageRandom(derive_key(3, "walk"), torch.arange(64)).pixel_halfwords(256).flatten()
    for photons in (3.0, 60.0, 2500.0):
        tabled = photon_counts(intensity, photons, halfwords)
        walked = _walk_counts(intensity.mul(photons), halfwords).float()
        assert torch.equal(tabled, walked), f"{int((tabled != walked).sum())} counts differ at {photons} photons"


def test_photon_counts_over_cache_sized_slices_equal_one_pass_over_the_batch() -> None:
    from robustbench_fmnist.perturbations.noise import _SLICE_PIXELS, _photon_counts_slice

    generator = torch.Generator().manual_seed(0)
    count = 2 * _SLICE_PIXELS + 12345  # two full slices and a short one
    on_grid = torch.randint(0, 256, (count,), generator=generator).float().div(255)
    off_grid = torch.rand(count, generator=generator)
    intensity = torch.where(torch.rand(count, generator=generator) < 0.01, off_grid, on_grid)
    halfwords = torch.randint(-32768, 32768, (count,), generator=generator, dtype=torch.int16)
    sliced = photon_counts(intensity, 12.0, halfwords)
    assert torch.equal(sliced, _photon_counts_slice(intensity, 12.0, halfwords))


def test_impulse_noise_sets_the_tabled_fraction_to_black_or_white() -> None:
    x = torch.full((64, 1, 28, 28), 0.5)
    out = apply_perturbation("impulse_noise", x, 4, seed=0)  # 17 %
    assert abs(float((out == 0).float().mean()) - 0.085) < 0.005
    assert abs(float((out == 1).float().mean()) - 0.085) < 0.005


def test_blurs_keep_a_flat_image_flat_and_spread_a_dot() -> None:
    flat = torch.full((2, 1, 28, 28), 0.4)
    dot = torch.zeros(8, 1, 28, 28)
    dot[:, :, 14, 14] = 1.0
    for name in ("gaussian_blur", "motion_blur"):
        torch.testing.assert_close(apply_perturbation(name, flat, 3), flat)
        spread = apply_perturbation(name, dot, 3)
        torch.testing.assert_close(spread.sum(dim=(1, 2, 3)), torch.ones(8))  # mass kept
        assert float(spread.max()) < 0.5


def test_per_image_filter_mirrors_the_border_for_kernels_wider_than_the_image() -> None:
    # F.pad's reflect for the usual case, the folded index otherwise: both OpenCV's REFLECT_101
    images, kernels = torch.rand(3, 1, 9, 9), torch.rand(3, 7, 7)
    padded = images[:, :, reflect101(torch.arange(-3, 12), 9)[:, None], reflect101(torch.arange(-3, 12), 9)[None, :]]
    expected = torch.stack([F.conv2d(padded[n : n + 1], kernels[n].view(1, 1, 7, 7))[0] for n in range(3)])
    torch.testing.assert_close(correlate_per_image(images, kernels), expected)
    small = images[..., :3, :3]
    folded = small[:, :, reflect101(torch.arange(-3, 6), 3)[:, None], reflect101(torch.arange(-3, 6), 3)[None, :]]
    expected = torch.stack([F.conv2d(folded[n : n + 1], kernels[n].view(1, 1, 7, 7))[0] for n in range(3)])
    torch.testing.assert_close(correlate_per_image(small, kernels), expected)


def test_pixelate_makes_blocks_and_jpeg_makes_8x8_artefacts(images: torch.Tensor) -> None:
    blocks = apply_perturbation("pixelate", images, 5)  # 7 pixels across -> 4x4 blocks
    assert torch.equal(blocks[..., ::4, ::4].repeat_interleave(4, -2).repeat_interleave(4, -1), blocks)
    compressed = apply_perturbation("jpeg", images, 5)
    assert torch.equal(compressed, (compressed * 255).round() / 255), "JPEG decodes to 8-bit levels"
    assert float((compressed - images).abs().mean()) > 0.01


def test_jpeg_quality_table_matches_libjpeg() -> None:
    from robustbench_fmnist.perturbations.digital import quantisation_table

    assert quantisation_table(50)[0, 0] == 16 and quantisation_table(10)[0, 0] == 80
    assert quantisation_table(100).max() == 1 and quantisation_table(1).max() == 255


def test_mixes_vary_per_image(images: torch.Tensor) -> None:
    for name in ("lighting", "viewpoint"):
        same = images[:1].expand(8, -1, -1, -1).contiguous()
        out = apply_perturbation(name, same, 3, seed=0)
        assert len({tuple(o.flatten()[:50].tolist()) for o in out}) == 8


def test_kernels_reject_impossible_parameters(images: torch.Tensor) -> None:
    for name, value, message in (
        ("brightness_up", 3.0, "outside"),
        ("contrast_down", -0.5, "outside"),
        ("rotation", 720.0, "outside"),
        ("turn", 45.0, "multiple of 90"),
        ("jpeg", 7.5, "multiple of 1"),
        ("gaussian_noise", float("nan"), "finite number"),
    ):
        with pytest.raises(ValueError, match=message):
            PERTURBATIONS.get(name).apply_value(images, value)


def test_indices_must_match_the_batch(images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="indices must have shape"):
        apply_perturbation("rotation", images, 1, indices=torch.arange(3))


def test_the_hash_over_cache_sized_slices_is_lowbias32_word_by_word() -> None:
    from robustbench_fmnist.perturbations.random import _HASH_SLICE, lowbias32_

    def reference(word: int) -> int:  # C. Wellons' lowbias32, on Python integers
        word ^= word >> 16
        word = (word * 0x7FEB352D) & 0xFFFFFFFF
        word ^= word >> 15
        word = (word * 0x846CA68B) & 0xFFFFFFFF
        return word ^ (word >> 16)

    count = 2 * _HASH_SLICE + 777  # two full slices and a short one
    words = torch.arange(count, dtype=torch.int64).mul_(2654435761).remainder_(1 << 32)
    mixed = lowbias32_(words.sub(torch.where(words >= 1 << 31, 1 << 32, 0)).to(torch.int32))
    for position in (0, 1, _HASH_SLICE - 1, _HASH_SLICE, 2 * _HASH_SLICE + 776):
        assert int(mixed[position]) & 0xFFFFFFFF == reference(int(words[position]))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda x: x * 255, r"found values in \[0, [\d.]+\]; divide 0-255 pixels by 255"),
        (lambda x: (x - 0.5) / 0.25, r"found values in \[-[\d.]+, [\d.]+\]; undo the normalisation"),
        (lambda x: x.index_fill(0, torch.tensor([1]), float("nan")), r"images hold 784 NaN pixel\(s\)"),
        (lambda x: x[:, 0], r"got \(12, 28, 28\); add the missing axis: images\[:, None\]"),
    ],
)
def test_images_outside_0_1_or_nan_are_refused_by_the_public_entry_point(
    bad: Callable[[torch.Tensor], torch.Tensor], message: str, images: torch.Tensor
) -> None:
    with pytest.raises(ValueError, match=message):
        apply_perturbation("brightness_up", bad(images), 1)

"""The checks of spaces (`adversaries:`, `evaluation.tta`) that need the axes: names, ranges, what each user can follow.

config.py checks each space's structure (points, low <= high, k, max_points, names) but
cannot import the axes (perturbations import config); the preflight calls `check_adversaries`
beside the perturbation cells' checks, so `validate` and `run` stop before any work.
"""

from __future__ import annotations

import difflib

from robustbench_fmnist.config import ExperimentConfig
from robustbench_fmnist.errors import ConfigError
from robustbench_fmnist.perturbations.registry import PERTURBATIONS
from robustbench_fmnist.perturbations.space import AXES, AxisEntry, axis_entry

# the axes whose transformation is a differentiable function of the parameter (an affine warp's
# matrix, color.py's arithmetic); a registered perturbation's kernel is not: it groups images by
# value, draws random numbers and may quantise, so gradient search cannot follow it
GRADIENT_AXES = frozenset({"rotation", "translate", "scale", "shear", "brightness", "contrast", "gamma", "exposure"})


def check_adversaries(config: ExperimentConfig) -> None:
    """Raise ConfigError, one line naming the key: an unknown axis, a range its kernel refuses, a gradient it lacks;
    in the adversaries' spaces, test-time augmentation's and the space-augmented trainings'."""
    for i, spec in enumerate(config.adversaries):
        check_space(spec.space, f"adversaries[{i}].space", gradient=spec.search == "gradient")
    check_space(config.evaluation.tta.space, "evaluation.tta.space", built_in=True)
    for i, model in enumerate(config.models):
        augment = model.train.robust_augment if model.train is not None else None
        if augment is not None and augment.method in ("random_point", "worst_of_k"):
            check_space(augment.space, f"models[{i}].train.robust_augment.space")


def check_space(space: dict[str, tuple[float, float, int]], where: str, *, gradient: bool = False,
                built_in: bool = False) -> None:  # fmt: skip
    """Raise ConfigError, one line naming `where`: an unknown axis, a range its kernel refuses, an axis the user of
    the space cannot follow (`gradient`: no gradient; `built_in`: a perturbation's kernel, which draws per image)."""
    for axis, (low, high, _) in space.items():
        entry = _entry(axis, where)
        bottom, top = entry.bounds
        if low < bottom or high > top:
            raise ConfigError(
                f"{where}.{axis}: [{low:g}, {high:g}] reaches outside [{bottom:g}, {top:g}], the values its "
                f"kernel takes ({entry.unit})"
            )
        if gradient and (entry.perturbation is not None or axis not in GRADIENT_AXES):
            raise ConfigError(
                f"{where}.{axis}: search gradient cannot follow {axis!r}, a perturbation kernel with no gradient; "
                f"gradient takes {', '.join(sorted(GRADIENT_AXES))}; use search: grid, random or worst_of_k"
            )
        if built_in and entry.perturbation is not None:
            raise ConfigError(
                f"{where}.{axis}: a perturbation's kernel draws per test image, so it is no copy to average over; "
                f"use the built-in axes: {', '.join(sorted(AXES.names()))}"
            )


def _entry(axis: str, where: str) -> AxisEntry:
    """The axis `axis`, or ConfigError with a 'did you mean' over the axes and the continuous perturbations."""
    try:
        return axis_entry(axis)
    except ValueError as exc:
        message = str(exc)
    if axis in PERTURBATIONS:
        raise ConfigError(
            f"{where}: {axis!r} has no continuous parameter (a fixed probe, or values in steps), so it is no axis; "
            "use it under perturbations:"
        )
    if "did you mean" not in message:
        # AXES' message suggests only its own names; a misspelt continuous perturbation is an axis too
        close = difflib.get_close_matches(axis, perturbation_axes(), n=1, cutoff=0.6)
        if close:
            message = message.replace(f"{axis!r}.", f"{axis!r}; did you mean {close[0]!r}?", 1)
    raise ConfigError(f"{where}: {message}")


def perturbation_axes() -> list[str]:
    """The registered perturbations a space can name as an axis (those with a continuous parameter), sorted."""
    return [name for name in PERTURBATIONS.names() if name not in AXES and _is_axis(name)]


def _is_axis(name: str) -> bool:
    try:
        axis_entry(name)
    except ValueError:
        return False
    return True

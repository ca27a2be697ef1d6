"""What models from other frameworks share: how their one input and one output are checked, and how a
batch of the harness's images is laid out for them.

The harness's images are (N, 1, 28, 28) floats in [0, 1]. An outside model may want them normalised,
with the grey channel repeated to three, and channels last (NHWC, as Keras and TensorFlow lay them out).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from robustbench_fmnist.data import IMAGE_SIZE, NUM_CLASSES
from robustbench_fmnist.errors import ConfigError

Layout = Literal["nchw", "nhwc"]
Dim = int | str | None  # a fixed size, or a free axis (by its name, or None)


@dataclass(frozen=True)
class Normalization:
    """(x - mean) / std on [0, 1] images, as the model was trained to expect."""

    mean: float
    std: float


@dataclass(frozen=True)
class InputForm:
    """How the images reach an outside model: normalised or not, 1 or 3 channels, in which layout."""

    layout: Layout
    channels: int
    normalize: Normalization | None

    def arrange(self, images: torch.Tensor) -> torch.Tensor:
        """A batch (N, 1, 28, 28) in [0, 1] as the model takes it."""
        x = images.float()
        if self.normalize is not None:
            x = (x - self.normalize.mean) / self.normalize.std
        if self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        return x.permute(0, 2, 3, 1) if self.layout == "nhwc" else x


def _shown(shape: Sequence[Dim]) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"  # a free axis by its name, unquoted


def check_image_input(name: str, shape: Sequence[Dim], layout: Layout, channels: int, where: str) -> None:
    """A ConfigError unless `shape` is one batch of 28x28 images with `channels` channels in `layout`."""
    expected = f"[N, C, {IMAGE_SIZE}, {IMAGE_SIZE}]" if layout == "nchw" else f"[N, {IMAGE_SIZE}, {IMAGE_SIZE}, C]"
    if len(shape) != 4:
        raise ConfigError(f"{where}: input {name!r} has shape {_shown(shape)}; expected {expected} ({layout})")
    given, height, width = (shape[1], shape[2], shape[3]) if layout == "nchw" else (shape[3], shape[1], shape[2])
    if (height, width) != (IMAGE_SIZE, IMAGE_SIZE) or given not in (1, 3):
        other = "nhwc" if layout == "nchw" else "nchw"
        hint = f"; is the layout {other}? (layout: {other})" if given == IMAGE_SIZE else ""
        raise ConfigError(
            f"{where}: input {name!r} has shape {_shown(shape)}; expected {expected} ({layout}) with 1 channel, "
            f"or 3 with channels: 3{hint}"
        )
    if given != channels:
        fix = "add channels: 3 to repeat the grey channel" if given == 3 else "drop channels: 3"
        raise ConfigError(f"{where}: the model takes {given} channel(s) and the entry says {channels}; {fix}")


def check_scores_output(name: str, shape: Sequence[Dim], where: str) -> None:
    """A ConfigError unless `shape` is a batch of NUM_CLASSES class scores."""
    if len(shape) != 2 or shape[1] != NUM_CLASSES:
        raise ConfigError(
            f"{where}: output {name!r} has shape {_shown(shape)}; expected [N, {NUM_CLASSES}] class scores"
        )


def check_one(kind: str, names: Sequence[str], where: str) -> None:
    """A ConfigError unless there is exactly one input (or output)."""
    if len(names) != 1:
        what = "takes" if kind == "input" else "gives"
        reads = "feeds one batch of images" if kind == "input" else "reads one of class scores"
        raise ConfigError(f"{where} {what} {len(names)} {kind}s ({', '.join(names)}); the harness {reads}")


__all__ = ["InputForm", "Layout", "Normalization", "check_image_input", "check_one", "check_scores_output"]

"""Models that fail on purpose, named by `factory:` in the executor tests (tests/ is on sys.path under pytest)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from robustbench_fmnist.models import create_model


class FailsOnDarkImages(nn.Module):
    """The tiny baseline, except that evaluating a batch darker than `threshold` raises (and is logged)."""

    def __init__(self, attempts: str, threshold: float = 0.05) -> None:
        super().__init__()
        self.inner = create_model("baseline_cnn_tiny")
        self.attempts, self.threshold = Path(attempts), threshold

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.training and len(images) > 2 and float(images.mean()) < self.threshold:
            with self.attempts.open("a") as log:
                log.write(f"{os.getpid()}\n")
            raise RuntimeError(f"a dark batch (mean {float(images.mean()):.3f})")
        return self.inner(images)


class KillsItsWorkerOnce(nn.Module):
    """The tiny baseline, except that the first evaluation batch anywhere kills the process running it."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.inner = create_model("baseline_cnn_tiny")
        self.marker = Path(marker)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.training and len(images) > 2:
            try:
                self.marker.open("x").close()  # only the first batch of all finds no marker
            except FileExistsError:
                pass
            else:
                os._exit(1)  # a worker dying mid-task, as an out-of-memory kill would leave it
        return self.inner(images)


def fails_on_dark_images(attempts: str, threshold: float = 0.05) -> nn.Module:
    return FailsOnDarkImages(attempts, threshold)


def kills_its_worker_once(marker: str) -> nn.Module:
    return KillsItsWorkerOnce(marker)

"""Preview grids: what each perturbation does at every severity, as a PNG a person can check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from robustbench_fmnist.data import CLASS_NAMES
from robustbench_fmnist.files import atomic_path
from robustbench_fmnist.perturbations import PERTURBATIONS
from robustbench_fmnist.perturbations.backends import apply_backend
from robustbench_fmnist.perturbations.table import format_value

SCALE = 3  # 28 -> 84 pixels per image, nearest-neighbour so pixels stay visible
LABEL_WIDTH = 120
GAP = 2


def sample_per_class(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """The first test image of each class, as (10, 1, 28, 28) floats, with their test-set indices."""
    indices = [int((labels == c).nonzero()[0]) for c in range(len(CLASS_NAMES)) if (labels == c).any()]
    return images[indices].float().div(255).unsqueeze(1), indices


def preview_grid(
    name: str, images: torch.Tensor, indices: list[int], *, seed: int = 0, backend: str = "torch"
) -> Image.Image:
    """Rows: severity 0 (clean) to the table's last; columns: the sample images."""
    entry = PERTURBATIONS.get(name)
    index_tensor = torch.tensor(indices)
    rows = []
    for severity in range(entry.max_severity + 1):
        value = entry.parameter(severity)
        rows.append(apply_backend(backend, entry, images, value, seed=seed, indices=index_tensor))
    cell = 28 * SCALE
    width = LABEL_WIDTH + len(indices) * (cell + GAP)
    height = 20 + len(rows) * (cell + GAP)
    canvas = Image.new("L", (width, height), color=255)
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), f"{name} ({entry.unit}), seed {seed}, {backend}", fill=0)
    for r, batch in enumerate(rows):
        top = 20 + r * (cell + GAP)
        label = "s0 clean" if r == 0 else f"s{r}  {format_value(entry.levels[r - 1])}"
        draw.text((4, top + cell // 2 - 6), label, fill=0)
        pixels = (batch[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        for c, image in enumerate(pixels):
            tile = Image.fromarray(np.ascontiguousarray(image), mode="L").resize((cell, cell), Image.NEAREST)
            canvas.paste(tile, (LABEL_WIDTH + c * (cell + GAP), top))
    return canvas


def write_preview(grid: Image.Image, path: Path) -> Path:
    """Write a preview grid as a PNG, atomically."""
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    return path

"""Preview grids, PNGs a person can check: each perturbation at every severity, and a space's points."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from robustbench_fmnist.data import CLASS_NAMES
from robustbench_fmnist.files import atomic_path
from robustbench_fmnist.perturbations import PERTURBATIONS
from robustbench_fmnist.perturbations.backends import apply_backend
from robustbench_fmnist.perturbations.space import Space, perturb_at
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


MAX_COLUMNS = 9  # a space's first dimension, sampled evenly, low to high
MAX_ROWS = 7  # its second dimension


def _sampled(grid: torch.Tensor, most: int) -> list[int]:
    """Up to `most` indices into a dimension's values, evenly spread and always keeping both ends."""
    count = min(most, len(grid))
    return sorted({round(i * (len(grid) - 1) / max(count - 1, 1)) for i in range(count)})


def space_grid(title: str, space: Space, image: torch.Tensor, *, seed: int = 0, index: int = 0) -> Image.Image:
    """One image at a sample of a space's points: columns its first dimension, rows its second (others at identity)."""
    grids, identities = space.grids, space.identities.tolist()
    resting = [int((g - i).abs().argmin()) for g, i in zip(grids, identities, strict=True)]  # closest to no change
    columns = _sampled(grids[0], MAX_COLUMNS)
    rows = _sampled(grids[1], MAX_ROWS) if len(grids) > 1 else [None]
    values = []
    for row in rows:
        for column in columns:
            chosen = list(resting)
            chosen[0] = column
            if row is not None:
                chosen[1] = row
            values.append([float(g[k]) for g, k in zip(grids, chosen, strict=True)])
    batch = image.reshape(1, 1, 28, 28).expand(len(values), -1, -1, -1)
    indices = torch.full((len(values),), index, dtype=torch.long)
    out = perturb_at(batch, space, torch.tensor(values, dtype=torch.float64), seed=seed, indices=indices)
    pixels = (out[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    cell = 28 * SCALE
    top = 40
    canvas = Image.new("L", (LABEL_WIDTH + len(columns) * (cell + GAP), top + len(rows) * (cell + GAP)), color=255)
    draw = ImageDraw.Draw(canvas)
    others = [f"{d}={grids[k][resting[k]]:g}" for k, d in enumerate(space.dims) if k > 1]
    caption = f"{title}: {space.size:,} points; test image {index}" + (f"; {', '.join(others)}" if others else "")
    draw.text((4, 4), caption, fill=0)
    draw.text((4, top - 16), f"{space.dims[0]} ->", fill=0)
    for c, column in enumerate(columns):
        draw.text((LABEL_WIDTH + c * (cell + GAP) + 4, top - 16), f"{float(grids[0][column]):g}", fill=0)
    for r, row in enumerate(rows):
        y = top + r * (cell + GAP)
        if row is not None:
            draw.text((4, y + cell // 2 - 6), f"{space.dims[1]} {float(grids[1][row]):g}", fill=0)
        for c in range(len(columns)):
            tile = Image.fromarray(np.ascontiguousarray(pixels[r * len(columns) + c]), mode="L")
            canvas.paste(tile.resize((cell, cell), Image.NEAREST), (LABEL_WIDTH + c * (cell + GAP), y))
    return canvas

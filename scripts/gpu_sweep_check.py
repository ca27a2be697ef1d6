"""The lighting sweep on cuda with CPU-trained weights: every cell's accuracy must equal the CPU sweep's.

Weights are trained on the CPU (a short recipe, so the check fits in minutes), then the same
weights are evaluated on both devices through the one inference path. Exits 1 naming the worst
cell if any accuracy differs by more than 0.05 points.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from robustbench_fmnist.config import load_config
from robustbench_fmnist.data import load_fashion_mnist, to_float_images
from robustbench_fmnist.evaluation.cells import experiment_cells
from robustbench_fmnist.evaluation.sweep import evaluate_cells
from robustbench_fmnist.runtime import apply_cpu_settings
from robustbench_fmnist.training.resolution import ResolvedModel, resolve
from robustbench_fmnist.training.weights import seeded_model, train_weights

TOLERANCE_POINTS = 0.05


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output-dir", type=Path, default=Path("/tmp/rbfm-gpu-check"))
    parser.add_argument("--experiment", type=Path, default=Path("experiments/lighting.yaml"))
    parser.add_argument("--data-dir", type=Path, help="a subset of the data (scripts/data_subset.py), read unverified")
    args = parser.parse_args()
    apply_cpu_settings()
    config = load_config(args.experiment)
    cells = experiment_cells(config)
    data = load_fashion_mnist(args.data_dir, verify=args.data_dir is None)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    worst = 0.0
    lines = []
    for resolved in resolve(config):
        if resolved.recipe is None:
            continue
        short = resolved.recipe.model_copy(update={"epochs": 1, "train_images": 20_000})
        started = time.perf_counter()
        trained = train_weights(
            ResolvedModel(resolved.spec, resolved.builder, short), data.train, seed=0, device=cpu, key="gpu-check"
        )
        model = seeded_model(resolved, 0)
        model.load_state_dict(trained.state)
        model.eval()
        accuracies = {}
        for device in (cpu, cuda):
            images = to_float_images(data.test.images, device)
            tick = time.perf_counter()
            results, _ = evaluate_cells(
                model,
                resolved.name,
                images,
                data.test.labels,
                cells,
                device=device,
                compile="auto",
                show_progress=False,
            )
            seconds = time.perf_counter() - tick
            accuracies[device.type] = {(r.perturbation, r.severity): r.accuracy for r in results}
            rate = len(cells) * len(images) / seconds
            lines.append(f"{resolved.name} {device.type}: {len(cells)} cells in {seconds:.1f} s ({rate:,.0f} images/s)")
        for cell, accuracy in accuracies["cpu"].items():
            gap = abs(accuracy - accuracies["cuda"][cell]) * 100
            worst = max(worst, gap)
            if gap > TOLERANCE_POINTS:
                print(f"gpu-check: {resolved.name} {cell}: cpu {100 * accuracy:.2f} % vs cuda "
                      f"{100 * accuracies['cuda'][cell]:.2f} %", file=sys.stderr)  # fmt: skip
        lines.append(f"{resolved.name}: trained on cpu in {time.perf_counter() - started:.0f} s incl. both sweeps")
    print("\n".join(lines))
    verdict = "equal" if worst <= TOLERANCE_POINTS else "DIFFER"
    print(f"gpu-check: lighting sweep accuracies on cuda vs cpu {verdict}: largest gap {worst:.3f} points")
    return 0 if worst <= TOLERANCE_POINTS else 1


if __name__ == "__main__":
    sys.exit(main())

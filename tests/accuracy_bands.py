"""A short real-data training and evaluation whose accuracies must stay inside committed bands.

One epoch of the baseline CNN's own recipe on the 60,000 training images, then the evaluator on
the first 5,000 test images: clean, and every perturbation at its mildest and its strongest
severity. A change that silently breaks a perturbation (a no-op, a wrong sign, garbage) or the
training moves some accuracy out of its band; float noise between machines and bf16 kernels does not.

Refresh after an intended change to a perturbation, the recipe or the evaluator:
    .venv/bin/python -m tests.accuracy_bands     # trains seeds 0, 1, 2 and rewrites accuracy_bands.json
Each band is the range over the three seeds, widened by MARGIN plus that range again.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from robustbench_fmnist.data import load_fashion_mnist, to_float_images
from robustbench_fmnist.evaluation.cells import sweep_cells
from robustbench_fmnist.evaluation.sweep import evaluate_cells
from robustbench_fmnist.models import create_model
from robustbench_fmnist.models.baseline import BASELINE_RECIPE
from robustbench_fmnist.perturbations import PERTURBATIONS
from robustbench_fmnist.progress import set_progress
from robustbench_fmnist.runtime import apply_cpu_settings
from robustbench_fmnist.training.loop import train_model

BANDS_PATH = Path(__file__).with_name("accuracy_bands.json")
RECIPE = BASELINE_RECIPE.model_copy(update={"epochs": 1})
TEST_IMAGES = 5_000
MARGIN = 0.02


def cells() -> list:
    chosen = []
    for name in PERTURBATIONS.names():
        top = PERTURBATIONS.get(name).max_severity
        chosen.append((name, sorted({1, top})))
    return sweep_cells(chosen)


def train(seed: int) -> torch.nn.Module:
    """The one-epoch baseline the bands are for, trained with `seed` on the real training set."""
    apply_cpu_settings()
    data = load_fashion_mnist()
    torch.manual_seed(seed)
    model = create_model("baseline_cnn")
    train_model(model, data.train, RECIPE, seed=seed, device=torch.device("cpu"))
    return model


def evaluate(model: torch.nn.Module) -> dict[str, float]:
    """Accuracy per cell ('clean/0', 'rotation/1', ...) on the first TEST_IMAGES test images."""
    data = load_fashion_mnist()
    images = to_float_images(data.test.images[:TEST_IMAGES], "cpu")
    results, _ = evaluate_cells(
        model, "baseline_cnn", images, data.test.labels[:TEST_IMAGES], cells(), device=torch.device("cpu"), seed=0
    )
    return {f"{r.perturbation}/{r.severity}": r.accuracy for r in results}


def measure(seed: int) -> dict[str, float]:
    """Accuracy per cell of a one-epoch baseline trained with `seed`."""
    return evaluate(train(seed))


def bands(runs: list[dict[str, float]]) -> dict[str, list[float]]:
    out = {}
    for cell in runs[0]:
        values = [run[cell] for run in runs]
        spread = max(values) - min(values)
        low, high = min(values) - MARGIN - spread, max(values) + MARGIN + spread
        out[cell] = [round(max(0.0, low), 4), round(min(1.0, high), 4)]
    return out


def load_bands(path: Path = BANDS_PATH) -> dict[str, list[float]]:
    return json.loads(path.read_text(encoding="utf-8"))["bands"]


def main() -> None:
    set_progress(True)
    runs = [measure(seed) for seed in range(3)]
    payload = {
        "about": "Accuracy bands for tests/test_accuracy_bands.py; regenerate with python -m tests.accuracy_bands",
        "recipe": RECIPE.model_dump(mode="json"),
        "test_images": TEST_IMAGES,
        "seeds": {str(seed): run for seed, run in enumerate(runs)},
        "bands": bands(runs),
    }
    BANDS_PATH.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {BANDS_PATH} ({len(payload['bands'])} cells)")


if __name__ == "__main__":
    main()

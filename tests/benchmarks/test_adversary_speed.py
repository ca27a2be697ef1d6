"""The worst-case issue's speed targets, as ratios of timings taken in this one module (run with -s for figures).

- The spatial grid (rotation +-30 deg in 31 steps x translation +-3 px in 5 x 5: 775 points) over the
  10,000 test images costs at most 100 plain cells for the baseline CNN, counted in forward passes
  (exact; the time is printed and held to 125 cells, the step's overhead included): the early exits
  (an image fooled once is done), the budget levels and the sample's ordering of the points make it
  far less than the 775 cells brute force would be;
- each step of the search (perturbing a batch, each image at its own point, the forward pass and
  keeping each image's verdict) runs at >= 80 % of the bare forward pass on the same batch.
The baseline is trained here for one epoch of its recipe (clean accuracy about 88 %): a model that
is right on more images keeps more of them standing, so the cost is printed with its accuracy.
"""

from __future__ import annotations

import statistics

import pytest
import torch

from robustbench_fmnist.data import load_fashion_mnist, to_float_images
from robustbench_fmnist.evaluation.adversary import NONE, Search, _Scorer, draws, search_space
from robustbench_fmnist.evaluation.cells import sweep_cells
from robustbench_fmnist.evaluation.inference import prepare_for_inference
from robustbench_fmnist.evaluation.sweep import evaluate_cells
from robustbench_fmnist.models import create_model
from robustbench_fmnist.models.baseline import BASELINE_RECIPE
from robustbench_fmnist.perturbations.space import Space
from robustbench_fmnist.training.loop import train_model
from tests.benchmarks.gate import min_seconds, paired_ratio, paired_seconds
from tests.conftest import real_data_available

pytestmark = [pytest.mark.benchmark, pytest.mark.slow]

CPU = torch.device("cpu")
SPATIAL = Space((("rotation", -30, 30, 31), ("translate", -3, 3, 5)))


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    if not real_data_available():
        pytest.skip("the worst-case targets need the real Fashion-MNIST (make data installs it)")
    data = load_fashion_mnist()
    torch.manual_seed(0)
    model = create_model("baseline_cnn")
    train_model(model, data.train, BASELINE_RECIPE.model_copy(update={"epochs": 1}), seed=0, device=CPU)
    return model.eval(), to_float_images(data.test.images, CPU), data.test.labels


def test_the_spatial_grid_costs_at_most_100_plain_cells(trained: tuple) -> None:
    model, images, labels = trained
    prepared = prepare_for_inference(model, CPU, compile="never")
    cell = sweep_cells([("rotation", [1])])[1:]

    def plain_cell() -> None:
        evaluate_cells(model, "baseline_cnn", images, labels, cell, device=CPU, prepared=prepared, show_progress=False)

    plain = min_seconds(plain_cell, rounds=3)
    found = {}

    def grid() -> None:
        found["out"] = search_space(prepared, images, labels, SPATIAL, Search("grid"), name="b", show_progress=False)

    seconds = min_seconds(grid, rounds=1, warmup=0)
    out = found["out"]
    clean = float((out.clean_prediction.long() == labels).float().mean())
    worst = float(((out.clean_prediction.long() == labels) & (out.fooling_point == NONE)).float().mean())
    cost, passes = seconds / plain, out.forward_passes / len(labels)
    print(
        f"\nspatial grid ({SPATIAL.size} points) over {len(labels):,} images: {seconds:.1f} s, "
        f"{out.forward_passes:,} forward passes ({passes:.0f} per image, {500 * SPATIAL.size:,} of them the sample of "
        f"500 at every point); one plain cell {plain:.2f} s: {cost:.0f} plain cells in time (target 100); clean "
        f"{100 * clean:.1f} %, worst case {100 * worst:.1f} %"
    )
    # the count is exact and machine-independent; the time also holds perturbing and bookkeeping, which
    # the step target below bounds at 25 % of the forward pass
    assert passes <= 100, f"the spatial grid spends {passes:.0f} forward passes per image (target 100 plain cells)"
    assert cost <= 125, f"the spatial grid takes {cost:.0f} plain cells of time (target 100, 125 with the step's 80 %)"


def test_a_search_step_runs_at_80_percent_of_the_bare_forward(trained: tuple) -> None:
    model, images, labels = trained
    prepared = prepare_for_inference(model, CPU, compile="never")
    rows = torch.arange(1000)
    points = draws(SPATIAL, len(labels), 1, seed=0, indices=torch.arange(len(labels)))[rows, 0]
    scorer = _Scorer(prepared, images, labels, SPATIAL, name="b", seed=0)
    scorer.fooled_clean(labels.to(torch.uint8), torch.ones(len(labels)))
    batch = images[rows].contiguous(memory_format=torch.channels_last)

    def step() -> None:
        scorer.score(rows, points, torch.zeros_like(points), uniform=False)

    def bare() -> None:
        with torch.inference_mode():
            prepared(batch).argmax(1)

    # alternated, each step timed beside a bare forward, the median of the pairs' ratios: a shared VM's
    # speed drifts for seconds at a time, and the fastest of 7 of each, timed apart, read 76 % in one CI
    # run where the two differ by the warp's 5 % (the step's other work is a few index operations)
    steps, forwards = paired_seconds(step, bare, rounds=15)
    share = paired_ratio(forwards, steps)
    stepping, forward = statistics.median(steps), statistics.median(forwards)
    print(f"\nsearch step over 1,000 images at their own points: {1000 * stepping:.1f} ms, bare forward "
          f"{1000 * forward:.1f} ms: {100 * share:.0f} % (target 80 %)")  # fmt: skip
    assert share >= 0.8, f"a search step runs at {100 * share:.0f} % of the bare forward (target 80 %)"

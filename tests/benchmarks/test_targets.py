"""The throughput issue's speed targets, each measured against a reference taken in the same run.

The targets were set on planning's machine, whose 3x3 channels_last convolution reaches about
490 GFLOP/s (REFERENCE.md). Machines differ by 2x and more (the shared 2-core VMs here measure
220-240 GFLOP/s on the same convolution), so the absolute targets are scaled by this run's own
ceiling: 60,000 images/s there is 60,000 x ceiling / 490 here. Run with `-s` for the figures.
"""

from __future__ import annotations

import statistics

import pytest
import torch

from robustbench_fmnist.data import CLASS_NAMES, load_fashion_mnist, to_float_images
from robustbench_fmnist.evaluation.cells import sweep_cells
from robustbench_fmnist.evaluation.inference import prepare_for_inference
from robustbench_fmnist.evaluation.scoring import score_cells
from robustbench_fmnist.evaluation.sweep import evaluate_cells
from robustbench_fmnist.evaluation.throughput import (
    inference_model,
    measure_conv_ceiling,
    measure_sweep_overhead,
    time_calls,
)
from robustbench_fmnist.models import count_macs, create_model
from robustbench_fmnist.models.baseline import BASELINE_RECIPE
from robustbench_fmnist.perturbations import PERTURBATIONS
from robustbench_fmnist.training.loop import train_model

pytestmark = [pytest.mark.benchmark, pytest.mark.slow]

PLANNING_CEILING_GFLOPS = 490.0
INFERENCE_TARGET = 60_000  # images/s on planning's machine
TRAINING_TARGET_SECONDS = 20.0  # to >= 91 % test accuracy, median of 3 seeds, on planning's machine
# the baseline's recipe, shortened to reach 91 % as early as it reliably can (see the closing note)
TIME_TO_ACCURACY_RECIPE = BASELINE_RECIPE.model_copy(update={"epochs": 5, "lr": 4e-3})


@pytest.fixture(scope="module")
def ceiling_gflops() -> float:
    row = measure_conv_ceiling(torch.device("cpu"), repeats=9)
    print(f"\nconv ceiling this run: {row.gflops:.0f} GFLOP/s ({row.model}, {row.threads} threads)")
    return row.gflops


@pytest.mark.parametrize("suite", ["lighting", "all"])
def test_sweep_runs_at_85_percent_of_the_bare_forward(
    test_images: torch.Tensor, test_labels: torch.Tensor, suite: str
) -> None:
    """Perturbing, copying and scoring cost at most 15 % on top of the model's own forward pass, both through the
    one inference path (compiled here: 5,000 images x the cells is past inference.COMPILE_MIN_IMAGES)."""
    names = ["brightness_up", "brightness_down", "contrast_down", "gamma_up", "lighting"]
    if suite == "all":  # every perturbation at severity 3 (the fixed probes at their one severity)
        names = PERTURBATIONS.names()
    cells = sweep_cells(
        [(n, None if suite == "lighting" else [min(3, PERTURBATIONS.get(n).max_severity)]) for n in names]
    )
    torch.manual_seed(0)
    model = create_model("baseline_cnn").eval()
    forward, sweep = measure_sweep_overhead(
        "baseline_cnn", model, test_images[:5000], test_labels[:5000], cells, repeats=5
    )
    share = sweep.images_per_second / forward.images_per_second
    print(
        f"\nsweep over {len(cells)} cells ({suite}): {sweep.images_per_second:,.0f} images/s, "
        f"bare forward {forward.images_per_second:,.0f} images/s: {100 * share:.0f} % (compiled {sweep.compiled})"
    )
    assert share >= 0.85, f"the sweep runs at {100 * share:.0f} % of the bare forward pass (target 85 %)"


def test_the_sweep_through_the_one_inference_path_is_1_4x_the_eager_sweep(
    test_images: torch.Tensor, test_labels: torch.Tensor
) -> None:
    """Issue 16: the baseline's lighting sweep over the whole test set, metrics included, through the path
    evaluation uses (compiled once, as a run's tasks share it) against the same sweep eager, alternated."""
    names = ["brightness_up", "brightness_down", "contrast_down", "gamma_up", "lighting"]
    cells = sweep_cells([(n, None) for n in names])
    torch.manual_seed(0)
    model = create_model("baseline_cnn").eval()
    cpu = torch.device("cpu")
    prepared = prepare_for_inference(model, cpu, compile="auto", images=len(test_images) * len(cells))
    assert prepared.compiled, "compile auto compiles the baseline for a whole sweep"

    def sweep(prepared_model: object) -> None:
        results, outputs = evaluate_cells(
            model, "baseline_cnn", test_images, test_labels, cells, device=cpu, prepared=prepared_model
        )
        score_cells(results, outputs, cells, test_labels, seed=0, class_names=CLASS_NAMES)

    eager = prepare_for_inference(model, cpu, compile="never")
    runs = {"eager": lambda: sweep(eager), "one path": lambda: sweep(prepared)}
    for run in runs.values():
        time_calls(run, cpu, warmup=1, repeats=0)
    times: dict[str, list[float]] = {kind: [] for kind in runs}
    for _ in range(3):
        for kind, run in runs.items():
            times[kind] += time_calls(run, cpu, warmup=0, repeats=1)
    total = len(cells) * len(test_images)
    rates = {kind: total / min(seconds) for kind, seconds in times.items()}
    speedup = rates["one path"] / rates["eager"]
    print(
        f"\nlighting sweep, {len(cells)} cells x {len(test_images):,} images, metrics included: eager "
        f"{rates['eager']:,.0f} images/s, one inference path {rates['one path']:,.0f} images/s: {speedup:.2f}x"
    )
    assert speedup >= 1.4, f"the sweep through the inference path is {speedup:.2f}x the eager sweep (target 1.4x)"


def test_baseline_fp32_inference_against_the_ceiling(ceiling_gflops: float) -> None:
    """10,000 images through the compiled channels_last fp32 baseline, each timing paired with a
    ceiling reading taken just before it (a shared VM's speed drifts for seconds at a time).

    Compiled, the first conv block runs as one fused loop (models.fusion); eager is printed for
    comparison and does not reach the target on its own."""
    torch.manual_seed(0)
    model = create_model("baseline_cnn").eval()
    macs = count_macs(model)
    device = torch.device("cpu")
    batch = torch.rand(256, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    calls = 10_000 // 256
    rows = {}
    for compiled in (False, True):
        runner = inference_model(model, device, channels_last=True, compiled=compiled)

        def run(runner: torch.nn.Module = runner) -> None:
            with torch.inference_mode():
                for _ in range(calls):
                    runner(batch)

        time_calls(run, device, warmup=2, repeats=1)
        pairs = []
        for _ in range(5):
            ceiling = measure_conv_ceiling(device, repeats=3).gflops
            seconds = time_calls(run, device, warmup=0, repeats=1)[0]
            pairs.append((calls * 256 / seconds, ceiling))
        rows[compiled] = pairs
    # images/s per GFLOP/s of ceiling; planning's 60,000 images/s on a 490 GFLOP/s ceiling is 122.4
    target_per_gflops = INFERENCE_TARGET / PLANNING_CEILING_GFLOPS
    best = 0.0
    for compiled, pairs in rows.items():
        per_gflops = statistics.median(rate / ceiling for rate, ceiling in pairs)
        rate, ceiling = statistics.median(r for r, _ in pairs), statistics.median(c for _, c in pairs)
        best = max(best, per_gflops / target_per_gflops)
        print(
            f"baseline_cnn fp32 channels_last batch 256 {'compiled' if compiled else 'eager   '}: "
            f"{rate:,.0f} images/s, {2 * macs * rate / 1e9:.0f} GFLOP/s against a {ceiling:.0f} GFLOP/s ceiling "
            f"({100 * 2 * macs * rate / 1e9 / ceiling:.0f} %); {per_gflops:.1f} images/s per ceiling GFLOP/s "
            f"= {100 * per_gflops / target_per_gflops:.0f} % of the target's {target_per_gflops:.1f}"
        )
    print(f"target {'met' if best >= 1 else 'NOT met'} on this machine ({100 * best:.0f} %)")
    assert best >= 1.0, f"baseline fp32 inference at {100 * best:.0f} % of 60,000 images/s scaled by the ceiling"


def test_training_the_baseline_to_91_percent(ceiling_gflops: float) -> None:
    data = load_fashion_mnist()
    test_images = to_float_images(data.test.images, "cpu").contiguous(memory_format=torch.channels_last)
    seconds, accuracies = [], []
    for seed in range(3):
        torch.manual_seed(seed)
        model = create_model("baseline_cnn")
        summary = train_model(model, data.train, TIME_TO_ACCURACY_RECIPE, seed=seed, device=torch.device("cpu"))
        with torch.inference_mode():
            accuracy = (model(test_images).argmax(1) == data.test.labels).float().mean().item()
        seconds.append(summary.seconds)
        accuracies.append(accuracy)
    limit = TRAINING_TARGET_SECONDS * PLANNING_CEILING_GFLOPS / ceiling_gflops
    median = statistics.median(seconds)
    print(
        f"\nbaseline_cnn, {TIME_TO_ACCURACY_RECIPE.epochs} epochs one-cycle lr {TIME_TO_ACCURACY_RECIPE.lr}: "
        f"{', '.join(f'{s:.1f} s -> {100 * a:.2f} %' for s, a in zip(seconds, accuracies, strict=True))}; "
        f"median {median:.1f} s (limit here {limit:.1f} s = 20 s scaled by this run's ceiling)"
    )
    assert statistics.median(accuracies) >= 0.91, f"median accuracy {100 * statistics.median(accuracies):.2f} % < 91 %"
    assert median <= limit, f"median {median:.1f} s to train > {limit:.1f} s"

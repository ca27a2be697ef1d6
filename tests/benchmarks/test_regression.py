"""Regression benchmarks: every covered path's time relative to a calibration of the same run.

Covered: each perturbation kernel (10,000 test images, severity 3), the model forwards the
evaluator runs (BatchNorm folded, channels_last, fp32 and bf16) and the compiled fp32 baseline,
a baseline training step, the evaluation sweep, and loading the data. `gate.py` explains the
ratios and how to refresh them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from robustbench_fmnist.data import load_fashion_mnist, to_float_images
from robustbench_fmnist.evaluation.cells import sweep_cells
from robustbench_fmnist.evaluation.inference import prepare_for_inference
from robustbench_fmnist.evaluation.sweep import evaluate_cells
from robustbench_fmnist.evaluation.throughput import inference_model
from robustbench_fmnist.models import create_model
from robustbench_fmnist.models.fusion import fold_batch_norm
from robustbench_fmnist.perturbations import PERTURBATIONS
from tests.benchmarks.conftest import Regression
from tests.benchmarks.gate import Calibration, judge, retimed

pytestmark = [pytest.mark.benchmark, pytest.mark.slow]

LIGHTING = ["brightness_up", "brightness_down", "contrast_down", "gamma_up", "lighting"]


@pytest.mark.parametrize("name", PERTURBATIONS.names())
def test_perturbation_kernel(regression: Regression, test_images: torch.Tensor, name: str) -> None:
    entry = PERTURBATIONS.get(name)
    severity = min(3, entry.max_severity)
    regression(f"perturbation/{name}", lambda: entry(test_images, severity, seed=0), calibration_kind="mixed", rounds=9)


def _forward(model_name: str, images: torch.Tensor, dtype: torch.dtype, batch_size: int = 1000) -> object:
    model = fold_batch_norm(create_model(model_name).eval()).to(memory_format=torch.channels_last)
    batches = [
        images[i : i + batch_size].contiguous(memory_format=torch.channels_last)
        for i in range(0, len(images), batch_size)
    ]

    def run() -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            for batch in batches:
                model(batch).argmax(1)

    return run


@pytest.mark.parametrize(
    ("model_name", "dtype", "count"),
    [
        ("baseline_cnn", torch.float32, 10_000),
        ("baseline_cnn", torch.bfloat16, 10_000),
        ("deep_cnn", torch.float32, 2_000),
        ("deep_cnn", torch.bfloat16, 2_000),
        ("timm_resnet18", torch.float32, 1_000),
    ],
    ids=["baseline_cnn-fp32", "baseline_cnn-bf16", "deep_cnn-fp32", "deep_cnn-bf16", "timm_resnet18-fp32"],
)
def test_model_forward(
    regression: Regression, test_images: torch.Tensor, model_name: str, dtype: torch.dtype, count: int
) -> None:
    torch.manual_seed(0)
    run = _forward(model_name, test_images[:count], dtype)
    precision = "bf16" if dtype == torch.bfloat16 else "fp32"
    regression(f"forward/{model_name}/{precision}", run, calibration_kind="compute", rounds=7)


def test_compiled_baseline_forward(regression: Regression, test_images: torch.Tensor) -> None:
    """The compiled fp32 path `bench` measures, with the first conv block fused (models.fusion)."""
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    runner = inference_model(create_model("baseline_cnn").eval(), cpu, channels_last=True, compiled=True)
    # whole batches of one shape: the model is compiled for a fixed batch size
    batches = [
        test_images[i : i + 256].contiguous(memory_format=torch.channels_last)
        for i in range(0, len(test_images) - 255, 256)
    ]

    def run() -> None:
        with torch.inference_mode():
            for batch in batches:
                runner(batch).argmax(1)

    run()  # compiles outside the timed rounds
    regression("forward/baseline_cnn/fp32-compiled", run, calibration_kind="compute", rounds=7)


@pytest.mark.parametrize("model_name", ["baseline_cnn", "deep_cnn"])
def test_training_steps(regression: Regression, test_images: torch.Tensor, model_name: str) -> None:
    """Ten steps of the registered recipe's kind: bf16 autocast, channels_last, AdamW, batch 128."""
    torch.manual_seed(0)
    model = create_model(model_name).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = test_images[:128].contiguous(memory_format=torch.channels_last)
    target = torch.arange(128) % 10

    def steps() -> None:
        for _ in range(10):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(batch).float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    regression(f"training/{model_name}", steps, calibration_kind="compute", rounds=7)


@pytest.mark.parametrize("suite", ["lighting", "all"])
def test_evaluation_sweep(
    regression: Regression, test_images: torch.Tensor, test_labels: torch.Tensor, suite: str
) -> None:
    """The evaluator end to end: perturb, forward, softmax, score, for every cell of a suite."""
    names = LIGHTING if suite == "lighting" else PERTURBATIONS.names()
    severities = None if suite == "lighting" else [1]
    cells = sweep_cells([(n, severities) for n in names])
    torch.manual_seed(0)
    model = create_model("baseline_cnn").eval()
    images, labels = test_images[:2000], test_labels[:2000]
    cpu = torch.device("cpu")
    # the path a run takes: prepared (compiled) once for the model, then every cell through it
    prepared = prepare_for_inference(model, cpu, compile="always")
    regression(
        f"sweep/baseline_cnn/{suite}",
        lambda: evaluate_cells(model, "baseline_cnn", images, labels, cells, device=cpu, prepared=prepared),
        calibration_kind="compute",
        rounds=5,
    )


def test_loading_and_converting_the_data(regression: Regression, test_images: torch.Tensor) -> None:
    regression(
        "data/load_verify_convert",
        lambda: to_float_images(load_fashion_mnist().train.images, "cpu"),
        calibration_kind="compute",
        rounds=5,
    )


def test_gate_catches_a_2x_slowdown(calibration: Calibration, test_images: torch.Tensor) -> None:
    """The gate itself, on this machine today: the same kernel run twice per call must be judged a
    regression against its own single-run ratio, and a repeat of the single run must not."""
    entry = PERTURBATIONS.get("gaussian_blur")

    def once() -> None:
        entry(test_images, 3, seed=0)

    def twice() -> None:
        once()
        once()

    def ratio(function: Callable[[], object]) -> float:
        return retimed(function, lambda: calibration.seconds("mixed"), time.perf_counter, rounds=9).ratio

    committed = {"benchmarks": {"k": {"ratio": ratio(once), "calibration": "mixed"}}}
    repeat = judge("k", "mixed", ratio(once), 1.0, committed)
    doubled = judge("k", "mixed", ratio(twice), 1.0, committed)
    assert repeat.status != "REGRESSION", repeat.message()
    assert doubled.status == "REGRESSION", doubled.message()

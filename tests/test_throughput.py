"""Throughput measurement: timing discipline, skipped devices, rows, and the bench command."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from robustbench_fmnist.cli import main
from robustbench_fmnist.config import ExperimentConfig, TrainRecipe
from robustbench_fmnist.evaluation import throughput
from robustbench_fmnist.evaluation.cells import CLEAN, Cell
from robustbench_fmnist.models import count_macs, create_model
from robustbench_fmnist.orchestration.bench import _throughput_plan
from robustbench_fmnist.training.augmentation import build_batch_augmentation

CPU = torch.device("cpu")


def test_time_calls_warms_up_then_times_each_repeat_with_the_device_synchronised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[str] = []
    monkeypatch.setattr(throughput, "synchronize", lambda device: events.append("sync"))
    times = throughput.time_calls(lambda: events.append("call"), CPU, warmup=2, repeats=3)
    assert len(times) == 3 and all(t >= 0 for t in times)
    # warm-up calls, one sync before the clock starts, then call + sync inside each timed repeat
    assert events == ["call", "call", "sync", "call", "sync", "call", "sync", "call", "sync"]


def test_a_missing_cuda_device_gives_skipped_rows_not_errors() -> None:
    model = create_model("baseline_cnn_tiny")
    cuda = torch.device("cuda")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    rows = [
        throughput.measure_inference("m", model, cuda, 8),
        throughput.measure_latency("m", model, cuda),
        throughput.measure_training("m", model, cuda, 8),
        throughput.measure_conv_ceiling(cuda),
    ]
    assert all(r.status == "skipped" and "CUDA" in r.reason for r in rows)
    assert all(math.isnan(r.images_per_second) for r in rows)


def test_float16_on_the_cpu_is_skipped_with_the_reason() -> None:
    row = throughput.measure_inference("m", create_model("baseline_cnn_tiny"), CPU, 8, dtype="float16")
    assert row.status == "skipped" and "bfloat16" in row.reason


def test_inference_row_is_consistent() -> None:
    model = create_model("baseline_cnn_tiny")
    macs = count_macs(model)
    row = throughput.measure_inference("m", model, CPU, 32, images=256, repeats=3, warmup=1, macs=macs)
    assert row.status == "ok" and row.batch_size == 32 and row.threads == torch.get_num_threads()
    assert row.images_per_second_low <= row.images_per_second <= row.images_per_second_high
    assert row.ms_per_batch == pytest.approx(1000 * 32 / row.images_per_second, rel=1e-6)
    assert row.gflops == pytest.approx(2 * macs * row.images_per_second / 1e9)
    assert row.peak_memory_mb > 0 and row.parameters == sum(p.numel() for p in model.parameters())


class _SlowModel(torch.nn.Module):
    """Sleeps 20 ms per batch and counts its calls (class-wide: the harness runs a copy)."""

    calls = 0

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        time.sleep(0.02)
        return self.linear(x.flatten(1))


@pytest.mark.parametrize(("budget", "timed_batches"), [(None, 8), (0.05, 2)])
def test_inference_repeats_are_capped_by_the_time_budget(budget: float | None, timed_batches: int) -> None:
    _SlowModel.calls = 0
    row = throughput.measure_inference(
        "slow", _SlowModel(), CPU, 8, images=64, warmup=0, repeats=2, seconds_per_repeat=budget
    )
    # a warm-up batch and one timed to size the repeats, then 2 repeats of what fits in the budget
    if budget is None:
        assert _SlowModel.calls == 2 + 2 * timed_batches
    else:  # a slow machine may fit only one batch
        assert 2 + 2 * 1 <= _SlowModel.calls <= 2 + 2 * timed_batches
    assert row.status == "ok" and row.ms_per_batch >= 20


def test_latency_training_sweep_and_perturbation_rows() -> None:
    model = create_model("baseline_cnn_tiny")
    latency = throughput.measure_latency("m", model, CPU, calls=20, warmup=2)
    assert 0 < latency.latency_p50_ms <= latency.latency_p95_ms
    before = [p.clone() for p in model.parameters()]
    training = throughput.measure_training("m", model, CPU, 16, steps=2, repeats=1)
    assert training.images_per_second > 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)), "weights untouched"
    images, labels = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    cells = [Cell(CLEAN, 0), Cell("rotation", 3, 45.0, "rotation")]
    forward, sweep = throughput.measure_sweep_overhead("m", model, images, labels, cells, batch_size=32, repeats=1)
    assert (forward.kind, sweep.kind) == ("forward", "sweep") and forward.images_per_second > 0
    row = throughput.measure_perturbation(cells[1], images, repeats=1)
    assert row.model == "rotation/s3" and row.reason == "torch" and row.images_per_second > 0


@pytest.mark.slow  # over 5 s: in make test, not in make test-fast
def test_bench_writes_throughput_csv_and_a_report_section(
    tiny_experiment: dict[str, Any], write_yaml: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config = {
        **tiny_experiment,
        "throughput": {"batch_sizes": [1, 16], "images": 64, "repeats": 1, "dtypes": ["float32"], "sweep": False},
    }
    path = write_yaml(config)
    folder = Path(tiny_experiment["output_dir"]) / "tiny"
    assert main(["-q", "bench", str(path)]) == 0
    table = pd.read_csv(folder / "throughput.csv")
    assert not (folder / "report.md").exists(), "no report yet: throughput.csv alone"
    ok = table[table.status == "ok"]
    assert set(ok.kind) == {"ceiling", "inference", "latency", "training", "perturbation"}
    assert set(ok[ok.kind == "inference"].batch_size) == {1, 16}
    out = capsys.readouterr().out
    assert "throughput written to" in out
    if not torch.cuda.is_available():
        assert (table[table.device == "cuda"].status == "skipped").all()
        skipped = (table.status == "skipped").sum()
        assert out.count("skipped") == 1 and f"cuda: {skipped} measurements skipped: no CUDA device" in out

    assert main(["-q", "run", str(path)]) == 0
    assert not (folder / "throughput.csv").exists(), "a run without throughput.enabled replaces the folder"
    assert main(["-q", "bench", str(path)]) == 0
    md = (folder / "report.md").read_text()
    assert (
        "## Throughput" in md and "(figures/throughput.png)" in md and (folder / "figures" / "throughput.png").exists()
    )


def test_throughput_plan_lists_every_measurement_in_order(tiny_experiment: dict[str, Any]) -> None:
    """The progress bar advances once per measurement, so the plan must hold exactly what runs."""
    settings = {"devices": ["cpu", "cuda"], "batch_sizes": [1, 32], "dtypes": ["float32", "bfloat16"], "compile": True}
    config = ExperimentConfig.model_validate({**tiny_experiment, "throughput": settings})
    models = [("a", create_model("baseline_cnn_tiny"), 1), ("b", create_model("deep_cnn_tiny"), 1)]
    cells = [Cell(CLEAN, 0), Cell("rotation", 1, 15.0, "rotation"), Cell("rotation", 5, 75.0, "rotation")]
    labels = [
        label for label, _ in _throughput_plan(config, models, torch.rand(4, 1, 28, 28), torch.zeros(4), cells, {})
    ]
    per_device = 2 * 2 * 2 + 2  # dtypes x batch sizes x (eager, compiled), then latency and training
    assert len(labels) == 2 + 2 * (2 * per_device + 1) + 1
    assert labels[:2] == ["conv ceiling cpu", "conv ceiling cuda"]
    assert labels[2:4] == ["a cpu float32 batch 1", "a cpu float32 batch 1 compiled"]
    assert labels[2 + per_device * 2] == "a sweep"
    assert labels[-1] == "perturbation rotation s5", "only each perturbation's most severe cell is timed"


def test_bad_throughput_settings_fail_with_one_line(
    tiny_experiment: dict[str, Any], write_yaml: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_yaml({**tiny_experiment, "throughput": {"batch_sizes": [0]}})
    assert main(["-q", "bench", str(path)]) != 0
    err = capsys.readouterr().err.strip()
    assert "throughput.batch_sizes" in err and len(err.splitlines()) == 1


def test_a_recipe_that_reads_the_model_is_timed_inside_each_training_step() -> None:
    """bench times worst_of_k training with its k copies: the augmentation runs on every step's batch."""
    augment = build_batch_augmentation(
        TrainRecipe(robust_augment={"method": "worst_of_k", "space": {"rotation": [-30, 30, 7]}, "k": 3})
    )
    calls = []

    def counted(model: torch.nn.Module, images: torch.Tensor, *rest: object) -> torch.Tensor:
        calls.append((model.training, images.shape))
        return augment(model, images, *rest)

    model = create_model("baseline_cnn_tiny")
    row = throughput.measure_training("m", model, CPU, 16, steps=2, warmup=1, repeats=2, augment=counted)
    assert row.images_per_second > 0 and len(calls) == 2 * (1 + 2)
    assert all(training and shape == (16, 1, 28, 28) for training, shape in calls)


def test_a_model_evaluated_with_tta_is_also_timed_behind_its_k_copies(tiny_experiment: dict[str, Any]) -> None:
    """Its inference rows sit under model+tta, with k times the MACs; its training and latency are its model's."""
    settings = {"devices": ["cpu"], "batch_sizes": [8], "dtypes": ["float32"], "repeats": 1, "images": 8}
    evaluation = {"tta": {"space": {"rotation": [-10, 10, 3]}}}
    config = ExperimentConfig.model_validate({**tiny_experiment, "throughput": settings, "evaluation": evaluation})
    models = [("a", create_model("baseline_cnn_tiny"), 100), ("b", create_model("deep_cnn_tiny"), 100)]
    plan = _throughput_plan(config, models, torch.rand(4, 1, 28, 28), torch.zeros(4), [Cell(CLEAN, 0)], {}, {"b"})
    labels = [label for label, _ in plan]
    assert [label for label in labels if "+tta" in label] == ["b+tta cpu float32 batch 8"]
    assert labels.index("b+tta cpu float32 batch 8") == labels.index("b cpu training") + 1
    row = dict(plan)["b+tta cpu float32 batch 8"]()
    assert row.model == "b+tta" and row.macs == 300 and row.status == "ok" and row.images_per_second > 0

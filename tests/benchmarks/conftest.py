"""Fixtures for the regression benchmarks: the calibration workloads and the gate against baseline.json."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import pytest
import torch

from robustbench_fmnist.data import Split, load_fashion_mnist
from robustbench_fmnist.runtime import apply_cpu_settings
from tests.benchmarks.gate import (
    BASELINE_PATH,
    Calibration,
    Verdict,
    for_machine,
    judge,
    load_baseline,
    paired_ratio,
    updated_baseline,
    write_baseline,
)
from tests.conftest import real_data_available

VERDICTS = pytest.StashKey[list[Verdict]]()
Regression = Callable[..., Verdict | None]


@pytest.fixture(scope="session", autouse=True)
def _cpu_settings() -> None:
    """What the harness applies to every run (allocator, threads, denormals), so benchmarks time the same code path."""
    apply_cpu_settings()


@pytest.fixture(scope="session")
def calibration() -> Calibration:
    return Calibration()


@pytest.fixture(scope="session")
def test_split() -> Split:
    """The real test set, read and verified once: the committed ratios were measured on it."""
    if not real_data_available():
        pytest.skip("regression benchmarks need the real Fashion-MNIST test set (make data installs it)")
    return load_fashion_mnist().test


@pytest.fixture(scope="session")
def test_images(test_split: Split) -> torch.Tensor:
    return test_split.images.float().div(255).unsqueeze(1)


@pytest.fixture(scope="session")
def test_labels(test_split: Split) -> torch.Tensor:
    return test_split.labels


@pytest.fixture
def regression(benchmark: object, calibration: Calibration, request: pytest.FixtureRequest) -> Regression:
    """`regression(name, function, calibration=..., rounds=...)`: time `function` with pytest-benchmark,
    divide its fastest round by the calibration's, and fail if that ratio regressed against baseline.json."""
    config = request.config
    updating = config.getoption("--update-baseline")
    baseline = for_machine(load_baseline())
    if not baseline["benchmarks"] and not updating:
        pytest.skip(
            f"no committed regression ratios for this machine kind ({baseline['kind']}); record them with "
            "`make bench-baseline` on it and commit tests/benchmarks/baseline.json"
        )

    def check(name: str, function: Callable[[], object], *, calibration_kind: str, rounds: int = 7) -> Verdict | None:
        readings: list[float] = []
        # pytest-benchmark calls setup before each timed round, outside the timing
        benchmark.pedantic(
            function,
            setup=lambda: readings.append(calibration.seconds(calibration_kind)),
            rounds=rounds,
            warmup_rounds=1,
        )
        if benchmark.disabled:  # --benchmark-disable: the code ran once, nothing was timed
            return None
        rounds_seconds = list(benchmark.stats.stats.data)
        readings = readings[-len(rounds_seconds) :]  # the warm-up round's setup is not paired
        ratio = paired_ratio(rounds_seconds, readings)
        verdict = judge(name, calibration_kind, ratio, 1.0, baseline)
        verdict.seconds, verdict.calibration_seconds = statistics.median(rounds_seconds), statistics.median(readings)
        benchmark.extra_info.update(
            calibration=calibration_kind,
            calibration_seconds=verdict.calibration_seconds,
            ratio=verdict.ratio,
            baseline_ratio=verdict.baseline_ratio,
            change=verdict.change,
        )
        config.stash.setdefault(VERDICTS, []).append(verdict)
        if verdict.failed and not updating:
            pytest.fail(verdict.message(), pytrace=False)
        return verdict

    return check


def pytest_sessionfinish(session: pytest.Session) -> None:
    verdicts = session.config.stash.get(VERDICTS, [])
    mode = session.config.getoption("--update-baseline")
    if verdicts and mode:
        write_baseline(updated_baseline(load_baseline(), verdicts, mode=mode))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    verdicts = config.stash.get(VERDICTS, [])
    if not verdicts:
        return
    updating = config.getoption("--update-baseline")
    title = f"regression ratios written to {BASELINE_PATH.name}" if updating else "regression gate"
    terminalreporter.section(title)
    terminalreporter.write_line(f"{'benchmark':<40} {'seconds':>9} {'calib':>7} {'ratio':>9} {'change':>7}  status")
    for v in verdicts:
        change = f"{v.change:.2f}x" if v.baseline_ratio else "-"
        terminalreporter.write_line(
            f"{v.name:<40} {v.seconds:9.4f} {v.calibration:>7} {v.ratio:9.3f} {change:>7}  {v.status}"
        )

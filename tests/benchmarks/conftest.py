"""Fixtures for the regression benchmarks: the calibration workloads and the gate against baseline.json.

On a machine kind with no committed ratios a last item, `regression_gate_across_machine_kinds`, is added
to the session: it holds every benchmark of the run to the scaled bound (gate.py explains both bounds)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from pytest_benchmark.utils import load_timer

from robustbench_fmnist.data import Split, load_fashion_mnist
from robustbench_fmnist.runtime import apply_cpu_settings
from tests.benchmarks.gate import (
    BASELINE_PATH,
    CALIBRATIONS,
    MIN_SCALE_BENCHMARKS,
    OWN_KIND,
    REFRESH,
    TOLERANCE,
    Calibration,
    Timing,
    Verdict,
    cross_kind_spread,
    is_recorded,
    judge_run,
    judge_session,
    load_baseline,
    machine,
    machine_kind,
    retimed,
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
    divide its fastest round by the calibration's, and fail if that ratio regressed against baseline.json
    (this kind's ratios, or on a kind with none every recorded kind's: see gate.py)."""
    config = request.config
    updating = config.getoption("--update-baseline")
    data, kind = load_baseline(), machine_kind()

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
        timing = first = Timing(rounds_seconds, readings)
        verdict = judge_run(name, calibration_kind, timing.ratio, data, kind)
        if verdict.failed and verdict.reference is not None and not updating:
            # a transient on the shared machine slows one timing; a regression slows both (gate.py)
            timer = load_timer(config.getoption("benchmark_timer")).target
            again = retimed(function, lambda: calibration.seconds(calibration_kind), timer, rounds=rounds)
            timing = min(first, again, key=lambda t: t.ratio)
            verdict = judge_run(name, calibration_kind, timing.ratio, data, kind)
            verdict.first_ratio = first.ratio
        # the timing judged: its seconds and calibration beside its ratio in the summary
        verdict.seconds = statistics.median(timing.seconds)
        verdict.calibration_seconds = statistics.median(timing.readings)
        benchmark.extra_info.update(
            calibration=calibration_kind,
            calibration_seconds=verdict.calibration_seconds,
            ratio=verdict.ratio,
            basis=verdict.basis,
            reference=verdict.reference,
            bound=verdict.bound,
            change=verdict.change,
        )
        config.stash.setdefault(VERDICTS, []).append(verdict)
        if verdict.failed and not updating:
            pytest.fail(verdict.message(), pytrace=False)
        return verdict

    return check


class RegressionFound(Exception):
    """Benchmarks that passed their envelope as they ran but fail the scaled bound judged at the end."""


class ScaledJudgement(pytest.Item):
    """Runs after every benchmark on a machine kind with no committed ratios: the scaled bound needs this
    run's scale against each recorded kind, a median over all of the run's ratios (gate.judge_session)."""

    def runtest(self) -> None:
        verdicts = self.config.stash.get(VERDICTS, [])
        judged = judge_session(verdicts, load_baseline())
        self.config.stash[VERDICTS] = judged
        # those the envelope already failed were reported by their own test
        late = [after for before, after in zip(verdicts, judged, strict=True) if after.failed and not before.failed]
        if late:
            raise RegressionFound("\n".join(verdict.message() for verdict in late))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: str | None = None) -> str:
        if isinstance(excinfo.value, RegressionFound):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo, style=style))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{self.name}: every regression benchmark of the run against the recorded kinds"


@pytest.hookimpl(trylast=True)  # after -k / -m deselection, so it runs only when a regression benchmark does
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    timed = [item for item in items if "regression" in getattr(item, "fixturenames", ())]
    if not timed or config.getoption("--update-baseline") or is_recorded(load_baseline(), machine_kind()):
        return
    items.append(ScaledJudgement.from_parent(timed[-1].parent, name="regression_gate_across_machine_kinds"))


def pytest_sessionfinish(session: pytest.Session) -> None:
    verdicts = session.config.stash.get(VERDICTS, [])
    mode = session.config.getoption("--update-baseline")
    if verdicts and mode:
        write_baseline(updated_baseline(load_baseline(), verdicts, mode=mode))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    verdicts = config.stash.get(VERDICTS, [])
    if not verdicts:
        return
    write = terminalreporter.write_line
    updating = config.getoption("--update-baseline")
    terminalreporter.section(f"regression ratios written to {BASELINE_PATH.name}" if updating else "regression gate")
    data, described = load_baseline(), machine()
    kind = machine_kind(described)
    write(f"machine kind: {kind} ({described['processor']}, {described['cores']} cores)")
    labels = {name: f"[{i}]" for i, name in enumerate(data.get("machines", {}), 1)}
    if not updating and not is_recorded(data, kind):
        for line in _across_kinds(data, labels, verdicts):
            write(line)
    write(
        f"{'benchmark':<40} {'seconds':>9} {'calib':>7} {'ratio':>9} {'bound':>9} {'change':>7}  basis          status"
    )
    for v in verdicts:
        change = f"{v.change:.2f}x" if v.reference else "-"
        basis = v.basis if v.basis == OWN_KIND else f"{v.basis} {labels.get(v.kind, '')}"
        write(
            f"{v.name:<40} {v.seconds:9.4f} {v.calibration:>7} {v.ratio:9.3f} {v.bound:9.3f} {change:>7}  "
            f"{basis:<14} {v.status}{' (timed twice)' if v.first_ratio is not None else ''}"
        )


def _across_kinds(data: dict, labels: dict[str, str], verdicts: list[Verdict]) -> list[str]:
    """What an unrecorded kind is judged by: the recorded kinds and the cross-kind tolerance per calibration."""
    tolerance = float(data.get("tolerance", TOLERANCE))
    spreads = cross_kind_spread(data)
    across = ", ".join(f"{c} {spread:.2f} x {tolerance} = {spread * tolerance:.2f}x" for c, spread in spreads.items())
    return [
        f"no committed ratios of its own, so judged against the {len(labels)} recorded kinds; `{REFRESH}` records "
        "this kind's",
        f"bound: {tolerance}x the largest recorded ratio (envelope [k]), or where tighter the cross-kind tolerance "
        "x kind k's ratio x this run's scale against it (scaled [k])",
        f"cross-kind tolerance, largest residual between recorded kinds x noise: {across or 'none (one kind)'}",
        *(f"  {label} {name}" for name, label in labels.items()),
        *(
            f"{count} {c} benchmark(s) in this run, under the {MIN_SCALE_BENCHMARKS} a scale needs: envelope only"
            for c in CALIBRATIONS
            if 0 < (count := sum(v.calibration == c for v in verdicts)) < MIN_SCALE_BENCHMARKS
        ),
    ]

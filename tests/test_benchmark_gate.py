"""The regression gate's judgement and its baseline file (the timing itself runs in tests/benchmarks)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from robustbench_fmnist.environment import cpu_cores, cpu_model
from robustbench_fmnist.runtime import cpu_settings
from tests.benchmarks import gate
from tests.benchmarks.gate import (
    ENVELOPE,
    OWN_KIND,
    SCALED,
    TOLERANCE,
    Calibration,
    Verdict,
    cross_kind_spread,
    for_machine,
    judge,
    judge_run,
    judge_session,
    load_baseline,
    machine,
    machine_kind,
    paired_ratio,
    updated_baseline,
    write_baseline,
)

pytest_plugins = ("pytester",)

COMMITTED = {"tolerance": 1.5, "benchmarks": {"forward/x": {"ratio": 2.0, "calibration": "compute"}}}


@pytest.mark.parametrize(
    ("seconds", "status"),
    [(2.0, "ok"), (2.9, "ok"), (3.1, "REGRESSION"), (4.0, "REGRESSION"), (1.4, "ok"), (1.2, "faster")],
)
def test_ratio_against_committed(seconds: float, status: str) -> None:
    verdict = judge("forward/x", "compute", seconds, 1.0, COMMITTED)
    assert verdict.status == status
    assert verdict.failed == (status == "REGRESSION")
    assert verdict.change == pytest.approx(seconds / 2.0)


def test_machine_speed_cancels_out() -> None:
    """A machine twice as slow takes twice as long on both the benchmark and the calibration."""
    assert judge("forward/x", "compute", 4.0, 2.0, COMMITTED).status == "ok"
    assert judge("forward/x", "compute", 8.0, 2.0, COMMITTED).status == "REGRESSION"


def test_missing_or_mismatched_baseline_fails_with_the_refresh_command() -> None:
    for name, kind in (("forward/new", "compute"), ("forward/x", "memory")):
        verdict = judge(name, kind, 1.0, 1.0, COMMITTED)
        assert verdict.failed and verdict.status == "no baseline" and math.isnan(verdict.change)
        assert "make bench-baseline" in verdict.message()


def test_regression_message_names_the_change() -> None:
    message = judge("forward/x", "compute", 5.0, 1.0, COMMITTED).message()
    assert "forward/x" in message and "2.50x" in message and "compute" in message


def test_update_keeps_benchmarks_that_did_not_run_and_other_machine_kinds(tmp_path: Path) -> None:
    path = tmp_path / "baseline.json"
    # a file from before machine kinds: this machine's ratios at the top level
    write_baseline({**COMMITTED, "machine": machine()}, path)
    other = "AMD EPYC / AVX512 / 2 threads / torch 2.15"
    data = load_baseline(path)
    data["machines"][other] = {"machine": {}, "benchmarks": {"forward/x": {"ratio": 9.0, "calibration": "compute"}}}
    fresh = judge("perturbation/y", "memory", 0.5, 0.25, for_machine(data))
    write_baseline(updated_baseline(data, [fresh]), path)
    saved = json.loads(path.read_text())
    mine = saved["machines"][machine_kind()]
    assert mine["benchmarks"]["forward/x"] == {"ratio": 2.0, "calibration": "compute"}
    assert mine["benchmarks"]["perturbation/y"] == {"ratio": 2.0, "calibration": "memory", "samples": [2.0]}
    assert saved["machines"][other]["benchmarks"]["forward/x"]["ratio"] == 9.0
    assert saved["tolerance"] == 1.5 and mine["machine"]["threads"] >= 1
    assert mine["machine"]["processor"] == cpu_model() and mine["machine"]["cores"] == cpu_cores()
    assert not list(tmp_path.glob("*.tmp"))


def test_each_machine_kind_is_judged_by_its_own_ratios() -> None:
    data = {
        "tolerance": 1.5,
        "machines": {
            "fast memory": {"benchmarks": {"perturbation/y": {"ratio": 1.0, "calibration": "mixed"}}},
            "slow memory": {"benchmarks": {"perturbation/y": {"ratio": 2.0, "calibration": "mixed"}}},
        },
    }
    assert judge("perturbation/y", "mixed", 2.0, 1.0, for_machine(data, "fast memory")).status == "REGRESSION"
    assert judge("perturbation/y", "mixed", 2.0, 1.0, for_machine(data, "slow memory")).status == "ok"
    unknown = for_machine(data, "a new kind")
    assert unknown["benchmarks"] == {} and judge("perturbation/y", "mixed", 2.0, 1.0, unknown).failed


def test_no_file_is_an_empty_baseline(tmp_path: Path) -> None:
    assert load_baseline(tmp_path / "absent.json") == {}
    assert judge("a", "compute", 1.0, 1.0, {}).tolerance == TOLERANCE


def test_calibration_workloads_run_and_reject_unknown_kinds() -> None:
    calibration = Calibration()
    assert 0 < calibration.seconds("compute", rounds=1) < 5
    assert 0 < calibration.seconds("memory", rounds=1) < 5
    with pytest.raises(ValueError, match="calibration must be one of"):
        calibration.seconds("disk")


def test_committed_baseline_covers_every_regression_benchmark() -> None:
    from robustbench_fmnist.perturbations import PERTURBATIONS

    committed = load_baseline()
    assert committed["tolerance"] <= 1.6, "a 2x slowdown must stay above the tolerance with noise"
    assert committed["machines"], "at least one machine kind's ratios"
    for kind in committed["machines"]:
        names = set(for_machine(committed, kind)["benchmarks"])
        missing = {f"perturbation/{n}" for n in PERTURBATIONS.names()} - names
        assert not missing, f"{kind}: no committed ratio for {sorted(missing)}; run make bench-baseline"


def test_refresh_commits_the_median_of_the_last_runs() -> None:
    data: dict = {}
    for mode, seconds in (("reset", 1.0), ("append", 3.0), ("append", 2.0), ("append", 10.0)):
        data = updated_baseline(data, [judge("k", "mixed", seconds, 1.0, for_machine(data))], mode=mode)
    assert for_machine(data)["benchmarks"]["k"]["samples"] == [3.0, 2.0, 10.0]
    assert for_machine(data)["benchmarks"]["k"]["ratio"] == 3.0
    data = updated_baseline(data, [judge("k", "mixed", 5.0, 1.0, for_machine(data))], mode="reset")
    assert for_machine(data)["benchmarks"]["k"] == {"ratio": 5.0, "calibration": "mixed", "samples": [5.0]}
    with pytest.raises(ValueError, match="reset or append"):
        updated_baseline(data, [], mode="merge")


def test_paired_ratio_cancels_a_machine_that_slows_down_mid_run() -> None:
    # the machine halves its speed after three rounds; each round is divided by its own calibration
    seconds = [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0]
    readings = [0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert paired_ratio(seconds, readings) == 2.0
    with pytest.raises(ValueError, match="rounds"):
        paired_ratio([1.0], [])


# A machine kind with nothing recorded is judged against every recorded kind (gate.py's docstring).
UNKNOWN = "a machine kind nobody recorded"
# a second kind's ratios: 4x the first's, each benchmark off that scale by its own factor (largest 1.6)
WIGGLE = {"a": 1.0, "b": 1.6, "c": 0.7, "d": 1.2, "e": 0.9}


def _kind(ratios: dict[str, float], calibration: str = "mixed") -> dict:
    return {"benchmarks": {f"synthetic/{n}": {"ratio": r, "calibration": calibration} for n, r in ratios.items()}}


def _two_kinds(first: dict[str, float]) -> dict:
    second = {name: 4 * ratio * WIGGLE[name] for name, ratio in first.items()}
    return {"tolerance": TOLERANCE, "machines": {"kind A": _kind(first), "kind B": _kind(second)}}


def _run(data: dict, ratios: dict[str, float], calibration: str = "mixed") -> list[Verdict]:
    """What the fixture and the session's last item decide for a run with these ratios on an unrecorded kind."""
    verdicts = [judge_run(f"synthetic/{n}", calibration, r, data, UNKNOWN) for n, r in ratios.items()]
    return judge_session(verdicts, data)


def _committed_runs() -> list[tuple[str, list[tuple[str, str, float]]]]:
    """Each recorded kind's committed ratios as if a run on an unrecorded kind had measured them."""
    data = load_baseline()
    runs = []
    for kind, section in data["machines"].items():
        run = [(name, entry["calibration"], entry["ratio"]) for name, entry in section["benchmarks"].items()]
        runs.append((kind, run))
    return runs


def test_cross_kind_tolerance_is_the_largest_residual_between_recorded_kinds() -> None:
    data = _two_kinds(dict.fromkeys(WIGGLE, 1.0))
    # B over A: 4 x wiggle, median 4, so b sits 1.6x off the scale; A over B: c at 1 / 0.7 = 1.43x
    assert cross_kind_spread(data) == {"mixed": pytest.approx(1.6)}
    assert cross_kind_spread({"machines": {"kind A": _kind(dict.fromkeys(WIGGLE, 1.0))}}) == {}
    committed = cross_kind_spread(load_baseline())
    assert set(committed) == {"compute", "mixed"}
    assert all(1.0 < spread < 2.5 for spread in committed.values()), committed


COMMITTED_RUNS = _committed_runs()
BY_KIND = pytest.mark.parametrize(("kind", "run"), COMMITTED_RUNS, ids=[kind for kind, _ in COMMITTED_RUNS])


@BY_KIND
def test_every_recorded_kind_passes_when_judged_as_an_unrecorded_kind(kind: str, run: list) -> None:
    data = load_baseline()
    for scale in (1.0, 1.3):  # that kind's ratios, and a machine like it with every path 1.3x costlier
        verdicts = [judge_run(name, calibration, ratio * scale, data, UNKNOWN) for name, calibration, ratio in run]
        assert all(v.basis == ENVELOPE for v in verdicts)
        judged = judge_session(verdicts, data)
        failed = [v.message() for v in judged if v.failed]
        assert not failed, f"{kind} x {scale}: {failed}"


@BY_KIND
def test_an_unrecorded_kind_catches_any_one_path_slowed_4x(kind: str, run: list) -> None:
    """On each recorded kind's ratios, and on a machine 1.3x off it: whichever path is slowed 4x fails.
    (A newly recorded kind that differs so much that the cross-kind tolerance passes 4x fails this.)"""
    data = load_baseline()
    for scale in (1.0, 1.3):
        for slowed, _, _ in run:
            ratios = [(n, c, r * scale * (4 if n == slowed else 1)) for n, c, r in run]
            judged = judge_session([judge_run(n, c, r, data, UNKNOWN) for n, c, r in ratios], data)
            failed = {v.name for v in judged if v.failed}
            assert failed == {slowed}, f"{kind} x {scale}, {slowed} slowed 4x: failed {sorted(failed)}"


def test_slowing_every_path_fails_on_the_envelope_as_each_benchmark_runs() -> None:
    """The scale absorbs a slowdown shared by all paths; the envelope is what catches it."""
    data = load_baseline()
    for _, run in COMMITTED_RUNS:
        verdicts = [judge_run(name, calibration, 4 * ratio, data, UNKNOWN) for name, calibration, ratio in run]
        assert all(v.failed and v.basis == ENVELOPE for v in verdicts)


def test_scaled_bound_needs_enough_benchmarks_of_a_calibration() -> None:
    data = _two_kinds(dict.fromkeys(WIGGLE, 1.0))
    few = _run(data, {"a": 1.0, "b": 1.0, "c": 1.0})
    assert [v.basis for v in few] == [ENVELOPE] * 3
    assert few[0].bound == pytest.approx(4 * TOLERANCE)  # kind B's ratio, the largest, x the tolerance
    judged = _run(data, dict.fromkeys(WIGGLE, 1.0))
    assert [v.basis for v in judged] == [SCALED] * 5
    assert judged[0].tolerance == pytest.approx(1.6 * TOLERANCE) and judged[0].bound < few[0].bound


def test_unrecorded_kind_messages_say_how_to_record_it() -> None:
    data = _two_kinds(dict.fromkeys(WIGGLE, 1.0))
    envelope = judge_run("synthetic/a", "mixed", 10.0, data, UNKNOWN)
    assert envelope.failed and envelope.basis == ENVELOPE and envelope.kind == "kind B"
    scaled = next(v for v in _run(data, {**dict.fromkeys(WIGGLE, 1.0), "b": 4.0}) if v.failed)
    assert scaled.name == "synthetic/b" and scaled.basis == SCALED and scaled.scale == pytest.approx(1.0)
    for verdict in (envelope, scaled):
        assert "make bench-baseline" in verdict.message() and "no committed ratios of its own" in verdict.message()
    nowhere = judge_run("synthetic/new", "mixed", 1.0, data, UNKNOWN)
    assert nowhere.failed and "any recorded machine kind" in nowhere.message()


def test_a_recorded_kind_is_judged_by_its_own_ratios_only() -> None:
    data = _two_kinds(dict.fromkeys(WIGGLE, 1.0))
    verdict = judge_run("synthetic/a", "mixed", 2.0, data, "kind A")
    assert verdict.basis == OWN_KIND and verdict.failed and verdict.bound == pytest.approx(TOLERANCE)
    assert judge_session([verdict], data) == [verdict]


# Simulated time: a loaded 2-core VM moves a few-millisecond workload by several times between runs,
# so the work below advances a clock the benchmarks are timed with, and every calibration reading
# takes 10 ms of it; each ratio is then exactly the work's units. Everything else is the real path:
# the `regression` fixture, pytest-benchmark's rounds, the last item's scaled judgement, the summary.
FAKE_CLOCK = """
NOW = [0.0]


def clock():
    return NOW[0]


def work(units):
    NOW[0] += 0.01 * units
"""

SYNTHETIC_BENCHMARKS = """
import os

import fakeclock
import pytest

UNITS = {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6}
SLOWED = dict(item.split("=") for item in os.environ.get("GATE_SLOWED", "").split(",") if item)
# slowed only in the first timing (its warm-up and five rounds), as a neighbour on a shared VM does
TRANSIENT = dict(item.split("=") for item in os.environ.get("GATE_TRANSIENT", "").split(",") if item)
CALLS = dict.fromkeys(UNITS, 0)


class TenMilliseconds:
    def seconds(self, kind, *, rounds=3):
        return 0.01


@pytest.fixture(scope="session")
def calibration():
    return TenMilliseconds()


@pytest.mark.parametrize("name", list(UNITS))
def test_synthetic(regression, name):
    def run():
        CALLS[name] += 1
        transient = int(TRANSIENT.get(name, 1)) if CALLS[name] <= 6 else 1
        fakeclock.work(UNITS[name] * int(SLOWED.get(name, 1)) * transient)  # a slowed path repeats its work

    regression(f"synthetic/{name}", run, calibration_kind="mixed", rounds=5)
"""


def _made_up_kinds(measured: dict[str, float]) -> dict:
    """Two recorded kinds made from this run's ratios, so this machine's own kind is not among them.

    Kind A: the ratios measured, and f, which only A records. Kind B: 2.3x A's, each benchmark off that
    scale by WIGGLE (as the EPYC and the Xeon differ), so the cross-kind tolerance is 1.6 x 1.5 = 2.4x.
    """
    second = {name: 2.3 * ratio * WIGGLE[name] for name, ratio in measured.items() if name != "f"}
    return {"tolerance": TOLERANCE, "machines": {"kind A": _kind(measured), "kind B": _kind(second)}}


def test_the_fixture_gates_an_unrecorded_machine_kind(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Through the `regression` fixture and the session's last item: record this kind's ratios (as make
    bench-baseline does), file them under made-up kinds so this kind is unrecorded, then run again: as it
    was, it passes; with b 4x slower (inside the envelope, 8 < 2.3 x 1.6 x 2 x 1.5) the scaled bound fails
    the session at the end, with f 4x slower the envelope fails f as it runs (only A records f) in both of
    its timings, and a 4x slower only in its first timing passes on its second."""
    pytester.makeconftest('pytest_plugins = ["tests.conftest", "tests.benchmarks.conftest"]')
    pytester.makepyfile(fakeclock=FAKE_CLOCK, test_synthetic=SYNTHETIC_BENCHMARKS)
    pytester.syspathinsert()
    monkeypatch.setattr(gate, "BASELINE_PATH", tmp_path / "baseline.json")
    # pytest-benchmark switches itself off inside an xdist worker (make test runs under xdist)
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    options = ["-p", "no:cacheprovider", "-p", "no:xdist", "-v", "--benchmark-timer=fakeclock.clock"]
    with cpu_settings():  # the benchmarks' session fixture changes threads and denormals; put them back
        recorded = pytester.runpytest(*options, "--update-baseline", "reset")
        mine = load_baseline()["machines"][machine_kind()]["benchmarks"]
        measured = {name.split("/")[1]: entry["ratio"] for name, entry in mine.items()}
        write_baseline(_made_up_kinds(measured))
        same = pytester.runpytest(*options)
        monkeypatch.setitem(os.environ, "GATE_SLOWED", "b=4,f=4")
        monkeypatch.setitem(os.environ, "GATE_TRANSIENT", "a=4")
        slowed = pytester.runpytest(*options)

    recorded.assert_outcomes(passed=6)  # recording adds no judgement
    assert measured == {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 5.0, "f": 6.0}
    same.assert_outcomes(passed=7)  # the six benchmarks and the scaled judgement
    same.stdout.fnmatch_lines(
        [
            "*regression_gate_across_machine_kinds PASSED*",
            "*cross-kind tolerance*mixed 1.60 x 1.5 = 2.40x",
            "synthetic/a * mixed *scaled*ok",
            "synthetic/f * mixed *envelope [[]1[]]*ok",
        ]
    )
    assert "skip" not in same.stdout.str().lower()
    slowed.assert_outcomes(passed=5, failed=2)
    assert slowed.ret == pytest.ExitCode.TESTS_FAILED
    slowed.stdout.fnmatch_lines(
        [
            "*test_synthetic[[]b[]] PASSED*",
            "*test_synthetic[[]f[]] FAILED*",
            "*regression_gate_across_machine_kinds FAILED*",
            "synthetic/f: ratio 24 * is 4.00x the largest any recorded machine kind committed (6, kind A)*"
            "slow in both of two timings (the first gave ratio 24)",
            "synthetic/b: ratio 8 * is 4.00x kind A's committed 2 scaled to this machine by 1*make bench-baseline*",
            "synthetic/a * 0.0100 * mixed * 1.000 * ok (timed twice)",  # the seconds of the timing judged
            "synthetic/b * mixed * 8.000 * 4.800 * 4.00x  scaled [[]1[]] * REGRESSION",
        ]
    )

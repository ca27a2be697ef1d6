"""The regression gate's judgement and its baseline file (the timing itself runs in tests/benchmarks)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from robustbench_fmnist.environment import cpu_cores, cpu_model
from tests.benchmarks.gate import (
    TOLERANCE,
    Calibration,
    for_machine,
    judge,
    load_baseline,
    machine,
    machine_kind,
    paired_ratio,
    updated_baseline,
    write_baseline,
)

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

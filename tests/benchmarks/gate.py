"""The regression gate: each benchmark's time as a ratio to a calibration workload of the same run.

Absolute seconds differ between machines and between runs on one shared VM, so a committed
number of seconds cannot gate CI. What stays put is how long a covered path takes *relative to*
a fixed piece of work measured minutes earlier on the same machine and threads. Each benchmark
is normalised by the calibration that matches what bounds it: a channels_last 3x3 convolution
for compute-bound work (model forwards, training, the sweep) and a large elementwise add for
memory-bound work, and the sum of both for the perturbations, which mix the two. A calibration
reading is taken right before every timed round and each round is divided by its own
reading, so a machine that slows down mid-run slows both halves of the pair (`paired_ratio`).

A benchmark fails when its ratio is more than `TOLERANCE` times the committed one. The
tolerance sits between the noise seen here (ratios move by up to about 1.3x between runs on
a shared 2-core VM) and the 2x slowdown the gate must catch.

The ratios themselves depend on the machine kind: an Intel Xeon and an AMD EPYC, or two torch
releases, balance convolution against memory traffic differently (measured: 1.5-2.8x apart on
every perturbation kernel). So baseline.json keeps one set of ratios per machine kind (processor,
CPU capability, threads, torch major.minor), and a run is judged against its own kind's; a kind
with no committed ratios is skipped with a line saying how to record them.

Refresh the committed ratios after an intended speed change, or on a new machine kind:
    make bench-baseline      # three runs: --update-baseline reset, then append twice
and commit tests/benchmarks/baseline.json with a note of why the numbers moved.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from robustbench_fmnist.environment import cpu_cores, cpu_model

BASELINE_PATH = Path(__file__).with_name("baseline.json")
TOLERANCE = 1.5  # fail above 1.5x the committed ratio; a 2x slowdown clears it even with 25 % noise
CALIBRATIONS = ("compute", "memory", "mixed")
REFRESH = "make bench-baseline"


def min_seconds(function: Callable[[], object], *, rounds: int, warmup: int = 1) -> float:
    """Fastest of `rounds` timed calls: interference on a shared machine only ever adds time."""
    for _ in range(warmup):
        function()
    best = math.inf
    for _ in range(rounds):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def paired_ratio(seconds: Sequence[float], calibration_seconds: Sequence[float]) -> float:
    """Median over rounds of (benchmark round / the calibration measured just before it).

    Pairing cancels what a shared VM does over seconds (a neighbour taking a core, a clock
    change): both halves of a pair see the same machine. The median drops the odd round
    where only one half was hit.
    """
    if len(seconds) != len(calibration_seconds) or not seconds:
        raise ValueError(f"{len(seconds)} benchmark rounds but {len(calibration_seconds)} calibrations")
    return statistics.median(b / c for b, c in zip(seconds, calibration_seconds, strict=True))


class Calibration:
    """The fixed workloads every benchmark is divided by, built once per session."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        # compute: ~0.9 GFLOP of oneDNN convolution, the same kernel family the models use
        self._conv_weight = torch.randn(64, 64, 3, 3, generator=generator).contiguous(memory_format=torch.channels_last)
        self._conv_input = torch.randn(16, 64, 28, 28, generator=generator).contiguous(
            memory_format=torch.channels_last
        )
        # memory: three 32 MB streams, well past any core's cache
        self._left = torch.rand(8_000_000, generator=generator)
        self._right = torch.rand(8_000_000, generator=generator)
        self._out = torch.empty_like(self._left)

    def _compute(self) -> None:
        with torch.inference_mode():
            F.conv2d(self._conv_input, self._conv_weight, padding=1)

    def _memory(self) -> None:
        torch.add(self._left, self._right, out=self._out)

    def seconds(self, kind: str, *, rounds: int = 3) -> float:
        """One calibration reading: the fastest of a few calls (perturbations mix both kinds of work)."""
        if kind not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {kind!r}")
        total = 0.0
        if kind in ("compute", "mixed"):
            total += min_seconds(self._compute, rounds=rounds, warmup=1)
        if kind in ("memory", "mixed"):
            total += min_seconds(self._memory, rounds=rounds, warmup=1)
        return total


@dataclass
class Verdict:
    name: str
    calibration: str
    seconds: float
    calibration_seconds: float
    ratio: float
    baseline_ratio: float | None
    tolerance: float = TOLERANCE

    @property
    def change(self) -> float:
        """Current ratio over the committed one: 2.0 means twice as slow relative to the machine."""
        return self.ratio / self.baseline_ratio if self.baseline_ratio else math.nan

    @property
    def status(self) -> str:
        if self.baseline_ratio is None:
            return "no baseline"
        if self.change > self.tolerance:
            return "REGRESSION"
        if self.change < 1 / self.tolerance:
            return "faster"  # not a failure, but the committed ratio is stale: refresh it
        return "ok"

    @property
    def failed(self) -> bool:
        return self.status in ("REGRESSION", "no baseline")

    def message(self) -> str:
        if self.baseline_ratio is None:
            return (
                f"{self.name}: no committed baseline ratio for this machine kind; record one with `{REFRESH}` "
                "and commit baseline.json"
            )
        return (
            f"{self.name}: {self.change:.2f}x the committed time relative to the {self.calibration} calibration "
            f"(ratio {self.ratio:.4g}, committed {self.baseline_ratio:.4g}, tolerance {self.tolerance}x)"
        )


def judge(name: str, calibration: str, seconds: float, calibration_seconds: float, baseline: dict) -> Verdict:
    """`seconds / calibration_seconds` against the committed ratio (pass a paired ratio with 1.0).

    `baseline` is one machine kind's section: {"tolerance": ..., "benchmarks": {...}} (see `for_machine`).
    """
    entry = baseline.get("benchmarks", {}).get(name)
    baseline_ratio = None
    if entry is not None and entry.get("calibration") == calibration:
        baseline_ratio = float(entry["ratio"])
    return Verdict(
        name,
        calibration,
        seconds,
        calibration_seconds,
        seconds / calibration_seconds,
        baseline_ratio,
        float(baseline.get("tolerance", TOLERANCE)),
    )


def load_baseline(path: Path = BASELINE_PATH) -> dict:
    """The whole baseline file, every machine kind's ratios under "machines" ({} if there is no file)."""
    if not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if "benchmarks" in data:  # one machine's ratios at the top level, as files were before kinds
        section = {"machine": data.pop("machine", {}), "benchmarks": data.pop("benchmarks")}
        data["machines"] = {machine_kind(section["machine"]): section}
    return data


def for_machine(data: dict, kind: str | None = None) -> dict:
    """The section of a baseline file that judges this machine (or `kind`): tolerance and benchmarks."""
    kind = kind or machine_kind()
    section = data.get("machines", {}).get(kind, {})
    return {"kind": kind, "tolerance": data.get("tolerance", TOLERANCE), "benchmarks": section.get("benchmarks", {})}


def machine_kind(described: dict | None = None) -> str:
    """What the committed ratios depend on, as one key: processor, CPU capability, threads, torch major.minor."""
    described = described or machine()
    torch_release = ".".join(str(described.get("torch", "?")).split("+")[0].split(".")[:2])
    return (
        f"{described.get('processor', '?')} / {described.get('cpu_capability', '?')} / "
        f"{described.get('threads', '?')} threads / torch {torch_release}"
    )


def machine() -> dict[str, object]:
    """This machine as baseline.json and the terminal summary describe it: CPU model and cores, threads, torch."""
    return {
        "processor": cpu_model(),
        "cores": cpu_cores(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def updated_baseline(old: dict, verdicts: list[Verdict], *, mode: str = "reset", keep: int = 3) -> dict:
    """The baseline file with this run's ratios for this machine kind; benchmarks that did not run,
    and every other machine kind, keep their old entries.

    "reset" starts each benchmark's samples from this run; "append" adds this run to the last
    `keep` runs'. The committed ratio is the median of the samples, so a refresh made of three
    runs (`make bench-baseline`) is not one noisy run.
    """
    if mode not in ("reset", "append"):
        raise ValueError(f"update mode must be reset or append, got {mode!r}")
    kind = machine_kind()
    machines = dict(old.get("machines", {}))
    benchmarks = dict(machines.get(kind, {}).get("benchmarks", {}))
    for verdict in verdicts:
        previous = benchmarks.get(verdict.name, {})
        samples = (
            previous.get("samples", [])
            if mode == "append" and previous.get("calibration") == verdict.calibration
            else []
        )
        samples = [*samples, round(verdict.ratio, 6)][-keep:]
        benchmarks[verdict.name] = {
            "ratio": round(statistics.median(samples), 6),
            "calibration": verdict.calibration,
            "samples": samples,
        }
    machines[kind] = {"machine": machine(), "benchmarks": dict(sorted(benchmarks.items()))}
    return {
        "about": (
            "Seconds of each regression benchmark divided by the seconds of its calibration workload, "
            f"measured in the same run (median of `samples`, one per run), per machine kind. CI fails a "
            f"benchmark above `tolerance` x its kind's ratio. Refresh: {REFRESH}."
        ),
        "tolerance": old.get("tolerance", TOLERANCE),
        "machines": dict(sorted(machines.items())),
    }


def write_baseline(data: dict, path: Path = BASELINE_PATH) -> None:
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)

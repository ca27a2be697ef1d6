"""Honest speed measurements: warm-up, device synchronisation inside the timed region, repeats.

Every measurement returns a row for throughput.csv: what was timed (inference, latency,
training, perturbation, sweep, forward, ceiling), on what (model, device, batch size, dtype,
memory layout, compiled or not) and the result (images/s with the spread over repeats, ms per
batch, latency percentiles, peak memory). A device that is not present gives a `skipped` row
with the reason instead of an error.
"""

from __future__ import annotations

import contextlib
import copy
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from robustbench_fmnist.evaluation.adversary import adversary_step, draws
from robustbench_fmnist.evaluation.cells import Cell, perturb_cell
from robustbench_fmnist.evaluation.inference import Compile, PreparedModel, prepare_for_inference
from robustbench_fmnist.evaluation.sweep import evaluate_cells
from robustbench_fmnist.perturbations.space import Space

THROUGHPUT_COLUMNS = [
    "kind",
    "model",
    "device",
    "batch_size",
    "dtype",
    "channels_last",
    "compiled",
    "status",
    "images_per_second",
    "images_per_second_low",
    "images_per_second_high",
    "ms_per_batch",
    "latency_p50_ms",
    "latency_p95_ms",
    "peak_memory_mb",
    "parameters",
    "macs",
    "gflops",
    "threads",
    "reason",
]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ThroughputRow:
    kind: str  # inference | latency | training | perturbation | sweep | forward | ceiling
    model: str
    device: str
    batch_size: int
    dtype: str = "float32"
    channels_last: bool = True
    compiled: bool = False
    status: str = "ok"  # ok | skipped
    images_per_second: float = float("nan")  # median over repeats
    images_per_second_low: float = float("nan")  # slowest repeat
    images_per_second_high: float = float("nan")  # fastest repeat
    ms_per_batch: float = float("nan")
    latency_p50_ms: float = float("nan")
    latency_p95_ms: float = float("nan")
    peak_memory_mb: float = float("nan")  # CUDA allocator peak; on CPU the process's peak RSS so far
    parameters: int = 0
    macs: int = 0
    gflops: float = float("nan")  # achieved, from MACs x 2 x images/s
    threads: int = 0
    reason: str = ""

    def to_row(self) -> dict[str, object]:
        return asdict(self)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(function: Callable[[], object], device: torch.device, *, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls after `warmup` untimed ones; the device is synchronised
    before the clock starts and before it stops, so queued GPU work is inside the timed region."""
    for _ in range(warmup):
        function()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def _alternated_times(
    functions: dict[str, Callable[[], object]], device: torch.device, repeats: int
) -> dict[str, list[float]]:
    """Seconds of each of `repeats` calls of every function, after one untimed call of each.

    The calls alternate, so a shared machine's drift over seconds slows every function alike and
    their ratios hold.
    """
    times: dict[str, list[float]] = {kind: [] for kind in functions}
    for function in functions.values():
        time_calls(function, device, warmup=1, repeats=0)
    for _ in range(repeats):
        for kind, function in functions.items():
            times[kind] += time_calls(function, device, warmup=0, repeats=1)
    return times


def device_skip_reason(device: torch.device) -> str | None:
    """Why `device` cannot be measured here, or None if it can."""
    if device.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device visible (torch.cuda.is_available() is False)"
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        return f"only {torch.cuda.device_count()} CUDA device(s) visible"
    return None


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


@contextlib.contextmanager
def _autocast(device: torch.device, dtype: str) -> Iterator[None]:
    with torch.autocast(device.type, dtype=_DTYPES[dtype], enabled=dtype != "float32"):
        yield


def _rates(images_per_call: int, times: Sequence[float]) -> dict[str, float]:
    median = statistics.median(times)
    return {
        "images_per_second": images_per_call / median,
        "images_per_second_low": images_per_call / max(times),
        "images_per_second_high": images_per_call / min(times),
    }


def inference_model(
    model: nn.Module, device: torch.device, *, channels_last: bool, compiled: bool, dtype: str = "float32"
) -> PreparedModel:
    """The model as evaluation runs it (inference.prepare_for_inference), compiled or not as asked."""
    return prepare_for_inference(
        model, device, precision=dtype, channels_last=channels_last, compile="always" if compiled else "never"
    )


def measure_inference(
    name: str,
    model: nn.Module,
    device: torch.device,
    batch_size: int,
    *,
    dtype: str = "float32",
    channels_last: bool = True,
    compiled: bool = False,
    images: int = 10_000,
    warmup: int = 2,
    repeats: int = 5,
    macs: int = 0,
    seconds_per_repeat: float | None = None,
) -> ThroughputRow:
    """Images/s of the forward pass over `images` images (whole batches of `batch_size`).

    With `seconds_per_repeat`, a slow model times fewer images (at least one batch) so each
    repeat takes about that long; `warmup` counts untimed repeats."""
    row = ThroughputRow("inference", name, str(device), batch_size, dtype, channels_last, compiled)
    row.parameters, row.macs, row.threads = sum(p.numel() for p in model.parameters()), macs, torch.get_num_threads()
    reason = device_skip_reason(device)
    if reason:
        return _skipped(row, reason)
    if device.type == "cpu" and dtype == "float16":
        return _skipped(row, "float16 autocast is for CUDA; use bfloat16 on the CPU")
    if not getattr(model, "runs_in_torch", True) and (compiled or dtype != "float32"):
        return _skipped(row, "ONNX Runtime runs the file as it is: float32, not compiled by torch")
    if compiled and not getattr(model, "compilable", True):
        return _skipped(row, f"{type(model).__name__} is not compiled: its layers are not the harness's to trace")
    runner = inference_model(model, device, channels_last=channels_last, compiled=compiled, dtype=dtype)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    batch = torch.rand(batch_size, 1, 28, 28, device=device).contiguous(memory_format=memory_format)
    calls = max(1, images // batch_size)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def forward() -> None:
        with torch.inference_mode():
            runner(batch)

    def run() -> None:
        for _ in range(calls):
            forward()

    one_batch = time_calls(forward, device, warmup=1, repeats=1)[0]  # after compiling, if compiled
    if seconds_per_repeat is not None:
        calls = max(1, min(calls, int(seconds_per_repeat / one_batch)))
    times = time_calls(run, device, warmup=warmup, repeats=repeats)
    row.__dict__.update(_rates(calls * batch_size, times))
    row.ms_per_batch = 1000 * statistics.median(times) / calls
    row.gflops = 2 * macs * row.images_per_second / 1e9 if macs else float("nan")
    row.peak_memory_mb = peak_memory_mb(device)
    return row


def measure_latency(
    name: str,
    model: nn.Module,
    device: torch.device,
    *,
    dtype: str = "float32",
    channels_last: bool = True,
    compiled: bool = False,
    calls: int = 200,
    warmup: int = 20,
) -> ThroughputRow:
    """p50 and p95 of single-image forward passes, each timed on its own."""
    row = ThroughputRow("latency", name, str(device), 1, dtype, channels_last, compiled)
    row.threads = torch.get_num_threads()
    reason = device_skip_reason(device)
    if reason:
        return _skipped(row, reason)
    runner = inference_model(model, device, channels_last=channels_last, compiled=compiled, dtype=dtype)
    image = torch.rand(1, 1, 28, 28, device=device)

    def one() -> None:
        with torch.inference_mode():
            runner(image)

    times = sorted(time_calls(one, device, warmup=warmup, repeats=calls))
    row.latency_p50_ms = 1000 * statistics.median(times)
    row.latency_p95_ms = 1000 * times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    row.ms_per_batch = row.latency_p50_ms
    row.images_per_second = 1000 / row.latency_p50_ms
    return row


def measure_training(
    name: str,
    model: nn.Module,
    device: torch.device,
    batch_size: int,
    *,
    dtype: str = "bfloat16",
    channels_last: bool = True,
    steps: int = 20,
    warmup: int = 1,
    repeats: int = 3,
    augment: Callable[..., torch.Tensor] | None = None,
) -> ThroughputRow:
    """Images/s of training steps (forward, cross-entropy, backward, AdamW) on random batches.

    Trains a copy: the caller's weights are untouched. `augment` (a recipe's augmentation that reads
    the model, training.augmentation.BatchAugment) runs on each batch first, inside the step's time.
    """
    row = ThroughputRow("training", name, str(device), batch_size, dtype, channels_last, False)
    row.threads = torch.get_num_threads()
    reason = device_skip_reason(device)
    if reason:
        return _skipped(row, reason)
    if not any(p.requires_grad for p in model.parameters()):
        return _skipped(row, "nothing to train (an ONNX Runtime model gives no gradients)")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    trained = copy.deepcopy(model).to(device=device, memory_format=memory_format).train()
    optimizer = torch.optim.AdamW(trained.parameters(), lr=1e-3)
    images = torch.rand(batch_size, 1, 28, 28, device=device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, 10, (batch_size,), device=device)

    indices = torch.arange(batch_size)

    def run() -> None:
        for step in range(steps):
            with _autocast(device, dtype):
                inputs = images if augment is None else augment(trained, images, labels, indices, 0, step)
                loss = nn.functional.cross_entropy(trained(inputs.contiguous(memory_format=memory_format)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    times = time_calls(run, device, warmup=warmup, repeats=repeats)  # each call is `steps` steps
    row.__dict__.update(_rates(steps * batch_size, times))
    row.ms_per_batch = 1000 * statistics.median(times) / steps
    row.peak_memory_mb = peak_memory_mb(device)
    return row


def measure_perturbation(
    cell: Cell, images: torch.Tensor, *, seed: int = 0, warmup: int = 1, repeats: int = 3
) -> ThroughputRow:
    """Images/s of one perturbation cell over `images` (on their device), by the cell's backend."""
    device = images.device
    row = ThroughputRow("perturbation", f"{cell.perturbation}/s{cell.severity}", str(device), len(images))
    row.reason = cell.backend
    indices = torch.arange(len(images), device=device)
    times = time_calls(
        lambda: perturb_cell(cell, images, seed=seed, indices=indices), device, warmup=warmup, repeats=repeats
    )
    row.__dict__.update(_rates(len(images), times))
    row.ms_per_batch = 1000 * statistics.median(times)
    row.threads = torch.get_num_threads()
    return row


def measure_sweep_overhead(
    name: str,
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    cells: Sequence[Cell],
    *,
    batch_size: int = 1000,
    channels_last: bool = True,
    compile: Compile = "auto",
    repeats: int = 3,
) -> list[ThroughputRow]:
    """The evaluation sweep's images/s next to the bare forward pass of the same prepared model and batches.

    Both go through the one inference path, prepared once as the sweep of these cells would be
    (compiled where `compile` says so), so the ratio of the two is the harness's own overhead:
    perturbing, copying and scoring.
    """
    device = images.device
    runner = prepare_for_inference(
        model, device, channels_last=channels_last, compile=compile, images=len(images) * len(cells)
    )
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    batches = [
        images[i : i + batch_size].contiguous(memory_format=memory_format) for i in range(0, len(images), batch_size)
    ]

    def forward() -> None:
        with torch.inference_mode():
            for _ in cells:
                for batch in batches:
                    runner(batch).argmax(1)

    def sweep() -> None:
        evaluate_cells(
            model,
            name,
            images,
            labels,
            cells,
            device=device,
            batch_size=batch_size,
            channels_last=channels_last,
            prepared=runner,
            show_progress=False,
        )

    total = len(cells) * len(images)
    times = _alternated_times({"forward": forward, "sweep": sweep}, device, repeats)
    rows = []
    for kind in times:
        row = ThroughputRow(kind, name, str(device), batch_size, channels_last=channels_last, compiled=runner.compiled)
        row.__dict__.update(_rates(total, times[kind]))
        row.ms_per_batch = 1000 * statistics.median(times[kind]) / (len(cells) * len(batches))
        row.threads = torch.get_num_threads()
        rows.append(row)
    return rows


def measure_conv_ceiling(device: torch.device, *, repeats: int = 5) -> ThroughputRow:
    """GFLOP/s of a large channels_last 3x3 convolution: the practical fp32 ceiling of the device.

    A big MKL matmul understates it on CPUs whose convolutions go through oneDNN.
    """
    row = ThroughputRow("ceiling", "conv3x3 64->64, 56x56, batch 32", str(device), 32)
    reason = device_skip_reason(device)
    if reason:
        return _skipped(row, reason)
    conv = nn.Conv2d(64, 64, 3, padding=1, bias=False).to(device=device, memory_format=torch.channels_last).eval()
    x = torch.rand(32, 64, 56, 56, device=device).contiguous(memory_format=torch.channels_last)

    def run() -> None:
        with torch.inference_mode():
            conv(x)

    times = time_calls(run, device, warmup=2, repeats=repeats)
    flops = 2 * 32 * 64 * 64 * 9 * 56 * 56
    row.gflops = flops / statistics.median(times) / 1e9
    row.ms_per_batch = 1000 * statistics.median(times)
    row.threads = torch.get_num_threads()
    return row


def _skipped(row: ThroughputRow, reason: str) -> ThroughputRow:
    row.status, row.reason = "skipped", reason
    return row


def forward_seconds_per_image(model: nn.Module, device: torch.device, batch_size: int = 256) -> float:
    """Seconds per image of the model's eager forward pass on one batch here (fastest of three): for estimates."""
    prepared = prepare_for_inference(model.eval(), device, compile="never")
    batch = torch.rand(batch_size, 1, 28, 28, device=device)

    def forward() -> None:
        with torch.inference_mode():
            prepared(batch)

    return min(time_calls(forward, device, warmup=1, repeats=3)) / batch_size


def measure_adversary_step(
    name: str,
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    space: Space,
    *,
    batch_size: int = 1000,
    repeats: int = 3,
) -> list[ThroughputRow]:
    """A worst-case search's step (each image perturbed at its own point, the forward pass, the verdicts kept)
    against the bare forward pass on the same batch: rows `adversary step` and `adversary forward`."""
    device = images.device
    prepared = prepare_for_inference(model.eval(), device, compile="never")
    count = min(batch_size, len(labels))
    rows = torch.arange(count)
    points = draws(space, count, 1, seed=0, indices=rows)[:, 0]
    step = adversary_step(prepared, images[:count], labels[:count].cpu(), space, name)
    batch = images[:count].contiguous(memory_format=prepared.memory_format)

    def bare() -> None:
        with torch.inference_mode():
            prepared(batch).argmax(1)

    times = _alternated_times(
        {"adversary step": lambda: step(rows, points), "adversary forward": bare}, device, repeats
    )
    out = []
    for kind, seconds in times.items():
        row = ThroughputRow(kind, name, str(device), count, channels_last=prepared.memory_format == torch.channels_last)
        row.__dict__.update(_rates(count, seconds))
        row.ms_per_batch = 1000 * statistics.median(seconds)
        row.threads = torch.get_num_threads()
        out.append(row)
    return out

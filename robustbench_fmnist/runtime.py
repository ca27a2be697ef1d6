"""Process-level settings that decide CPU speed, applied by the harness itself."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import math
import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from robustbench_fmnist.errors import ConfigError

log = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_allocator_tuned = False


def tune_cpu_allocator() -> bool:
    """Keep freed activation buffers in the heap instead of returning them to the OS.

    glibc's default hands large blocks back with munmap and page-faults them in again on
    the next batch, which costs 1.5-4x at large batches on CPU (see REFERENCE.md). The
    equivalent of MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=16G MALLOC_TOP_PAD_=512M.
    Returns False where there is no glibc (macOS, musl).
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    ok = all(
        mallopt(param, value)
        for param, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 16 << 30), (_M_TOP_PAD, 512 << 20))
    )
    _allocator_tuned = ok
    return ok


def usable_cpus() -> int:
    """CPUs this process may actually run on: its affinity mask, capped by a cgroup CPU quota.

    os.cpu_count() reports the host's CPUs; in a container limited to 2 of 64 that would
    start 64 OpenMP threads on 2 CPUs, which is several times slower than 2 threads.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(count, math.ceil(quota))) if quota else max(1, count)


def _cgroup_cpu_quota() -> float | None:
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def apply_cpu_settings(threads: int | None = None) -> dict[str, object]:
    """The process-level settings that decide CPU speed, so a user's shell does not have to.

    - glibc keeps freed activation buffers (see `tune_cpu_allocator`);
    - intra-op threads: `threads` if given; otherwise torch's default (physical cores) capped at
      the CPUs this process may use, unless the user set OMP_NUM_THREADS themselves;
    - denormal floats flushed to zero: late in training, tiny gradients and activations can
      fall into the denormal range, where x86 arithmetic is many times slower.
    Returns what was applied, for run.json and throughput.csv.
    """
    allocator = tune_cpu_allocator()
    if threads is not None:
        torch.set_num_threads(threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(min(torch.get_num_threads(), usable_cpus()))
    return {
        "allocator_tuned": allocator,
        "threads": torch.get_num_threads(),
        "usable_cpus": usable_cpus(),
        "flush_denormal": torch.set_flush_denormal(True),
    }


def denormals_flushed() -> bool:
    """Whether this thread's float unit flushes denormals to zero (torch has no getter for it)."""
    return bool((torch.tensor([1e-40]) * 1.0)[0] == 0)


@contextlib.contextmanager
def cpu_settings(threads: int | None = None) -> Iterator[dict[str, object]]:
    """`apply_cpu_settings` for the block; threads and denormal flushing are restored afterwards.

    The allocator tuning stays: glibc cannot be told to go back to its own adaptive thresholds.
    """
    threads_before, flushed_before = torch.get_num_threads(), denormals_flushed()
    try:
        yield apply_cpu_settings(threads)
    finally:
        torch.set_num_threads(threads_before)
        torch.set_flush_denormal(flushed_before)


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without one is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for, but no CUDA GPU is visible; use device: cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def thread_info() -> dict[str, int]:
    return {
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count() or 0,
    }

"""Process-level CPU settings the harness applies itself."""

from __future__ import annotations

import platform
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from robustbench_fmnist import runtime
from robustbench_fmnist.config import ConfigError, parse_config


@pytest.fixture
def restore_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    torch.set_flush_denormal(False)


def test_settings_are_applied_and_reported(restore_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    applied = runtime.apply_cpu_settings(threads=1)
    assert torch.get_num_threads() == 1 and applied["threads"] == 1
    assert applied["flush_denormal"] is True
    assert torch.tensor([1e-40]).mul(1.0).item() == 0.0  # denormals flushed
    glibc = platform.libc_ver()[0] == "glibc"
    assert applied["allocator_tuned"] is glibc and applied["usable_cpus"] >= 1


def test_without_glibc_the_allocator_is_reported_untuned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "_allocator_tuned", False)
    monkeypatch.setattr(runtime.ctypes.util, "find_library", lambda name: None)
    assert runtime.tune_cpu_allocator() is False


def test_default_threads_are_capped_at_the_usable_cpus(restore_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "usable_cpus", lambda: 1)
    torch.set_num_threads(2)
    assert runtime.apply_cpu_settings()["threads"] == 1


def test_a_users_omp_num_threads_is_left_alone(restore_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(runtime, "usable_cpus", lambda: 1)
    torch.set_num_threads(2)
    assert runtime.apply_cpu_settings()["threads"] == 2


@pytest.mark.parametrize(("text", "quota"), [("max 100000\n", None), ("150000 100000\n", 1.5), ("garbage", None)])
def test_cgroup_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, quota: float | None) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text(text)
    real_path = runtime.Path
    monkeypatch.setattr(runtime, "Path", lambda p: cpu_max if p == "/sys/fs/cgroup/cpu.max" else real_path(p))
    assert runtime._cgroup_cpu_quota() == quota
    if quota:
        assert runtime.usable_cpus() <= 2  # 1.5 CPUs of quota run 2 threads at most


def test_threads_key_in_the_yaml_is_checked(tiny_experiment: dict) -> None:
    assert parse_config({**tiny_experiment, "threads": 1}).threads == 1
    with pytest.raises(ConfigError, match="threads"):
        parse_config({**tiny_experiment, "threads": 0})

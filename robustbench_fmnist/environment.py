"""The environment a run or a training happened in: package versions, the git commit, the CPU."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import torch


def package_versions() -> dict[str, str]:
    """Installed versions of the packages whose numerics or output the report depends on."""
    versions = {}
    packages = ("robustbench_fmnist", "torch", "torchvision", "timm", "numpy", "pandas", "pydantic", "matplotlib")
    for name in (*packages, "markdown", "pillow", "albumentations", "ray"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str:
    """HEAD of the checkout the package runs from, '+dirty' if tracked code has changed."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)reports"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def cpu_model() -> str:
    """The processor's model name ("AMD EPYC 9B14", "Intel(R) Xeon(R) ..."); the architecture where none is known."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_cores() -> int:
    """The cores this process may run on (its affinity, which a container or `taskset` narrows), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_description() -> dict[str, object]:
    """The CPU a run measured on, for run.json and `bench`: model, cores, torch's kernel level and threads."""
    return {
        "model": cpu_model(),
        "cores": cpu_cores(),
        "capability": str(torch.backends.cpu.get_cpu_capability()),
        "torch_threads": torch.get_num_threads(),
    }


def device_name(device: torch.device) -> str:
    """The GPU's name on CUDA, the CPU's model name and core count on the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {cpu_cores()} cores"

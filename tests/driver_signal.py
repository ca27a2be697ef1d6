"""A `run` in its own process, sent a signal once its first evaluation is stored: the driver-stop tests' shared step."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml


def run_until_first_record(config: dict[str, Any], path: Path, sent: signal.Signals, wait: float) -> tuple[int, str]:
    """Write `config` to `path`, run it, send `sent` once an evaluation record exists; (return code, stderr)."""
    path.write_text(yaml.safe_dump(config))
    evaluations = Path(config["cache_dir"]) / "evaluations"
    command = [sys.executable, "-m", "robustbench_fmnist", "-q", "run", str(path)]
    driver = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
    deadline = time.monotonic() + wait
    while driver.poll() is None and time.monotonic() < deadline:
        if evaluations.is_dir() and list(evaluations.glob("*.safetensors")):
            driver.send_signal(sent)
            break
        time.sleep(0.05)
    _, err = driver.communicate(timeout=120)
    return driver.returncode, err

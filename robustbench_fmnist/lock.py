"""The reference environment: the exact versions in constraints.txt, and how this one differs."""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
from pathlib import Path
from typing import Any

# the lock sits at the top of the checkout the package runs from (not shipped in a wheel)
LOCK_FILE = Path(__file__).resolve().parent.parent / "constraints.txt"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def normalise(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): lowercase, runs of -_. as one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path = LOCK_FILE) -> dict[str, str]:
    """{normalised name: version} of every `name==version` line of a constraints file."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _PIN.match(line.strip())
        if match:
            pins[normalise(match.group(1))] = match.group(2)
    return pins


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def lock_status(path: Path = LOCK_FILE) -> dict[str, Any]:
    """For run.json: whether the installed packages are the locked versions, and each that is not.

    `differences` lists the packages installed at another version than the lock's. A locked
    package that is not installed is not one: the CUDA wheels torch pulls in on Linux, say, are
    absent from a macOS install of the same torch.
    """
    if not path.is_file():
        return {"file": None, "matches": None, "note": f"no lock at {path} (installed from a wheel?)"}
    pins = read_lock(path)
    differences = []
    for name, locked in sorted(pins.items()):
        installed = installed_version(name)
        if installed is not None and installed != locked:
            differences.append({"package": name, "locked": locked, "installed": installed})
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"file": path.name, "sha256": digest, "matches": not differences, "differences": differences}

"""The report folder swap, failure point by failure point: each failure is injected, none is timed.

A killed process is a real one (a child that SIGKILLs itself at the chosen step); the next
command that takes the folder's lock must find the old report whole, or the new one, and no
leftovers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from robustbench_fmnist import files
from robustbench_fmnist.errors import OutputError
from robustbench_fmnist.files import MARKER, hold_folder, replace_folder


def _write(folder: Path, text: str) -> None:
    (folder / "report.md").write_text(text)


def _old_report(tmp_path: Path) -> Path:
    target = tmp_path / "t"
    with replace_folder(target, "report") as staging:
        _write(staging, "old")
    return target


def _contents(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in folder.iterdir()}


def _leftovers(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name not in ("t", ".t.rbfm-lock"))


def test_a_swap_replaces_the_folder_and_leaves_nothing_beside_it(tmp_path: Path) -> None:
    target = _old_report(tmp_path)
    with replace_folder(target, "report") as staging:
        _write(staging, "new")
    assert _contents(target)["report.md"] == "new" and MARKER in _contents(target)
    assert _leftovers(tmp_path) == []


def test_this_file_system_exchanges_atomically(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    if not files.exchange_paths(tmp_path / "a", tmp_path / "b"):
        pytest.skip("no atomic exchange here; the rename fallback is tested below")
    assert (tmp_path / "b" / "x").read_text() == "a" and not (tmp_path / "a" / "x").exists()


def test_a_failed_exchange_keeps_the_old_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = _old_report(tmp_path)

    def fail(first: Path, second: Path) -> bool:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(files, "exchange_paths", fail)
    with pytest.raises(OSError, match="Input/output"), replace_folder(target, "report") as staging:
        _write(staging, "new")
    assert _contents(target)["report.md"] == "old" and _leftovers(tmp_path) == []


def test_without_exchange_a_failed_second_rename_puts_the_old_folder_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = _old_report(tmp_path)
    monkeypatch.setattr(files, "exchange_paths", lambda first, second: False)
    real_replace = os.replace
    calls = []

    def second_fails(source: object, destination: object) -> None:
        calls.append(source)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_replace(source, destination)

    monkeypatch.setattr(files.os, "replace", second_fails)
    with pytest.raises(OutputError, match="no space left on its disk"), replace_folder(target, "report") as staging:
        _write(staging, "new")
    assert _contents(target)["report.md"] == "old" and _leftovers(tmp_path) == []


def test_an_exception_while_writing_keeps_the_old_folder(tmp_path: Path) -> None:
    target = _old_report(tmp_path)
    with pytest.raises(KeyboardInterrupt), replace_folder(target, "report") as staging:
        _write(staging, "half")
        raise KeyboardInterrupt  # Ctrl-C, or SIGTERM through the CLI's handler
    assert _contents(target)["report.md"] == "old" and _leftovers(tmp_path) == []


# the child process: swap `t` with the rename fallback, SIGKILLing itself at step KILL_AT
CHILD = """
import os, signal, shutil, sys
from pathlib import Path
from robustbench_fmnist import files
from robustbench_fmnist.cli import _interrupt

target, kill_at = Path(sys.argv[1]), sys.argv[2]
files.exchange_paths = lambda a, b: False
real_replace, real_rmtree = os.replace, shutil.rmtree
replaced = []

def replace(source, destination):
    replaced.append(source)
    if kill_at == "between renames" and len(replaced) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(source, destination)

def rmtree(path, *args, **kwargs):
    if kill_at == "before clean-up" and str(path).endswith(".rbfm-old"):
        os.kill(os.getpid(), signal.SIGKILL)
    real_rmtree(path, *args, **kwargs)

files.os.replace, files.shutil.rmtree = replace, rmtree
signal.signal(signal.SIGTERM, _interrupt)
with files.replace_folder(target, "report") as staging:
    (staging / "report.md").write_text("new")
    if kill_at == "while writing":
        os.kill(os.getpid(), signal.SIGKILL)
    if kill_at == "sigterm while writing":
        os.kill(os.getpid(), signal.SIGTERM)
"""


@pytest.mark.parametrize(
    ("kill_at", "expected", "returncode"),
    [
        ("while writing", "old", -9),
        # SIGTERM becomes KeyboardInterrupt, so the staging folder is removed on the way out
        ("sigterm while writing", "old", -2),
        ("between renames", "old", -9),
        ("before clean-up", "new", -9),
    ],
)
def test_a_killed_swap_is_recovered_by_the_next_command(tmp_path: Path, kill_at: str, expected: str, returncode: int):
    target = _old_report(tmp_path)
    done = subprocess.run([sys.executable, "-c", CHILD, str(target), kill_at], capture_output=True, text=True)
    assert done.returncode == returncode, done.stderr
    if returncode == -9:
        assert _leftovers(tmp_path), "the kill left something behind for the next command to clean"
    else:
        assert _leftovers(tmp_path) == [], "SIGTERM cleans up on its own"
    with hold_folder(target):
        pass
    assert _contents(target)["report.md"] == expected
    assert _leftovers(tmp_path) == []


# holds the folder's lock until its standard input closes
HOLDER = """
import sys
from pathlib import Path
from robustbench_fmnist import files

with files.hold_folder(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()
"""

TRY = """
import sys
from pathlib import Path
from robustbench_fmnist import files
from robustbench_fmnist.errors import OutputError

try:
    with files.replace_folder(Path(sys.argv[1]), "report") as staging:
        (staging / "report.md").write_text("from a second process")
except OutputError as exc:
    print("busy:", exc)
"""


def test_concurrent_writers_of_one_folder_stop_with_one_line(tmp_path: Path) -> None:
    target = _old_report(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(target)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        others = [
            subprocess.run([sys.executable, "-c", TRY, str(target)], capture_output=True, text=True) for _ in range(2)
        ]
    finally:
        holder.communicate("")
    for other in others:
        assert other.returncode == 0 and other.stderr == "", other.stderr
        assert other.stdout.startswith("busy:") and "being written by another" in other.stdout
    assert _contents(target)["report.md"] == "old"
    done = subprocess.run([sys.executable, "-c", TRY, str(target)], capture_output=True, text=True)
    assert done.stdout == "" and _contents(target)["report.md"] == "from a second process"


@pytest.mark.parametrize("kind", ["compare", "preview"])
def test_a_folder_of_another_kind_is_not_replaced(tmp_path: Path, kind: str) -> None:
    target = _old_report(tmp_path)
    with pytest.raises(OutputError, match="is a report folder"), replace_folder(target, kind):
        pass
    assert _contents(target)["report.md"] == "old"


def test_a_report_written_before_markers_existed_is_replaceable(tmp_path: Path) -> None:
    target = tmp_path / "t"
    target.mkdir()
    legacy = textwrap.dedent('{"config": {}, "environment": {}, "perturbations": [], "models": []}')
    (target / "run.json").write_text(legacy)
    with replace_folder(target, "report") as staging:
        _write(staging, "new")
    assert _contents(target)["report.md"] == "new"


def test_a_user_file_is_read_only_up_to_its_limit(tmp_path: Path) -> None:
    from robustbench_fmnist.errors import HarnessError

    path = tmp_path / "x.yaml"
    path.write_bytes(b"a" * 10)
    assert files.read_user_file(path, 10, "a YAML") == b"a" * 10
    with pytest.raises(HarnessError, match=r"x.yaml: larger than 9 bytes; is it a YAML\?"):
        files.read_user_file(path, 9, "a YAML")
    with pytest.raises(IsADirectoryError):
        files.read_user_file(tmp_path, 10, "a YAML")
    with pytest.raises(FileNotFoundError):
        files.read_user_file(tmp_path / "missing", 10, "a YAML")


def test_a_device_that_never_ends_is_refused_not_read_to_the_limit() -> None:
    from robustbench_fmnist.errors import ConfigError

    with pytest.raises(ConfigError, match="/dev/zero: is a character device, not a regular file; give a YAML"):
        files.read_user_file("/dev/zero", 10, "a YAML", ConfigError)

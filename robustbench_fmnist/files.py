"""Atomic writes, and folders the harness owns: nothing it did not write is ever replaced.

Every folder the harness writes as a whole (a report, a comparison, a set of previews) carries
a marker file naming its kind. A folder is replaced or added to only when it is absent, empty,
or carries the marker of the same kind; anything else at that path stops the command with one
line. Report folders are swapped in whole under a lock on the folder, so that readers see the
old complete folder or the new complete one, and a killed swap is finished or undone by the
next command that takes the lock.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from robustbench_fmnist.errors import HarnessError, OutputError

MARKER = ".robustbench_fmnist"
REPORT = "report"  # the kind of folder `run`, `bench` and `report` write (see MARKER)
# a report written before the marker existed: run.json with these keys
_LEGACY_REPORT_KEYS = {"config", "environment", "perturbations", "models"}
_MARKER_BYTES = 4096
_RUN_BYTES = 256 << 20  # a run record of thousands of models is a few MB
_STAGING = "rbfm-staging-"
_RETIRED = "rbfm-old"
_LOCK = "rbfm-lock"
_held: dict[Path, FileLock] = {}


def safe_file_name(text: str) -> str:
    """`text` made safe for a file name and a markdown link: runs of other characters become one `_`."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


_NOT_REGULAR = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def read_user_file(
    path: str | os.PathLike[str], limit: int, what: str, error: type[HarnessError] = HarnessError
) -> bytes:
    """The bytes of the regular file `path`, at most `limit` bytes of it; `error` for anything else.

    A device's size says nothing (/dev/zero has size 0 and never ends) and a FIFO blocks, so only
    a regular file is read, and the limit holds while reading, not just by the size the file
    claims. A missing file, a folder or an unreadable one raises OSError for the caller to word.
    """
    # O_NONBLOCK: opening a FIFO would otherwise wait for a writer before we could look at it
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as file:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        kind = next((name for test, name in _NOT_REGULAR if test(mode)), None)
        if kind is not None or not stat.S_ISREG(mode):
            raise error(f"{path}: is {kind or 'a special file'}, not a regular file; give {what}")
        data = file.read(limit + 1)
    if len(data) > limit:
        raise error(f"{path}: larger than {_size(limit)}; is it {what}?")
    return data


def _size(count: int) -> str:
    return f"{count >> 20} MiB" if count >= 1 << 20 else f"{count:,} bytes"


def absolute(path: str | os.PathLike[str]) -> Path:
    """`path` made absolute with '.' and '..' collapsed, so that its name is a real folder name."""
    return Path(os.path.abspath(path))


def folder_kind(folder: Path) -> str | None:
    """The kind the harness marked `folder` with ('report', 'compare', 'preview'), or None."""
    # OutputError is a ValueError: a device or oversized file in place of the marker marks nothing
    try:
        marker = json.loads(read_user_file(folder / MARKER, _MARKER_BYTES, "a marker", OutputError))
        return str(marker["kind"]) if isinstance(marker, dict) and "kind" in marker else None
    except (OSError, ValueError):
        pass
    try:
        run = json.loads(read_user_file(folder / "run.json", _RUN_BYTES, "a run.json", OutputError))
    except (OSError, ValueError):
        return None
    return "report" if isinstance(run, dict) and set(run) >= _LEGACY_REPORT_KEYS else None


def mark_folder(folder: Path, kind: str) -> None:
    """Write the marker that lets later commands replace `folder`."""
    (folder / MARKER).write_text(json.dumps({"written_by": "robustbench_fmnist", "kind": kind}) + "\n")


def check_replaceable(folder: str | os.PathLike[str], kind: str) -> None:
    """Raise OutputError unless `folder` is absent, an empty folder, or a `kind` folder the harness wrote."""
    folder = absolute(folder)
    if Path.cwd().resolve().is_relative_to(folder.resolve()):
        raise OutputError(f"{folder} holds the current folder, so it cannot be replaced; run this from elsewhere")
    if not folder.exists() and not folder.is_symlink():
        return
    if not folder.is_dir() or folder.is_symlink():
        raise OutputError(f"{folder} exists and is not a folder; choose another name or output folder")
    if not any(folder.iterdir()):
        return
    found = folder_kind(folder)
    if found != kind:
        what = f"a {found} folder" if found else "not written by robustbench_fmnist"
        raise OutputError(
            f"{folder} exists and is {what}; it is left alone: choose another name or output folder, "
            f"or move it away yourself"
        )


def check_writable_folder(folder: str | os.PathLike[str], what: str) -> None:
    """Raise OutputError unless `folder` is a folder this process can write in, or could be made one.

    Creates nothing that stays: a missing folder is judged by its nearest existing parent.
    """
    folder = absolute(folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p.is_symlink())
    if not existing.is_dir():
        where = "is a file" if existing == folder else f"lies under {existing}, which is a file"
        raise OutputError(f"{what} {folder} {where}, not a folder; choose another path")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise OutputError(f"{what} {folder} is not writable ({exc.strerror or exc}); choose another path") from None


@contextlib.contextmanager
def hold_folder(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the lock of a report folder for the block; another process holding it stops this one.

    Re-entrant within a process, so a run can hold it from its first check to its last write.
    """
    folder = absolute(folder)
    if folder in _held:
        yield
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder.parent / f".{folder.name}.{_LOCK}", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise OutputError(
            f"{folder} is being written by another robustbench_fmnist process; wait for it or choose another name"
        ) from None
    _held[folder] = lock
    try:
        _recover(folder)
        yield
    finally:
        del _held[folder]
        lock.release()


def _recover(folder: Path) -> None:
    """Finish or undo the swap of a killed process, and remove its staging folders (lock held)."""
    retired = folder.parent / f".{folder.name}.{_RETIRED}"
    if retired.exists():
        old = retired / folder.name
        if not folder.exists() and old.exists():
            os.replace(old, folder)  # killed between the two renames: put the old folder back
        shutil.rmtree(retired, ignore_errors=True)  # otherwise the new folder landed and only clean-up was lost
    staging = re.compile(rf"^\.{re.escape(folder.name)}\.{_STAGING}[A-Za-z0-9_]{{8}}$")
    for path in folder.parent.iterdir():
        if staging.match(path.name) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


def write_error(folder: Path, what: str, exc: BaseException, needed: int | None = None) -> OutputError | None:
    """One line for a full disk or an unwritable folder met writing `what` into `folder`; None for other errors.

    The OSError may sit in the chain of another error (torch.save raises RuntimeError from it).
    """
    if isinstance(exc, HarnessError):
        return None  # already one line
    cause: BaseException | None = exc
    for _ in range(8):  # a chain is short; a cycle must not loop
        if cause is None or (isinstance(cause, OSError) and cause.errno in _DISK_FULL | _NOT_WRITABLE):
            break
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
    if not isinstance(cause, OSError) or cause.errno not in _DISK_FULL | _NOT_WRITABLE:
        return None
    kept = "what was there before is kept"
    if cause.errno in _NOT_WRITABLE:
        return OutputError(
            f"{what} {folder} cannot be written ({cause.strerror}); make it writable or choose another folder; {kept}"
        )
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
    need = f", it needs about {_size_text(needed)}" if needed else ""
    return OutputError(
        f"{what} {folder}: no space left on its disk ({_size_text(shutil.disk_usage(existing).free)} free{need}); "
        f"free some space or choose another folder; {kept}"
    )


@contextlib.contextmanager
def writing(folder: Path, what: str, needed: int | None = None) -> Iterator[None]:
    """Turn a full disk or an unwritable folder met in the block into one OutputError line (see write_error)."""
    try:
        yield
    except Exception as exc:
        error = write_error(folder, what, exc, needed)
        if error is None:
            raise
        raise error from None


def bytes_under(folder: Path) -> int:
    """The bytes of every file under `folder` (0 if it is gone)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _size_text(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


@contextlib.contextmanager
def replace_folder(target: str | os.PathLike[str], kind: str) -> Iterator[Path]:
    """Yield an empty staging folder that replaces `target` as a whole on success.

    `target` must be absent, empty, or a `kind` folder the harness wrote (else OutputError,
    before the block runs). Where the OS can exchange two paths atomically (Linux), readers see
    the old folder until the new one is in place; elsewhere the old one is renamed aside and
    put back by the next command if this one is killed before the new one lands.
    """
    target = absolute(target)
    with writing(target, f"the {kind} folder"), hold_folder(target):
        check_replaceable(target, kind)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.{_STAGING}", dir=target.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it 0700; the report folder should not be
        try:
            yield staging
            mark_folder(staging, kind)
            _swap(staging, target)
        except Exception as exc:
            # what it wrote before the disk filled, or the old folder if larger: about what it needs
            error = write_error(target, f"the {kind} folder", exc, max(bytes_under(staging), bytes_under(target)))
            if error is None:
                raise
            raise error from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _swap(staging: Path, target: Path) -> None:
    if not target.exists():
        os.rename(staging, target)
    elif exchange_paths(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # now holds the old folder
    else:
        retired = target.parent / f".{target.name}.{_RETIRED}"
        retired.mkdir()
        os.replace(target, retired / target.name)
        try:
            os.replace(staging, target)
        except OSError:
            os.replace(retired / target.name, target)
            retired.rmdir()
            raise
        shutil.rmtree(retired, ignore_errors=True)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange_paths(first: Path, second: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # the file system cannot exchange: fall back to two renames
    raise OSError(code, os.strerror(code), str(second))

"""The one progress-bar helper. Library code reports progress only through this."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

_enabled = True


def set_progress(enabled: bool) -> None:
    """Turn every bar off (--quiet) or on."""
    global _enabled
    _enabled = enabled


def progress_bar(total: int, desc: str, unit: str = "it", *, enabled: bool = True) -> tqdm:
    """A tqdm bar on stderr, off under --quiet or where `enabled` is False."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=not (_enabled and enabled),
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.5,
        leave=True,
    )

"""Chapter 6: files that survive a crash — atomic writes, checkpoints and the shipped weights.

A file is written to a temporary name beside its destination and renamed over it in one step, so a
reader (or a resumed run) sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write"]


def atomic_write(write: Callable[[Path], object], path: str | os.PathLike) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path`` atomically.

    The temporary name carries the process id, so two processes never write the same temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)  # atomic on POSIX and Windows: readers see the old file or the new one
    finally:
        tmp.unlink(missing_ok=True)

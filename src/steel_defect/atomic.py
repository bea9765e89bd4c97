"""Atomic file writes: output appears whole under its final name, or not at all.

A killed run must never leave a half-written CSV, config or checkpoint where a later
step would trust it, so writers go to a temporary file beside the target and rename.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from steel_defect.pause import hold, wanted


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_kwargs):
    """Open a temporary file next to ``path``; on success rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield _PausingWriter(handle) if wanted(f"write:{path.name}") else handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _PausingWriter:
    """A file that pauses (:mod:`steel_defect.pause`) after its first write reaches the disk."""

    def __init__(self, handle):
        self._handle = handle

    def write(self, data):
        written = self._handle.write(data)
        self._handle.flush()
        hold()
        return written

    def __getattr__(self, name):
        return getattr(self._handle, name)

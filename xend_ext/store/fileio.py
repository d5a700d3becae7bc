"""Small durable-file helpers shared by the journal and the snapshot writer."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_dir", "sync", "write_all"]

# fdatasync is enough for our files: it flushes the data and the metadata needed to read
# it back (the size), which is all an append or a whole-file write needs.
sync = getattr(os, "fdatasync", os.fsync)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """os.write until everything is written (a short write is legal for regular files)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_dir(path: str | Path) -> None:
    """Make a create, rename or unlink in ``path`` durable (the entry lives in the dir)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

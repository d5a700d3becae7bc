"""Errors of the store, kept apart so journal, snapshot and Store can all raise them."""

from __future__ import annotations

from pathlib import Path


class StoreError(Exception):
    """The state on disk cannot be read or written; the message names the file and cause."""


class StateDirLocked(StoreError):
    """Another server holds the state directory: two writers would corrupt each other."""

    def __init__(self, state_dir: str | Path, pid: int | None):
        self.state_dir = str(state_dir)
        self.pid = pid
        who = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(
            f"state directory {self.state_dir} is in use by another xend-ext server ({who}); "
            "stop that server or choose another --state-dir"
        )


class WriteRefused(StoreError):
    """A journal write failed and was taken back: nothing of it is on disk (a full disk, say).

    Every record after the last durable one is dropped; the store goes on, and the next write
    tries the disk again.
    """

    def __init__(self, path: str | Path, cause: str):
        self.path = str(path)
        self.cause = cause
        super().__init__(f"cannot write journal {self.path}: {cause}")

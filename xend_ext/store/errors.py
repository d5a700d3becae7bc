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


def _advice(path: Path) -> str:
    return (f"refusing to start rather than guess: `xend-ext fsck --state-dir {path.parent} --repair` keeps "
            "everything before the damage (a copy of the damaged file is kept aside), or restore the "
            "state directory from a backup")


class JournalDamaged(StoreError):
    """A journal record that cannot be trusted; the start is refused (``xend-ext fsck``)."""

    def __init__(self, path: Path, lineno: int, offset: int, seq: int, why: str):
        self.path, self.lineno, self.offset, self.seq, self.why = path, lineno, offset, seq, why
        super().__init__(f"journal {path} line {lineno} (record {seq}): {why}; {_advice(path)}")


class SnapshotDamaged(StoreError):
    """The snapshot does not match its checksum, or cannot be read as a state file."""

    def __init__(self, path: Path, why: str):
        self.path, self.why = path, why
        super().__init__(f"snapshot {path}: {why}; {_advice(path)}")

"""Where a start puts what it reads: each object of the snapshot, then each journal op.

The store streams the state into a sink instead of building it whole first, so a start holds
the sink's own form of the state plus one object being read.  The server's sink is the model
(:class:`xend_ext.model.Loader`); :class:`TableSink` keeps the store's encoded tables, for
``xend-ext fsck``, tools and tests.
"""

from __future__ import annotations

from typing import Protocol

from .journal import apply_op
from .schema import Classes
from .snapshot import Tables

__all__ = ["Sink", "TableSink"]


class Sink(Protocol):
    def row(self, cls: str, ref: str, fields: dict[str, object]) -> bool:
        """Take one object read from the snapshot (encoded values, fields possibly missing);
        False if an object with this ref was given already (the snapshot is damaged)."""

    def apply(self, op: tuple) -> None:
        """Apply one journal op, checked and decoded by :func:`.journal.decode_op`, as the
        model did when it wrote it; :class:`.journal.ReplayError` if it cannot be applied."""


class TableSink:
    """A sink that keeps the encoded tables: ``{class: {ref: {field: value}}}``."""

    def __init__(self, classes: Classes) -> None:
        self.tables: Tables = {cls: {} for cls in classes}

    def row(self, cls: str, ref: str, fields: dict[str, object]) -> bool:
        table = self.tables[cls]
        if ref in table:
            return False
        table[ref] = fields
        return True

    def apply(self, op: tuple) -> None:
        apply_op(self.tables, op)

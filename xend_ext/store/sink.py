"""Where a start puts what it reads: the snapshot's objects, then each journal op.

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

    def table(self, cls: str, refs: list[str], columns: dict[str, list]) -> bool:
        """Take a block of objects read from the snapshot: their refs, and for each field they have
        the column of their encoded values, in the same order (equal sets or maps of a block may be
        one object: copy one before changing it). False if a ref was given already, or twice."""

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

    def table(self, cls: str, refs: list[str], columns: dict[str, list]) -> bool:
        table = self.tables[cls]
        if len(set(refs)) != len(refs) or not table.keys().isdisjoint(refs):
            return False
        for k, ref in enumerate(refs):
            table[ref] = {name: _own(column[k]) for name, column in columns.items()}
        return True

    def apply(self, op: tuple) -> None:
        apply_op(self.tables, op)


def _own(value: object) -> object:
    """A set or map of its own (a block's equal values are shared), or the string."""
    return value if type(value) is str else type(value)(value)  # type: ignore[call-arg]

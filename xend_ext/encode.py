"""Records encoded once per version: the XML-RPC text of each object's record, kept until it changes.

``get_record``, ``get_all_records(_where)`` and the snapshots of events all write a record as
XML-RPC text; most of a big reply's cost was that encoding, repeated for objects that had not
changed. Here each object's text is made once and reused until the event hub reports a change of
the object (``EventHub.changed``: every mutation, ``db.touch`` for computed fields, and the
back-references a mutation moves). Computed fields declared ``volatile`` (they change without a
touch, e.g. the host's free memory) are read at every read and encoded after the cached part;
the last such record of each class is kept with the values it was made of, and given again while
they are the same (the host's record, read by every console, is then the same bytes each time).

Only what is read is cached, and only up to a budget of bytes: a large host that is read
whole keeps the first records that fit and encodes the rest at each read, rather than doubling
its memory. Objects of classes without events (sessions) are never cached, since no change of
theirs is reported. With ``XEND_EXT_CHECK_ENCODING=1`` every cached text is compared with a fresh
encoding when it is used, and a difference is an error naming the field (the tests run so).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .wire import Encoded, EncodedParts, dump_members, escape

if TYPE_CHECKING:
    from .datamodel import XenAPIClass
    from .model import Database, Obj

BUDGET = 64 << 20  # bytes of cached text, about 25,000 VM records

_OPEN = "<value><struct>"
_CLOSE = "</struct></value>"
_CLOSE_BYTES = _CLOSE.encode()


class StaleEncoding(RuntimeError):
    """A cached record differs from the object (a computed field changed without a touch)."""


class RecordCache:
    def __init__(self, budget: int = BUDGET) -> None:
        self.budget = budget
        self.size = 0
        self.entries: dict[str, Encoded] = {}  # ref -> text (the whole struct, or its cached part)
        self.encodings = 0  # records encoded, for the tests that count work
        self.check = os.environ.get("XEND_EXT_CHECK_ENCODING") == "1"
        self._split: dict[XenAPIClass, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        #: per class, the last record with volatile fields: (ref, cached part, their values, record)
        self._last: dict[XenAPIClass, tuple[str, Encoded, tuple, Encoded]] = {}

    def drop(self, ref: str) -> None:
        """The object changed (or is gone): its text is made again when next read."""
        text = self.entries.pop(ref, None)
        if text is not None:
            self.size -= len(text)

    def record(self, db: Database, obj: Obj) -> Encoded:
        cached, volatile = self._fields(obj.cls)
        text = self.entries.get(obj.ref)
        if text is None:
            text = self._encode(db, obj, cached, not volatile)
            if obj.cls.events and self.size + len(text) <= self.budget:
                self.entries[obj.ref] = text
                self.size += len(text)
        elif self.check:
            self._verify(db, obj, cached, text, not volatile)
        if not volatile:
            return text
        values = tuple([db.field_value(obj, name) for name in volatile])
        last = self._last.get(obj.cls)
        if last is not None and last[1] is text and last[0] == obj.ref and last[2] == values:
            return last[3]
        live = dump_members(zip(volatile, values, strict=True))
        whole = Encoded(b"".join((text, live.encode("utf-8"), _CLOSE_BYTES)))
        self._last[obj.cls] = (obj.ref, text, values, whole)
        return whole

    def records(self, db: Database, objs: Iterable[Obj]) -> EncodedParts:
        """The map ref -> record of these objects (get_all_records), in pieces joined once."""
        entries = self.entries
        parts = EncodedParts([b"<value><struct>"])
        extend = parts.extend
        cls, whole = None, False
        for obj in objs:
            if obj.cls is not cls:
                cls = obj.cls
                whole = not self._fields(cls)[1] and not self.check  # a cached text is the whole record
            text = entries.get(obj.ref) if whole else None
            if text is None:
                text = self.record(db, obj)
            extend((b"<member><name>%s</name>" % escape(obj.ref).encode("utf-8"), text, b"</member>"))
        parts.append(b"</struct></value>")
        return parts

    def _fields(self, cls: XenAPIClass) -> tuple[tuple[str, ...], tuple[str, ...]]:
        split = self._split.get(cls)
        if split is None:
            fields = cls.fields.values()
            split = self._split[cls] = (tuple(f.name for f in fields if not f.volatile),
                                        tuple(f.name for f in fields if f.volatile))
        return split

    def _encode(self, db: Database, obj: Obj, names: tuple[str, ...], whole: bool) -> Encoded:
        self.encodings += 1
        values = obj.values
        derived = obj.cls.derived_fields
        members = dump_members((name, db.field_value(obj, name) if name in derived else values[name])
                               for name in names)
        return Encoded((_OPEN + members + _CLOSE if whole else _OPEN + members).encode("utf-8"))

    def _verify(self, db: Database, obj: Obj, names: tuple[str, ...], text: bytes, whole: bool) -> None:
        self.encodings -= 1  # the check is not work the server would do
        fresh = self._encode(db, obj, names, whole)
        if fresh != text:
            changed = [name for name in names
                       if dump_members([(name, db.field_value(obj, name))]).encode("utf-8") not in text]
            raise StaleEncoding(f"the cached record of {obj.cls.name} {obj.ref} is stale in {', '.join(changed)}: "
                                "a computed field changed without db.touch (or declare it volatile)")


def encoded_record(db: Database, obj: Obj) -> Encoded:
    """The XML-RPC text of ``obj``'s record (``Database.record``), from the cache when unchanged."""
    return db.hub.records.record(db, obj)


def encoded_records(db: Database, objs: Iterable[Obj]) -> EncodedParts:
    """The XML-RPC text of the map ref -> record of ``objs`` (get_all_records)."""
    return db.hub.records.records(db, objs)

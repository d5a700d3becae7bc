"""The in-memory object model: the truth the server answers from.

Every mutation goes through :class:`Database`, which keeps the reverse references, writes the
journal record for persistent data and hands the change to the event hub. Handlers run on the
event loop one at a time between awaits, so a mutation never sees another half done.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import gc
import operator
import uuid as _uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from itertools import repeat
from typing import TYPE_CHECKING, Any

from .store.journal import ReplayError
from .types import BoolType, EnumType, IntType, MapType, RefType, SetType, StringType
from .wire import NULL_REF, REF_PREFIX, XenAPIError, strip_ref

if TYPE_CHECKING:
    from .datamodel import Registry, XenAPIClass
    from .events import EventHub
    from .store import Store


class Obj:
    __slots__ = ("cls", "ref", "values", "ctime", "mtime", "mts")

    def __init__(self, cls: XenAPIClass, ref: str, values: dict) -> None:
        self.cls = cls
        self.ref = ref
        self.values = values
        self.ctime = 0
        self.mtime = 0
        self.mts = 0.0  # wall-clock time of the last change: the events' timestamp

    @property
    def uuid(self) -> str:
        return self.values["uuid"]

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def __repr__(self) -> str:
        return f"<{self.cls.name} {self.ref}>"


CAPTURE_SLICE = 500  # objects encoded between two awaits of a capture


def new_uuid() -> str:
    return str(_uuid.uuid4())


class Change:
    """What one request (or one backend report) did to the persistent model.

    ``live`` once its backend step succeeded: what it records from then on mirrors the
    hypervisor and is kept if the journal cannot take it (``kept``; written later). ``undone``
    when some of its changes were taken back because the journal write failed.
    """

    __slots__ = ("live", "undone", "kept")

    def __init__(self, live: bool = False) -> None:
        self.live = live
        self.undone = False
        self.kept = False


#: The Change of the request running now (set by the dispatcher, one per request).
current_change: contextvars.ContextVar[Change | None] = contextvars.ContextVar("xend_ext_change", default=None)
_MISSING = object()


class Database:
    def __init__(self, registry: Registry, store: Store | None, hub: EventHub) -> None:
        self.registry = registry
        self.store = store
        self.hub = hub
        self.tables: dict[str, dict[str, Obj]] = {name: {} for name in registry.classes}
        self.by_ref: dict[str, Obj] = {}
        self.by_uuid_index: dict[tuple[str, str], Obj] = {}
        # reverse references: (source class, source field) -> target ref -> ordered source refs
        self.reverse: dict[tuple[str, str], dict[str, dict[str, None]]] = {}
        for cls in registry.classes.values():
            for f in cls.fields.values():
                # a back-reference to a class not (yet) declared is simply empty
                if f.reverse and f.reverse[0] in registry.classes:
                    self.reverse[f.reverse] = {}
        self._reverse_of = {cls.name: [(cls.name, name) for name in cls.fields if (cls.name, name) in self.reverse]
                            for cls in registry.classes.values()}
        # value indexes of the fields classes declare indexed: (class, field) -> value -> the ref of
        # the one object holding it, or an ordered dict of the refs of several (see _index_value)
        self.indexes: dict[tuple[str, str], dict[Any, str | dict[str, None]]] = {
            (cls.name, name): {} for cls in registry.classes.values() for name in cls.indexed}
        self._highest: dict[tuple[str, str], Any] = {}
        self.backend: Any = None  # computed fields read live facts through it
        self.host_uuid: str | None = None  # this server's host in a pool (xend_ext.hosts); None alone
        self.liveness: Any = None  # in a pool, which hosts hold their lease (xend_ext.cluster.liveness)
        self.last_seq = 0  # the newest journal record this model has written
        # (seq, op, inverse, change) of every record not yet known durable, to take back a write
        # the disk refused; ops kept then (they mirror the hypervisor) wait in ``relog``
        self.undo: deque[tuple[int, tuple, tuple, Change | None]] = deque()
        self.relog: list[tuple] = []
        self._capturing: dict[str, dict] | None = None  # ref -> encoded values before a change, while capturing
        # classes whose objects are made when asked unless held (XenAPIClass.unheld)
        self._unheld = {cls.name: cls.unheld for cls in registry.classes.values() if cls.unheld is not None}

    # -- loading -------------------------------------------------------------------------
    def load_from(self, store: Store) -> int:
        """Open the store into this (empty) model: every object of the snapshot becomes an object
        here as it is read, then the journal's records are applied to them (see :class:`Loader`).
        Returns the last seq; the store's errors pass through."""
        with _no_collection():
            return store.open_into(Loader(self))

    def load(self, tables: dict[str, dict[str, dict]]) -> None:
        """Rebuild objects from encoded tables (the store's :class:`~xend_ext.store.TableSink`)."""
        loader = Loader(self)
        with _no_collection():
            for cname, rows in tables.items():
                for ref, encoded in rows.items():
                    loader.row(cname, ref, encoded)

    def capture(self) -> tuple[Awaitable[dict[str, dict[str, dict]]], int]:
        """Encoded copy of every persistent object as of now (``last_seq``), for a snapshot.

        Returns at once; the copy is encoded in slices between awaits, so a large model never
        stops the loop for long. An object changed meanwhile is encoded as it was, just before
        its first change (see ``_before_change``): the copy is the state at the returned seq.
        """
        pending = [(cls, cls.stored_fields(), list(self.tables[cls.name].values()))
                   for cls in self.registry.classes.values() if cls.persist]
        before: dict[str, dict] = {}
        self._capturing = before
        return self._encode_all(pending, before), self.last_seq

    async def _encode_all(self, pending: list, before: dict[str, dict]) -> dict[str, dict[str, dict]]:
        out: dict[str, dict[str, dict]] = {}
        try:
            done = 0
            for cls, fields, objects in pending:
                table = out[cls.name] = {}
                for obj in objects:
                    old = before.get(obj.ref)
                    values = obj.values
                    table[obj.ref] = old if old is not None else {f.name: f.type.encode(values[f.name]) for f in fields}
                    done += 1
                    if done % CAPTURE_SLICE == 0:
                        await asyncio.sleep(0)
        finally:
            if self._capturing is before:
                self._capturing = None
        return out

    # -- reading -------------------------------------------------------------------------
    def all(self, cname: str) -> Iterable[Obj]:
        return list(self._objects(cname))

    def values(self, cname: str) -> Iterable[Obj]:
        """The objects of a class without copying them: do not change the table while iterating."""
        return self._objects(cname)

    def _objects(self, cname: str) -> Iterable[Obj]:
        unheld = self._unheld.get(cname)
        return self.tables[cname].values() if unheld is None else unheld.each(self)

    def first(self, cname: str) -> Obj | None:
        """The first object of a class (the host, the pool), or None."""
        return next(iter(self.tables[cname].values()), None)

    def find_by(self, cname: str, name: str, value: Any) -> list[Obj]:
        """The objects whose indexed field ``name`` is ``value`` (or, for a set, holds it)."""
        held = self.indexes[(cname, name)].get(value)
        if held is None:
            return []
        return [self.by_ref[held]] if isinstance(held, str) else [self.by_ref[r] for r in held]

    def highest(self, cname: str, name: str, default: Any) -> Any:
        """The largest value an indexed field has held since the model was loaded, or ``default``."""
        return self._highest.get((cname, name), default)

    def count(self, cname: str) -> int:
        unheld = self._unheld.get(cname)
        return len(self.tables[cname]) if unheld is None else unheld.count(self)

    def get(self, ref: str) -> Obj:
        """An object already checked by the dispatcher (params of a Ref type are resolved)."""
        obj = self.by_ref.get(ref)
        return obj if obj is not None else self._made(ref)

    def find(self, ref: str) -> Obj | None:
        obj = self.by_ref.get(ref)
        return obj if obj is not None or not self._unheld else self._made(ref)

    def _made(self, ref: str, cname: str | None = None) -> Obj | None:
        """An object of a class with unheld objects (``cname``'s or any), made as asked for."""
        for name, unheld in self._unheld.items():
            if cname is None or name == cname:
                obj = unheld.find(self, ref)
                if obj is not None:
                    return obj
        return None

    def lookup(self, cname: str, ref_or_uuid: str) -> Obj:
        obj = self.by_ref.get(ref_or_uuid)
        if obj is None and not ref_or_uuid.startswith(REF_PREFIX):
            obj = self.by_uuid_index.get((cname, ref_or_uuid))
        if obj is None and cname in self._unheld:
            obj = self._made(ref_or_uuid if ref_or_uuid.startswith(REF_PREFIX) else REF_PREFIX + ref_or_uuid, cname)
        if obj is None or obj.cls.name != cname:
            raise XenAPIError("HANDLE_INVALID", cname, ref_or_uuid)
        return obj

    def by_uuid(self, cname: str, uuid: str) -> Obj:
        obj = self.by_uuid_index.get((cname, strip_ref(uuid)))
        if obj is None and cname in self._unheld:
            obj = self._made(REF_PREFIX + strip_ref(uuid), cname)
        if obj is None:
            raise XenAPIError("UUID_INVALID", cname, uuid)
        return obj

    def field_value(self, obj: Obj, name: str) -> Any:
        f = obj.cls.fields[name]
        if f.reverse is not None:
            return list(self.reverse.get(f.reverse, {}).get(obj.ref, ()))
        if f.compute is not None:
            return f.compute(self, obj)
        return obj.values[name]

    def record(self, obj: Obj) -> dict:
        values = obj.values
        derived = obj.cls.derived_fields
        if not derived:
            return {name: values[name] for name in obj.cls.fields}
        return {name: (self.field_value(obj, name) if name in derived else values[name]) for name in obj.cls.fields}

    # -- mutating ------------------------------------------------------------------------
    def create(self, cname: str, values: dict, ref: str | None = None) -> Obj:
        cls = self.registry.classes[cname]
        values = dict(values)
        uuid = values.get("uuid") or new_uuid()
        values["uuid"] = uuid
        for f in cls.fields.values():
            if not f.derived and f.name not in values:
                values[f.name] = f.make_default()
        obj = Obj(cls, ref or REF_PREFIX + uuid, values)
        if (cname, uuid) in self.by_uuid_index or obj.ref in self.by_ref:
            raise XenAPIError("INTERNAL_ERROR", f"duplicate {cname} {uuid}")
        self._insert(obj)
        if cls.persist:
            encoded = {f.name: f.type.encode(values[f.name]) for f in cls.stored_fields()}
            self._journal(("create", cname, obj.ref, encoded), ("uncreate", obj))
        self._changed(obj, "add")
        for key in self._reverse_keys(cls):
            self._touch_targets(values[key[1]])
        return obj

    def destroy(self, obj: Obj) -> None:
        cls = obj.cls
        self._check_live(obj)
        if cls.name not in self._unheld or self.by_ref.get(obj.ref) is obj:
            self._remove(obj)
        if cls.persist:
            self._journal(("destroy", cls.name, obj.ref), ("undestroy", obj))
        self._changed(obj, "del")
        for key in self._reverse_keys(cls):
            self._touch_targets(obj.values[key[1]])

    def set(self, obj: Obj, name: str, value: Any) -> None:
        old = obj.values[name]
        if old == value:
            return
        f = obj.cls.fields[name]
        self._check_live(obj)
        reverse_key = self._put(obj, name, old, value)
        if obj.cls.persist and f.persist:
            self._journal(("set", obj.cls.name, obj.ref, name, f.type.encode(value)), ("set", obj, name, old))
        self._changed(obj, "mod")
        if reverse_key in self.reverse:
            self._touch_targets(old)
            self._touch_targets(value)

    def map_add(self, obj: Obj, name: str, key: Any, value: Any) -> None:
        f = obj.cls.fields[name]
        self._check_live(obj)
        held = obj.values[name]
        if not held:  # an empty map may be the one that loaded objects share (see load)
            held = obj.values[name] = {}
        old = held.get(key, _MISSING)
        held[key] = value
        if obj.cls.persist and f.persist:
            self._journal(("map_add", obj.cls.name, obj.ref, name, f.type.key.encode(key), f.type.value.encode(value)),
                          ("map", obj, name, key, old))
        self._changed(obj, "mod")

    def map_remove(self, obj: Obj, name: str, key: Any) -> None:
        f = obj.cls.fields[name]
        self._check_live(obj)
        old = obj.values[name].pop(key)
        if obj.cls.persist and f.persist:
            self._journal(("map_remove", obj.cls.name, obj.ref, name, f.type.key.encode(key)),
                          ("map", obj, name, key, old))
        self._changed(obj, "mod")

    def set_add(self, obj: Obj, name: str, item: Any) -> None:
        self.set(obj, name, [*obj.values[name], item])

    def set_remove(self, obj: Obj, name: str, item: Any) -> None:
        self.set(obj, name, [v for v in obj.values[name] if v != item])

    def touch(self, obj: Obj) -> None:
        """Announce a change of computed fields (live state the backend reported)."""
        self._changed(obj, "mod")

    def made(self, obj: Obj) -> None:
        """Announce a new object of a class with unheld objects, made when asked, not held."""
        self._changed(obj, "add")

    def hold(self, obj: Obj) -> None:
        """Keep an object of a class with unheld objects (one whose live state changes often);
        no event: the object was there already, made when asked."""
        if self.by_ref.get(obj.ref) is None:
            self._insert(obj)

    def release(self, obj: Obj) -> None:
        """Stop keeping an object :meth:`hold` kept: it is made when asked again (no event)."""
        if self.by_ref.get(obj.ref) is obj:
            self._remove(obj)

    def apply_remote(self, loader: Loader, cname: str, ref: str, encoded: dict | None) -> None:
        """An object as another server of the pool wrote it (None: destroyed there): made,
        changed or removed here, with its events; nothing is journalled (xend_ext.cluster).
        Its events wait for nothing of this server's: a refused write here never takes them back."""
        seq = self.hub.durable_seq
        obj = self.by_ref.get(ref)
        if encoded is None or obj is None:
            if encoded is None:
                if obj is None:
                    return
                self._remove(obj)
            else:
                loader.row(cname, ref, encoded)
                obj = self.by_ref[ref]
            self._changed(obj, "add" if encoded is not None else "del", seq)
            for key in self._reverse_keys(obj.cls):
                self._touch_targets(obj.values[key[1]], seq)
            return
        moved = []  # the old and new values of reference fields that changed
        for name, value in loader.decode(cname, encoded).items():
            old = obj.values[name]
            if old != value and self._put(obj, name, old, value) in self.reverse:
                moved += [old, value]
        self._changed(obj, "mod", seq)
        for target in moved:
            self._touch_targets(target, seq)

    # -- taking back what the journal refused ---------------------------------------------
    def durable(self, seq: int) -> None:
        """Records up to ``seq`` are on disk: they can no longer be taken back."""
        undo = self.undo
        while undo and undo[0][0] <= seq:
            undo.popleft()

    def rollback(self, durable_seq: int) -> set[Obj]:
        """The journal refused every record after ``durable_seq``: undo them, newest first.

        Records of a change whose backend step succeeded (``Change.live``) mirror the hypervisor
        and are kept; their ops wait in ``relog`` to be written first when the disk takes writes
        again. Returns the objects whose every unwritten change was undone (no event for them).
        """
        undone: set[Obj] = set()
        kept: set[Obj] = set()
        kept_fields: set[tuple[str, str]] = set()
        relog: list[tuple] = []
        while self.undo and self.undo[-1][0] > durable_seq:
            _seq, op, inverse, change = self.undo.pop()
            obj = inverse[1]
            if change is not None and change.live:
                change.kept = True
                relog.append(op)
                kept.add(obj)
                if op[0] in ("set", "map_add", "map_remove"):
                    kept_fields.add((op[2], op[3]))
                continue
            if change is not None:
                change.undone = True
            undone.add(obj)
            kind = inverse[0]
            if kind == "uncreate":
                self._remove(obj)
                relog = [o for o in relog if o[2] != obj.ref]
                undone.update(self._targets(obj))
            elif kind == "undestroy":
                self._insert(obj)
                undone.update(self._targets(obj))
            elif (obj.ref, inverse[2]) in kept_fields:
                continue  # a later change that mirrors the hypervisor wins
            elif kind == "set":
                undone.update(self._targets(obj, inverse[2]))
                self._put(obj, inverse[2], obj.values[inverse[2]], inverse[3])
                undone.update(self._targets(obj, inverse[2]))
            elif inverse[4] is _MISSING:
                obj.values[inverse[2]].pop(inverse[3], None)
            else:
                obj.values[inverse[2]][inverse[3]] = inverse[4]
        relog.reverse()
        self.relog = relog + self.relog
        self.last_seq = durable_seq
        return undone - kept

    def write_relog(self) -> None:
        """Journal again the kept records of a refused write (before anything newer)."""
        relog, self.relog = self.relog, []
        for op in relog:
            seq = self.store.append(op)
            self.last_seq = seq
            self.undo.append((seq, op, ("relog", self.by_ref.get(op[2])), _KEEP))

    # -- internals -----------------------------------------------------------------------
    def _journal(self, op: tuple, inverse: tuple) -> None:
        if self.store is not None:
            if self.relog:
                self.write_relog()
            self.last_seq = seq = self.store.append(op)
            self.undo.append((seq, op, inverse, current_change.get()))

    def _check_live(self, obj: Obj) -> None:
        """Before a change: an object taken back meanwhile (or destroyed) must not reach the
        journal; a capture in progress keeps the values it had."""
        if obj.cls.persist:
            if self.by_ref.get(obj.ref) is not obj:
                raise XenAPIError("HANDLE_INVALID", obj.cls.name, obj.ref)
            if self._capturing is not None and obj.ref not in self._capturing:
                self._capturing[obj.ref] = {f.name: f.type.encode(obj.values[f.name]) for f in obj.cls.stored_fields()}

    def _put(self, obj: Obj, name: str, old: Any, value: Any) -> tuple[str, str]:
        reverse_key = (obj.cls.name, name)
        if reverse_key in self.reverse:
            self._unindex(reverse_key, obj.ref, old)
            self._index(reverse_key, obj.ref, value)
        if reverse_key in self.indexes:
            self._unindex_value(reverse_key, obj.ref, old)
            self._index_value(reverse_key, obj.ref, value)
        obj.values[name] = value
        return reverse_key

    def _targets(self, obj: Obj, name: str | None = None) -> list[Obj]:
        """The objects whose back-references ``obj`` (or its field ``name``) points at."""
        keys = self._reverse_keys(obj.cls) if name is None else [(obj.cls.name, name)]
        found = []
        for key in keys:
            if key in self.reverse:
                found += [t for t in map(self.by_ref.get, _refs(obj.values[key[1]])) if t is not None]
        return found

    def _changed(self, obj: Obj, op: str, seq: int | None = None) -> None:
        """Tell the event hub; its event waits until record ``seq`` (default: the last) is durable."""
        if obj.cls.events:
            self.hub.changed(obj, op, self.last_seq if seq is None else seq)

    def _insert(self, obj: Obj) -> None:
        self.tables[obj.cls.name][obj.ref] = obj
        self.by_ref[obj.ref] = obj
        self.by_uuid_index[(obj.cls.name, obj.values["uuid"])] = obj
        for key in self._reverse_keys(obj.cls):
            self._index(key, obj.ref, obj.values[key[1]])
        for name in obj.cls.indexed:
            self._index_value((obj.cls.name, name), obj.ref, obj.values[name])

    def _insert_block(self, cls: XenAPIClass, objs: list[Obj], column: Callable[[str], list]) -> None:
        """:meth:`_insert` for new objects of one class at once (loading); ``column(name)`` is their
        values of field ``name``, in order."""
        cname = cls.name
        refs = [obj.ref for obj in objs]
        placed = dict(zip(refs, objs, strict=True))
        self.tables[cname].update(placed)
        self.by_ref.update(placed)
        self.by_uuid_index.update(zip(zip(repeat(cname), column("uuid"), strict=False), objs, strict=True))
        for key in self._reverse_keys(cls):
            self._index_many(key, zip(refs, column(key[1]), strict=True))
        for name in cls.indexed:
            key, values = (cname, name), column(name)
            index = self.indexes[key]
            if (isinstance(cls.fields[name].type, (StringType, EnumType, RefType)) and len(set(values)) == len(values)
                    and index.keys().isdisjoint(values)):
                index.update(zip(values, refs, strict=True))  # each value held by one object (a uuid, a ref)
            else:
                self._index_values(key, zip(refs, values, strict=True))

    def _remove(self, obj: Obj) -> None:
        del self.tables[obj.cls.name][obj.ref]
        del self.by_ref[obj.ref]
        del self.by_uuid_index[(obj.cls.name, obj.values["uuid"])]
        for key in self._reverse_keys(obj.cls):
            self._unindex(key, obj.ref, obj.values[key[1]])
        for name in obj.cls.indexed:
            self._unindex_value((obj.cls.name, name), obj.ref, obj.values[name])

    def _reverse_keys(self, cls: XenAPIClass) -> list[tuple[str, str]]:
        return self._reverse_of[cls.name]

    def _index(self, key: tuple[str, str], source: str, target: Any) -> None:
        self._index_many(key, ((source, target),))

    def _index_many(self, key: tuple[str, str], pairs: Iterable[tuple[str, Any]]) -> None:
        """Back-references from each (source, target) pair: a target is a ref or a list of refs."""
        index = self.reverse[key]
        for source, target in pairs:
            if type(target) is str:  # _refs(target), without a call for the usual one ref
                if target and target != NULL_REF:
                    index.setdefault(target, {})[source] = None
            else:
                for t in target:
                    if t != NULL_REF:
                        index.setdefault(t, {})[source] = None

    def _unindex(self, key: tuple[str, str], source: str, target: Any) -> None:
        index = self.reverse[key]
        for t in _refs(target):
            sources = index.get(t)
            if sources is not None:
                sources.pop(source, None)
                if not sources:
                    del index[t]

    # a value held by one object maps to its ref, by several to an ordered dict of refs (most are one)
    def _index_value(self, key: tuple[str, str], source: str, value: Any) -> None:
        self._index_values(key, ((source, value),))

    def _index_values(self, key: tuple[str, str], pairs: Iterable[tuple[str, Any]]) -> None:
        """Index each (source, value) pair: a value, or each item of a list."""
        index = self.indexes[key]
        for source, value in pairs:
            for v in value if isinstance(value, list) else (value,):
                held = index.get(v)
                if held is None:
                    index[v] = source
                elif isinstance(held, dict):
                    held[source] = None
                elif held != source:
                    index[v] = {held: None, source: None}
                if isinstance(v, int) and v > self._highest.get(key, v - 1):
                    self._highest[key] = v

    def _unindex_value(self, key: tuple[str, str], source: str, value: Any) -> None:
        index = self.indexes[key]
        for v in value if isinstance(value, list) else (value,):
            held = index.get(v)
            if held == source:
                del index[v]
            elif isinstance(held, dict):
                held.pop(source, None)
                if len(held) == 1:
                    index[v] = next(iter(held))

    def _touch_targets(self, target: Any, seq: int | None = None) -> None:
        for t in _refs(target):
            obj = self.by_ref.get(t)
            if obj is not None:
                self._changed(obj, "mod", seq)


# what loaded objects with an empty map or set hold, all of them the same one: sets are never changed
# in place (set_add makes a new list), and map_add writes into a fresh dict when the map is empty
_EMPTY_MAP: dict = {}
_EMPTY_SET: list = []


def _default(f: Any) -> Any:
    return f.make_default() if f.default is not None else f.type.fresh_default()


@contextlib.contextmanager
def _no_collection() -> Iterator[None]:
    """Loading makes no garbage, only objects: the collector's passes would be wasted."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


class Loader:
    """The sink a start fills the model through (``Store.open_into``, see xend_ext.store.sink).

    Each object of the snapshot becomes an :class:`Obj` as it is read, and each journal op after
    it is applied to the objects (not to an encoded copy), so a start never holds the store's
    form of the whole state beside the model.  Fields added since the state was written get their
    default. Equal strings and numbers met become one object (a ref and every field naming it, an
    enum value in every object that has it), and empty maps and sets are one shared object, so a
    large model holds each once.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.share = share = _Sharing()
        # class -> (class, stored field names, their decoders, {field: decoder}, {field: decoder of a map's
        # key and value, or of a set's item})
        self.plans: dict[str, tuple[XenAPIClass, tuple[str, ...], tuple, dict[str, Any], dict[str, Any]]] = {}
        for cls in db.registry.classes.values():
            if not cls.persist:
                continue  # what an older version stored of it is dropped (XenAPIClass.stored_before)
            fields = [f for f in cls.fields.values() if not f.derived]
            decoders = tuple(share.decoder(f.type) for f in fields)
            names = tuple(f.name for f in fields)
            self.plans[cls.name] = (cls, names, decoders, dict(zip(names, decoders, strict=True)),
                                    {f.name: share.parts(f.type) for f in fields})
        self.rows = 0  # objects made from rows and create ops (the complexity tests count them)

    def row(self, cname: str, ref: str, encoded: dict) -> bool:
        if cname not in self.plans:
            return True  # a class whose objects this version does not store
        if ref in self.db.tables[cname]:
            return False
        self._add(cname, ref, encoded)
        return True

    def table(self, cname: str, refs: list[str], columns: dict[str, list]) -> bool:
        """A block of objects (see Sink.table), decoded a column at a time and inserted together."""
        if cname not in self.plans:
            return True
        db = self.db
        if len(set(refs)) != len(refs) or not db.tables[cname].keys().isdisjoint(refs):
            return False
        cls, names, _, _, _ = self.plans[cname]
        decoded = []
        for name in names:
            encoded = columns.get(name)
            f = cls.fields[name]
            decoded.append(self.share.column(f.type, encoded) if encoded is not None else [_default(f) for _ in refs])
        count = len(refs)
        rows = zip(*decoded, strict=True)  # each object's values, in the order of names
        objs = list(map(Obj, repeat(cls, count), refs, map(dict, map(zip, repeat(names, count), rows))))
        generation = db.hub.generation  # changed "at boot", as in _add
        for obj in objs:
            obj.ctime = obj.mtime = generation
        by_name = dict(zip(names, decoded, strict=True))
        db._insert_block(cls, objs, by_name.__getitem__)
        self.rows += count
        return True

    def decode(self, cname: str, encoded: dict) -> dict:
        """The field values of an object from their stored (encoded) form."""
        cls, names, decoders, _, _ = self.plans[cname]
        try:  # {name: decode(encoded[name])}, the loop in C
            return dict(zip(names, map(operator.call, decoders, map(encoded.__getitem__, names)), strict=True))
        except KeyError:  # a field added since the state was written: its default
            return {name: decode(encoded[name]) if name in encoded else _default(cls.fields[name])
                    for name, decode in zip(names, decoders, strict=True)}

    def _add(self, cname: str, ref: str, encoded: dict) -> None:
        cls = self.plans[cname][0]
        obj = Obj(cls, self.share.text(ref), self.decode(cname, encoded))
        # changed "at boot" as far as events know: a token from before the restart, or "", gets
        # every object (we keep no per-object history across restarts)
        obj.ctime = obj.mtime = self.db.hub.generation
        self.db._insert(obj)
        self.rows += 1

    def apply(self, op: tuple) -> None:
        """One journal op, as :meth:`Database` made it (but without journal, undo or events)."""
        name, cname, ref = op[0], op[1], op[2]
        plan = self.plans.get(cname)
        if plan is None:
            return  # a class whose objects this version does not store
        db = self.db
        obj = db.tables[cname].get(ref)
        if name == "set" and obj is not None:  # the usual record, straight to the field
            fname = op[3]
            db._put(obj, fname, obj.values[fname], plan[3][fname](op[4]))
            return
        if name == "create":
            if obj is not None:
                raise ReplayError(f"create of {cname} {ref}, which already exists")
            self._add(cname, ref, op[3])
            return
        if name == "destroy":
            if obj is not None:
                db._remove(obj)
            return
        if obj is None:
            raise ReplayError(f"{name} on {cname} {ref}, which does not exist")
        fname = op[3]
        _, _, _, whole, parts = plan
        decode = parts[fname]
        old = obj.values[fname]
        if name == "set":
            new = whole[fname](op[4])
        elif name == "map_add":
            new = {**old, decode[0](op[4]): decode[1](op[5])}
        elif name == "map_remove":
            new = dict(old)
            new.pop(decode[0](op[4]), None)
        else:
            item = decode(op[4])
            if (item in old) == (name == "set_add"):
                return
            new = [*old, item] if name == "set_add" else [v for v in old if v != item]
        db._put(obj, fname, old, new)


class _Sharing:
    """Decoders for loading that give equal strings and ints as one object (C-level caches): the
    first of equal strings read is the one kept, and only it is in the cache (as key and value)."""

    def __init__(self) -> None:
        self.text = functools.lru_cache(maxsize=None)(str)
        self.int = functools.lru_cache(maxsize=None)(int)

    def decoder(self, t: Any) -> Callable[[Any], Any]:
        if isinstance(t, SetType):
            item = self.decoder(t.item)
            return lambda texts: list(map(item, texts)) if texts else _EMPTY_SET
        if isinstance(t, MapType):
            key, value = self.decoder(t.key), self.decoder(t.value)
            return lambda texts: {key(k): value(v) for k, v in texts.items()} if texts else _EMPTY_MAP
        if isinstance(t, (StringType, EnumType, RefType)):
            return self.text
        if isinstance(t, IntType):
            return self.int
        if isinstance(t, BoolType):
            return "true".__eq__
        return t.decode

    def column(self, t: Any, column: list) -> list:
        """:meth:`decoder` over a column of a snapshot block (see Sink.table): equal strings and
        ints once per column (a mostly distinct string column is kept as read), sets shared as the
        block shares them (a set is never changed in place), maps each of its own."""
        if isinstance(t, (StringType, EnumType, RefType)):
            distinct = set(column)
            if 2 * len(distinct) > len(column):
                return column
            canon = {v: self.text(v) for v in distinct}
            return list(map(canon.__getitem__, column))
        if isinstance(t, IntType):
            canon = {v: self.int(v) for v in set(column)}
            return list(map(canon.__getitem__, column))
        if isinstance(t, BoolType):
            return list(map("true".__eq__, column))
        if isinstance(t, (SetType, MapType)):  # each distinct object of the block decoded once
            decode = self.decoder(t)
            made = {key: decode(value) for key, value in dict(zip(map(id, column), column, strict=True)).items()}
            decoded = list(map(made.__getitem__, map(id, column)))
            return [dict(m) if m else m for m in decoded] if isinstance(t, MapType) else decoded
        return list(map(t.decode, column))

    def parts(self, t: Any) -> Any:
        """What the ops on one entry of a field of type ``t`` decode: a map's key and value, a
        set's item (None for a scalar)."""
        if isinstance(t, MapType):
            return self.decoder(t.key), self.decoder(t.value)
        return self.decoder(t.item) if isinstance(t, SetType) else None


_KEEP = Change(live=True)


def _refs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [] if value == NULL_REF or not value else [value]
    return [v for v in value if v != NULL_REF]

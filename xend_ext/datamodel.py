"""Declarations of Xen-API classes, and everything generic derived from them.

A class module in ``xenapi_classes/`` builds one :class:`XenAPIClass` with its fields and its
own messages. The accessors (``get_<f>``, ``set_<f>``, map and set editors), the record calls,
``get_all_records_where``, ``create``/``destroy``, the role checks and the events are derived here
from those declarations; no code is written per field.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import TYPE_CHECKING, Any

from . import types as T
from .encode import encoded_record, encoded_records
from .wire import XenAPIError

if TYPE_CHECKING:
    from .dispatch import Context
    from .model import Database, Obj

# Roles, least privileged first: a message names its minimum role.
ROLES = ("read-only", "vm-operator", "pool-admin")
READ_ONLY, VM_OPERATOR, POOL_ADMIN = ROLES

# Field qualifiers, as in XAPI's datamodel.
RW = "RW"  # given at create, changed by set_<f>
STATIC_RO = "StaticRO"  # given at create, never changed by a client
RO = "DynamicRO"  # maintained by the server

REQUIRED = object()  # a create record must give this field

#: The doc of the fields many classes have, unless a class says more.
COMMON_DOCS = {
    "name_label": "a short name",
    "name_description": "a longer description",
    "other_config": "free-form pairs for clients; the server does not read them",
}


def role_rank(role: str) -> int:
    return ROLES.index(role)


@dataclass
class Field:
    name: str
    type: T.Type
    qualifier: str = RO
    default: Any = None  # None: the type's default; a callable: called with no argument
    doc: str = ""
    validate: Callable[[Context, Obj | None, Any], None] | None = None
    persist: bool = True
    reverse: tuple[str, str] | None = None  # computed: refs of <class> objects whose <field> names me
    compute: Callable[[Database, Obj], Any] | None = None  # computed from other state at read time
    # a computed field that changes without the object being touched (db.touch): never cached
    volatile: bool = False
    set_role: str | None = None
    index: bool = False  # the model keeps value -> objects, for Database.find_by (name_label always)

    @property
    def derived(self) -> bool:
        return self.reverse is not None or self.compute is not None

    @property
    def writable(self) -> bool:
        return self.qualifier == RW and not self.derived

    @property
    def in_constructor(self) -> bool:
        return self.qualifier in (RW, STATIC_RO) and not self.derived

    def make_default(self) -> Any:
        if self.default is REQUIRED:
            raise XenAPIError("VALUE_NOT_SUPPORTED", self.name, "", "required: the record must give this field")
        if self.default is None:
            return self.type.fresh_default()
        return self.default() if callable(self.default) else self.default


@dataclass
class Param:
    name: str
    type: T.Type
    default: Any = REQUIRED
    doc: str = ""


@dataclass
class Message:
    name: str
    params: list[Param]
    result: T.Type | None
    impl: Callable[..., Any]
    role: str = READ_ONLY
    doc: str = ""
    errors: tuple[str, ...] = ()
    session: bool = True  # False only for the login calls
    async_ok: bool = True  # accessors are sync-only, like in XAPI
    capability: str | None = None  # backend capability the message needs
    raw_reply: bool = False  # system.* replies are not wrapped in the Xen-API envelope
    is_async_impl: bool = dc_field(init=False, default=False)
    # in a pool, (db, args) -> the host to make the call when its object is on another one (xend_ext.forward)
    route: Callable[[Any, list], str | None] | None = dc_field(init=False, default=None)

    def __post_init__(self) -> None:
        self.is_async_impl = inspect.iscoroutinefunction(self.impl)
        self.required = sum(1 for p in self.params if p.default is REQUIRED)


class XenAPIClass:
    """One Xen-API class: its fields, its messages, and what the server derives for it."""

    def __init__(
        self,
        name: str,
        doc: str,
        fields: list[Field],
        *,
        default_role: str = POOL_ADMIN,
        persist: bool = True,
        stored_before: bool = False,
        events: bool = True,
        creatable: bool = False,
        destroyable: bool = False,
        generic: bool = True,
    ) -> None:
        self.name = name
        self.doc = doc
        self.default_role = default_role
        self.persist = persist
        # objects older versions stored: the store still reads them, the model drops them
        self.stored_before = stored_before
        self.events = events
        self.creatable = creatable
        self.destroyable = destroyable
        self.generic = generic
        self.fields: dict[str, Field] = {"uuid": Field("uuid", T.String, RO, doc="unique identifier")}
        for f in fields:
            f.doc = f.doc or COMMON_DOCS.get(f.name, "")
            self.fields[f.name] = f
        self.messages: dict[str, Message] = {}
        # hooks a class module may set: who may see an object (default: everybody), and what
        # runs inside the generic create/destroy
        self.visible: Callable[[Context, Obj], bool] | None = None
        self.on_create: Callable[[Context, dict], None] | None = None
        self.after_create: Callable[[Context, Obj], None] | None = None
        self.on_destroy: Callable[[Context, Obj], None] | None = None
        # who may change an object through the generic setters and destroy (default: the role
        # check alone); raises RBAC_PERMISSION_DENIED to refuse
        self.changeable: Callable[[Context, Obj, str], None] | None = None
        # objects the model does not hold but makes when asked (see Database.find): an object
        # with find(db, ref), each(db) (every object, held or not) and count(db)
        self.unheld: Any = None
        self._custom: dict[str, Message] = {}

    # -- declaration helpers -------------------------------------------------------------
    def message(
        self,
        *params: tuple,
        result: T.Type | None = None,
        role: str | None = None,
        name: str | None = None,
        errors: tuple[str, ...] = (),
        session: bool = True,
        async_ok: bool = True,
        capability: str | None = None,
        raw_reply: bool = False,
    ) -> Callable:
        """Decorator declaring a message; ``params`` are ``(name, type)`` or ``(name, type, default)``."""

        def register(fn: Callable) -> Callable:
            msg = Message(
                name=name or fn.__name__,
                params=[Param(*p) for p in params],
                result=result,
                impl=fn,
                role=role or self.default_role,
                doc=(fn.__doc__ or "").strip(),
                errors=errors,
                session=session,
                async_ok=async_ok,
                capability=capability,
                raw_reply=raw_reply,
            )
            self._custom[msg.name] = msg
            return fn

        return register

    def declared(self, name: str) -> bool:
        """Whether the class declares message ``name`` itself (not one derived from its fields)."""
        return name in self._custom

    def visible_objects(self, ctx: Context) -> list[Obj]:
        objs = ctx.db.all(self.name)
        return objs if self.visible is None else [o for o in objs if self.visible(ctx, o)]

    def readable(self, ctx: Context, ref: str, message: str) -> Obj:
        obj = ctx.db.get(ref)
        if self.visible is not None and not self.visible(ctx, obj):
            raise XenAPIError("RBAC_PERMISSION_DENIED", f"{self.name}.{message}".lower(),
                              f"this {self.name} is not yours to read")
        return obj

    @property
    def has_name_label(self) -> bool:
        return "name_label" in self.fields

    def stored_fields(self) -> list[Field]:
        return [f for f in self.fields.values() if not f.derived and f.persist]

    # -- derivation ----------------------------------------------------------------------
    def build(self) -> None:
        """Derive the generic messages, then let the class's own declarations override them."""
        self.derived_fields = frozenset(f.name for f in self.fields.values() if f.derived)
        # stored fields the model indexes by value (each item of a set): find_by, unique names, filters
        self.indexed = tuple(f.name for f in self.fields.values()
                             if (f.index or f.name == "name_label") and not f.derived
                             and not isinstance(f.type, T.MapType))
        self.messages = {}
        if self.generic:
            self._derive_generic()
        self.messages.update(self._custom)

    def _add(self, name: str, params: list[tuple], result, impl, role: str, doc: str, async_ok=False) -> None:
        self.messages[name] = Message(
            name, [Param(*p) for p in params], result, impl, role=role, doc=doc, async_ok=async_ok
        )

    def _derive_generic(self) -> None:
        cls = self.name
        me = T.Ref(cls)
        self._add("get_all", [], T.Set(me), lambda ctx: [o.ref for o in self.visible_objects(ctx)], READ_ONLY,
                  f"every {cls}")
        self._add("get_all_records", [], T.Map(me, T.Struct),
                  lambda ctx: encoded_records(ctx.db, self.visible_objects(ctx)), READ_ONLY,
                  f"every {cls} with its record")
        self._add("get_all_records_where", [("expr", T.String)], T.Map(me, T.Struct),
                  lambda ctx, expr: _records_where(ctx, self, expr), READ_ONLY,
                  f"the {cls} objects for which expr (XAPI's filter language) holds")
        self._add("get_record", [("self", me)], T.Struct,
                  lambda ctx, ref: encoded_record(ctx.db, self.readable(ctx, ref, "get_record")), READ_ONLY,
                  "the whole record")
        self._add("get_by_uuid", [("uuid", T.String)], me,
                  lambda ctx, uuid: self.readable(ctx, ctx.db.by_uuid(cls, uuid).ref, "get_by_uuid").ref,
                  READ_ONLY, "the object with this uuid")
        if self.has_name_label:
            self._add("get_by_name_label", [("label", T.String)], T.Set(me),
                      lambda ctx, label: [o.ref for o in ctx.db.find_by(cls, "name_label", label)
                                          if self.visible is None or self.visible(ctx, o)],
                      READ_ONLY, "every object with this name_label")
        for f in self.fields.values():
            self._derive_field(f, me)
        if self.creatable:
            self._add("create", [("args", T.Struct)], me, lambda ctx, rec: generic_create(ctx, self, rec),
                      self.default_role, f"a new {cls} from a record", async_ok=True)
        if self.destroyable:
            self._add("destroy", [("self", me)], None, lambda ctx, ref: generic_destroy(ctx, self, ref),
                      self.default_role, f"destroy the {cls}", async_ok=True)

    def _derive_field(self, f: Field, me: T.Type) -> None:
        fname = f.name
        self._add(f"get_{fname}", [("self", me)], f.type,
                  lambda ctx, ref: ctx.db.field_value(self.readable(ctx, ref, f"get_{fname}"), fname), READ_ONLY,
                  f"the {fname} field")
        if not f.writable:
            return
        role = f.set_role or self.default_role
        self._add(f"set_{fname}", [("self", me), ("value", f.type)], None,
                  lambda ctx, ref, value: generic_set(ctx, self, ref, f, value), role, f"set the {fname} field")
        if isinstance(f.type, T.MapType):
            kt, vt = f.type.key, f.type.value
            self._add(f"add_to_{fname}", [("self", me), ("key", kt), ("value", vt)], None,
                      lambda ctx, ref, k, v: generic_map_add(ctx, self, ref, f, k, v), role,
                      f"add a key to {fname}")
            self._add(f"remove_from_{fname}", [("self", me), ("key", kt)], None,
                      lambda ctx, ref, k: generic_map_remove(ctx, self, ref, f, k), role,
                      f"remove a key from {fname} (nothing if absent)")
        elif isinstance(f.type, T.SetType):
            it = f.type.item
            self._add(f"add_{fname}", [("self", me), ("value", it)], None,
                      lambda ctx, ref, v: generic_set_add(ctx, self, ref, f, v), role,
                      f"add a value to {fname} (nothing if present)")
            self._add(f"remove_{fname}", [("self", me), ("value", it)], None,
                      lambda ctx, ref, v: generic_set_remove(ctx, self, ref, f, v), role,
                      f"remove a value from {fname} (nothing if absent)")


# -- generic message bodies -------------------------------------------------------------

def _validate(ctx: Context, f: Field, obj: Obj | None, value: Any) -> None:
    if f.validate is not None:
        f.validate(ctx, obj, value)


def _to_change(ctx: Context, cls: XenAPIClass, ref: str, message: str) -> Obj:
    obj = ctx.db.get(ref)
    if cls.changeable is not None:
        cls.changeable(ctx, obj, message)
    return obj


def generic_set(ctx: Context, cls: XenAPIClass, ref: str, f: Field, value: Any) -> None:
    obj = _to_change(ctx, cls, ref, f"set_{f.name}")
    _validate(ctx, f, obj, value)
    ctx.db.set(obj, f.name, value)


def generic_map_add(ctx: Context, cls: XenAPIClass, ref: str, f: Field, key: Any, value: Any) -> None:
    obj = _to_change(ctx, cls, ref, f"add_to_{f.name}")
    if key in obj.values[f.name]:
        raise XenAPIError("MAP_DUPLICATE_KEY", cls.name, f.name, ref, key)
    if f.validate is not None:
        _validate(ctx, f, obj, {**obj.values[f.name], key: value})
    ctx.db.map_add(obj, f.name, key, value)


def generic_map_remove(ctx: Context, cls: XenAPIClass, ref: str, f: Field, key: Any) -> None:
    obj = _to_change(ctx, cls, ref, f"remove_from_{f.name}")
    if key not in obj.values[f.name]:
        return
    if f.validate is not None:
        _validate(ctx, f, obj, {k: v for k, v in obj.values[f.name].items() if k != key})
    ctx.db.map_remove(obj, f.name, key)


def generic_set_add(ctx: Context, cls: XenAPIClass, ref: str, f: Field, item: Any) -> None:
    obj = _to_change(ctx, cls, ref, f"add_{f.name}")
    if item in obj.values[f.name]:
        return
    _validate(ctx, f, obj, [*obj.values[f.name], item])
    ctx.db.set_add(obj, f.name, item)


def generic_set_remove(ctx: Context, cls: XenAPIClass, ref: str, f: Field, item: Any) -> None:
    obj = _to_change(ctx, cls, ref, f"remove_{f.name}")
    if item not in obj.values[f.name]:
        return
    _validate(ctx, f, obj, [v for v in obj.values[f.name] if v != item])
    ctx.db.set_remove(obj, f.name, item)


def coerce_record(ctx: Context, cls: XenAPIClass, record: Any) -> dict:
    """A create record: known constructor fields typed; server-maintained fields ignored."""
    if not isinstance(record, dict):
        raise XenAPIError("FIELD_TYPE_ERROR", "args")
    values: dict = {}
    for key, raw in record.items():
        f = cls.fields.get(key)
        if f is None:
            raise XenAPIError("VALUE_NOT_SUPPORTED", key, str(raw)[:200], f"{cls.name} has no field {key}")
        if not f.in_constructor:
            continue  # clients echo whole records back; server-maintained fields are not theirs to set
        values[key] = f.type.coerce(raw, ctx.db, key)
    for f in cls.fields.values():
        if f.in_constructor:
            if f.name not in values:
                values[f.name] = f.make_default()
            _validate(ctx, f, None, values[f.name])
    return values


def generic_create(ctx: Context, cls: XenAPIClass, record: Any) -> str:
    values = coerce_record(ctx, cls, record)
    if cls.on_create is not None:
        cls.on_create(ctx, values)
    obj = ctx.db.create(cls.name, values)
    if cls.after_create is not None:
        cls.after_create(ctx, obj)
    return obj.ref


def generic_destroy(ctx: Context, cls: XenAPIClass, ref: str) -> None:
    obj = _to_change(ctx, cls, ref, "destroy")
    if cls.on_destroy is not None:
        cls.on_destroy(ctx, obj)
    ctx.db.destroy(obj)


def _stored_text(f: Field) -> bool:
    """The field's filter text is its stored value itself (strings, enums, refs)."""
    return not f.derived and isinstance(f.type, (T.StringType, T.EnumType, T.RefType))


def _records_where(ctx: Context, cls: XenAPIClass, expr: str) -> dict:
    """Compiled once; rows come from an index when the expression fixes an indexed field's value."""
    from .filter import compile_filter

    db = ctx.db

    def read(name: str) -> Callable[[Obj], Any]:
        f = cls.fields[name]
        if _stored_text(f):
            return lambda obj: obj.values[name]
        return lambda obj: f.type.filter_text(db.field_value(obj, name))

    where = compile_filter(expr, cls, read)
    indexed = [(name, text) for name, text in where.fixed.items()
               if name in cls.indexed and _stored_text(cls.fields[name])]
    objs = db.find_by(cls.name, *indexed[0]) if indexed else db.values(cls.name)
    test, visible = where.test, cls.visible
    out = {}
    for obj in objs:
        if test(obj) and (visible is None or visible(ctx, obj)):
            out[obj.ref] = encoded_record(db, obj)
    return out


class Registry:
    """Every declared class and the wire names they answer to."""

    def __init__(self) -> None:
        self.classes: dict[str, XenAPIClass] = {}
        self.methods: dict[str, tuple[XenAPIClass, Message]] = {}
        self.lower: dict[str, XenAPIClass] = {}
        # hooks filled by class modules, so the core knows no class by name
        self.check_session: Callable[[Context, str], Obj] | None = None
        self.start_task: Callable[..., Any] | None = None
        self.checkpoint: Callable[[Context], None] = lambda ctx: None
        self.set_progress: Callable[[Context, float], None] = lambda ctx, fraction: None
        self.on_start: list[Callable[[Context], Any]] = []
        # checks every VM start runs (pools, scheduling domains...): raise to refuse the start
        self.before_start: list[Callable[[Context, Obj], None]] = []
        # what to do when the backend reports a change made outside xend-ext: (ctx, kind, ident)
        self.on_backend_change: list[Callable[[Context, str, str], Any]] = []
        # in a pool, makes a call on the host of its object (xend_ext.forward): (ctx, method, msg,
        # host, params, run_async) -> awaitable (reply, raw)
        self.forward: Callable[..., Any] | None = None

    def add(self, cls: XenAPIClass) -> None:
        cls.build()
        self.classes[cls.name] = cls
        self.lower[cls.name.lower()] = cls
        for msg in cls.messages.values():
            self.methods[f"{cls.name}.{msg.name}"] = (cls, msg)

    def wire_names(self) -> list[str]:
        names = list(self.methods)
        names += [f"Async.{n}" for n, (_, m) in self.methods.items() if m.async_ok and m.session]
        return sorted(names)

    def description(self) -> dict[str, list[tuple[str, str, tuple[str, ...]]]]:
        """What the store needs to know of the persistent classes (see xend_ext.store)."""
        out = {}
        for cls in self.classes.values():
            if not (cls.persist or cls.stored_before):
                continue
            out[cls.name] = [
                (f.name, f.type.kind, tuple(getattr(f.type, "values", ()))) for f in cls.stored_fields()
            ]
        return out


#: What a change answers when the journal cannot take it (a full disk): params [cause, advice].
WRITE_ERROR = "STORE_WRITE_FAILED"


def describe(registry: Registry) -> dict:
    """The API as data (schemas/xenapi.json): for clients in other languages and for docs
    (xend_ext.apidoc writes docs/api/ from it). A message's errors are every code it can answer
    (xend_ext.errors derives them from the code); ``errors`` at the top is the catalogue."""
    from .errors import catalogue, message_errors

    classes = {}
    for cls in sorted(registry.classes.values(), key=lambda c: c.name):
        classes[cls.name] = {
            "doc": cls.doc,
            "persistent": cls.persist,
            "events": cls.events,
            "fields": {
                f.name: {"type": f.type.name, "qualifier": "computed" if f.derived else f.qualifier, "doc": f.doc}
                for f in cls.fields.values()
            },
            "messages": {
                m.name: {
                    "params": [{"name": p.name, "type": p.type.name, "optional": p.default is not REQUIRED}
                               for p in m.params],
                    "result": m.result.name if m.result else "void",
                    "role": m.role,
                    "async": m.async_ok and m.session,
                    "session": m.session,
                    "errors": message_errors(registry, cls, m),
                    "capability": m.capability,
                    "doc": m.doc,
                }
                for m in sorted(cls.messages.values(), key=lambda m: m.name)
            },
        }
    return {"roles": list(ROLES), "classes": classes, "enums": _enums(registry), "errors": catalogue()}


def _enums(registry: Registry) -> dict[str, list[str]]:
    """Every enum type of a field or a parameter: its name and values."""
    found: dict[str, list[str]] = {}

    def visit(kind: T.Type) -> None:
        if isinstance(kind, T.EnumType):
            found[kind.name] = list(kind.values)
        for part in (getattr(kind, "item", None), getattr(kind, "key", None), getattr(kind, "value", None)):
            if isinstance(part, T.Type):
                visit(part)

    for cls in registry.classes.values():
        for f in cls.fields.values():
            visit(f.type)
        for m in cls.messages.values():
            for p in m.params:
                visit(p.type)
    return dict(sorted(found.items()))

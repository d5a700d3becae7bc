"""The Xen-API error catalogue, and the codes each message can answer, derived from the code.

``CATALOGUE`` names every code the server sends, with its parameters in order (docs/api/errors.md,
schemas/xenapi.json). A test checks that every code the source raises is catalogued, and every
catalogued code is raised somewhere.

:func:`message_errors` finds what a message can answer without a hand-kept list: the dispatcher's
checks that apply to it (session, count, role, types, refs, capability, the journal), the codes
it declares, and every catalogued code written in its body or in the functions the body reaches:
the module functions it calls, the methods it calls by name on the server's own objects (context,
model, class declarations, event hub, backends), its class's hooks and its fields' validators,
and the registry's hooks (the checks every VM start runs). It may list a code that a path cannot
reach in practice; it does not miss one written in the code it reaches.
"""

from __future__ import annotations

import dis
import functools
import inspect
import types
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from . import types as T

if TYPE_CHECKING:
    from .datamodel import Field, Message, Registry, XenAPIClass

#: code -> (parameter names, in order; what it means). "..." ends a list of any length.
CATALOGUE: dict[str, tuple[tuple[str, ...], str]] = {
    "SESSION_AUTHENTICATION_FAILED": ((), "the user name or password was refused"),
    "SESSION_INVALID": (("handle",), "not a live session: logged out, expired, never made; OpaqueRef:NULL for "
                        "nil, empty when no session was sent at all"),
    "SESSION_NOT_REGISTERED": (("session",), "event.next without event.register first"),
    "HANDLE_INVALID": (("class", "handle"), "no object of this class has this ref (or uuid); also when it was "
                       "destroyed while the call waited"),
    "UUID_INVALID": (("class", "uuid"), "no object of this class has this uuid"),
    "MESSAGE_METHOD_UNKNOWN": (("method",), "no such message (or Async. of an accessor)"),
    "MESSAGE_PARAMETER_COUNT_MISMATCH": (("method", "expected", "received"),
                                         "wrong number of parameters; the counts leave out the session"),
    "FIELD_TYPE_ERROR": (("field",), "a parameter or record field of the wrong type (docs/api/wire.md says what "
                         "each type accepts)"),
    "VALUE_NOT_SUPPORTED": (("field", "value", "reason"), "a value of the right type that is not allowed here: "
                            "outside an enum or a range, an unknown record field, a path outside the image "
                            "directory"),
    "INVALID_VALUE": (("value", "reason"), "a value that could not be read: a filter expression, an image file, "
                      "a CPU list"),
    "MAP_DUPLICATE_KEY": (("class", "field", "ref", "key"), "add_to_<map> with a key the map has already"),
    "RBAC_PERMISSION_DENIED": (("permission", "reason"), "the session's role may not do this (or the object is "
                               "another user's session or task)"),
    "NOT_IMPLEMENTED": (("capability",), "the backend the server runs lacks this capability; nothing changed"),
    "OPERATION_NOT_ALLOWED": (("reason",), "refused as the rules stand (Domain-0, a full server, a pool in use...)"),
    "OPERATION_PARTIALLY_FAILED": (("operation", "failed refs..."), "a group operation stopped at a failed member; "
                                   "members already changed were rolled back where possible"),
    "VM_BAD_POWER_STATE": (("vm", "expected", "actual"), "the VM is not in a power state this operation needs"),
    "HOST_NOT_ENOUGH_FREE_MEMORY": (("needed", "available"), "the host has not the memory (bytes) this needs"),
    "HOST_OFFLINE": (("host", "reason"), "in a pool, the host a call had to be made on (its object is there) "
                     "could not be reached or refused this server"),
    "NO_HOSTS_AVAILABLE": (("reason",), "in a pool, no host can run the VM (or not enough distinct hosts for an "
                           "anti-affinity group's members; nothing was started): the reason says what each lacks"),
    "VM_MIGRATE_FAILED": (("vm", "source", "destination", "reason"), "the migration failed; the VM is back as it "
                          "was on the source"),
    "VM_ALREADY_IN_SCHED_DOMAIN": (("vm", "sched_domain"), "a VM is in at most one scheduling domain"),
    "SCHED_DOMAIN_POOL_MISMATCH": (("vm", "pool"), "a scheduling domain's VMs are all in its master's CPU pool"),
    "TOO_MANY_GROUPS": ((), "a VM is in exactly one VM_group"),
    "POOL_BAD_STATE": (("state",), "the CPU pool is activated, deactivated or in use, and this needs otherwise"),
    "INSUFFICIENT_CPUS": (("needed", "available"), "not enough free pCPUs to activate the pool"),
    "UNKOWN_SCHED_POLICY": ((), "the hypervisor has no such scheduler (sic: the Xen-API document's spelling)"),
    "INVALID_CPU": (("message",), "no such pCPU, or not one this pool may take"),
    "LAST_CPU_NOT_REMOVEABLE": (("message",), "the last pCPU of a pool with running VMs stays"),
    "PARAMETER_ERROR": (("message",), "a CPU pool's name is malformed or taken, or ncpu < 1"),
    "TASK_CANCELLED": (("task",), "the task was cancelled before the operation finished"),
    "EVENTS_LOST": ((), "the server dropped events this registration did not read in time; register again"),
    "EVENT_SUBSCRIPTION_PARSE_FAILURE": (("subscription",), "not an event class (or class/ref) of this server"),
    "EVENT_FROM_TOKEN_PARSE_FAILURE": (("token",), "not a token event.from gave"),
    "STORE_WRITE_FAILED": (("cause", "advice"), "the journal could not record the change (a full disk); the "
                           "advice says whether it was made"),
    "BACKEND_ERROR": (("message",), "the hypervisor failed the action, with its own words"),
    "INTERNAL_ERROR": (("message",), "a bug in the server; never an answer to bad input"),
}

#: Codes any call may get whatever it is: not listed per message.
ANY_CALL = ("MESSAGE_METHOD_UNKNOWN", "INTERNAL_ERROR")
#: The registry's hooks a message body may run (Registry attributes: a function or a list of them).
REGISTRY_HOOKS = ("before_start", "checkpoint", "set_progress")
#: A class's hooks (XenAPIClass attributes), run by the generic bodies.
CLASS_HOOKS = ("visible", "changeable", "on_create", "after_create", "on_destroy")


def catalogue() -> dict[str, dict]:
    """The catalogue as data (schemas/xenapi.json's "errors")."""
    return {code: {"params": list(params), "doc": doc} for code, (params, doc) in sorted(CATALOGUE.items())}


def message_errors(registry: Registry, cls: XenAPIClass, msg: Message) -> list[str]:
    """Every code ``msg`` can answer (sorted), the codes of :data:`ANY_CALL` left out."""
    codes = set(msg.errors) | _checks(msg)
    codes |= _Walk(registry, cls).codes(msg.impl)
    return sorted(codes - set(ANY_CALL))


def _checks(msg: Message) -> set[str]:
    """What the dispatcher's checks (xend_ext.dispatch) can answer for this message."""
    from .datamodel import READ_ONLY, WRITE_ERROR

    codes = {"MESSAGE_PARAMETER_COUNT_MISMATCH"}
    if msg.session:
        codes.add("SESSION_INVALID")
        if msg.role != READ_ONLY:
            codes.add("RBAC_PERMISSION_DENIED")
    if msg.role != READ_ONLY:
        codes.add(WRITE_ERROR)
    if msg.params:
        codes.add("FIELD_TYPE_ERROR")
    for p in msg.params:
        for kind in _parts(p.type):
            if isinstance(kind, T.RefType):
                codes.add("HANDLE_INVALID")
            elif isinstance(kind, (T.EnumType, T.IntType)):
                codes.add("VALUE_NOT_SUPPORTED")  # outside the enum or the 64-bit range
    if msg.capability is not None:
        codes.add("NOT_IMPLEMENTED")
    return codes


def _parts(kind: T.Type) -> Iterator[T.Type]:
    yield kind
    if isinstance(kind, T.SetType):
        yield from _parts(kind.item)
    elif isinstance(kind, T.MapType):
        yield from _parts(kind.key)
        yield from _parts(kind.value)


@functools.cache
def _methods() -> dict[str, list[Callable]]:
    """Method name -> the functions of that name on the server's own objects (what ``ctx.x``,
    ``ctx.db.x``, ``ctx.backend.x``, ``hub.x`` can be)."""
    from .backends import base, libvirt, sim, xl
    from .datamodel import XenAPIClass
    from .dispatch import Context, Services
    from .events import EventHub
    from .model import Database

    owners: list[type] = [Context, Services, Database, XenAPIClass, EventHub]
    for module in (base, sim, libvirt, xl):
        owners += [c for c in vars(module).values() if inspect.isclass(c) and c.__module__ == module.__name__]
    index: dict[str, list[Callable]] = {}
    for owner in owners:
        for name, member in vars(owner).items():
            fn = _function(member)
            if fn is not None and name not in CLASS_HOOKS:
                index.setdefault(name, []).append(fn)
    return index


def _function(value: Any) -> types.FunctionType | None:
    while True:
        if isinstance(value, (staticmethod, classmethod, types.MethodType)):
            value = value.__func__
        elif isinstance(value, functools.partial):
            value = value.func
        elif isinstance(value, property):
            value = value.fget
        else:
            return value if isinstance(value, types.FunctionType) else None


@functools.cache
def _names(code: types.CodeType) -> tuple[frozenset[str], tuple[str, ...], tuple[str, ...]]:
    """What a function's code (and the code nested in it) names: catalogued codes, module-level
    names (LOAD_GLOBAL: never a builtin by accident) and attributes (LOAD_ATTR/LOAD_METHOD)."""
    codes: set[str] = set()
    global_names: dict[str, None] = {}
    attributes: dict[str, None] = {}
    todo = [code]
    while todo:
        code = todo.pop()
        for const in code.co_consts:
            if isinstance(const, str) and const in CATALOGUE:
                codes.add(const)
            elif isinstance(const, types.CodeType):
                todo.append(const)
        for op in dis.get_instructions(code):
            if op.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
                global_names[op.argval] = None
            elif op.opname in ("LOAD_ATTR", "LOAD_METHOD"):
                attributes[op.argval] = None
    return frozenset(codes), tuple(global_names), tuple(attributes)


class _Walk:
    """The codes reachable from a function, for one class (its hooks and fields)."""

    def __init__(self, registry: Registry, cls: XenAPIClass) -> None:
        self.registry = registry
        self.cls = cls
        self.seen: set[tuple] = set()
        self.found: set[str] = set()

    def codes(self, fn: Any) -> set[str]:
        self._function(fn, None)
        return self.found

    def _function(self, fn: Any, field: Field | None) -> None:
        fn = _function(fn)
        key = (fn, id(field))
        if fn is None or key in self.seen:
            return
        self.seen.add(key)
        from .datamodel import Field, XenAPIClass

        for cell in fn.__closure__ or ():  # a derived message's lambda: its field and class
            try:
                value = cell.cell_contents
            except ValueError:
                continue
            if isinstance(value, Field):
                field = value
            elif isinstance(value, XenAPIClass):
                self.cls = value
            else:
                self._function(value, field)
        self._code(fn.__code__, fn.__globals__, field)

    def _code(self, code: types.CodeType, scope: dict, field: Field | None) -> None:
        codes, global_names, attributes = _names(code)
        self.found |= codes
        for name in global_names:
            self._function(scope.get(name), field)
        for name in attributes:
            self._attribute(name, field)

    def _attribute(self, name: str, field: Field | None) -> None:
        cls = self.cls
        if name == "readable":  # refuses only where the class hides objects (its visible hook)
            if cls.visible is not None:
                self.found.add("RBAC_PERMISSION_DENIED")
                self._function(cls.visible, field)
            return
        if name in CLASS_HOOKS:
            self._function(getattr(cls, name), field)
            return
        if name == "validate":  # the field's validator, or (a create record) every field's
            for f in ([field] if field is not None else cls.fields.values()):
                self._function(f.validate, f)
            return
        if name in REGISTRY_HOOKS:
            hook = getattr(self.registry, name)
            for fn in (hook if isinstance(hook, list) else [hook]):
                self._function(fn, field)
            return
        for fn in _methods().get(name, ()):
            self._function(fn, field)

"""From ``"<class>.<message>"`` and raw params to a reply: every check happens here, once.

Order, as XAPI's generated server does it: method name, argument count, session, role, argument
types (a bad reference is ``HANDLE_INVALID``), backend capability, then the body. A mutation is
acknowledged only after its journal record is durable.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .datamodel import ROLES, WRITE_ERROR, Message, XenAPIClass, role_rank
from .model import Change, current_change
from .store import StoreError, WriteRefused
from .wire import NULL_REF, XenAPIError, failure, success

if TYPE_CHECKING:
    from .datamodel import Registry
    from .model import Database, Obj

log = logging.getLogger("xend_ext.dispatch")

ASYNC_PREFIX = "Async."

STORE_WRITE_FAILED = WRITE_ERROR  # declared with every message that may change state (schemas/xenapi.json)
#: Backend calls that only read: the changes recorded after them do not mirror a hypervisor step.
BACKEND_READS = frozenset({"domain", "domains", "definitions", "host_info", "pools", "read_image", "memory_free"})
#: Seconds between two tries to write what a refused write kept (live state of the hypervisor).
RETRY_INTERVAL = 2.0
_RANK = {role: role_rank(role) for role in ROLES}  # the role check of every call, without a search


class Context:
    """What a message body may use: the model, the backend, the caller's session."""

    __slots__ = ("db", "backend", "services", "registry", "session", "role", "task", "method")

    def __init__(self, services: Services, method: str = "") -> None:
        self.services = services
        self.db: Database = services.db
        self.backend = services.backend
        self.registry: Registry = services.registry
        self.session: Obj | None = None
        self.role = ROLES[-1]
        self.task: Obj | None = None
        self.method = method

    def checkpoint(self) -> None:
        """A safe point of a long operation: stops here with TASK_CANCELLED if its task was cancelled."""
        self.registry.checkpoint(self)

    def progress(self, fraction: float) -> None:
        self.registry.set_progress(self, fraction)

    async def call_backend(self, action: Callable[..., Any], *args: Any) -> Any:
        """Run a backend action off the loop; a BackendError becomes its Xen-API error."""
        from .backends.base import BackendError

        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self.services.backend_pool, functools.partial(action, *args))
        except BackendError as exc:
            raise XenAPIError(exc.code, *exc.params) from None
        change = current_change.get()
        if change is not None and getattr(action, "__name__", "") not in BACKEND_READS:
            change.live = True  # what this request records from now on is what the hypervisor did
        return result

    def lock(self, ref: str) -> asyncio.Lock:
        """The lock that keeps operations on one object in order while they wait on the backend."""
        return self.services.lock(ref)

    def current(self, cname: str, ref: str) -> Obj:
        """The object ``ref`` now, after a wait (its lock, the backend, or the time between the
        dispatcher's check and an async body): HANDLE_INVALID if it was destroyed meanwhile."""
        obj = self.db.find(ref)
        if obj is None or obj.cls.name != cname:
            raise XenAPIError("HANDLE_INVALID", cname, ref)
        return obj

    def require(self, capability: str) -> None:
        if capability not in self.backend.capabilities:
            raise XenAPIError("NOT_IMPLEMENTED", capability)


class Services:
    """The long-lived parts a context hands out; built once by the server."""

    def __init__(self, registry: Registry, db: Database, backend: Any, store: Any, hub: Any, config: Any) -> None:
        self.registry = registry
        self.db = db
        self.backend = backend
        self.store = store
        self.hub = hub
        self.config = config
        self.auth: Any = None
        # backend calls block (libvirt, subprocesses, fsync): a bounded pool keeps them off the loop
        self.backend_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="backend")
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self.refused: WriteRefused | None = None  # the last write the journal refused
        self._retry: asyncio.Task[None] | None = None
        if store is not None:
            store.set_rollback(self.rollback)

    def lock(self, ref: str) -> asyncio.Lock:
        lock = self._locks.get(ref)
        if lock is None:
            lock = self._locks[ref] = asyncio.Lock()
        return lock

    async def commit(self, seq: int) -> None:
        """Wait until the journal holds everything up to ``seq``, then let its events out."""
        await self.store.durable(seq)
        self.db.durable(seq)
        self.hub.durable(seq)

    def rollback(self, durable_seq: int) -> None:
        """The journal refused a write (the store's rollback hook): take back every change after
        ``durable_seq`` and their events; what mirrors the hypervisor is kept and written later."""
        self.refused = self.store.refused
        undone = self.db.rollback(durable_seq)
        self.hub.rollback(durable_seq, undone)
        if self.db.relog and self._retry is None:
            self._retry = asyncio.get_running_loop().create_task(self._write_kept())

    async def _write_kept(self) -> None:
        """Try the disk again every few seconds until the kept changes are written."""
        try:
            while self.db.relog:
                await asyncio.sleep(RETRY_INTERVAL)
                if self.db.relog:
                    self.db.write_relog()
                    try:
                        await self.commit(self.db.last_seq)
                    except StoreError:
                        pass  # refused again (kept again) or closing: the loop decides
                    if self.store.broken:
                        return
        finally:
            self._retry = None


class Dispatcher:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.registry = services.registry
        self.methods = services.registry.methods  # wire name -> (class, message)

    def resolve(self, method: str) -> tuple[XenAPIClass, Message, bool]:
        run_async = method.startswith(ASYNC_PREFIX)
        name = method[len(ASYNC_PREFIX):] if run_async else method
        found = self.registry.methods.get(name)
        if found is None or (run_async and not (found[1].async_ok and found[1].session)):
            raise XenAPIError("MESSAGE_METHOD_UNKNOWN", method)
        return found[0], found[1], run_async

    def call(self, method: str, params: tuple) -> tuple[Any, bool] | Awaitable[tuple[Any, bool]]:
        """(reply, raw), or an awaitable of it when the call must wait (async body, journal).

        Reads and failed checks complete right here, without a task: most calls are small reads,
        and a task per call costs as much as the call. ``raw`` replies (system.*) are not
        wrapped in the envelope.
        """
        services = self.services
        db = services.db
        before = db.last_seq
        raw = False
        change = Change()
        token = current_change.set(change)
        try:
            found = self.methods.get(method)  # nearly every call; "Async." ones are resolved
            if found is not None:
                msg, run_async = found[1], False
            else:
                _cls, msg, run_async = self.resolve(method)
            raw = msg.raw_reply
            ctx = Context(services, method)
            args = self._check(ctx, method, msg, params)
            if msg.route is not None and (host := msg.route(db, args)) is not None:  # another host's object
                return self.registry.forward(ctx, method, msg, host, params, run_async)
            if run_async or msg.is_async_impl:
                return self._call_async(ctx, method, msg, args, run_async, before, change)
            value = msg.impl(ctx, *args)
            reply: Any = value if raw else {"Status": "Success", "Value": "" if value is None else value}
        except XenAPIError as exc:
            reply = failure(exc.description)
        except Exception as exc:  # a bug: say so on the wire, keep serving
            reply = _internal(method, exc)
        finally:
            current_change.reset(token)
        if db.last_seq != before:
            return self._durable(reply, raw, change)
        return reply, raw

    async def _call_async(self, ctx: Context, method: str, msg: Message, args: list, run_async: bool,
                          before: int, change: Change) -> tuple[Any, bool]:
        token = current_change.set(change)
        try:
            if run_async:
                value = await self.registry.start_task(ctx, method[len(ASYNC_PREFIX):], msg, args)
            else:
                value = await msg.impl(ctx, *args)
            reply: Any = value if msg.raw_reply else success(value)
        except XenAPIError as exc:
            reply = failure(exc.description)
        except Exception as exc:
            reply = _internal(method, exc)
        finally:
            current_change.reset(token)
        if self.services.db.last_seq != before or change.undone:
            return await self._durable(reply, msg.raw_reply, change)
        return reply, msg.raw_reply

    async def _durable(self, reply: Any, raw: bool, change: Change) -> tuple[Any, bool]:
        """Acknowledge only once the journal holds the change; a change it refused was undone.

        Nothing to wait for when every record is durable and published already: an async body
        (event.from) sees the records others made meanwhile, and the watchers one change wakes
        would each commit it again."""
        try:
            if self.services.db.last_seq > self.services.hub.durable_seq:
                await self.services.commit(self.services.db.last_seq)
        except WriteRefused:
            pass  # undone if it was this request's (change.undone); others' records are not ours
        except StoreError as exc:  # a failed fsync: the store takes no more writes
            return failure([STORE_WRITE_FAILED, str(exc), "the change may or may not be recorded; "
                            "restart the server, which takes no more changes until then"]), raw
        if change.undone or change.kept:
            cause = self.services.refused.cause if self.services.refused else "write refused"
            if change.undone:
                advice = getattr(self.services.refused, "advice", None) or \
                    "the change was not made; free space in the server's state directory and retry"
            else:  # its backend step happened: the model keeps what the hypervisor did
                advice = ("the hypervisor did it and the server shows it, but has not recorded it yet; "
                          "free space in the server's state directory and it will be recorded")
            return failure([STORE_WRITE_FAILED, cause, advice]), raw
        return reply, raw

    def _check(self, ctx: Context, method: str, msg: Message, params: tuple) -> list:
        given = len(params) - (1 if msg.session else 0)
        if given < 0:
            raise XenAPIError("SESSION_INVALID", "")  # not even a session was sent
        if given < msg.required or given > len(msg.params):
            expected = msg.required if given < msg.required else len(msg.params)
            raise XenAPIError("MESSAGE_PARAMETER_COUNT_MISMATCH", method, expected, given)
        if msg.session:
            session_ref = params[0]
            if not isinstance(session_ref, str):
                raise XenAPIError("SESSION_INVALID", NULL_REF if session_ref is None else str(session_ref))
            ctx.session = self.registry.check_session(ctx, session_ref)
            ctx.role = ctx.session.values["role"]
            if _RANK[ctx.role] < _RANK[msg.role]:
                permission = method.removeprefix(ASYNC_PREFIX).lower()
                holders = ", ".join(ROLES[role_rank(msg.role):])
                raise XenAPIError(
                    "RBAC_PERMISSION_DENIED", permission,
                    f"No permission in user session. (Roles with this permission: {holders})",
                )
            params = params[1:]
        db = self.services.db
        args = [p.type.coerce(value, db, p.name) for p, value in zip(msg.params, params, strict=False)]
        if len(args) < len(msg.params):
            args += [p.default for p in msg.params[len(args):]]
        if msg.capability is not None:
            ctx.require(msg.capability)
        return args


def _internal(method: str, exc: Exception) -> dict:
    log.exception("internal error in %s", method)
    return failure(["INTERNAL_ERROR", f"{type(exc).__name__}: {exc}"])

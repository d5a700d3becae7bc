"""Any server of a pool answers any call: a call acting on another host's object is made by that
host (issue 20, step 2), as XAPI's slaves hand calls to the master — here the object's own host
acts, since only it can reach the hypervisor the object lives in.

Which calls: every message of a host-local class (host, host_cpu, cpu_pool, VM, VM_metrics)
whose first parameter is the object (``self``), unless it only reads what every server holds
(the generic getters of stored fields; VM_metrics' getters are forwarded, since only the VM's
host can read its domain). Whose object: :func:`xend_ext.hosts.host_of` (a VM's or a CPU pool's
``resident_on``, a host_cpu's ``host``, a VM_metrics' VM's host). Nothing is written per message:
:func:`install` marks the messages (``Message.route``) and the dispatcher hands a marked call
whose object is elsewhere to :func:`forward` after its own checks (session, role, types), so the
caller's rights are checked once, at the host it called.

How: the server opens a session on the other host with the pool's secret (made once in etcd,
xend_ext.cluster), as the caller (user and role) — ``session.pool_login`` — and sends the call's
own parameters; the answer, a value or a Xen-API error, is returned unchanged. An ``Async.`` call
gets a task here at once; its body calls ``Async.`` there and follows that task (progress, the
result's text, the error, ``task.cancel`` passed on). An unreachable host is ``HOST_OFFLINE``.
After a forwarded change the object is read back from etcd, so the caller's next read here sees
it even before the watch brings it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import hmac
import logging
import threading
import urllib.parse
import xmlrpc.client
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from . import hosts
from .types import RefType
from .wire import XenAPIError, failure, success

log = logging.getLogger("xend_ext.forward")

HOST_LOCAL = ("host", "host_cpu", "cpu_pool", "VM", "VM_metrics")
PATH = "/pool/"  # + this server's etcd revision: the other host answers once it has seen as much
TIMEOUT = (10.0, 900.0)  # seconds to connect, and for the other host to answer
POLL = (0.01, 0.25)  # first and longest pause between two looks at a task there
WORKERS = 16  # forwarded calls waiting on other hosts at once (more wait their turn)


def install(registry, services) -> None:
    """Mark the messages that act on a host's object, and give the dispatcher :func:`forward`."""
    for cname in HOST_LOCAL:
        cls = registry.classes[cname]
        for msg in cls.messages.values():
            if _acts(cls, msg):
                msg.route = elsewhere
    registry.forward = forward
    services.peers = Peers(services)


def _acts(cls, msg) -> bool:
    first = msg.params[0] if msg.params else None
    if first is None or first.name != "self" or not isinstance(first.type, RefType):
        return False
    return cls.name == "VM_metrics" or cls.declared(msg.name) or not msg.name.startswith("get_")


def elsewhere(db, args) -> str | None:
    """The host of the call's object when it is another host than this one, else None."""
    obj = db.find(args[0])
    if obj is not None and obj.cls.name == "VM_metrics":
        obj = db.find(obj.values["VM"])
    if obj is None:
        return None
    host = hosts.host_of(obj)
    return None if hosts.is_local(db, host) else host


def caught_up(services, address: str) -> str:
    """The URL a call to another host goes to: its address, and this server's etcd revision, so
    that it answers only once it has seen the pool's state as this server has it (what the caller
    just changed here included)."""
    return urllib.parse.urljoin(address, f"{PATH}{services.store.revision()}")


def accepts(services, secret: str) -> bool:
    """Whether ``secret`` is the pool's (never alone)."""
    mine = getattr(services.store, "secret", "")
    return bool(mine) and hmac.compare_digest(mine.encode(), secret.encode())


# -- the dispatcher's side -----------------------------------------------------------------------

async def forward(ctx, method: str, msg, host: str, params: tuple, run_async: bool) -> tuple[Any, bool]:
    """The reply to a call whose object is on ``host``: made there (see the module docstring)."""
    name = method.removeprefix("Async.")
    args = list(params[1:])  # the caller's own parameters, without its session here
    if run_async:
        body = dataclasses.replace(msg, impl=functools.partial(_follow, host, name, args))
        try:
            return success(await ctx.registry.start_task(ctx, name, body, [])), False
        except XenAPIError as exc:
            return failure(exc.description), False
    try:
        value = await call(ctx, host, name, args)
    except XenAPIError as exc:
        return failure(exc.description), False
    return success(value), False


async def act(ctx, cname: str, message: str, ref: str, *args):
    """Run a message on an object from inside another body (a group's member): here, or by the
    object's host when it is elsewhere."""
    msg = ctx.registry.classes[cname].messages[message]
    host = msg.route(ctx.db, [ref]) if msg.route is not None else None
    if host is None:
        value = msg.impl(ctx, ref, *args)
        return (await value) if msg.is_async_impl else value
    return await call(ctx, host, f"{cname}.{message}", [ref, *args])


async def call(ctx, host: str, method: str, args: list):
    """``method(args)`` made by ``host`` as this call's caller: its value, or its Xen-API error."""
    reply = await ctx.services.peers.send(ctx, host, method, args)
    if reply.get("Status") != "Success":
        raise XenAPIError(*reply.get("ErrorDescription", ["INTERNAL_ERROR", "no error description"]))
    await _read_back(ctx, method, args)
    return reply.get("Value", "")


async def _follow(host: str, method: str, args: list, ctx) -> None:
    """The body of a forwarded ``Async.`` call's task here: the task there, followed to its end."""
    peers = ctx.services.peers
    there = await call(ctx, host, "Async." + method, args)
    pause, cancelled = POLL[0], False
    while True:
        record = await peers.value(ctx, host, "task.get_record", [there])
        status = record["status"]
        ctx.progress(float(record.get("progress") or 0))
        if status not in ("pending", "cancelling"):
            break
        if not cancelled:
            try:
                ctx.checkpoint()
            except XenAPIError:
                cancelled = True
                await peers.send(ctx, host, "task.cancel", [there])
        await asyncio.sleep(pause)
        pause = min(POLL[1], pause * 2)
    await peers.send(ctx, host, "task.destroy", [there])
    if status == "cancelled":
        raise XenAPIError("TASK_CANCELLED", ctx.task.ref)
    if status != "success":
        raise XenAPIError(*record["error_info"])
    await _read_back(ctx, method, args)
    if ctx.task is not None and ctx.db.find(ctx.task.ref) is ctx.task:
        ctx.db.set(ctx.task, "result", record["result"])  # the value's text, as the other host wrote it


async def _read_back(ctx, method: str, args: list) -> None:
    """After a change made elsewhere: its object as etcd has it now, before the caller reads here."""
    cname, _, message = method.removeprefix("Async.").partition(".")
    refresh = getattr(ctx.services.store, "refresh", None)
    obj = ctx.db.find(args[0]) if args and isinstance(args[0], str) else None
    if refresh is not None and obj is not None and obj.cls.persist and not message.startswith("get_"):
        await refresh(obj.cls.name, obj.ref)


# -- the other hosts -------------------------------------------------------------------------------

class Peers:
    """This server's connections to the other hosts: one HTTP session per host, and one Xen-API
    session there per (user, role) of the callers, opened with the pool's secret and reopened
    when that host forgot it (a restart). Blocking calls, run in WORKERS threads of their own."""

    def __init__(self, services) -> None:
        self.services = services
        self.pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="forward")
        self._http: dict[str, requests.Session] = {}
        self._sessions: dict[tuple[str, str, str], str] = {}
        self._lock = threading.Lock()

    async def send(self, ctx, host: str, method: str, args: list) -> dict:
        """The other host's reply (a Xen-API envelope); HOST_OFFLINE when it cannot be reached."""
        obj = ctx.db.find(host)
        address = obj.values["address"] if obj is not None else ""
        if not address:
            raise XenAPIError("HOST_OFFLINE", host, "the host has published no address (host.address)")
        if ctx.db.liveness is not None and not ctx.db.liveness.is_live(obj.uuid):  # frozen or gone: no waiting
            raise XenAPIError("HOST_OFFLINE", host, "it does not hold its etcd lease (host.live is false)")
        url = caught_up(self.services, address)
        user = ctx.session.values["this_user"] if ctx.session is not None else "root"
        caller = (address, user, ctx.role)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self._send, host, caller, url, method, args)

    async def value(self, ctx, host: str, method: str, args: list):
        reply = await self.send(ctx, host, method, args)
        if reply.get("Status") != "Success":
            raise XenAPIError(*reply["ErrorDescription"])
        return reply["Value"]

    def _send(self, host: str, caller: tuple[str, str, str], url: str, method: str, args: list) -> dict:
        for _attempt in range(2):
            session = self._session(host, caller)
            reply = self._post(host, url, method, [session, *args])
            if reply.get("Status") == "Success" or reply.get("ErrorDescription", [""])[0] != "SESSION_INVALID":
                return reply
            with self._lock:  # that host restarted: a new session, and the call once more
                self._sessions.pop(caller, None)
        return reply

    def _session(self, host: str, caller: tuple[str, str, str]) -> str:
        with self._lock:
            known = self._sessions.get(caller)
        if known is not None:
            return known
        url, user, role = caller
        reply = self._post(host, url, "session.pool_login",
                           [self.services.store.secret, user, role, "xend-ext forward"])
        if reply.get("Status") != "Success":
            raise XenAPIError("HOST_OFFLINE", host, "it refused this server's pool login: "
                              + " ".join(map(str, reply.get("ErrorDescription", []))))
        with self._lock:
            self._sessions[caller] = reply["Value"]
        return reply["Value"]

    def _post(self, host: str, url: str, method: str, params: list) -> dict:
        where = urllib.parse.urlsplit(url).netloc
        with self._lock:
            http = self._http.get(where)
            if http is None:
                http = self._http[where] = requests.Session()
        try:
            answer = http.post(url, data=xmlrpc.client.dumps(tuple(params), method, allow_none=True).encode(),
                               headers={"Content-Type": "text/xml"}, timeout=TIMEOUT)
            answer.raise_for_status()
            reply = _plain(xmlrpc.client.loads(answer.content)[0][0])
        except Exception as exc:  # noqa: BLE001 - down, refusing, not speaking Xen-API: all the same to the caller
            raise XenAPIError("HOST_OFFLINE", host, f"{url} did not answer: {type(exc).__name__}: {exc}") from None
        return reply if isinstance(reply, dict) else {"Status": "Failure",
                                                      "ErrorDescription": ["INTERNAL_ERROR", str(reply)[:200]]}


def _plain(value: Any) -> Any:
    """A reply's value as our own wire writes it again: XML-RPC dateTimes (XAPI's, with a Z) as
    datetimes in UTC."""
    if isinstance(value, xmlrpc.client.DateTime):
        text = value.value
        return dt.datetime.strptime(text.removesuffix("Z"), "%Y%m%dT%H:%M:%S").replace(tzinfo=dt.UTC)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value

"""Migration between two xend-ext servers: VM.migrate, VM_group.migrate, and the import endpoint.

The source logs in to the destination over Xen-API and asks it to check every VM that will arrive
(``VM.migrate_check``: names, pools, memory, scheduling domains) before anything moves. Then, per
VM, in order: the backend makes an image (``copy`` backends export it while the domain runs on;
``save`` backends save it, which stops the domain), the destination opens an import task
(``Async.VM.migrate_receive``, bound to the session), and the image is streamed to
``PUT /import?session_id=..&task_id=..`` with its length, from the file in bounded chunks. The
destination writes it into its image directory as it arrives (``Import``, an HTTP body sink that
checks the session, task and length before the first body byte), restores it, and answers.

Only when every VM of the call runs there does the source let its own go ("commit"); until then
a VM that arrived is parked here (paused, or its saved image kept), so a failure or ``task.cancel``
at any step brings everything back: the copies there are destroyed and the VMs here run as they
did. ``task.cancel`` on either side stops both: the source stops sending (the destination sees the
connection end and removes what it received), the destination refuses the next chunk.

Live by the hypervisors themselves: when ``live`` is asked and both hosts offer the same kind of
``live_target`` (the destination in its answer to the check; libvirt's QEMU with
``--libvirt-migrate-uri``), a VM goes by its hypervisor's own migration instead of an image: the
destination opens ``Async.VM.migrate_receive_live`` (it holds the VM's arrival lock, so the domain
appearing there is adopted, not discovered), the source's backend moves the domain
(``send_live``; ``task.cancel`` aborts it), then the source's empty ``PUT /import`` tells the
destination to adopt it (``adopt``). A roll-back brings it back the same way (``fetch_live``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import urllib.parse
import uuid as uuid_module
import xmlrpc.client
from pathlib import Path

import requests

from . import forward, hosts, placement
from .backends.base import Capability
from .http import Refuse, Request
from .wire import XenAPIError

log = logging.getLogger("xend_ext.migration")

CALL_TIMEOUT = (30.0, 300.0)  # seconds to connect (and for each send), and for the destination to answer
CHUNK = 1 << 20  # bytes read from the image file and sent at a time
START_TIMEOUT = 60.0  # seconds an import task waits for its PUT to begin
LIVE_START_TIMEOUT = 3600.0  # seconds a live arrival waits for its handover (the hypervisor's move comes first)
POLL = 0.25  # seconds between two looks at a task's cancellation while waiting
PROGRESS_STEP = 8 << 20  # bytes between two progress updates of a task
IMAGE_EXTRA = "backend_image_extra"  # the record key of what a backend's image needs beside its bytes


class Refused(Exception):
    """The destination did not take the VM; the text says why, for VM_MIGRATE_FAILED."""


# -- the destination, seen from the source ---------------------------------------------------------

def destination_of(url):
    """(url without credentials, user, password) of an http(s) destination; VALUE_NOT_SUPPORTED
    for anything else."""
    refused = XenAPIError("VALUE_NOT_SUPPORTED", "destination_url", url,
                          "give http(s)://[user:password@]host:port/ of the other xend-ext server")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise refused from None
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c in url for c in "\r\n\x00 "):
        raise refused
    netloc = parts.hostname + (f":{port}" if port else "")
    clean = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path or "/", "", ""))
    return clean, urllib.parse.unquote(parts.username or "root"), urllib.parse.unquote(parts.password or "")


class Remote:
    """The destination's Xen-API (XML-RPC) and its import endpoint, over one ``requests`` session:
    TLS verified (REQUESTS_CA_BUNDLE names a private CA), timeouts on every call. Blocking: run
    it in a worker thread; ``abort()`` from any thread stops a transfer at its next chunk."""

    def __init__(self, destination_url: str) -> None:
        self.url, self.user, self.password = destination_of(destination_url)
        self.http = requests.Session()
        self.aborted = threading.Event()
        self.session = ""
        self.pooled = False  # the destination is another host of this pool: the VM's record is shared
        self.rpc_url = self.url  # where its Xen-API calls go

    def call(self, method, *args, anyway=False):
        """One Xen-API call there; refused once the migration is aborted, unless ``anyway`` (the
        calls that undo what was done there)."""
        if self.aborted.is_set() and not anyway:
            raise Refused("the migration was cancelled")
        try:
            reply = self.http.post(self.rpc_url, data=xmlrpc.client.dumps(args, method, allow_none=True).encode(),
                                   headers={"Content-Type": "text/xml"}, timeout=CALL_TIMEOUT)
            reply.raise_for_status()
            value = xmlrpc.client.loads(reply.content)[0][0]
        except Exception as exc:  # noqa: BLE001 - whatever the destination does (not HTTP, not XML-RPC...)
            raise Refused("the migration was cancelled" if self.aborted.is_set() and not anyway
                          else f"cannot talk to the destination: {type(exc).__name__}: {exc}") from None
        if not isinstance(value, dict) or value.get("Status") != "Success":
            detail = value.get("ErrorDescription", []) if isinstance(value, dict) else [str(value)]
            raise Refused("the destination answered " + " ".join(map(str, detail)))
        return value.get("Value")

    def login(self, originator):
        self.session = self.call("session.login_with_password", self.user, self.password, "1.1", originator)

    def pool_login(self, secret, user, role, originator):
        """Another host of the pool: a session as the caller, with the pool's secret (xend_ext.forward)."""
        self.session = self.call("session.pool_login", secret, user, role, originator)

    def logout(self):
        with contextlib.suppress(Refused):
            if self.session:
                self.call("session.logout", self.session)
        self.http.close()

    def ready(self, task):
        """Wait until the import task there waits for its image (it says so in its other_config),
        or fail with its error (the destination's checks)."""
        deadline = time.monotonic() + START_TIMEOUT
        pause = 0.002
        while time.monotonic() < deadline:
            record = self.call("task.get_record", self.session, task)
            if record["status"] != "pending":
                raise Refused("the destination answered " + " ".join(map(str, record["error_info"])))
            if record["other_config"].get("import") == "waiting":
                return
            time.sleep(pause)
            pause = min(0.1, pause * 2)
        raise Refused(f"the destination did not get ready for the image within {START_TIMEOUT:.0f} s")

    def put_image(self, task, image: ImageBody):
        """Stream the image to the import task; the destination's answer is the VM's ref there."""
        query = urllib.parse.urlencode({"session_id": self.session, "task_id": task})
        target = urllib.parse.urljoin(self.url, "/import") + "?" + query
        try:
            reply = self.http.put(target, data=image, timeout=CALL_TIMEOUT,
                                  headers={"Content-Type": "application/octet-stream"})
        except Exception as exc:  # noqa: BLE001 - a cut connection, our own abort, a timeout
            reply = None
            why = f"{type(exc).__name__}: {exc}"
        if reply is not None and reply.status_code == 200:
            return reply.text.strip()
        if self.aborted.is_set():
            raise Refused("the migration was cancelled")
        error = self.error_of(task)
        if error:
            raise Refused("the destination answered " + " ".join(map(str, error)))
        raise Refused("the image transfer failed: " + (why if reply is None else f"HTTP {reply.status_code} "
                                                       + reply.text.strip()[:200]))

    def figures(self, task):
        """The figures the destination's hypervisor gave of a live arrival (downtime), from its
        task's other_config."""
        with contextlib.suppress(Refused):
            found = self.call("task.get_other_config", self.session, task)
            return {key.split(":")[0].removeprefix("migration_"): value for key, value in found.items()
                    if key.startswith("migration_downtime:")}
        return {}

    def error_of(self, task, wait=5.0):
        """The import task's error once it has ended (it ends soon after its stream does), or []."""
        deadline = time.monotonic() + wait
        with contextlib.suppress(Refused):
            while True:
                record = self.call("task.get_record", self.session, task)
                if record["status"] not in ("pending", "cancelling") or time.monotonic() > deadline:
                    return record["error_info"]
                time.sleep(POLL / 5)
        return []


class ImageBody:
    """A saved image as a request body: read in CHUNKs, counted, stopped by the remote's abort.
    ``requests`` takes its length from ``__len__`` (a Content-Length, never chunked encoding)."""

    def __init__(self, path: Path, aborted: threading.Event) -> None:
        self.file = open(path, "rb")  # noqa: SIM115 - closed by close(), after the request
        self.size = os.fstat(self.file.fileno()).st_size
        self.sent = 0
        self.aborted = aborted

    def __len__(self) -> int:
        return self.size

    def read(self, n: int = -1) -> bytes:
        if self.aborted.is_set():
            raise ConnectionAbortedError("the migration was cancelled")
        data = self.file.read(CHUNK if n is None or n < 0 else min(n, CHUNK))
        self.sent += len(data)
        return data

    def close(self) -> None:
        self.file.close()


def report(ctx, done, size, start=0.1, span=0.8):
    """Task progress of a transfer: the fraction within [start, start+span], and the bytes in
    ``other_config`` (migration_bytes / migration_size)."""
    ctx.progress(start + span * (done / size if size else 1.0))
    note(ctx, {"migration_bytes": str(done), "migration_size": str(size)})


def note(ctx, figures):
    """Figures of the migration in its task's other_config (bytes sent, a VM's downtime...)."""
    task = ctx.task
    if task is not None and ctx.db.find(task.ref) is task:
        ctx.db.set(task, "other_config", {**task.values["other_config"], **figures})


async def in_thread(ctx, remote, work, *args, body=None):
    """Run ``work(*args)`` in a worker thread; a cancelled task aborts the remote and keeps waiting
    for the worker (the destination may have taken it just before). ``body``: its progress is
    reported meanwhile."""
    pending = asyncio.get_running_loop().run_in_executor(None, work, *args)
    reported = -PROGRESS_STEP
    while True:
        done, _ = await asyncio.wait({pending}, timeout=POLL)
        if body is not None and (body.sent - reported >= PROGRESS_STEP or body.sent == body.size) \
                and body.sent != reported:
            reported = body.sent
            report(ctx, body.sent, body.size)
        if done:
            return pending.result()
        try:
            ctx.checkpoint()
        except XenAPIError:
            remote.aborted.set()  # the body stops at its next chunk
            if body is None or body.sent < body.size:
                raise  # the destination cannot have it all: no need to wait for a hung call
            await asyncio.wait({pending})  # it may have taken the VM just before
            if pending.exception() is None:
                return pending.result()
            raise


# -- one VM leaving --------------------------------------------------------------------------------

class Departure:
    """One VM on its way: sent, then committed (gone from here) or rolled back (running here
    again, and nothing of it there). Holds the VM's lock from send to commit or roll-back."""

    def __init__(self, ctx, obj, remote, meta, live, target=None):
        self.ctx, self.obj, self.remote, self.meta, self.live = ctx, obj, remote, meta, live
        # live by the hypervisors themselves where both hosts can (not a VM of a scheduling domain:
        # its cgroup partition must exist there before its domain, which their migration does not see to)
        self.target = target if live and target and not meta.get("sched_domain") else {}
        self.mode = "live" if self.target else ctx.backend.migration
        self.was_paused = obj.values["power_state"] == "Paused"
        self.paused_here = False
        self.image: Path | None = None
        self.there = ""  # the VM's ref on the destination once it runs there

    async def send(self):
        """Image, transfer, and the destination runs it. Any failure puts the VM back here as it
        was and raises (VM_MIGRATE_FAILED, or TASK_CANCELLED)."""
        from xenapi_classes import vm as vms

        ctx, obj = self.ctx, self.obj
        if self.mode == "live":
            return await self._send_live()
        try:
            handle, tmp = tempfile.mkstemp(prefix="migrate-", suffix=".img", dir=ctx.services.config.state_dir)
            os.close(handle)
            self.image = Path(tmp)
            stopped = time.monotonic()
            if self.mode == "save":  # the domain stops here; its image brings it back if need be
                await ctx.call_backend(ctx.backend.save, obj.uuid, self.image, self.meta)
                vms.apply_domain(ctx, obj, None)
            else:
                if not self.live and not self.was_paused:
                    vms.apply_domain(ctx, obj, await ctx.call_backend(ctx.backend.pause, obj.uuid))
                    self.paused_here = True
                await ctx.call_backend(ctx.backend.export, obj.uuid, self.image, self.meta)
            extra = ctx.backend.image_extra(self.image)  # e.g. xl's record of the image, beside it
            if extra:
                self.meta = {**self.meta, IMAGE_EXTRA: extra}
            ctx.progress(0.1)
            if self.remote.pooled:  # the destination reads the VM's record as etcd has it
                await ctx.services.commit(ctx.db.last_seq)
            self.there = await in_thread(ctx, self.remote, self._transfer, body=self._body())
            if self.mode == "save" and not self.was_paused:  # it runs again, there
                note(ctx, {f"migration_downtime:{obj.uuid}": f"{time.monotonic() - stopped:.3f}"})
        except (XenAPIError, Refused, OSError) as exc:
            reason = " ".join(exc.description) if isinstance(exc, XenAPIError) else str(exc)
            reason += await self._resume_here()
            self._drop_image()
            if isinstance(exc, XenAPIError) and exc.code == "TASK_CANCELLED":
                raise
            raise failed(ctx, obj.ref, self.remote.url, reason) from None
        if self.mode == "copy" and not (self.paused_here or self.was_paused):  # running here still
            parked = await ctx.call_backend(ctx.backend.pause, obj.uuid)  # parked
            if not self.remote.pooled:  # in a pool the record is the destination's now
                vms.apply_domain(ctx, obj, parked)
            self.paused_here = True

    async def _send_live(self):
        """The destination expects the domain (its receive task), the hypervisor moves it there, and
        the destination adopts it on our word (the handover). Until the move the domain runs here;
        a failure or task.cancel aborts the move and ends the task there, leaving nothing there."""
        from xenapi_classes import vm as vms

        ctx, obj, remote = self.ctx, self.obj, self.remote
        began, task = time.monotonic(), ""
        try:
            task = await in_thread(ctx, remote, remote.call, "Async.VM.migrate_receive_live", remote.session,
                                   self.meta, self.was_paused)
            await in_thread(ctx, remote, remote.ready, task)
            ctx.progress(0.1)
            await self._move()
        except (XenAPIError, Refused) as exc:
            if task:
                await asyncio.get_running_loop().run_in_executor(None, end_task, remote, task)
            vms.apply_domain(ctx, obj, await ctx.call_backend(ctx.backend.domain, obj.uuid))
            if isinstance(exc, XenAPIError) and exc.code == "TASK_CANCELLED":
                raise
            reason = " ".join(exc.description) if isinstance(exc, XenAPIError) else str(exc)
            raise failed(ctx, obj.ref, remote.url, reason) from None
        vms.apply_domain(ctx, obj, None)  # it runs there now; too late to cancel
        loop = asyncio.get_running_loop()
        try:
            self.there = await loop.run_in_executor(None, remote.put_image, task, b"")
        except Refused as exc:  # the destination did not adopt it: its hypervisor gives it back
            raise failed(ctx, obj.ref, remote.url, str(exc) + await self._fetch_back()) from None
        figures = await loop.run_in_executor(None, remote.figures, task)
        note(ctx, {f"migration_time:{obj.uuid}": f"{time.monotonic() - began:.3f}",
                   **{f"migration_{k}:{obj.uuid}": v for k, v in figures.items()}})

    async def _move(self):
        """The hypervisor's move; task.cancel aborts it (unless it was over just then)."""
        ctx = self.ctx
        moving = asyncio.ensure_future(ctx.call_backend(ctx.backend.send_live, self.obj.uuid, self.target))
        cancelled = None
        while not (await asyncio.wait({moving}, timeout=POLL))[0]:
            if cancelled is None:
                try:
                    ctx.checkpoint()
                except XenAPIError as exc:
                    cancelled = exc
                    await ctx.call_backend(ctx.backend.abort_live, self.obj.uuid)
        if cancelled is not None and moving.exception() is not None:
            raise cancelled
        moving.result()

    async def _fetch_back(self):
        """Bring the domain back from the destination's hypervisor and run the VM here again; the
        text of what went wrong, if anything."""
        from xenapi_classes import vm as vms

        ctx, obj = self.ctx, self.obj
        try:
            await ctx.call_backend(ctx.backend.fetch_live, obj.uuid, self.target)
            domain, _figures = await ctx.call_backend(ctx.backend.adopt, obj.uuid, vms.domain_config(ctx, obj))
        except XenAPIError as again:
            vms.apply_domain(ctx, obj, await ctx.call_backend(ctx.backend.domain, obj.uuid))
            return "; and it could not be brought back here: " + " ".join(again.description)
        vms.apply_domain(ctx, obj, domain)
        return ""

    def _body(self):
        self.body = ImageBody(self.image, self.remote.aborted)
        return self.body

    def _transfer(self):
        try:
            task = self.remote.call("Async.VM.migrate_receive", self.remote.session, self.meta,
                                    str(self.body.size), self.was_paused)
            self.remote.ready(task)
            return self.remote.put_image(task, self.body)
        finally:
            self.body.close()

    async def _resume_here(self):
        """Run the VM here again as before the departure; the text of what went wrong, if any."""
        from xenapi_classes import vm as vms

        ctx, obj = self.ctx, self.obj
        try:
            if self.mode == "save" and obj.values["power_state"] == "Halted" and self.image is not None:
                domain, _meta = await ctx.call_backend(ctx.backend.restore, self.image, self.was_paused,
                                                       vms.domain_config(ctx, obj))
                vms.apply_domain(ctx, obj, domain)
            elif self.paused_here:
                vms.apply_domain(ctx, obj, await ctx.call_backend(ctx.backend.unpause, obj.uuid))
                self.paused_here = False
        except XenAPIError as again:
            vms.apply_domain(ctx, obj, await ctx.call_backend(ctx.backend.domain, obj.uuid))
            return "; and it could not be brought back here: " + " ".join(again.description)
        return ""

    def _drop_image(self):
        if self.image is not None:
            self.ctx.backend.drop_image(self.image)
            self.image = None

    async def commit(self):
        """It runs there: its domain here stops (copy) and the VM is forgotten here."""
        from xenapi_classes import vm as vms

        ctx, obj = self.ctx, self.obj
        self._drop_image()
        if self.remote.pooled:
            await self._leave_pooled()
            return
        if self.mode == "copy":
            try:
                await ctx.call_backend(ctx.backend.shutdown, obj.uuid, False)
            except XenAPIError as exc:  # it runs there now: say so, and keep what runs here on record
                vms.apply_domain(ctx, obj, await ctx.call_backend(ctx.backend.domain, obj.uuid))
                raise failed(ctx, obj.ref, self.remote.url, "the destination runs it, but its domain here could "
                             "not be stopped: " + " ".join(exc.description)) from None
            vms.apply_domain(ctx, obj, None)
        try:
            await vms.forget(ctx, obj, ctx.backend.undefine)
        except XenAPIError as exc:
            raise failed(ctx, obj.ref, self.remote.url, "the destination runs it, but it could not be forgotten "
                         "here: " + " ".join(exc.description)) from None

    async def _leave_pooled(self):
        """Another host of the pool runs it under the same record: only the domain and the
        hypervisor's definition here go (the record says where it runs, as that host wrote it)."""
        ctx, obj = self.ctx, self.obj
        refresh = getattr(ctx.services.store, "refresh", None)
        if refresh is not None:  # before the backend reports the domain gone here
            await refresh("VM", obj.ref)
        try:
            if self.mode == "copy":
                await ctx.call_backend(ctx.backend.shutdown, obj.uuid, False)
            await ctx.call_backend(ctx.backend.undefine, obj.uuid)
        except XenAPIError as exc:
            raise failed(ctx, obj.ref, self.remote.url, "the destination runs it, but its domain here could not be "
                         "stopped: " + " ".join(exc.description)) from None

    async def roll_back(self):
        """Undo a sent VM: its copy there is destroyed, the VM runs here again."""
        if self.mode == "live":  # its domain comes back first; the VM there is then halted, and removed
            problem = await self._fetch_back()
            await asyncio.get_running_loop().run_in_executor(None, forget_there, self.remote, self.there)
            if problem:
                raise failed(self.ctx, self.obj.ref, self.remote.url, problem.lstrip("; "))
            return
        await asyncio.get_running_loop().run_in_executor(None, destroy_there, self.remote, self.there)
        refresh = getattr(self.ctx.services.store, "refresh", None)
        if self.remote.pooled and refresh is not None:  # the record as the destination left it
            await refresh("VM", self.obj.ref)
        problem = await self._resume_here()
        self._drop_image()
        if problem:
            raise failed(self.ctx, self.obj.ref, self.remote.url, problem.lstrip("; "))


def destroy_there(remote, ref):
    try:
        remote.call("VM.hard_shutdown", remote.session, ref, anyway=True)
    except Refused as exc:
        log.warning("migration roll-back: %s", exc)
    if remote.pooled:
        return  # the same record in the pool: only its domain there goes
    try:
        remote.call("VM.destroy", remote.session, ref, anyway=True)
    except Refused as exc:
        log.warning("migration roll-back: the VM could not be removed from the destination: %s", exc)


def forget_there(remote, ref, wait=10.0):
    """Remove the record of a VM whose domain left the destination (taken back live): once the
    destination has seen its domain go (libvirt's event, within moments) it is halted there."""
    deadline = time.monotonic() + wait
    try:
        while remote.call("VM.get_power_state", remote.session, ref, anyway=True) != "Halted" \
                and time.monotonic() < deadline:
            time.sleep(POLL / 5)
        remote.call("VM.destroy", remote.session, ref, anyway=True)
    except Refused as exc:
        log.warning("migration roll-back: the VM could not be removed from the destination: %s", exc)


def end_task(remote, task):
    """Cancel an import task there that will get nothing (its receive then ends)."""
    try:
        remote.call("task.cancel", remote.session, task, anyway=True)
    except Refused as exc:  # it ended already (failed, or the destination is gone)
        log.info("migration: the destination's task %s: %s", task, exc)


def failed(ctx, ref, url, reason):
    host = hosts.this_host(ctx.db)
    return XenAPIError("VM_MIGRATE_FAILED", ref, host.values["name_label"] if host else "", url, reason)


def leaving_record(ctx, obj, depends_on_uuids=None):
    """What travels with a VM: its definition, and its scheduling domain (for the check there)."""
    from xenapi_classes import sched_domain as sdoms
    from xenapi_classes import vm as vms

    meta = vms.record_for_image(ctx, obj)
    if depends_on_uuids is not None:
        meta["depends_on_uuids"] = json.dumps(depends_on_uuids)
    sd = sdoms.domain_of(ctx.db, obj.ref)
    if sd is not None:
        meta["sched_domain"] = sd.uuid
    return meta


def sched_domains_travel(ctx, objs):
    """A scheduling domain goes whole or not at all: every VM of a domain one of ``objs`` is in
    must be among them (OPERATION_NOT_ALLOWED otherwise, before anything moves). Returns the
    domains that travel."""
    from xenapi_classes import sched_domain as sdoms

    moving = {o.ref for o in objs}
    travelling = {}
    for obj in objs:
        sd = sdoms.domain_of(ctx.db, obj.ref)
        if sd is None or sd.ref in travelling:
            continue
        vms = [sd.values["master"], *sd.values["members"]]
        left = [ctx.db.get(r).values["name_label"] for r in vms if r not in moving]
        if left:
            raise XenAPIError("OPERATION_NOT_ALLOWED",
                              f"{obj.values['name_label']} is in scheduling domain "
                              f"{sd.values['name_label'] or sd.uuid}, whose VMs {', '.join(left)} would stay here: "
                              "migrate the master and every member together (one running VM group), or remove "
                              "it from the domain first")
        travelling[sd.ref] = sd
    return list(travelling.values())


async def migrate(ctx, objs, destination_url, live, step=None, depends=None, originator="xend-ext migrate"):
    """Move running VMs ``objs`` to the destination, all or none. ``step(send)`` runs the sends in
    its own order (a group's batches); by default one after the other. Returns the Remote logged
    in (the caller logs out) and the list of VMs moved."""
    from xenapi_classes import vm as vms

    url, host = hosts.destination(ctx.db, destination_url)  # another host of the pool: its address
    remote = Remote(url)  # a bad URL is refused before anything
    remote.pooled = host is not None
    if remote.pooled:  # its calls answered once it has seen the pool as this server has
        remote.rpc_url = forward.caught_up(ctx.services, url)
    ctx.require(Capability.MIGRATE)
    for obj in objs:
        vms.not_control_domain(obj, "migrated")
        vms.require_state(obj, "Running", "Paused")
    travelling = sched_domains_travel(ctx, objs)
    records = {o.ref: leaving_record(ctx, o, (depends or {}).get(o.ref)) for o in objs}
    first = objs[0].ref if objs else ""
    try:
        if remote.pooled:  # as the caller, with the pool's secret
            await in_thread(ctx, remote, remote.pool_login, ctx.services.store.secret,
                            ctx.session.values["this_user"] if ctx.session else "root", ctx.role, originator)
        else:
            await in_thread(ctx, remote, remote.login, originator)
        offer = await in_thread(ctx, remote, remote.call, "VM.migrate_check", remote.session,
                                list(records.values()))
    except Refused as exc:
        await logout(remote)
        raise failed(ctx, first, remote.url, str(exc)) from None
    except XenAPIError:
        await logout(remote)
        raise
    departures = {}
    async with contextlib.AsyncExitStack() as locks:
        async def send(obj):
            await locks.enter_async_context(ctx.lock(obj.ref))
            obj = ctx.current("VM", obj.ref)
            vms.require_state(obj, "Running", "Paused")
            record = records.get(obj.ref) or leaving_record(ctx, obj, (depends or {}).get(obj.ref))
            departure = Departure(ctx, obj, remote, record, live, live_way(ctx, offer))
            await departure.send()
            departures[obj.ref] = departure

        async def roll_back(obj):
            departure = departures.pop(obj.ref, None)
            if departure is not None:
                await departure.roll_back()

        try:
            if step is None:
                for obj in objs:
                    await send(obj)
            else:
                await step(send, roll_back)
            if not remote.pooled:  # a pool shares its scheduling domains
                await in_thread(ctx, remote, rebuild_sched_domains, ctx, remote, travelling)
        except BaseException:
            for ref in reversed(list(departures)):
                with contextlib.suppress(XenAPIError):
                    await departures[ref].roll_back()
            await logout(remote)
            raise
        ctx.progress(0.9)
        for departure in departures.values():
            await departure.commit()
    return remote


def live_way(ctx, offer):
    """The destination's live_target (its answer to VM.migrate_check) when the two hosts'
    hypervisors can move a running domain between them themselves: both offer the same kind (this
    one too, so that a roll-back can bring a domain back); else {}."""
    mine = ctx.backend.live_target()
    if mine and isinstance(offer, dict) and offer.get("live_migration") == mine.get("live_migration"):
        return offer
    return {}


async def logout(remote):
    await asyncio.get_running_loop().run_in_executor(None, remote.logout)


def rebuild_sched_domains(ctx, remote, travelling):
    """The scheduling domains that travelled, made again there from the VMs' uuids."""
    for sd in travelling:
        def there(ref):
            return remote.call("VM.get_by_uuid", remote.session, ctx.db.get(ref).uuid)
        remote.call("sched_domain.create", remote.session, {
            "name_label": sd.values["name_label"], "name_description": sd.values["name_description"],
            "master": there(sd.values["master"]), "members": [there(m) for m in sd.values["members"]]})


def regroup(remote, record, uuids):
    """On the destination, gather the migrated VMs in a group of the same name (made if missing)."""
    try:
        found = remote.call("VM_group.get_by_name_label", remote.session, record["name_label"])
        group = found[0] if found else remote.call("VM_group.create", remote.session, record)
        for uuid in uuids:
            remote.call("VM_group.add_VM", remote.session, group, remote.call("VM.get_by_uuid", remote.session, uuid))
    except Refused as exc:  # the VMs did move; only their grouping there failed
        log.warning("group migrate: the VMs moved but could not be grouped on %s: %s", remote.url, exc)


# -- the destination ------------------------------------------------------------------------------

def check_arrivals(ctx, records):
    """Whether this server can take every VM of ``records`` (their definitions as they travel),
    all together: the one place the destination validates, before anything moves. Raises the
    first problem."""
    from xenapi_classes import vm as vms

    ctx.require(Capability.MIGRATE)
    names, memory = set(), 0
    for record in records:
        uuid, name = record.get("uuid", ""), record.get("name_label", "")
        known = ctx.db.by_uuid_index.get(("VM", uuid))
        pooled = known is not None and not hosts.is_local(ctx.db, known.values["resident_on"])  # from its host
        if known is not None and known.values["power_state"] != "Halted" and not pooled:
            raise XenAPIError("VM_BAD_POWER_STATE", known.ref, "halted", known.values["power_state"].lower())
        if name in names or any(o.uuid != uuid for o in ctx.db.find_by("VM", "name_label", name)):
            raise XenAPIError("VALUE_NOT_SUPPORTED", "name_label", name, "another VM has this name")
        names.add(name)
        values = known.values if pooled else vms.values_from_image(ctx, record)
        pool = placement.pool_named(ctx.db, values["pool_name"])
        if pool is None:
            raise XenAPIError("VALUE_NOT_SUPPORTED", "pool_name", values["pool_name"],
                              f"{name}'s CPU pool does not exist on the destination")
        if pool.uuid not in placement.active_pools(ctx.db):
            raise XenAPIError("POOL_BAD_STATE", pool.ref, "deactivated",
                              f"{name}'s CPU pool {values['pool_name']} is not active on the destination")
        placement.check_start(ctx.db, values)  # its pins lie in that pool, off CPUs reserved here
        if record.get("sched_domain") and Capability.SCHED_DOMAIN not in ctx.backend.capabilities:
            raise XenAPIError("NOT_IMPLEMENTED", Capability.SCHED_DOMAIN)
        memory += values["memory_target"]
    free = ctx.backend.memory_free()
    if memory > free:
        raise XenAPIError("HOST_NOT_ENOUGH_FREE_MEMORY", memory, free)


IMPORTS: dict[str, Import] = {}  # task ref -> the import it waits for


class Import:
    """An image arriving for an import task: the HTTP body sink of ``PUT /import``. With no
    ``path``, a handover: an empty body, the source's word that its hypervisor moved the domain."""

    def __init__(self, ctx, size: int, path: Path | None, patience: float = START_TIMEOUT) -> None:
        self.ctx, self.size, self.path, self.patience = ctx, size, path, patience
        self.session = ctx.session.ref
        self.file = None
        self.received = 0
        self.reported = 0
        self.arrived = asyncio.Event()  # the body ended, whole or not
        self.problem = ""  # why it did not arrive whole
        self.cancelled = False
        self.outcome = asyncio.get_running_loop().create_future()  # the VM's ref, or the XenAPIError

    def begin(self) -> Import:
        self.file = open(self.path, "xb") if self.path else io.BytesIO()  # noqa: SIM115 - closed when the body ends
        return self

    def write(self, data: bytes) -> None:
        if self.cancelled:
            raise Refuse(409, "the import task was cancelled")
        if self.received + len(data) > self.size:
            raise Refuse(413, f"more than the {self.size} bytes announced")
        try:
            self.file.write(data)
        except OSError as exc:  # a full disk: the sender hears it, the import fails and cleans up
            raise Refuse(507, f"cannot write the image: {exc.strerror}") from None
        self.received += len(data)
        if self.received - self.reported >= PROGRESS_STEP:
            self.reported = self.received
            report(self.ctx, self.received, self.size, 0.0, 0.9)

    def complete(self) -> None:
        """The body ended (the HTTP parser's message-complete)."""
        self._end("" if self.received == self.size else f"{self.received} of {self.size} bytes arrived")

    def abort(self) -> None:
        """The connection ended, or the request was refused, before the body's end."""
        self._end(f"the sender stopped after {self.received} of {self.size} bytes")

    def _end(self, problem):
        if self.file is not None and not self.file.closed:
            self.file.close()
        if not self.arrived.is_set():
            self.problem = problem
            self.arrived.set()


async def receive(ctx, record, size, start_paused):
    """VM.migrate_receive's body, run as a task: check, wait for the image on /import, restore."""
    from xenapi_classes import vm as vms

    if ctx.task is None:
        raise XenAPIError("OPERATION_NOT_ALLOWED", "call Async.VM.migrate_receive, then PUT the image to "
                          "/import?session_id=<session>&task_id=<the task>")
    check_arrivals(ctx, [record])
    folder = vms.image_dir(ctx)
    if size < 0 or size > shutil.disk_usage(folder).free:
        raise XenAPIError("VALUE_NOT_SUPPORTED", "size", size, f"the image directory {folder} has not that room")
    incoming = Import(ctx, size, folder / f".import-{uuid_module.uuid4()}.part")

    async def restore():
        if record.get(IMAGE_EXTRA):
            await ctx.call_backend(ctx.backend.take_image, incoming.path, record[IMAGE_EXTRA])
        return await vms.receive(ctx, record, incoming.path, start_paused)

    return await importing(ctx, incoming, restore)


async def receive_live(ctx, record, start_paused):
    """VM.migrate_receive_live's body, run as a task: check, then wait for the source's handover
    (an empty PUT on /import, once its hypervisor moved the domain here by the live_target this
    host offers) and adopt the domain into the VM of ``record``. Meanwhile a domain of its uuid
    appearing here is this VM arriving, not one to discover (the arrival lock)."""
    from xenapi_classes import vm as vms

    if ctx.task is None:
        raise XenAPIError("OPERATION_NOT_ALLOWED", "call Async.VM.migrate_receive_live, then have the hypervisor "
                          "move the domain and PUT an empty body to /import?session_id=<session>&task_id=<the task>")
    check_arrivals(ctx, [record])
    if not ctx.backend.live_target():
        raise XenAPIError("VALUE_NOT_SUPPORTED", "live", "true", "this host takes no live migration from another "
                          "host's hypervisor (libvirt: serve --libvirt-migrate-uri)")
    uuid, figures = record.get("uuid", ""), {}

    async def adopt(config):
        domain, found = await ctx.call_backend(ctx.backend.adopt, uuid, config)
        figures.update(found)
        return domain

    async def arrived():
        ref = await vms.receive(ctx, record, None, start_paused, adopt)
        if "downtime" in figures:
            note(ctx, {f"migration_downtime:{uuid}": figures["downtime"]})
        return ref

    async with arrival_lock(ctx, uuid):
        return await importing(ctx, Import(ctx, 0, None, LIVE_START_TIMEOUT), arrived)


def arrival_lock(ctx, uuid):
    """Held while a VM of this uuid migrates in live: a domain of an unknown uuid is discovered
    (made a VM of its own) only under it, so not the one a migration is bringing."""
    return ctx.lock("arriving:" + uuid)


async def importing(ctx, incoming, then):
    """An import task's wait: ``incoming`` waits on /import, then ``then()`` makes the VM of it; the
    sender of the PUT hears the outcome (the VM's ref or the error)."""
    IMPORTS[ctx.task.ref] = incoming
    ctx.db.set(ctx.task, "other_config", {**ctx.task.values["other_config"], "import": "waiting"})
    outcome = XenAPIError("INTERNAL_ERROR", "the import ended without an outcome")
    try:
        await wait_for(ctx, incoming)
        report(ctx, incoming.received, incoming.size, 0.0, 0.9)
        outcome = await then()
        await ctx.services.commit(ctx.db.last_seq)  # recorded before the sender hears it runs here
    except XenAPIError as exc:
        outcome = exc
        raise
    finally:
        IMPORTS.pop(ctx.task.ref, None)
        incoming.cancelled = True  # a sender still sending is refused
        incoming.abort()
        if incoming.path is not None:
            ctx.backend.drop_image(incoming.path)
        incoming.outcome.set_result(outcome)
    return outcome


async def wait_for(ctx, incoming):
    """Until the whole image is here; TASK_CANCELLED stops the sender at its next chunk."""
    waited = 0.0
    while not incoming.arrived.is_set():
        try:
            await asyncio.wait_for(incoming.arrived.wait(), POLL)
        except TimeoutError:
            waited += POLL
        try:
            ctx.checkpoint()
        except XenAPIError:
            incoming.cancelled = True
            raise
        if incoming.file is None and waited > incoming.patience:
            raise XenAPIError("VALUE_NOT_SUPPORTED", "image", "", f"nothing came within {incoming.patience:.0f} s")
    if incoming.problem:
        raise XenAPIError("VALUE_NOT_SUPPORTED", "image", "", incoming.problem)


def body_sink(services, method: bytes, url: bytes, length: int):
    """At the end of a request's headers: the sink of an import, or None for any other request.
    Refuses (before any body byte is read) an unknown session or task, or a wrong length."""
    if not url.startswith(b"/import"):  # every request comes here: the others leave at once
        return None
    parts = urllib.parse.urlsplit(url.decode("latin-1"))
    if parts.path != "/import":
        return None
    query = parts.query
    if method != b"PUT":
        raise Refuse(405, "PUT the image to /import")
    args = urllib.parse.parse_qs(query)
    session, task = (args.get(k, [""])[0] for k in ("session_id", "task_id"))
    incoming = IMPORTS.get(task)
    found = services.db.find(session)
    if found is None or found.cls.name != "session":
        raise Refuse(403, f"SESSION_INVALID {session}")
    if incoming is None or incoming.session != session or incoming.file is not None:
        raise Refuse(404, f"no import waits for task {task} in this session")
    if length != incoming.size:
        raise Refuse(411 if length < 0 else 400, f"send the image with Content-Length: {incoming.size}")
    return incoming.begin()


async def finish(request: Request):
    """The reply to PUT /import once the VM runs here (or why not)."""
    incoming = request.sink
    if not isinstance(incoming, Import):
        return 404, "text/plain", b"PUT the image to /import?session_id=..&task_id=.. of Async.VM.migrate_receive\n"
    incoming.complete()
    outcome = await asyncio.shield(incoming.outcome)
    if isinstance(outcome, XenAPIError):
        return 409, "text/plain; charset=utf-8", (" ".join(outcome.description) + "\n").encode()
    return 200, "text/plain", f"{outcome}\n".encode()

"""Which hosts of the pool are live: one etcd lease per server, a key per host attached to it.

Each server grants itself a lease of ``ttl`` seconds (``serve --cluster-lease``) and puts
``<prefix>l/<host uuid>`` under it; it renews the lease every third of the ttl. A server that
stops renewing (killed, frozen, cut from etcd) loses its lease when etcd's clock says the ttl has
passed, and etcd deletes the key: every server watches ``<prefix>l/`` and so learns, in etcd's
order, which hosts hold a lease. A server whose lease expired (it was frozen, or etcd could not be
reached for longer than the ttl) grants itself a new one as soon as it can and is live again;
``on_regained`` callbacks then run (the host settles what happened to its VMs meanwhile).

A server that has not renewed its lease for three quarters of the ttl (two renewals missed) runs
its ``on_fence`` callbacks: its lease may expire before it can renew it, and then the pool may
restart its VMs elsewhere (xend_ext.cluster.ha stops them first). The renewal it was asked at
started no later than etcd's own count, so this comes before etcd can expire the lease. If the
lease turns out to have survived, the ``on_regained`` callbacks run at the next renewal all the
same, to take stock of what was stopped.

The lease is revoked when the server stops cleanly, so a stopped host is shown not live at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from .store import RETRY, UNREACHABLE, why

log = logging.getLogger("xend_ext.cluster.liveness")

DEFAULT_TTL = 5  # seconds; etcd rounds a lease up to its own minimum (1.5 election timeouts)


class Liveness:
    def __init__(self, client, prefix: bytes, host_uuid: str, ttl: int = DEFAULT_TTL) -> None:
        self.client = client
        self.keys = prefix + b"l/"
        self.host_uuid = host_uuid
        self.key = self.keys + host_uuid.encode()
        self.ttl = ttl
        self.live: dict[str, int] = {}  # host uuid -> the id of the lease its key is attached to
        self.lease = None
        self.renewed = 0.0  # monotonic time the last successful renewal was asked
        #: (host uuid, live) after each change of the view; the callback must not block
        self.listeners: list[Callable[[str, bool], None]] = []
        #: run after this server got a new lease (its old one expired): nothing of it was live meanwhile
        self.on_regained: list[Callable[[], Awaitable[None]]] = []
        #: run once when the lease was not renewed for 3/4 of the ttl: the pool may soon count us lost
        self.on_fence: list[Callable[[], Awaitable[None]]] = []
        self.fenced = False
        self._tasks: list[asyncio.Task] = []
        self._regain_lock = asyncio.Lock()
        self._closed = False
        self.regains = 0

    def is_live(self, host_uuid: str) -> bool:
        return host_uuid in self.live

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Hold a lease with this host's key on it, read who else is live, and follow changes."""
        await self._grant()
        found = await self.client.get_prefix(self.keys)
        for kv in found:
            self._seen(kv.key, kv.lease)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._keepalive()),
                       loop.create_task(self._watch(found.header.revision + 1)),
                       loop.create_task(self._watchdog())]

    async def close(self) -> None:
        """Stop renewing and give the lease back: the other hosts see this one not live at once."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.lease is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.revoke_lease(self.lease.id), 2)

    # ------------------------------------------------------------------ our lease

    async def _grant(self) -> None:
        asked = time.monotonic()
        self.lease = await self.client.lease(self.ttl)
        await self.client.put(self.key, b"", lease=self.lease.id)
        self.renewed = asked  # the watch tells that the key is back, after the deletion it may still bring

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            asked = time.monotonic()
            try:
                reply = await self.client.refresh_lease(self.lease.id)
            except asyncio.CancelledError:
                raise
            except UNREACHABLE as exc:
                log.warning("etcd: cannot renew this host's lease: %s", why(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - a lease etcd no longer knows: take a new one
                log.warning("etcd: renewing this host's lease failed: %s", why(exc))
                reply = None
            if reply is not None and reply.TTL > 0:
                self.renewed = asked
                if self.fenced:  # fenced, but the lease held: settle all the same
                    self.fenced = False
                    await self._run(self.on_regained, "after renewing the lease")
                continue
            await self._regain(self.lease.id)

    async def _watchdog(self) -> None:
        """Fence this host when its lease has gone unrenewed for 3/4 of the ttl."""
        while True:
            await asyncio.sleep(max(0.05, self.renewed + self.ttl * 0.75 - time.monotonic()))
            if time.monotonic() - self.renewed >= self.ttl * 0.75 and not self.fenced:
                self.fenced = True
                log.warning("this host's lease was not renewed for %.1f s: fencing", time.monotonic() - self.renewed)
                await self._run(self.on_fence, "fencing")

    async def _regain(self, lost: int) -> None:
        """Our lease ``lost`` expired (we were frozen or cut off): take a new one, then settle."""
        async with self._regain_lock:
            if self.lease is not None and self.lease.id != lost:
                return  # the watch or the renewal saw it first, and a new one is held already
            log.warning("this host's lease expired: the pool saw it not live; taking a new one")
            while not self._closed:
                try:
                    await self._grant()
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - etcd unreachable: keep trying
                    log.warning("etcd: cannot take a new lease: %s", why(exc))
                    await asyncio.sleep(RETRY)
            self.regains += 1
            self.fenced = False
            await self._run(self.on_regained, "after taking a new lease")

    async def _run(self, callbacks, what: str) -> None:
        for callback in callbacks:
            try:
                await callback()
            except Exception:  # noqa: BLE001 - one failed callback must not stop the lease
                log.exception(what)

    # ------------------------------------------------------------------ the others

    async def _watch(self, start: int) -> None:
        """Follow ``l/``; after a break read it again and watch on from there."""
        while True:
            try:
                watch = await self.client.watch_prefix(self.keys, start_revision=start)
                async for event in watch:
                    kv = event.kv
                    start = kv.mod_revision + 1
                    if event.kind == "PUT":
                        self._seen(kv.key, kv.lease)
                    else:
                        self._gone(kv.key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a member gone or history compacted: read again
                log.warning("etcd watch of the pool's leases: %s; reading them again", why(exc))
                await asyncio.sleep(RETRY)
                with contextlib.suppress(Exception):
                    found = await self.client.get_prefix(self.keys)
                    present = {kv.key for kv in found}
                    for kv in found:
                        self._seen(kv.key, kv.lease)
                    for uuid in [u for u in self.live if self.keys + u.encode() not in present]:
                        self._gone(self.keys + uuid.encode())
                    start = found.header.revision + 1

    def _seen(self, key: bytes, lease: int) -> None:
        uuid = key[len(self.keys):].decode()
        was = uuid in self.live
        self.live[uuid] = lease
        if not was:
            self._tell(uuid, True)

    def _gone(self, key: bytes) -> None:
        uuid = key[len(self.keys):].decode()
        lease = self.live.pop(uuid, None)
        if lease is None:
            return
        self._tell(uuid, False)
        if uuid == self.host_uuid and not self._closed:  # we were seen not live: take a new lease now
            asyncio.get_running_loop().create_task(self._regain(lease))

    def _tell(self, uuid: str, live: bool) -> None:
        log.info("host %s is %s", uuid, "live" if live else "not live (its lease expired)")
        for listener in self.listeners:
            try:
                listener(uuid, live)
            except Exception:  # noqa: BLE001 - one listener must not stop the watch
                log.exception("telling of host %s's liveness", uuid)

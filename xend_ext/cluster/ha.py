"""What a pool does when a host is no longer live, and what that host does when it returns.

**A host lost.** Every live server sees a host's lease key go (:mod:`.liveness`) and, for each
VM the lost host ran, tries one etcd transaction that rewrites the VM's record only if etcd
still has no lease key for that host and the record is still at the mod revision this server's
model holds it at. Exactly one server's transaction wins per VM, whoever noticed first; the
others' compares fail and they take the winner's record from the watch like any change.

- Without HA (``pool.ha_enabled`` false, or the VM not ``auto_power_on``) the record says
  ``power_state`` ``Unknown``, still resident on the lost host: nobody knows whether it runs.
- With HA and ``auto_power_on`` the record says ``Halted`` (halted by the loss, resident
  nowhere), and the winner, and it alone, starts the VM again: ``VM.start``, which places it on a
  live host (xend_ext.hosts.place) and has that host start it.

The transaction is the claim: it needs the lost host's lease to be gone (so its VMs are never
taken while it may still renew it) and it can succeed once per record revision, so two servers
noticing together, or noticing again later, never restart a VM twice.

**A host cut off** (its server runs but cannot renew its lease for 3/4 of its time) fences
itself when HA is on: it stops its auto_power_on VMs' domains, which the pool is about to
restart elsewhere, before etcd can expire its lease.

**A host returning** (it took a new lease after its old one expired, or it starts after a
crash) settles before anything else: for each VM its hypervisor runs or its model says it runs,
it reads the VM's record from etcd. A record that says the VM resides elsewhere (or nowhere: it
was halted by the loss and restarted) means the returning host's copy must not run: it is
stopped, and the record is left as it is. A record still resident here with power state
``Unknown`` takes the state the hypervisor reports. Since no claim can succeed once the host's
new lease key exists, what it reads then is final.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from .. import hosts
from ..dispatch import Context
from ..model import Change, current_change
from ..wire import NULL_REF
from .liveness import Liveness

log = logging.getLogger("xend_ext.cluster.ha")

LIVE_STATES = ("Running", "Paused")
CATCH_UP = 5.0  # seconds a server waits for its watch to bring a record it read from etcd
PASSES, AGAIN = 3, 0.5  # tries at marking a lost host's VMs, and seconds between them


async def join(services) -> Liveness:
    """This server's lease, its view of the others, and what it does about their changes. Its
    VMs are settled first (it may return from a crash while the pool restarted some of them)."""
    store, db = services.store, services.db
    liveness = Liveness(store.client, store.prefix, db.host_uuid, services.config.cluster_lease)
    await liveness.start()
    db.liveness = liveness
    pool = PoolHA(services, liveness)
    liveness.listeners.append(pool.changed)
    liveness.on_regained.append(pool.settle)
    liveness.on_fence.append(pool.fence)
    await pool.settle()
    return liveness


class PoolHA:
    def __init__(self, services, liveness: Liveness) -> None:
        self.services = services
        self.db = services.db
        self.store = services.store
        self.liveness = liveness

    def changed(self, uuid: str, live: bool) -> None:
        host = self.db.by_uuid_index.get(("host", uuid))
        if host is not None:
            self.db.touch(host)  # host.live is computed: announce it
        if not live and uuid != self.liveness.host_uuid and self.liveness.is_live(self.liveness.host_uuid):
            asyncio.get_running_loop().create_task(self.lost(uuid))

    # ------------------------------------------------------------------ a host lost

    async def lost(self, uuid: str) -> None:
        host = self.db.by_uuid_index.get(("host", uuid))
        if host is None:
            return
        pool = self.db.first("pool")
        ha = bool(pool is not None and pool.values.get("ha_enabled"))
        for _pass in range(PASSES):  # a compare fails while the watch still brings the newest record
            waiting = [obj for obj in map(self.db.find, list(self.db.field_value(host, "resident_VMs")))
                       if obj is not None and obj.values["power_state"] in LIVE_STATES]
            if not waiting or self.liveness.is_live(uuid):
                return
            won, lost_any = [], False
            for obj in waiting:
                restart = ha and obj.values["auto_power_on"] and not obj.values["is_control_domain"]
                revision = await self._claim(uuid, obj, restart)
                lost_any |= revision is None
                if revision is not None and restart:
                    won.append((obj, revision))
            won.sort(key=lambda pair: (pair[0].values["order"], pair[0].values["name_label"]))
            for obj, revision in won:
                await self._restart(obj, revision)
            if not lost_any:
                return
            await asyncio.sleep(AGAIN)

    async def _claim(self, uuid: str, obj, restart: bool) -> int | None:
        """The one transaction that marks a lost host's VM: its revision if it was ours."""
        client, store = self.store.client, self.store
        key = self._key(obj)
        marked = {"power_state": "Halted", "resident_on": NULL_REF, "domid": -1} if restart else {
            "power_state": "Unknown"}
        t = client.transactions
        compare = [t.create(self.liveness.keys + uuid.encode()) == 0, t.mod(key) == store.known.get(key, 0)]
        success = [t.put(key, store.encode(store.record(obj, marked)))]
        try:
            ok, responses = await client.transaction(compare=compare, success=success, failure=[])
        except Exception as exc:  # noqa: BLE001 - etcd unreachable: another server will do it
            log.warning("could not mark VM %s of lost host %s: %s", obj.values["name_label"], uuid, exc)
            return None
        if not ok:
            return None
        log.info("VM %s of lost host %s: %s", obj.values["name_label"], uuid,
                 "halted by the loss, restarting it (pool.ha_enabled)" if restart else "power state unknown")
        return responses[0].response_put.header.revision

    async def _restart(self, obj, revision: int) -> None:
        from xenapi_classes import vm

        key = self._key(obj)
        if not await self._caught_up(key, revision):
            log.error("HA: VM %s was halted by the loss but not seen here; not restarted", obj.values["name_label"])
            return
        ctx = Context(self.services, "ha")
        try:
            await vm.start(ctx, obj.ref, False, False)  # placed on a live host (xend_ext.hosts.place)
            await self.services.commit(self.db.last_seq)
            where = self.db.find(obj.values["resident_on"])
            log.info("HA: VM %s restarted on host %s", obj.values["name_label"],
                     where.uuid if where is not None else obj.values["resident_on"])
        except Exception as exc:  # noqa: BLE001 - it stays halted; the log says why
            log.warning("HA: VM %s could not be restarted: %s", obj.values["name_label"], exc)

    # ------------------------------------------------------------------ this host cut off

    async def fence(self) -> None:
        """Our lease may expire before we can renew it: with HA on, the pool is about to restart
        our auto_power_on VMs elsewhere, so their domains here are stopped now (the records are
        left alone: etcd may be out of reach; settle writes what the hypervisor has later)."""
        pool = self.db.first("pool")
        if pool is None or not pool.values.get("ha_enabled"):
            return
        backend = self.services.backend
        ctx = Context(self.services, "fence")
        for ref in list(self.db.reverse.get(("VM", "resident_on"), {}).get(hosts.this_ref(self.db), ())):
            obj = self.db.find(ref)
            if (obj is None or not obj.values["auto_power_on"] or obj.values["is_control_domain"]
                    or obj.values["power_state"] not in LIVE_STATES):
                continue
            log.warning("fencing: stopping VM %s, which the pool may restart elsewhere", obj.values["name_label"])
            try:
                await ctx.call_backend(backend.shutdown, obj.uuid, False)
            except Exception as exc:  # noqa: BLE001 - not running here after all
                log.warning("fencing: VM %s: %s", obj.values["name_label"], exc)

    # ------------------------------------------------------------------ this host returning

    async def settle(self) -> None:
        """After taking a lease: stop the copies of VMs the pool restarted elsewhere, and give
        the VMs resident here (marked unknown, or fenced) the state the hypervisor reports."""
        from xenapi_classes import vm

        me = hosts.this_ref(self.db)
        backend = self.services.backend
        ctx = Context(self.services, "settle")
        domains = {d.uuid: d for d in await ctx.call_backend(backend.domains)}
        mine = [self.db.find(ref) for ref in self.db.reverse.get(("VM", "resident_on"), {}).get(me, ())]
        uuids = set(domains) | {o.uuid for o in mine if o is not None}
        token = current_change.set(Change(live=True))
        try:
            for uuid in sorted(uuids):
                obj = self.db.by_uuid_index.get(("VM", uuid))
                if obj is None:
                    continue
                key = self._key(obj)
                found = await self.store.client.get(key)
                if found is None:
                    continue
                record = json.loads(found.value)
                domain = domains.get(uuid)
                if record["resident_on"] != me:
                    if domain is not None and domain.power_state in LIVE_STATES and not domain.is_control_domain:
                        log.warning("VM %s runs elsewhere now (restarted while this host was not live): "
                                    "stopping this host's copy", obj.values["name_label"])
                        await ctx.call_backend(backend.shutdown, uuid, False)
                elif await self._caught_up(key, found.mod_revision):
                    async with ctx.lock(obj.ref):
                        vm.apply_domain(ctx, obj, domain)
            await self.services.commit(self.db.last_seq)
        finally:
            current_change.reset(token)

    # ------------------------------------------------------------------ helpers

    def _key(self, obj) -> bytes:
        return self.store.key(obj.cls.name, obj.ref)

    async def _caught_up(self, key: bytes, revision: int) -> bool:
        """Wait until this server's model holds the object at ``revision`` or later."""
        deadline = time.monotonic() + CATCH_UP
        while self.store.known.get(key, 0) < revision:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

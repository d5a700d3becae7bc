"""``cpu_pool``: a named set of pCPUs with its own scheduler (seed 000, xend 4.1's class).

A pool is *defined* (stored here, persisted) and may be *activated* (it exists in the
hypervisor with CPUs taken from the free ones). The hypervisor is the truth about active pools:
``activated``, ``host_CPUs`` and ``started_VMs`` are read from the backend. Every step that
touches the hypervisor is one backend call, all or nothing, so a failed activate or deactivate
changes nothing, and every change emits events (xend's methods emitted none).
"""

from __future__ import annotations

import contextlib
import logging
import re

from xenapi_classes import sched_domain as sdoms
from xend_ext import hosts, placement
from xend_ext import types as T
from xend_ext.backends.base import Capability
from xend_ext.datamodel import POOL_ADMIN, RO, RW, Field, XenAPIClass
from xend_ext.wire import XenAPIError

log = logging.getLogger("xend_ext.cpu_pool")

NAME_RE = re.compile(r"[A-Za-z0-9_\-.:/+]+")
SCHEDULERS = ("credit", "credit2", "sedf")  # the Xen-API document's; a backend offers some of them
POOL0 = placement.POOL0
CREATED_BY = ("created_by", "xm cpupool-create")  # other_config: cpupool-destroy deletes such a pool


def _active(db, pool):
    return placement.live_pool(db, pool)


def _host_cpus(db, pool):
    live = _active(db, pool)
    if live is None:
        return []
    by_number = {c.values["number"]: c.ref for c in hosts.cpus_of(db, pool.values["resident_on"])}
    return [by_number[n] for n in sorted(live.cpus) if n in by_number]


def _started_vms(db, pool):
    if _active(db, pool) is None:
        return []
    if not hosts.is_local(db, pool.values["resident_on"]):
        return [vm.ref for vm in hosts.running_in_pool(db, pool)]
    running = (db.by_uuid_index.get(("VM", d.uuid)) for d in db.backend.domains()
               if d.pool == pool.uuid and d.power_state in ("Running", "Paused"))
    return [vm.ref for vm in running if vm is not None]


def _check_name(ctx, obj, value):
    if not value or not NAME_RE.fullmatch(value):
        raise XenAPIError("PARAMETER_ERROR", f'Invalid Pool Name "{value}": use letters, digits and _-.:/+')
    other = hosts.pool_named(ctx.db, value, obj.values["resident_on"] if obj is not None else None)
    if other is not None and other is not obj:  # unique on its host
        raise XenAPIError("PARAMETER_ERROR", f'Pool name "{value}" already exists')
    if obj is not None and obj.values["name_label"] == POOL0 and value != POOL0:
        raise XenAPIError("OPERATION_NOT_ALLOWED", "Pool-0 cannot be renamed")


def _check_ncpu(ctx, obj, value):
    if value < 1:
        raise XenAPIError("PARAMETER_ERROR", "ncpu")


def _inactive_only(ctx, obj, value):
    if obj is not None and _active(ctx.db, obj) is not None:
        raise XenAPIError("POOL_BAD_STATE", "activated")


def _check_proposed(ctx, obj, value):
    _inactive_only(ctx, obj, value)
    ncpus = len(ctx.backend.host_info().cpus)
    for item in value:
        if not item.isdigit() or int(item) >= ncpus:
            raise XenAPIError("INVALID_CPU", f"no pCPU {item} on this host (it has {ncpus})")


def _check_sched(ctx, obj, value):
    _inactive_only(ctx, obj, value)
    if value != "":
        check_scheduler(ctx, value)


def check_scheduler(ctx, value):
    """A pool's scheduler is one the hypervisor really has (Xen 4.17 has no sedf): a name outside
    the Xen-API document's list is UNKOWN_SCHED_POLICY (sic), one the backend lacks is refused by name."""
    if value not in SCHEDULERS:
        raise XenAPIError("UNKOWN_SCHED_POLICY")
    offered = ctx.backend.schedulers
    if value not in offered:
        raise XenAPIError("VALUE_NOT_SUPPORTED", "sched_policy", value,
                          f"the {ctx.backend.name} backend schedules pools with {', '.join(offered)} only")


cpu_pool = XenAPIClass(
    "cpu_pool",
    "A set of physical CPUs with its own scheduler; VMs in it run only there",
    [
        Field("name_label", T.String, RW, default="Pool-Unnamed", validate=_check_name,
              doc="unique, letters, digits and _-.:/+"),
        Field("name_description", T.String, RW),
        Field("resident_on", T.Ref("host", nullable=True), RO, doc="the host"),
        Field("auto_power_on", T.Bool, RW, doc="activate when the server starts (before VMs auto-start)"),
        Field("started_VMs", T.Set(T.Ref("VM")), RO, compute=_started_vms, volatile=True,
              doc="VMs running in it (VM starts and stops do not touch the pool)"),
        Field("ncpu", T.Int, RW, default=1, validate=_check_ncpu, doc="CPUs to take at activation"),
        Field("sched_policy", T.String, RW, validate=_check_sched,
              doc="one of the backend's schedulers (host.capabilities lists them as sched:<name>); "
                  "'' means the host's default, resolved at activation"),
        Field("proposed_CPUs", T.Set(T.String), RW, validate=_check_proposed,
              doc="CPU numbers preferred at activation"),
        Field("host_CPUs", T.Set(T.Ref("host_cpu")), RO, compute=_host_cpus, doc="the CPUs it has (active only)"),
        Field("activated", T.Bool, RO, compute=lambda db, p: _active(db, p) is not None,
              doc="exists in the hypervisor"),
        Field("other_config", T.Map(T.String, T.String), RW),
    ],
    default_role=POOL_ADMIN,
    creatable=True,
    destroyable=True,
)

POOL_LOCK = "cpu_pool/*"  # pool changes compete for the free CPUs: one at a time, as xend's class lock


def announce(ctx, pools=None, cpus=None):
    """Pool changes move CPUs: the computed fields of the ``pools`` changed (default: every pool),
    of the ``cpus`` (numbers; default: every pCPU) and the host's free count, and the live state
    of the domains the backend says moved. (A VM's cpu_pool changes only when it moves: the move
    announces it.)"""
    for obj in hosts.pools_on(ctx.db) if pools is None else pools:
        ctx.db.touch(obj)
    for obj in hosts.cpus_of(ctx.db):
        if cpus is None or obj.values["number"] in cpus:
            ctx.db.touch(obj)
    host = hosts.this_host(ctx.db)
    if host is not None:
        ctx.db.touch(host)
    hosts.publish(ctx)
    placement.refresh_live(ctx)


def _on_create(ctx, values):
    values["resident_on"] = hosts.this_ref(ctx.db)


def free_cpus(ctx):
    taken = set()
    for live in ctx.backend.pools():
        taken |= live.cpus
    return sorted(n for n in range(len(ctx.backend.host_info().cpus)) if n not in taken)


def choose_cpus(pool, free):
    """xend's rule: the proposed CPUs that are free first, then other free CPUs, up to ncpu."""
    proposed = sorted(int(c) for c in pool.values["proposed_CPUs"])
    first = [c for c in proposed if c in free]
    rest = [c for c in free if c not in first]
    return (first + rest)[: pool.values["ncpu"]]


async def _activate(ctx, pool, free):
    ncpu = pool.values["ncpu"]
    if len(free) < ncpu:
        raise XenAPIError("INSUFFICIENT_CPUS", ncpu, len(free))
    sched = pool.values["sched_policy"] or ctx.backend.host_info().sched_policy
    check_scheduler(ctx, sched)
    chosen = frozenset(choose_cpus(pool, free))
    ctx.progress(0.5)  # a new pool holds no VM yet: no vCPU loses a CPU (placement has nothing to check)
    await ctx.call_backend(ctx.backend.pool_activate, pool.uuid, pool.values["name_label"], sched, chosen)
    announce(ctx, [pool], chosen)


POOL_MSG = dict(capability=Capability.POOLS)


@cpu_pool.message(("self", T.Ref("cpu_pool")), ("value", T.String), role=POOL_ADMIN, async_ok=False,
                  errors=("PARAMETER_ERROR",))
def set_name_label(ctx, ref, value):
    """Rename a pool; the VMs that name it in pool_name follow, so they still start there."""
    pool = ctx.current("cpu_pool", ref)
    _check_name(ctx, pool, value)
    old = pool.values["name_label"]
    ctx.db.set(pool, "name_label", value)
    for vm in ctx.db.find_by("VM", "pool_name", old):
        ctx.db.set(vm, "pool_name", value)


@cpu_pool.message(("self", T.Ref("cpu_pool")), role=POOL_ADMIN, **POOL_MSG,
                  errors=("POOL_BAD_STATE", "INSUFFICIENT_CPUS", "UNKOWN_SCHED_POLICY"))
async def activate(ctx, ref):
    """Create the pool in the hypervisor: proposed free CPUs first, then other free ones, ncpu in all."""
    async with ctx.lock(POOL_LOCK):
        pool = ctx.current("cpu_pool", ref)
        if _active(ctx.db, pool) is not None:
            raise XenAPIError("POOL_BAD_STATE", "activated")
        await _activate(ctx, pool, free_cpus(ctx))


@cpu_pool.message(("self", T.Ref("cpu_pool")), role=POOL_ADMIN, **POOL_MSG, errors=("POOL_BAD_STATE",))
async def deactivate(ctx, ref):
    """Remove the pool from the hypervisor (no VM may run in it); its CPUs become free."""
    async with ctx.lock(POOL_LOCK):
        pool = ctx.current("cpu_pool", ref)
        live = _active(ctx.db, pool)
        if live is None:
            raise XenAPIError("POOL_BAD_STATE", "deactivated")
        if pool.values["name_label"] == POOL0:
            raise XenAPIError("OPERATION_NOT_ALLOWED", "Pool-0 cannot be deactivated")
        placement.check_deactivation(ctx.db, live)
        cpus = frozenset(live.cpus)
        await ctx.call_backend(ctx.backend.pool_deactivate, pool.uuid)
        announce(ctx, [pool], cpus)


@cpu_pool.message(("self", T.Ref("cpu_pool")), role=POOL_ADMIN, errors=("POOL_BAD_STATE",))
async def destroy(ctx, ref):
    """Forget an inactive pool's definition. The VMs whose pool_name names it start in Pool-0
    from now on (as a destroyed group's members go to Null-Group): no VM names a pool that is gone."""
    async with ctx.lock(POOL_LOCK):
        pool = ctx.current("cpu_pool", ref)
        if pool.values["name_label"] == POOL0:
            raise XenAPIError("OPERATION_NOT_ALLOWED", "Pool-0 cannot be destroyed")
        if _active(ctx.db, pool) is not None:
            raise XenAPIError("POOL_BAD_STATE", "activated")
        for vm in ctx.db.find_by("VM", "pool_name", pool.values["name_label"]):
            ctx.db.set(vm, "pool_name", POOL0)
        ctx.db.destroy(pool)


def _number(ctx, host_cpu_ref):
    return ctx.db.get(host_cpu_ref).values["number"]


@cpu_pool.message(("self", T.Ref("cpu_pool")), ("host_cpu", T.Ref("host_cpu")), role=POOL_ADMIN, **POOL_MSG,
                  errors=("POOL_BAD_STATE", "INVALID_CPU"))
async def add_host_CPU_live(ctx, ref, host_cpu):  # noqa: N802 - the wire name
    """Give an active pool a free CPU (it joins proposed_CPUs; ncpu follows)."""
    async with ctx.lock(POOL_LOCK):
        pool = ctx.current("cpu_pool", ref)
        if _active(ctx.db, pool) is None:
            raise XenAPIError("POOL_BAD_STATE", "deactivated")
        number = _number(ctx, host_cpu)  # placement: a CPU more never leaves a vCPU nowhere
        live = await ctx.call_backend(ctx.backend.pool_add_cpu, pool.uuid, number)
        _follow(ctx, pool, live, number)


@cpu_pool.message(("self", T.Ref("cpu_pool")), ("host_cpu", T.Ref("host_cpu")), role=POOL_ADMIN, **POOL_MSG,
                  errors=("POOL_BAD_STATE", "INVALID_CPU", "LAST_CPU_NOT_REMOVEABLE", "OPERATION_NOT_ALLOWED"))
async def remove_host_CPU_live(ctx, ref, host_cpu):  # noqa: N802 - the wire name
    """Take a CPU out of an active pool; it becomes free. The last one stays (seed 000: an
    activated pool owns at least one CPU; xend let an unused pool lose it), and a CPU is not
    taken while a VM running there would be left nowhere to run (placement's rule)."""
    async with ctx.lock(POOL_LOCK):
        pool = ctx.current("cpu_pool", ref)
        live = _active(ctx.db, pool)
        if live is None:
            raise XenAPIError("POOL_BAD_STATE", "deactivated")
        number = _number(ctx, host_cpu)
        if live.cpus == {number}:
            raise XenAPIError("LAST_CPU_NOT_REMOVEABLE", "could not remove last cpu")
        if number in live.cpus:
            placement.check_cpu_removal(ctx.db, pool, live, number)
        live = await ctx.call_backend(ctx.backend.pool_remove_cpu, pool.uuid, number)
        _follow(ctx, pool, live, number)


def _follow(ctx, pool, live, number):
    """As xend: after a live change the definition follows the pool (proposed CPUs and ncpu)."""
    ctx.db.set(pool, "proposed_CPUs", [str(n) for n in sorted(live.cpus)])
    ctx.db.set(pool, "ncpu", max(1, len(live.cpus)))
    announce(ctx, [pool], {number})


def _cpu_number(ctx, value):
    text = str(value).strip()
    ncpus = len(ctx.backend.host_info().cpus)
    if not text.isdigit() or int(text) >= ncpus:
        raise XenAPIError("INVALID_CPU", f"no pCPU {text} on this host (it has {ncpus})")
    return str(int(text))


@cpu_pool.message(("self", T.Ref("cpu_pool")), ("cpu", T.Int), role=POOL_ADMIN,
                  errors=("POOL_BAD_STATE", "INVALID_CPU"))
async def add_to_proposed_CPUs(ctx, ref, cpu):  # noqa: N802 - the wire name
    """Prefer this CPU at the next activation (inactive pools only)."""
    async with ctx.lock(POOL_LOCK):
        pool = ctx.current("cpu_pool", ref)
        _inactive_only(ctx, pool, None)
        number = _cpu_number(ctx, cpu)
        if number not in pool.values["proposed_CPUs"]:
            ctx.db.set(pool, "proposed_CPUs", sorted([*pool.values["proposed_CPUs"], number], key=int))


@cpu_pool.message(("self", T.Ref("cpu_pool")), ("cpu", T.Int), role=POOL_ADMIN, errors=("POOL_BAD_STATE",))
async def remove_from_proposed_CPUs(ctx, ref, cpu):  # noqa: N802 - the wire name
    """Stop preferring this CPU (inactive pools only)."""
    async with ctx.lock(POOL_LOCK):
        pool = ctx.current("cpu_pool", ref)
        _inactive_only(ctx, pool, None)
        ctx.db.set(pool, "proposed_CPUs", [c for c in pool.values["proposed_CPUs"] if int(c) != cpu])


# -- VMs and pools -------------------------------------------------------------------------

def pool_named(ctx, name):
    return placement.pool_named(ctx.db, name)


def check_vm_start(ctx, vm):
    """A VM starts only where placement's rule lets every vCPU run (pool, pins, reservations)."""
    placement.check_start(ctx.db, vm.values, vm.ref)


def vm_cpu_pool(db, vm):
    """VM.cpu_pool: the pool its domain runs in; empty when it does not run."""
    if not hosts.is_local(db, vm.values["resident_on"]):  # it runs elsewhere: in its pool of that name there
        pool = hosts.pool_named(db, vm.values["pool_name"] or POOL0, vm.values["resident_on"])
        running = vm.values["power_state"] in ("Running", "Paused")
        return [pool.ref] if pool is not None and running else []
    domain = db.backend.domain(vm.uuid) if vm.values["power_state"] in ("Running", "Paused") else None
    if domain is None or not domain.pool:
        return []
    pool = db.by_uuid_index.get(("cpu_pool", domain.pool))
    return [pool.ref] if pool is not None else []


async def move_vm(ctx, ref, pool_ref, apply_domain):
    """Move a VM to another pool: a running one moves live, a halted one starts there next time.
    A scheduling domain's master takes its members along, all or none (one moved back if a later
    one fails); a member cannot go alone. Holds the VMs' locks and the pools' lock throughout.
    ``apply_domain(ctx, vm, domain)`` records a moved domain (the VM module's)."""
    async with contextlib.AsyncExitStack() as held:
        await held.enter_async_context(ctx.lock(ref))
        vm = ctx.current("VM", ref)
        if vm.values["is_control_domain"]:
            raise XenAPIError("OPERATION_NOT_ALLOWED", "could not move Domain-0")
        others = sorted(m.ref for m in sdoms.pool_change_allowed(ctx, vm, ""))
        for other in others:  # always in the same order: no two moves wait on each other
            await held.enter_async_context(ctx.lock(other))
        await held.enter_async_context(ctx.lock(POOL_LOCK))
        vm = ctx.current("VM", ref)  # everything again, now that nothing can change under us
        pool = ctx.current("cpu_pool", pool_ref)
        moving = [vm, *sdoms.pool_change_allowed(ctx, vm, pool.values["name_label"])]
        if sorted(m.ref for m in moving[1:]) != others:
            raise XenAPIError("OPERATION_NOT_ALLOWED", "the scheduling domain changed meanwhile; try again")
        live = _active(ctx.db, pool)
        for each in moving:  # check them all before moving any
            state = each.values["power_state"]
            if state == "Suspended":
                raise XenAPIError("VM_BAD_POWER_STATE", each.ref, "running", "suspended")
            if state in ("Running", "Paused"):
                if live is None:
                    raise XenAPIError("POOL_BAD_STATE", "deactivated")
                if not live.cpus:
                    raise XenAPIError("INSUFFICIENT_CPUS", 1, 0)
                ctx.require(Capability.POOLS)
            placement.check_pool_move(ctx.db, each, pool, live)
        running = [m for m in moving if m.values["power_state"] in ("Running", "Paused")]
        await _move_all(ctx, running, pool, apply_domain)
        for each in moving:
            ctx.db.set(each, "pool_name", pool.values["name_label"])
        announce(ctx)


async def _move_all(ctx, running, pool, apply_domain):
    """Move the running VMs' domains to ``pool``; if one fails, those moved go back first."""
    moved = []
    try:
        for each in running:
            back = ctx.backend.domain(each.uuid).pool
            apply_domain(ctx, each, await ctx.call_backend(ctx.backend.pool_move_domain, each.uuid, pool.uuid))
            moved.append((each, back))
    except XenAPIError:
        for each, back in reversed(moved):
            apply_domain(ctx, each, await ctx.call_backend(ctx.backend.pool_move_domain, each.uuid, back))
        announce(ctx)
        raise


# -- start-up ----------------------------------------------------------------------------------

def reconcile(ctx):
    """Match the store's pools with the hypervisor's: Pool-0 always exists; unknown active pools
    (made by another tool) are adopted, as xend did."""
    if Capability.POOLS not in ctx.backend.capabilities:
        return
    host = hosts.this_host(ctx.db)
    adopted = set()
    for live in ctx.backend.pools():
        if ctx.db.by_uuid_index.get(("cpu_pool", live.uuid)) is not None:
            continue
        name = live.name
        if hosts.pool_named(ctx.db, name) is not None:  # a stored definition with that name but
            name = f"{name}-{live.poolid}"  # another uuid: keep both apart
        ctx.db.create("cpu_pool", {"uuid": live.uuid, "name_label": name, "resident_on": host.ref,
                                   "ncpu": max(1, len(live.cpus)), "sched_policy": live.sched,
                                   "proposed_CPUs": [str(c) for c in sorted(live.cpus)]})
        adopted.add(live.uuid)
    if adopted:  # the VMs running there have a cpu_pool now
        for domain in ctx.backend.domains():
            vm = ctx.db.by_uuid_index.get(("VM", domain.uuid)) if domain.pool in adopted else None
            if vm is not None:
                ctx.db.touch(vm)
    announce(ctx)


async def outside_change(ctx, kind, ident):
    """Pools made, changed or destroyed with another tool (xl cpupool-*): adopt and announce."""
    if kind == "pools":
        async with ctx.lock(POOL_LOCK):
            reconcile(ctx)


async def auto_activate(ctx):
    """Pools with auto_power_on activate at every server start, before VMs auto-start. On a host
    that just booted Pool-0 holds every CPU, so a pool short of free CPUs takes them from Pool-0
    (which keeps at least one): Pool-0 ends up with every CPU the auto-started pools left."""
    if Capability.POOLS not in ctx.backend.capabilities:
        return
    pool0 = pool_named(ctx, POOL0)
    for pool in sorted(hosts.pools_on(ctx.db), key=lambda p: p.values["name_label"]):
        if not pool.values["auto_power_on"] or _active(ctx.db, pool) is not None:
            continue
        try:
            async with ctx.lock(POOL_LOCK):
                free = free_cpus(ctx)
                short = pool.values["ncpu"] - len(free)
                live0 = _active(ctx.db, pool0) if pool0 is not None else None
                spare = len(live0.cpus) - 1 if live0 is not None else 0
                if short > spare:  # check before taking anything from Pool-0: all or nothing
                    raise XenAPIError("INSUFFICIENT_CPUS", pool.values["ncpu"], len(free) + max(spare, 0))
                if short > 0 and live0 is not None:
                    wanted = [int(c) for c in pool.values["proposed_CPUs"]]
                    give = sorted(live0.cpus, key=lambda c: (c not in wanted, -c))[:min(short, len(live0.cpus) - 1)]
                    for cpu in give:
                        await ctx.call_backend(ctx.backend.pool_remove_cpu, pool0.uuid, cpu)
                    free = free_cpus(ctx)
                await _activate(ctx, pool, free)
        except XenAPIError as exc:
            log.warning("auto_power_on: pool %s did not activate: %s", pool.values["name_label"], exc)
    _sync_pool0(ctx)
    announce(ctx)  # Pool-0 may have given CPUs away above


def _sync_pool0(ctx):
    """The boot pool's definition is whatever the hypervisor gave it (after a reboot: every CPU
    the auto-started pools left), so a restart that changes nothing shows nothing changed."""
    pool0 = pool_named(ctx, POOL0)
    live0 = _active(ctx.db, pool0) if pool0 is not None else None
    if live0 is not None:
        ctx.db.set(pool0, "ncpu", max(1, len(live0.cpus)))
        ctx.db.set(pool0, "proposed_CPUs", [str(c) for c in sorted(live0.cpus)])


def install(registry):
    cpu_pool.on_create = _on_create
    registry.add(cpu_pool)
    registry.before_start.append(check_vm_start)
    registry.on_start.append(reconcile)
    registry.on_start.append(auto_activate)
    registry.on_backend_change.append(outside_change)

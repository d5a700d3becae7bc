"""``host_cpu``: one physical CPU of the host, with its pool and the VMs allowed on it."""

from __future__ import annotations

from xend_ext import hosts, placement
from xend_ext import types as T
from xend_ext.datamodel import POOL_ADMIN, READ_ONLY, RO, RW, Field, XenAPIClass
from xend_ext.wire import XenAPIError

host_cpu = XenAPIClass(
    "host_cpu",
    "A physical CPU",
    [
        Field("host", T.Ref("host"), RO, doc="the host the CPU is in"),
        Field("number", T.Int, RO, doc="the CPU number the hypervisor uses"),
        Field("vendor", T.String, RO, doc="the CPU's vendor, as the host reports it"),
        Field("modelname", T.String, RO, doc="the CPU's model name, as the host reports it"),
        Field("speed", T.Int, RO, doc="MHz"),
        Field("numa_node", T.Int, RO, doc="the NUMA node the CPU belongs to"),
        Field("cpu_pool", T.Set(T.Ref("cpu_pool")), RO, compute=lambda db, cpu: host_cpu_pool(db, cpu),
              doc="the active CPU pool holding this CPU (0 or 1)"),
        Field("occupants", T.Set(T.Ref("VM")), RO, index=True, doc="VMs this CPU is reserved to (cpuoccupy)"),
        Field("other_config", T.Map(T.String, T.String), RW),
    ],
    default_role=POOL_ADMIN,
)


def host_cpu_pool(db, cpu):
    """host_cpu.cpu_pool: the active pool holding this CPU (0 or 1)."""
    where = cpu.values["host"]
    if not hosts.is_local(db, where):  # another host's CPU: its pools as that host published them
        held = (p for p in hosts.pools_on(db, where) if cpu.values["number"] in getattr(
            hosts.published_pool(db, p), "cpus", ()))
        return [p.ref for p in held][:1]
    for live in placement.active_pools(db).values():
        if cpu.values["number"] in live.cpus:
            pool = db.by_uuid_index.get(("cpu_pool", live.uuid))
            return [pool.ref] if pool is not None else []
    return []


@host_cpu.message(result=T.Set(T.Ref("host_cpu")), role=READ_ONLY)
def get_unassigned_cpus(ctx):
    """The CPUs in no active CPU pool (of the host answering, in a pool)."""
    return [c.ref for c in sorted(hosts.cpus_of(ctx.db), key=lambda c: c.values["number"])
            if not ctx.db.field_value(c, "cpu_pool")]


def reconcile(ctx):
    """One host_cpu per pCPU the backend reports; CPUs that disappeared are removed."""
    info = ctx.backend.host_info()
    host = hosts.this_host(ctx.db)
    existing = {c.values["number"]: c for c in hosts.cpus_of(ctx.db)}
    for cpu in info.cpus:
        facts = {"host": host.ref, "number": cpu.number, "vendor": cpu.vendor, "modelname": cpu.modelname,
                 "speed": cpu.speed_mhz, "numa_node": cpu.numa_node}
        obj = existing.pop(cpu.number, None)
        if obj is None:
            ctx.db.create("host_cpu", facts)
        else:
            for name, value in facts.items():
                ctx.db.set(obj, name, value)
    for obj in existing.values():
        ctx.db.destroy(obj)


# -- cpuoccupy: the policy manager's reserved pCPUs ---------------------------------------------

async def push_occupancy(ctx):
    """The backend gets the whole reservation map; then every running VM's share may change."""
    async with ctx.lock(PUSH_LOCK):  # in the order of the changes: the last map sent is the store's
        occupied = {}
        for cpu in hosts.cpus_of(ctx.db):
            if cpu.values["occupants"]:
                occupied[cpu.values["number"]] = frozenset(ctx.db.get(v).uuid for v in cpu.values["occupants"])
        await ctx.call_backend(ctx.backend.set_occupancy, occupied)
    placement.refresh_live(ctx)


PUSH_LOCK = "cpu_occupy/push"
LOCK = "cpu_occupy/*"


async def _occupy(ctx, cpu, vms):
    """Set a pCPU's occupants and tell the backend; if it refuses, the store keeps the old ones."""
    before = list(cpu.values["occupants"])
    ctx.db.set(cpu, "occupants", list(vms))
    try:
        await push_occupancy(ctx)
    except XenAPIError:
        ctx.db.set(cpu, "occupants", [v for v in before if ctx.db.find(v) is not None])
        raise


def reserved_for_others(ctx, vm):
    """pCPU numbers reserved to VMs other than this one."""
    return placement.reserved_for_others(ctx.db, vm.ref)


@host_cpu.message(("self", T.Ref("host_cpu")), ("vms", T.Set(T.Ref("VM"))), role=POOL_ADMIN,
                  capability="cpu_occupy", errors=("OPERATION_NOT_ALLOWED",))
async def set_occupants(ctx, ref, vms):
    """cpuoccupy: only these VMs may run on this pCPU; every other VM is kept off it. Refused while
    another running VM would have nowhere to run (seed 003's "(*)": pinned to this pCPU alone); a
    halted VM never blocks it, its start says why it cannot run."""
    async with ctx.lock(LOCK):
        cpu = ctx.current("host_cpu", ref)
        number = cpu.values["number"]
        if not vms:
            raise XenAPIError("VALUE_NOT_SUPPORTED", "vms", "", "name at least one VM (clear_occupants frees it)")
        for vm_ref in vms:  # a VM may have been destroyed while we waited for the lock
            ctx.current("VM", vm_ref)
        placement.check_reservation(ctx.db, number, set(vms))
        await _occupy(ctx, cpu, vms)


@host_cpu.message(("self", T.Ref("host_cpu")), role=POOL_ADMIN, capability="cpu_occupy")
async def clear_occupants(ctx, ref):
    """Every VM may use this pCPU again."""
    async with ctx.lock(LOCK):
        await _occupy(ctx, ctx.current("host_cpu", ref), [])


def reserved_to(ctx, vm):
    """The pCPUs (host_cpu objects) reserved to the VM: it is among their occupants."""
    return placement.reserved_to(ctx.db, vm.ref)


def forget_vm(ctx, vm):
    """A VM going away leaves every reservation. Returns what puts them back (None when it held
    none)."""
    before = {cpu: list(cpu.values["occupants"]) for cpu in reserved_to(ctx, vm)}
    for cpu, occupants in before.items():
        ctx.db.set(cpu, "occupants", [v for v in occupants if v != vm.ref])
    if not before:
        return None
    return lambda: [ctx.db.set(cpu, "occupants", occupants) for cpu, occupants in before.items()]


async def push_at_start(ctx):
    if "cpu_occupy" in ctx.backend.capabilities:
        await push_occupancy(ctx)


def install(registry):
    registry.add(host_cpu)
    registry.on_start.append(reconcile)
    registry.on_start.append(push_at_start)

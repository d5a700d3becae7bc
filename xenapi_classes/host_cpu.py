"""``host_cpu``: one physical CPU of the host, with its pool and the VMs allowed on it."""

from __future__ import annotations

from xenapi_classes import cpu_pool as pools
from xend_ext import types as T
from xend_ext.datamodel import POOL_ADMIN, READ_ONLY, RO, RW, Field, XenAPIClass

host_cpu = XenAPIClass(
    "host_cpu",
    "A physical CPU",
    [
        Field("host", T.Ref("host"), RO, doc="the host the CPU is in"),
        Field("number", T.Int, RO, doc="the CPU number the hypervisor uses"),
        Field("vendor", T.String, RO),
        Field("modelname", T.String, RO),
        Field("speed", T.Int, RO, doc="MHz"),
        Field("numa_node", T.Int, RO, doc="the NUMA node the CPU belongs to"),
        Field("cpu_pool", T.Set(T.Ref("cpu_pool")), RO, compute=lambda db, cpu: pools.host_cpu_pool(db, cpu),
              doc="the active CPU pool holding this CPU (0 or 1)"),
        Field("occupants", T.Set(T.Ref("VM")), RO, doc="VMs this CPU is reserved to (cpuoccupy)"),
        Field("other_config", T.Map(T.String, T.String), RW),
    ],
    default_role=POOL_ADMIN,
)


@host_cpu.message(result=T.Set(T.Ref("host_cpu")), role=READ_ONLY)
def get_unassigned_cpus(ctx):
    """The CPUs in no active CPU pool."""
    return [c.ref for c in sorted(ctx.db.all("host_cpu"), key=lambda c: c.values["number"])
            if not ctx.db.field_value(c, "cpu_pool")]


def reconcile(ctx):
    """One host_cpu per pCPU the backend reports; CPUs that disappeared are removed."""
    info = ctx.backend.host_info()
    host = next(iter(ctx.db.all("host")))
    existing = {c.values["number"]: c for c in ctx.db.all("host_cpu")}
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


def install(registry):
    registry.add(host_cpu)
    registry.on_start.append(reconcile)

"""``host``: the machine xend-ext manages. Created from the backend's facts at first start and
reconciled with them at every start (a simulated host may be given more pCPUs)."""

from __future__ import annotations

from xend_ext import hosts
from xend_ext import types as T
from xend_ext.datamodel import POOL_ADMIN, READ_ONLY, RO, RW, Field, XenAPIClass

API_VERSION = (2, 0)


def _free_cpus(db, host):
    """pCPUs in no active CPU pool (all of them on a backend without pools)."""
    return hosts.fact(db, host, "free_cpus", lambda db, h: hosts.local_free_cpus(db.backend), _int)


def _live(db, host):
    """Alone, always; in a pool, whether the host holds its etcd lease (xend_ext.cluster.liveness)."""
    return db.liveness is None or db.liveness.is_live(host.uuid)


def _capabilities(db, host):
    """What the backend can do (NOT_IMPLEMENTED [capability] names a missing one) and, as
    sched:<name>, the schedulers a CPU pool can have here: a client can look before it calls."""
    return hosts.fact(db, host, "capabilities", lambda db, h: hosts.local_capabilities(db.backend), str.split)


def _memory_total(db, host):
    return hosts.fact(db, host, "memory_total", lambda db, h: db.backend.host_info().memory_total, _int)


def _memory_free(db, host):
    return hosts.fact(db, host, "memory_free", lambda db, h: db.backend.memory_free(), _int)


def _int(text):
    return int(text) if text else 0


host = XenAPIClass(
    "host",
    "A physical host",
    [
        Field("name_label", T.String, RW, doc="a human-readable name"),
        Field("name_description", T.String, RW, doc="notes"),
        Field("API_version_major", T.Int, RO, default=API_VERSION[0], doc="major Xen-API version"),
        Field("API_version_minor", T.Int, RO, default=API_VERSION[1], doc="minor Xen-API version"),
        Field("software_version", T.Map(T.String, T.String), RO, doc="versions of the software stack"),
        Field("cpu_configuration", T.Map(T.String, T.String), RO, doc="CPU topology"),
        Field("sched_policy", T.String, RO, default="credit", doc="the hypervisor's default scheduler"),
        Field("resident_VMs", T.Set(T.Ref("VM")), RO, reverse=("VM", "resident_on"), doc="VMs on this host"),
        Field("resident_cpu_pools", T.Set(T.Ref("cpu_pool")), RO, reverse=("cpu_pool", "resident_on"),
              doc="CPU pools on this host"),
        Field("host_CPUs", T.Set(T.Ref("host_cpu")), RO, reverse=("host_cpu", "host"), doc="physical CPUs"),
        Field("free_cpus", T.Int, RO, compute=_free_cpus, doc="pCPUs in no CPU pool"),
        Field("capabilities", T.Set(T.String), RO, compute=_capabilities,
              doc="the backend's capabilities, and sched:<name> for each scheduler a CPU pool can have"),
        Field("memory_total", T.Int, RO, compute=_memory_total, doc="bytes of RAM"),
        Field("memory_free", T.Int, RO, compute=_memory_free, volatile=True,
              doc="bytes of RAM not used by domains"),
        Field("other_config", T.Map(T.String, T.String), RW, doc="additional configuration"),
        Field("address", T.String, RO,
              doc="in a pool, the Xen-API URL the other hosts reach this one at (serve --cluster-address); "
                  "empty alone"),
        Field("facts", T.Map(T.String, T.String), RO,
              doc="in a pool, the live state this host last published for the others (memory_total, "
                  "memory_free, free_cpus, capabilities, pool:<uuid> = scheduler and CPUs of each active CPU "
                  "pool), written when it changes; empty alone"),
        Field("live", T.Bool, RO, compute=_live,
              doc="in a pool, whether the host holds its etcd lease (renewed by its server; lost within "
                  "serve --cluster-lease seconds when the server is killed, frozen or cut from etcd), as "
                  "XAPI's host_metrics.live; always true alone"),
    ],
    default_role=POOL_ADMIN,
)


@host.message(result=T.Set(T.String), role=READ_ONLY)
def list_methods(ctx):
    """Every wire name the server answers to."""
    return ctx.registry.wire_names()


def reconcile(ctx):
    """Make the stored host agree with the backend's facts (first start, or new hardware)."""
    info = ctx.backend.host_info()
    facts = {
        "software_version": dict(info.software_version),
        "cpu_configuration": dict(info.cpu_configuration),
        "sched_policy": info.sched_policy,
        "API_version_major": API_VERSION[0],
        "API_version_minor": API_VERSION[1],
    }
    host = hosts.this_host(ctx.db)
    if host is None:
        extra = {"uuid": ctx.db.host_uuid} if hosts.in_pool(ctx.db) else {}
        ctx.db.create("host", {"name_label": info.hostname, **facts, **extra})
        return
    for name, value in facts.items():
        ctx.db.set(host, name, value)


def install(registry):
    registry.add(host)
    registry.on_start.append(reconcile)

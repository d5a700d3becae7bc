"""Hosts of a pool: which host this server is, which host an object belongs to, and what a host
publishes of its live state for the others.

Alone (no ``--cluster``) there is one host record and it is this server's: every object is local
and nothing here changes what the server did before. In a pool each server has its own host
record, whose uuid it keeps in its state directory (``host-uuid``, made at its first start); the
objects of a host are its host_cpus (``host``), its CPU pools and running VMs (``resident_on``).

A server reads only its own hypervisor. What the other hosts' computed fields need (memory,
free pCPUs, capabilities, the CPUs of their active pools) each host publishes in its record's
``facts`` when it changes them (a VM started or stopped, a pool changed), never on a poll: one
write more per such change, in the same etcd transaction as the change itself. The live state of
a VM running elsewhere (VM_metrics) is not copied; its host answers for it (xend_ext.forward).

The class modules ask here; this module asks none of them (classes -> hosts -> model).
"""

from __future__ import annotations

import uuid as uuid_module
from pathlib import Path

from .backends.base import Capability, CpuPool
from .wire import NULL_REF

IDENTITY_FILE = "host-uuid"
LIVE = ("Running", "Paused")


def identity(state_dir: Path) -> str:
    """This server's host uuid in a pool, kept in its state directory (made at the first start)."""
    path = Path(state_dir) / IDENTITY_FILE
    try:
        return str(uuid_module.UUID(path.read_text(encoding="ascii").strip()))
    except FileNotFoundError:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        made = str(uuid_module.uuid4())
        tmp = path.with_suffix(".tmp")
        tmp.write_text(made + "\n", encoding="ascii")
        tmp.replace(path)
        return made


# -- this host, and whose an object is ------------------------------------------------------------

def this_host(db):
    """This server's host record (None before the first start made it)."""
    if db.host_uuid is None:
        return db.first("host")
    return db.by_uuid_index.get(("host", db.host_uuid))


def this_ref(db) -> str:
    host = this_host(db)
    return host.ref if host is not None else NULL_REF


def in_pool(db) -> bool:
    return db.host_uuid is not None


def is_local(db, host_ref: str) -> bool:
    """Whether ``host_ref`` is this server's host (no host, NULL, counts as this one)."""
    if db.host_uuid is None or not host_ref or host_ref == NULL_REF:
        return True
    host = db.by_ref.get(host_ref)
    return host is None or host.values["uuid"] == db.host_uuid


def host_of(obj) -> str:
    """The host an object belongs to (NULL when none: a halted VM, an unplaced pool)."""
    values = obj.values
    name = obj.cls.name
    if name == "host":
        return obj.ref
    if name == "host_cpu":
        return values["host"]
    return values.get("resident_on", NULL_REF)


def cpus_of(db, host_ref: str | None = None):
    """The host_cpu objects of a host (default: this one)."""
    ref = this_ref(db) if host_ref is None else host_ref
    if db.host_uuid is None:
        return db.all("host_cpu")
    return [db.by_ref[r] for r in db.field_value(db.by_ref[ref], "host_CPUs")] if ref in db.by_ref else []


def pools_on(db, host_ref: str | None = None):
    """The cpu_pool definitions of a host (default: this one)."""
    if db.host_uuid is None:
        return db.all("cpu_pool")
    ref = this_ref(db) if host_ref is None else host_ref
    return [db.by_ref[r] for r in db.field_value(db.by_ref[ref], "resident_cpu_pools")] if ref in db.by_ref else []


def pool_named(db, name: str, host_ref: str | None = None):
    """The cpu_pool of that name on a host (default: this one), or None. Names are unique per host."""
    for pool in db.find_by("cpu_pool", "name_label", name):
        where = pool.values["resident_on"]
        if (is_local(db, where) if host_ref is None else where in (host_ref, NULL_REF)):
            return pool
    return None


# -- live facts: this host's from the backend, the others' as they published them ------------------

def local_free_cpus(backend) -> int:
    ncpus = len(backend.host_info().cpus)
    if Capability.POOLS not in backend.capabilities:
        return ncpus
    return ncpus - sum(len(pool.cpus) for pool in backend.pools())


def local_capabilities(backend) -> list[str]:
    return sorted(backend.capabilities) + [f"sched:{name}" for name in backend.schedulers]


def facts_now(backend) -> dict[str, str]:
    """What this host publishes: figures, capabilities, and each active pool's scheduler and CPUs."""
    facts = {"memory_total": str(backend.host_info().memory_total), "memory_free": str(backend.memory_free()),
             "free_cpus": str(local_free_cpus(backend)), "capabilities": " ".join(local_capabilities(backend))}
    if Capability.POOLS in backend.capabilities:
        for pool in backend.pools():
            facts[f"pool:{pool.uuid}"] = f"{pool.sched} {','.join(map(str, sorted(pool.cpus)))}"
    return facts


def publish(ctx) -> None:
    """In a pool, this host's record says what its hypervisor has now (written only if it changed)."""
    if ctx.db.host_uuid is None:
        return
    host = this_host(ctx.db)
    if host is not None:
        ctx.db.set(host, "facts", facts_now(ctx.backend))


def fact(db, host, key: str, local, parse):
    """A host's computed field: from the backend for this host, else as the host published it."""
    if is_local(db, host.ref):
        return local(db, host)
    return parse(host.values["facts"].get(key, ""))


def published_pool(db, pool):
    """A CPU pool of another host as its host published it (None while it is not active there)."""
    host = db.by_ref.get(pool.values["resident_on"])
    text = host.values["facts"].get(f"pool:{pool.uuid}") if host is not None else None
    if text is None:
        return None
    sched, _, cpus = text.partition(" ")
    return CpuPool(pool.uuid, pool.values["name_label"], -1, sched, frozenset(int(c) for c in cpus.split(",") if c))


def running_in_pool(db, pool):
    """The VMs running in another host's pool: resident there, naming it."""
    host = pool.values["resident_on"]
    return [vm for vm in db.find_by("VM", "pool_name", pool.values["name_label"])
            if vm.values["resident_on"] == host and vm.values["power_state"] in LIVE]

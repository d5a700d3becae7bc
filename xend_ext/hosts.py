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

Placement across the hosts is decided here too: the host a halted VM starts on (:func:`place`),
a distinct host per member of an anti-affinity group (:func:`spread`), the claim a host makes on
a VM before starting it (:func:`claim`), a migration's destination by host ref, the host a group
migration is made by.

The class modules ask here; this module asks none of them (classes -> hosts -> model).
"""

from __future__ import annotations

import uuid as uuid_module
from pathlib import Path

from .backends.base import Capability, CpuPool
from .store.errors import WriteRefused
from .wire import NULL_REF, REF_PREFIX, XenAPIError

IDENTITY_FILE = "host-uuid"
LIVE = ("Running", "Paused")
POOL0 = "Pool-0"


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


# -- placement across the hosts of a pool ----------------------------------------------------------

def candidates(db):
    """The hosts a VM may be placed on: this one, and every other that says where it is reached."""
    return [h for h in db.values("host") if is_local(db, h.ref) or h.values["address"]]


def label(host) -> str:
    return f"{host.values['name_label']} ({host.uuid[:8]})"


def memory_free(db, host) -> int:
    if is_local(db, host.ref):
        return db.backend.memory_free()
    return int(host.values["facts"].get("memory_free") or 0)


def active_pool(db, pool):
    """A stored CPU pool as its host has it now (None while inactive there)."""
    if not is_local(db, pool.values["resident_on"]):
        return published_pool(db, pool)
    return next((p for p in db.backend.pools() if p.uuid == pool.uuid), None)


def unfit(db, host, values) -> str | None:
    """Why ``host`` cannot run a VM of definition ``values`` now (None when it can): its CPU pool
    of the VM's pool name must be active there with pCPUs, and the host must have its memory free."""
    if db.liveness is not None and not db.liveness.is_live(host.uuid):  # xend_ext.cluster.liveness
        return f"{label(host)} is not live"
    name = values["pool_name"] or POOL0
    pool = pool_named(db, name, host.ref)
    if pool is None:
        return f"{label(host)} has no CPU pool {name}"
    live = active_pool(db, pool)
    if live is None or not live.cpus:
        return f"{label(host)}'s CPU pool {name} is not active"
    free, needed = memory_free(db, host), values["memory_target"]
    if free < needed:
        return f"{label(host)} has {free} bytes free, the VM needs {needed}"
    return None


def _best(db, fit, affinity: str):
    """The VM's affinity host when it fits, else the host with the most memory free (this one first
    among equals: nothing to hand over)."""
    for host in fit:
        if host.ref == affinity:
            return host
    return max(fit, key=lambda h: (memory_free(db, h), is_local(db, h.ref), h.ref))


def place(db, vm) -> str:
    """The host a halted VM starts on when the caller names none (VM.start): alone, this one; in a
    pool the VM's ``affinity`` host if it can run it, else the fitting host with the most memory
    free; NO_HOSTS_AVAILABLE [reasons] when none can."""
    if not in_pool(db):
        return this_ref(db)
    fit, why = [], []
    for host in candidates(db):
        reason = unfit(db, host, vm.values)
        if reason is None:
            fit.append(host)
        else:
            why.append(reason)
    if not fit:
        raise XenAPIError("NO_HOSTS_AVAILABLE", f"no host can run {vm.values['name_label']}: " + "; ".join(why))
    return _best(db, fit, vm.values["affinity"]).ref


def spread(db, members) -> dict[str, str]:
    """Anti-affinity: a distinct host for each halted member of a group (``{vm ref: host ref}``),
    none where a running member is; NO_HOSTS_AVAILABLE before anything starts when there are not
    enough hosts that can run them. Alone, nothing to spread: {}. Members with the fewest fitting
    hosts choose first."""
    if not in_pool(db):
        return {}
    taken = {m.values["resident_on"] for m in members if m.values["power_state"] in LIVE}
    halted = [m for m in members if m.values["power_state"] == "Halted"]
    hosts = candidates(db)
    fits = {m.ref: [h for h in hosts if unfit(db, h, m.values) is None] for m in halted}
    plan: dict[str, str] = {}
    for vm in sorted(halted, key=lambda m: (len(fits[m.ref]), m.values["name_label"])):
        free = [h for h in fits[vm.ref] if h.ref not in taken]
        if not free:
            raise XenAPIError("NO_HOSTS_AVAILABLE", f"anti-affinity: the group's {len(halted) + len(taken)} members "
                              f"need distinct hosts, and {len(set(h.ref for f in fits.values() for h in f) | taken)} "
                              f"of the pool's {len(hosts)} hosts can run them ({vm.values['name_label']} is left "
                              "without one); nothing was started")
        host = _best(db, free, vm.values["affinity"])
        plan[vm.ref] = host.ref
        taken.add(host.ref)
    return plan


def destination(db, text: str) -> tuple[str, str | None]:
    """A migration's destination: a URL as given, or another host of the pool by ref, reached at
    its address (then also its ref)."""
    if not text.startswith(REF_PREFIX):
        return text, None
    host = db.find(text)
    if host is None or host.cls.name != "host":
        raise XenAPIError("HANDLE_INVALID", "host", text)
    if is_local(db, host.ref):
        raise XenAPIError("VALUE_NOT_SUPPORTED", "destination", text, "the VM is on this host already")
    if not host.values["address"]:
        raise XenAPIError("HOST_OFFLINE", host.ref, "the host has published no address (host.address)")
    return host.values["address"], host.ref


def sender(db, vms) -> str | None:
    """The other host the running ``vms`` are all on (None when on this one): a group migration is
    made there. OPERATION_NOT_ALLOWED when they run on several hosts."""
    where = {vm.values["resident_on"] for vm in vms}
    if len(where) > 1:
        raise XenAPIError("OPERATION_NOT_ALLOWED", "the group's running members are on several hosts of the pool: "
                          "migrate them one by one (VM.migrate), or gather them on one host first")
    host = next(iter(where), NULL_REF)
    return None if is_local(db, host) else host


async def claim(ctx, vm) -> None:
    """In a pool, before a halted VM starts here: its record names this host (``resident_on``) in
    etcd first. Two hosts starting it at once both write it from the same revision: etcd commits
    one, the other's start is refused (STORE_WRITE_FAILED) before its hypervisor does anything,
    and a host that sees the claim of another refuses too. Alone: nothing to claim."""
    if not in_pool(ctx.db):
        return
    held = vm.values["resident_on"]
    if not is_local(ctx.db, held):
        raise XenAPIError("OPERATION_NOT_ALLOWED", f"another host of the pool ({held}) is starting it")
    ctx.db.set(vm, "resident_on", this_ref(ctx.db))
    try:
        await ctx.services.commit(ctx.db.last_seq)
    except WriteRefused as exc:
        raise XenAPIError("STORE_WRITE_FAILED", exc.cause, getattr(exc, "advice", "")) from None


def unclaim(ctx, vm) -> None:
    """The start failed: the VM is nobody's again."""
    if in_pool(ctx.db) and ctx.db.find(vm.ref) is vm:
        ctx.db.set(vm, "resident_on", NULL_REF)

"""Where a vCPU may run: the one rule, and the checks every message changing its inputs makes.

    where(vCPU) = the pCPUs of its pool  ∩  its pins  −  the pCPUs reserved to other VMs

For a running VM the inputs are what runs: the pool its domain is in, its running pins. For the
stored definition (the next start) they are the pool ``pool_name`` names and the ``cpumap<N>`` of
``VCPUs_params``; pins must lie inside that pool (seed 000: "for pinning only CPUs of the cpu-pool
are taken into account"). The messages that change an input ask here before anything changes:
pool activation and deactivation, CPU add and remove, pool migrate, pin, occupancy, scheduling-
domain membership, VM start, reboot, restore and migrate receive. A change that would leave a
running vCPU nowhere to run is refused (``OPERATION_NOT_ALLOWED`` naming the VM, the vCPU and the
pCPU). A halted VM's definition never blocks a change; its start says exactly why it cannot run.

The class modules call this module; it calls none of them (classes -> placement -> model), and it
announces the live state the backend says a change moved (:func:`refresh_live`).
"""

from __future__ import annotations

from xend_ext import cpuset, hosts
from xend_ext.wire import XenAPIError

POOL0 = "Pool-0"
LIVE_STATES = ("Running", "Paused")


# -- the inputs ------------------------------------------------------------------------------------

def host_cpus(db) -> int:
    return len(db.backend.host_info().cpus)


def active_pools(db):
    """{uuid: CpuPool} of the pools the hypervisor has now."""
    return {p.uuid: p for p in db.backend.pools()}


def pool_named(db, name):
    """The cpu_pool a ``pool_name`` names ('' is Pool-0, as xend had it) on this host, or None."""
    return hosts.pool_named(db, name or POOL0)


def live_pool(db, pool):
    """The hypervisor's view of a stored pool (None while it is inactive); another host's pool as
    that host published it."""
    return hosts.active_pool(db, pool) if pool is not None else None


def running_domain(db, vm):
    return db.backend.domain(vm.uuid) if vm.values["power_state"] in LIVE_STATES else None


def stored_pins(values, ncpus):
    """{vCPU: pCPUs} of a definition's ``cpumap<N>`` (checked when they were stored)."""
    return {int(key[len("cpumap"):]): cpuset.parse(text, ncpus)
            for key, text in values["VCPUs_params"].items() if key.startswith("cpumap")}


def reserved_to(db, vm_ref):
    """The host_cpu objects reserved to the VM (it is among their occupants)."""
    return db.find_by("host_cpu", "occupants", vm_ref)


def reserved_for_others(db, vm_ref):
    """pCPU numbers reserved to VMs other than this one (the control domain is never kept off)."""
    vm = db.find(vm_ref) if vm_ref else None
    if vm is not None and vm.values["is_control_domain"]:
        return set()
    return {c.values["number"] for c in hosts.cpus_of(db)
            if c.values["occupants"] and vm_ref not in c.values["occupants"]}


def nowhere(home, pins, vcpus, reserved):
    """The rule: the first of ``vcpus`` vCPUs left with no pCPU (its pool's ``home`` within its
    ``pins``, less ``reserved``), or None when every one has somewhere to run."""
    for vcpu in range(vcpus):
        if not (home & pins.get(vcpu, home)) - reserved:
            return vcpu
    return None


def _home(db, domain, pools=None):
    pools = active_pools(db) if pools is None else pools
    live = pools.get(domain.pool)
    return frozenset(live.cpus) if live is not None else frozenset(range(host_cpus(db)))


def _stranded(vm, domain, vcpu, cause):
    pinned = domain.pins.get(vcpu)
    where = f"pinned to pCPUs {cpuset.format(pinned)}" if pinned else "unpinned"
    return XenAPIError("OPERATION_NOT_ALLOWED", f"VM {vm.values['name_label']} would have nowhere to run: "
                                                f"its vCPU {vcpu} is {where} and {cause}")


def _running_vms(db, in_pool=None):
    """(VM, Domain) of every running or paused domain (of one pool if asked) the store knows."""
    for domain in db.backend.domains():
        if domain.power_state in LIVE_STATES and (in_pool is None or domain.pool == in_pool):
            vm = db.by_uuid_index.get(("VM", domain.uuid))
            if vm is not None:
                yield vm, domain


# -- the checks of the messages that change an input ---------------------------------------------

def check_cpu_removal(db, pool, live, cpu):
    """cpu_pool.remove_host_CPU_live: no VM running in the pool may be left nowhere to run."""
    home = frozenset(live.cpus) - {cpu}
    name = pool.values["name_label"]
    for vm, domain in _running_vms(db, live.uuid):
        vcpu = nowhere(home, domain.pins, domain.vcpus_max, reserved_for_others(db, vm.ref))
        if vcpu is not None:
            raise _stranded(vm, domain, vcpu, f"pCPU {cpu} is the last of pool {name} it may use "
                                              f"(the others are outside its pins or reserved to other VMs)")


def check_deactivation(db, live):
    """cpu_pool.deactivate takes every CPU of the pool: no VM may run there (an activation adds a
    pool no VM is in yet, so it has nothing to check)."""
    if next(_running_vms(db, live.uuid), None) is not None:
        raise XenAPIError("POOL_BAD_STATE", "in use")


def check_reservation(db, number, occupants):
    """host_cpu.set_occupants: pCPU ``number`` reserved to ``occupants`` (refs) only. Only a
    running VM can be stranded (seed 003: a running domain pinned to that pCPU alone); a halted
    one is told when it starts."""
    pools = active_pools(db)
    held = {c.values["number"]: c.values["occupants"] for c in hosts.cpus_of(db) if c.values["occupants"]}
    for vm, domain in _running_vms(db):
        if vm.ref in occupants or vm.values["is_control_domain"]:
            continue
        reserved = {n for n, refs in held.items() if vm.ref not in refs} | {number}
        vcpu = nowhere(_home(db, domain, pools), domain.pins, domain.vcpus_max, reserved)
        if vcpu is not None:
            where = domain.pins.get(vcpu)
            raise XenAPIError("OPERATION_NOT_ALLOWED", f"VM {vm.values['name_label']} could run only on pCPUs reserved "
                                                       f"to others (pCPU {number} among them): its vCPU {vcpu} is "
                              + (f"pinned to pCPUs {cpuset.format(where)}" if where else "unpinned in its pool")
                              + "; unpin it or move it first")


def check_pin(db, vm, vcpu, chosen, running):
    """VM.pin_VCPU of ``vcpu`` to ``chosen`` (None: anywhere): inside the VM's pool (the one it
    runs in when the pin applies to the running domain, else the one it names while that is
    active), and not only on pCPUs reserved to others."""
    if chosen is None:
        return
    reserved = reserved_for_others(db, vm.ref)
    if chosen <= reserved:
        raise XenAPIError("OPERATION_NOT_ALLOWED", f"pCPUs {cpuset.format(chosen)} are reserved to other VMs "
                                                   "(cpuoccupy); pin it elsewhere")
    domain = running_domain(db, vm) if running else None
    if domain is not None:
        live = active_pools(db).get(domain.pool)
        pool = db.by_uuid_index.get(("cpu_pool", domain.pool))
    else:
        pool = pool_named(db, vm.values["pool_name"])
        live = live_pool(db, pool)
    if live is None:
        return
    name = pool.values["name_label"] if pool is not None else live.name
    if not chosen <= live.cpus:
        raise XenAPIError("VALUE_NOT_SUPPORTED", "cpus", cpuset.format(chosen),
                          f"CPU {min(chosen - live.cpus)} is not in the VM's pool {name}")
    if not chosen - reserved:
        raise XenAPIError("OPERATION_NOT_ALLOWED", f"vCPU {vcpu} of VM {vm.values['name_label']} would have "
                                                   f"nowhere to run in pool {name}")


def check_pins_in(db, vm, values_pins, live, pool, what):
    """Pins (``values_pins``: {vCPU: pCPUs}) lie inside an active pool; ``what`` says whose."""
    for vcpu, pinned in sorted(values_pins.items()):
        outside = sorted(pinned - live.cpus)
        if outside:
            raise XenAPIError("VALUE_NOT_SUPPORTED", f"cpumap{vcpu}", cpuset.format(pinned),
                              f"{what} of VM {vm.values['name_label']} is pinned to CPU {outside[0]}, "
                              f"not in pool {pool.values['name_label']}")


def check_pool_move(db, vm, pool, live):
    """VM.cpu_pool_migrate (and the members a master takes along): a running VM needs the active
    pool's CPUs under its running pins, off pCPUs reserved to others; its stored pins (and a
    halted VM's, when the pool is active) must lie in the pool too, or its next start could not
    run there. A halted VM may move to an inactive pool (its start says why it cannot run)."""
    if live is None:
        return
    ncpus = host_cpus(db)
    domain = running_domain(db, vm)
    if domain is not None:
        check_pins_in(db, vm, domain.pins, live, pool, "the running vCPU")
        vcpu = nowhere(frozenset(live.cpus), domain.pins, domain.vcpus_max, reserved_for_others(db, vm.ref))
        if vcpu is not None:
            raise _stranded(vm, domain, vcpu, f"pool {pool.values['name_label']}'s pCPUs "
                                              f"{cpuset.format(live.cpus)} are reserved to other VMs")
    check_pins_in(db, vm, stored_pins(vm.values, ncpus), live, pool, "the stored definition")


def check_start(db, values, ref=""):
    """VM.start, reboot, restore, migrate receive: the definition ``values`` (of VM ``ref``, ''
    for one not defined here yet) can run: its pool exists and is active with CPUs, its pins lie
    there, and every vCPU keeps a pCPU no other VM has reserved."""
    pool = pool_named(db, values["pool_name"])
    if pool is None:
        raise XenAPIError("VALUE_NOT_SUPPORTED", "pool_name", values["pool_name"],
                          "no CPU pool has this name; create it or change the VM's pool_name")
    live = live_pool(db, pool)
    if live is None:
        raise XenAPIError("POOL_BAD_STATE", "deactivated")
    if not live.cpus:
        raise XenAPIError("INSUFFICIENT_CPUS", 1, 0)
    ncpus = host_cpus(db)
    pins = stored_pins(values, ncpus)
    name = pool.values["name_label"]
    for vcpu, pinned in sorted(pins.items()):
        outside = sorted(pinned - live.cpus)
        if outside:
            raise XenAPIError("VALUE_NOT_SUPPORTED", f"cpumap{vcpu}", values["VCPUs_params"][f"cpumap{vcpu}"],
                              f"CPU {outside[0]} is not in the VM's pool {name}")
    reserved = reserved_for_others(db, ref)
    vcpu = nowhere(frozenset(live.cpus), pins, values["VCPUs_max"], reserved)
    if vcpu is None:
        return
    if vcpu in pins:
        key = f"cpumap{vcpu}"
        raise XenAPIError("OPERATION_NOT_ALLOWED", f"{key}={values['VCPUs_params'][key]} lies on pCPUs reserved to "
                                                   "other VMs (cpuoccupy); pin it elsewhere")
    raise XenAPIError("OPERATION_NOT_ALLOWED", f"every pCPU of pool {name} ({cpuset.format(live.cpus)}) is reserved "
                                               f"to other VMs (cpuoccupy): vCPU {vcpu} would have nowhere to run")


def check_same_pool(db, vm, master):
    """Scheduling-domain membership: a member is in its master's pool, in the definition and, when
    both run, in the hypervisor (SCHED_DOMAIN_POOL_MISMATCH [vm, the master's pool])."""
    wanted = master.values["pool_name"] or POOL0
    if (vm.values["pool_name"] or POOL0) != wanted:
        raise XenAPIError("SCHED_DOMAIN_POOL_MISMATCH", vm.ref, wanted)
    mine, theirs = running_domain(db, vm), running_domain(db, master)
    if mine is not None and theirs is not None and mine.pool != theirs.pool:
        raise XenAPIError("SCHED_DOMAIN_POOL_MISMATCH", vm.ref, wanted)


def excluded_cpus(db, vm):
    """The pCPUs reserved to other VMs that the VM could otherwise use: those of its pool (the
    one it runs in, else the one it names while active; every pCPU when neither is known)."""
    domain = running_domain(db, vm)
    if domain is not None:
        home = _home(db, domain)
    else:
        live = live_pool(db, pool_named(db, vm.values["pool_name"]))
        home = frozenset(live.cpus) if live is not None else frozenset(range(host_cpus(db)))
    return sorted(reserved_for_others(db, vm.ref) & home)


# -- announcing what a change moved ------------------------------------------------------------------

def touch_metrics(db, vm):
    """Announce a change of the VM's live state (its VM_metrics are computed from the backend)."""
    metrics = db.find(vm.values["metrics"])
    if metrics is not None:
        db.touch(metrics)


def refresh_live(ctx, done=""):
    """Announce the live state of the domains the backend says its last actions changed besides
    the one acted on (the others' CPU shares, pins narrowed by a reservation); ``done`` is
    announced already."""
    for uuid in ctx.backend.changed_domains():
        other = ctx.db.by_uuid_index.get(("VM", uuid))
        if other is not None and uuid != done:
            touch_metrics(ctx.db, other)

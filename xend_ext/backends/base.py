"""The backend interface: every hypervisor action goes through one of these.

Small and uniform on purpose (like httpx's transports): the server asks for facts and actions,
a backend answers or raises :class:`BackendError`. A backend declares what it can do in
``capabilities``; the dispatcher answers ``NOT_IMPLEMENTED [capability]`` for a message needing
a missing one, before anything changes. The interface speaks of *domains* (what runs) and
:class:`DomainConfig` (what to run), never of Xen-API objects: the server keeps the definitions,
the backend keeps the running state.
"""

from __future__ import annotations

import datetime as dt
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

POOL0_UUID = "00000000-0000-0000-0000-0000000000f0"  # the boot pool, Pool-0, on every backend


class Capability:
    """Names of what a backend may be able to do (the NOT_IMPLEMENTED parameter)."""

    HOST = "host"
    NUMA = "numa"
    LIFECYCLE = "lifecycle"  # start, shutdown, destroy, reboot
    PAUSE = "pause"
    SUSPEND = "suspend"  # suspend to an image the backend keeps, resume from it
    SAVE = "save"  # save to / restore from a file
    MIGRATE = "migrate"  # hand a domain to another xend-ext server
    MEMORY_LIVE = "memory_live"
    VCPUS_LIVE = "vcpus_live"
    PIN = "pin"
    SCHED_CREDIT = "sched_credit"  # weight and cap
    UTILISATION = "utilisation"  # per-vCPU CPU use: the sim's scheduler model, or measured (xl, libvirt's QEMU)
    POOLS = "pools"  # CPU pools (cpupools): disjoint sets of pCPUs, each scheduled on its own
    SCHED_DOMAIN = "sched_domain"  # several domains scheduled as one entity (the "nemesis" patch)
    CPU_OCCUPY = "cpu_occupy"  # pCPUs reserved to some domains (the policy manager's cpuoccupy)
    MEMORY_MAX_LIVE = "memory_max_live"


class PowerState:
    HALTED = "Halted"
    RUNNING = "Running"
    PAUSED = "Paused"
    SUSPENDED = "Suspended"


@dataclass(frozen=True)
class PhysicalCPU:
    number: int
    vendor: str = ""
    modelname: str = ""
    speed_mhz: int = 0
    numa_node: int = 0


@dataclass(frozen=True)
class HostInfo:
    hostname: str
    cpus: tuple[PhysicalCPU, ...]
    memory_total: int
    memory_free: int
    sched_policy: str = "credit"
    software_version: dict[str, str] = field(default_factory=dict)
    cpu_configuration: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DomainConfig:
    """What to run: the VM's stored definition, in the backend's terms."""

    uuid: str
    name: str
    memory: int  # bytes at start
    memory_max: int  # bytes
    vcpus: int  # online at start
    vcpus_max: int
    weight: int = 256
    cap: int = 0  # % of one pCPU, 0 = none
    pins: dict[int, frozenset[int]] = field(default_factory=dict)  # vCPU -> pCPUs; absent: anywhere
    kernel: str = ""
    ramdisk: str = ""
    args: str = ""
    metadata: dict[str, str] = field(default_factory=dict)  # ours to keep with the domain (pool, group...)
    pool: str = ""  # uuid of the active CPU pool to start in ("" = the host's first pool)


@dataclass(frozen=True)
class Domain:
    """What runs: the live state the backend reports for one domain."""

    uuid: str
    name: str
    domid: int
    power_state: str
    memory: int
    memory_max: int
    vcpus: int
    vcpus_max: int
    weight: int
    cap: int
    pins: dict[int, frozenset[int]]
    vcpu_cpu: dict[int, int] = field(default_factory=dict)  # the pCPU each vCPU last ran on
    utilisation: dict[int, float] = field(default_factory=dict)  # share of one pCPU, every vCPU busy
    start_time: dt.datetime = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    is_control_domain: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    pool: str = ""  # uuid of the CPU pool it runs in


@dataclass(frozen=True)
class CpuPool:
    """An active CPU pool as the hypervisor has it (inactive definitions live only in our store)."""

    uuid: str
    name: str
    poolid: int
    sched: str
    cpus: frozenset[int]


@dataclass(frozen=True)
class SchedDomain:
    """Domains sharing one master's timeslices: the master's weight and cap cover them all."""

    master: str  # domain uuid
    members: frozenset[str]  # domain uuids, the master excluded
    weight: int  # the master's definition, in force while the master itself does not run
    cap: int


class BackendError(Exception):
    """The hypervisor refused or failed an action; carries a sentence for the operator.

    ``code``/``params`` let a backend name a Xen-API error (e.g. HOST_NOT_ENOUGH_FREE_MEMORY).
    """

    def __init__(self, message: str, code: str = "BACKEND_ERROR", *params: object) -> None:
        super().__init__(message)
        self.code = code
        self.params = [str(p) for p in params] if params else [message]


# -- the checks every backend makes before it acts (the sim, libvirt and xl give the same errors) --

def checked(d: Domain | None, uuid: str, *states: str) -> Domain:
    """The domain found for ``uuid``: it exists and, when ``states`` are given, is in one of them
    and is not Domain-0 (which is never stopped, paused or moved)."""
    if d is None:
        raise BackendError(f"no domain {uuid} on this host", "HANDLE_INVALID", "VM", uuid)
    if states and d.power_state not in states:
        raise BackendError(f"domain {d.name} is {d.power_state}", "VM_BAD_POWER_STATE", uuid,
                           "/".join(s.lower() for s in states), d.power_state.lower())
    if d.is_control_domain and states:
        raise BackendError("Domain-0 cannot be stopped, paused or moved", "OPERATION_NOT_ALLOWED",
                           "Domain-0 cannot be stopped, paused, suspended or moved")
    return d


def require_live(d: Domain) -> None:
    """A live change needs a domain that runs (or is paused)."""
    if d.power_state not in (PowerState.RUNNING, PowerState.PAUSED):
        raise BackendError(f"domain {d.name} is {d.power_state}", "VM_BAD_POWER_STATE", d.uuid, "running",
                           d.power_state.lower())


def check_memory(d: Domain, memory: int) -> None:
    if memory < 1:
        raise BackendError("memory must be positive", "VALUE_NOT_SUPPORTED", "memory", memory, "must be at least 1")
    if memory > d.memory_max:
        raise BackendError("above the domain's maximum", "VALUE_NOT_SUPPORTED", "memory", memory,
                           f"the domain's maximum is {d.memory_max}")


def check_memory_max(d: Domain, memory_max: int) -> None:
    if memory_max < d.memory:
        raise BackendError("below the memory in use", "VALUE_NOT_SUPPORTED", "memory_max", memory_max,
                           f"below the domain's current memory ({d.memory}); lower that first")


def check_vcpus(d: Domain, vcpus: int) -> None:
    if not 1 <= vcpus <= d.vcpus_max:
        raise BackendError("outside 1..VCPUs_max", "VALUE_NOT_SUPPORTED", "VCPUs", vcpus,
                           f"between 1 and {d.vcpus_max}")


def check_free(needed: int, free: int) -> None:
    if needed > free:
        raise BackendError(f"{needed} bytes needed, {free} free", "HOST_NOT_ENOUGH_FREE_MEMORY", needed, free)


def check_pins(pins: dict[int, frozenset[int]], ncpus: int) -> None:
    for vcpu, cpus in pins.items():
        bad = sorted(c for c in cpus if not 0 <= c < ncpus)
        if bad:
            raise BackendError(f"pCPU {bad[0]} does not exist", "INVALID_VALUE", f"cpumap{vcpu}",
                               ",".join(map(str, sorted(cpus))))


def check_occupancy(occupied: dict[int, frozenset[str]], ncpus: int) -> None:
    """A reservation map (cpuoccupy) names only pCPUs the host has."""
    bad = sorted(c for c in occupied if not 0 <= c < ncpus)
    if bad:
        raise BackendError(f"no pCPU {bad[0]}", "INVALID_CPU", f"no pCPU {bad[0]} on this host")


def narrowed(home: frozenset[int], barred: frozenset[int], pins: frozenset[int] | None) -> frozenset[int]:
    """Where a vCPU may run where reservations are kept by pinning (libvirt, xl): its pool's pCPUs
    (``home``) less those reserved to other domains, within its pins; a step that would leave
    nothing is skipped (the server refuses pins that reservations would leave with none)."""
    allowed = (home - barred) or home
    return (allowed if pins is None else pins & allowed) or allowed


class SideEffects:
    """Domains whose live state an action changed besides the domain it names (other domains' CPU
    shares, pins narrowed by a reservation): noted in the backend's worker threads, drained on
    the server's loop by :meth:`Backend.changed_domains`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._uuids: set[str] = set()

    def add(self, *uuids: str) -> None:
        with self._lock:
            self._uuids.update(uuids)

    def drain(self) -> set[str]:
        with self._lock:
            uuids, self._uuids = self._uuids, set()
        return uuids


class Backend(ABC):
    name: str = "?"
    capabilities: frozenset[str] = frozenset()
    # the schedulers a CPU pool can have here; both model weight and cap (Xen 4.17 has no sedf)
    schedulers: tuple[str, ...] = ("credit", "credit2")
    #: how a domain leaves for another xend-ext server (with Capability.MIGRATE): "copy" exports
    #: its image while it runs on (stopped here once it runs there), "save" saves it (the domain
    #: stops at once, and is restored here from its image if the migration fails)
    migration: str = "save"

    @abstractmethod
    def host_info(self) -> HostInfo:
        """What the host is: CPUs, memory, scheduler, versions. Cheap enough to call per request;
        its ``memory_free`` may be a little old where reading it costs (see memory_free)."""

    def memory_free(self) -> int:
        """Bytes of RAM no domain holds, read now."""
        return self.host_info().memory_free

    # -- domains: facts ----------------------------------------------------------------
    @abstractmethod
    def domains(self) -> list[Domain]:
        """Every domain that exists (running, paused or suspended); discovery at start."""

    def domain(self, uuid: str) -> Domain | None:
        return next((d for d in self.domains() if d.uuid == uuid), None)

    def changed_domains(self) -> set[str]:
        """Uuids of the domains whose live state changed as a side effect of the actions since the
        last call, besides the domains those actions named (the server announces those anyway).
        Only these get their live state announced, so an action costs the server the domains it
        affects, not every domain there is."""
        return set()

    # -- domains: actions; each returns the new live state, or None once the domain is gone --
    def start(self, config: DomainConfig, paused: bool) -> Domain:
        raise self.missing(Capability.LIFECYCLE)

    def shutdown(self, uuid: str, clean: bool) -> None:
        raise self.missing(Capability.LIFECYCLE)

    def reboot(self, uuid: str, clean: bool, config: DomainConfig) -> Domain:
        """Restart with ``config`` (the stored definition applies at every start, reboots too)."""
        raise self.missing(Capability.LIFECYCLE)

    def pause(self, uuid: str) -> Domain:
        raise self.missing(Capability.PAUSE)

    def unpause(self, uuid: str) -> Domain:
        raise self.missing(Capability.PAUSE)

    def suspend(self, uuid: str) -> Domain:
        raise self.missing(Capability.SUSPEND)

    def resume(self, uuid: str, paused: bool) -> Domain:
        raise self.missing(Capability.SUSPEND)

    def save(self, uuid: str, path: Path, metadata: dict[str, str]) -> None:
        """Write the domain to ``path`` with ``metadata`` (the VM record); the domain is gone."""
        raise self.missing(Capability.SAVE)

    def export(self, uuid: str, path: Path, metadata: dict[str, str]) -> None:
        """Write the domain's image to ``path`` while it keeps running or stays paused (``copy``
        migration)."""
        raise self.missing(Capability.MIGRATE)

    def restore(self, path: Path, paused: bool, config: DomainConfig | None = None) -> tuple[Domain, dict[str, str]]:
        """Bring a saved domain back; returns it and the metadata saved with it."""
        raise self.missing(Capability.SAVE)

    def read_image(self, path: Path) -> dict[str, str]:
        """The metadata of a saved image, without restoring it (to find or create its VM)."""
        raise self.missing(Capability.SAVE)

    # -- a saved image travelling to another server (migration) ----------------------------------
    def image_extra(self, path: Path) -> str:
        """What must travel with a saved image besides its bytes to be restored elsewhere ('' when
        the image holds all)."""
        return ""

    def take_image(self, path: Path, extra: str) -> None:
        """An image arrived from another server with its ``image_extra``: make it restorable here
        (nothing to do when the image holds all)."""
        return

    def drop_image(self, path: Path) -> None:
        """Remove a saved image and whatever was written beside it."""
        Path(path).unlink(missing_ok=True)

    # -- the hypervisor's own live migration between two servers' hosts (libvirt's peer-to-peer) --
    def live_target(self) -> dict[str, str]:
        """How another host's hypervisor sends a running domain here live, as the other server's
        backend needs it: ``live_migration`` names the kind (both sides must have the same), the
        rest is the kind's own (libvirt: the URI other hosts reach this host's libvirtd by).
        {} when this host takes none (the server then migrates by ``migration``)."""
        return {}

    def send_live(self, uuid: str, target: dict[str, str]) -> None:
        """Move a running or paused domain to the host of ``target`` (the other server's
        live_target) by the hypervisor's own live migration: it runs there and is gone here once
        this returns; when it fails, it still runs here."""
        raise self.missing(Capability.MIGRATE)

    def abort_live(self, uuid: str) -> None:
        """Stop a send_live in progress, from another thread (the domain stays here)."""
        raise self.missing(Capability.MIGRATE)

    def fetch_live(self, uuid: str, target: dict[str, str]) -> None:
        """Bring back live a domain send_live moved to the host of ``target`` (a roll-back)."""
        raise self.missing(Capability.MIGRATE)

    def adopt(self, uuid: str, config: DomainConfig) -> tuple[Domain, dict[str, str]]:
        """A domain that arrived by live migration runs here: make it ours as ``config`` says
        (pool, pins, metadata). Returns it and the hypervisor's figures of the migration
        (``downtime`` in seconds, if it measured it)."""
        raise self.missing(Capability.MIGRATE)

    def set_memory(self, uuid: str, memory: int) -> Domain:
        raise self.missing(Capability.MEMORY_LIVE)

    def set_memory_max(self, uuid: str, memory_max: int) -> Domain:
        raise self.missing(Capability.MEMORY_MAX_LIVE)

    def set_vcpus(self, uuid: str, vcpus: int) -> Domain:
        raise self.missing(Capability.VCPUS_LIVE)

    def pin(self, uuid: str, vcpu: int, cpus: frozenset[int] | None) -> Domain:
        """Restrict a vCPU to ``cpus`` (None: anywhere)."""
        raise self.missing(Capability.PIN)

    def set_sched(self, uuid: str, weight: int, cap: int) -> Domain:
        raise self.missing(Capability.SCHED_CREDIT)

    # -- CPU pools ---------------------------------------------------------------------------
    def pools(self) -> list[CpuPool]:
        """The active pools; the first (poolid 0) is the boot pool, Pool-0."""
        raise self.missing(Capability.POOLS)

    def pool_activate(self, uuid: str, name: str, sched: str, cpus: frozenset[int]) -> CpuPool:
        """Create the pool with these free CPUs, all or nothing."""
        raise self.missing(Capability.POOLS)

    def pool_deactivate(self, uuid: str) -> None:
        """Destroy an empty pool; its CPUs become free."""
        raise self.missing(Capability.POOLS)

    def pool_add_cpu(self, uuid: str, cpu: int) -> CpuPool:
        raise self.missing(Capability.POOLS)

    def pool_remove_cpu(self, uuid: str, cpu: int) -> CpuPool:
        raise self.missing(Capability.POOLS)

    def pool_move_domain(self, domain: str, pool: str) -> Domain:
        raise self.missing(Capability.POOLS)

    def set_occupancy(self, occupied: dict[int, frozenset[str]]) -> None:
        """Reserve pCPUs: only the listed domains (uuids) may run on each; the whole map each time."""
        raise self.missing(Capability.CPU_OCCUPY)

    def set_sched_domains(self, domains: list[SchedDomain]) -> None:
        """Replace every scheduling domain (the server sends the whole set whenever it changes)."""
        raise self.missing(Capability.SCHED_DOMAIN)

    # -- definitions the hypervisor keeps (libvirt's persistent domains) ----------------------
    def define(self, config: DomainConfig) -> None:  # noqa: B027 - most hypervisors keep no definitions
        """The stored definition changed (static/perm): backends that keep one for the next start
        (libvirt's persistent config) update it; a running domain's live state is not touched."""

    def undefine(self, uuid: str) -> None:  # noqa: B027 - see define
        """The VM was destroyed: forget any definition the hypervisor keeps for it."""

    def definitions(self) -> list[DomainConfig]:
        """Halted domains the hypervisor keeps a definition of (discovered at start as halted VMs)."""
        return []

    # -- changes made outside xend-ext ------------------------------------------------------------
    def watch(self, notify: Callable[[str, str], None]) -> None:  # noqa: B027 - optional
        """Report changes made behind the server's back, from any thread: ``notify("domain", uuid)``
        for a domain, ``notify("pools", "")`` for CPU pools. The default sees none (the simulated
        host changes only through the server)."""

    def missing(self, capability: str) -> BackendError:
        return BackendError(f"the {self.name} backend cannot do {capability}", "NOT_IMPLEMENTED", capability)

    def close(self) -> None:  # noqa: B027 - optional for backends that hold nothing
        """Release connections and files; the hypervisor's domains keep running."""

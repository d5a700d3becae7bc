"""The libvirt backend: real domains through libvirt-python (qemu:///system, xen:///system, test:///...).

libvirt has no CPU pools, scheduling domains or cpuoccupy. Pools and reserved CPUs are emulated
by pinning: a vCPU may run only on its pool's CPUs, less the CPUs reserved to other domains,
within the pins asked for it. What libvirt cannot hold for us (the pool, the pins as asked, weight
and cap as asked, the start time, a saved image's VM record) lives in the domain's libvirt metadata
under our own XML namespace; the pools themselves in ``libvirt-pools.sxp`` in the state directory.

Definitions are edited, never replaced: a domain libvirt already knows keeps its devices, and only
memory, vCPUs, pins, kernel and our metadata are rewritten (``XMLDesc(INACTIVE)`` + ``defineXML``,
which every driver supports). Live changes use the ``AFFECT_LIVE`` calls and plain ``pinVcpu``.

What a driver cannot do is a missing capability, never faked: weight and cap need a driver with
scheduler parameters (Xen: weight/cap; QEMU and LXC: cpu_shares and vcpu_quota), which libvirt's
test driver lacks. On a local QEMU host with cgroup v1 and root, a scheduling domain is a libvirt
resource partition (partitions.py): libvirt puts a domain's cgroup in its partition when it
starts and cannot move a running one, so a running (or paused, or suspended) domain cannot join or
leave a scheduling domain; it is refused, never restarted behind the caller's back. Utilisation on
QEMU is measured: every ``UTIL_WINDOW`` seconds a thread reads each running domain's per-vCPU CPU
time (one ``getAllDomainStats`` call), and a vCPU's utilisation is the CPU time it used over the
last complete window divided by the window (libvirt reads it from /proc in clock ticks, 10 ms:
±0.005 of a pCPU per 2 s window).

Migration between xend-ext servers: on QEMU hosts whose servers both have
``--libvirt-migrate-uri``, a live one is libvirt's own peer-to-peer migration (libvirt_migrate.py:
``live_target``, ``send_live``, ``adopt``...); otherwise it is save-based on every driver
(``migration = "save"``: save, stream, restore; the guest is stopped meanwhile), since libvirt
gives no image of a running domain. The test driver has no migration of its own
(virDomainMigrate* answer code 3 or 74): the flag refuses the start there, as on Xen and LXC,
whose drivers are not used for it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import queue
import threading
import time
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

from lxml import etree

from .. import cpuset, sxp
from . import libvirt_migrate, partitions
from .base import (
    POOL0_UUID,
    Backend,
    BackendError,
    Capability,
    CpuPool,
    Domain,
    DomainConfig,
    HostInfo,
    PhysicalCPU,
    PowerState,
    SchedDomain,
    SideEffects,
    check_free,
    check_memory,
    check_memory_max,
    check_occupancy,
    check_pins,
    check_vcpus,
    checked,
    narrowed,
    require_live,
)
from .pooltable import SCHEDULERS, PoolTable

try:
    import libvirt
except ImportError as exc:  # the [libvirt] extra is optional: the sim needs none of this
    raise ImportError("the libvirt backend needs libvirt-python: pip install 'xend-ext[libvirt]'") from exc

log = logging.getLogger("xend_ext.libvirt")

NS = "https://xend-ext.org/xmlns/domain/1"
NS_PREFIX = "xend"
IMAGE_ENTRIES = f"metadata/{{{NS}}}xend/{{*}}image"  # a saved image's VM record, in its domain XML
KIB = 1024
POOLS_FILE = "libvirt-pools.sxp"
# scheduler parameters per driver: (weight name, weight scale, cap name or None)
SCHED_PARAMS = {"Xen": ("weight", 1, "cap"), "QEMU": ("cpu_shares", 4, "vcpu_quota"), "LXC": ("cpu_shares", 4, None)}
QUOTA_PERIOD = 100_000  # µs: vcpu_quota = cap% of one pCPU per period, split over the vCPUs
SHUTDOWN_WAIT = 60.0  # seconds a clean shutdown may take before we call it failed
CACHE_SECONDS = 2.0  # domain facts are refreshed at least this often even without an event
UTIL_WINDOW = 2.0  # seconds between two samples of the vCPUs' CPU time (the utilisation's window)

_event_loop_started = False
_event_loop_lock = threading.Lock()


def _start_event_loop() -> None:
    """libvirt delivers events only with an event implementation registered before the first
    open() and a thread running it; once per process."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors arrive as exceptions
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


def _error(exc: libvirt.libvirtError, uuid: str = "") -> BackendError:
    """A libvirt failure as the Xen-API error a client can act on."""
    code, message = exc.get_error_code(), exc.get_error_message() or str(exc)
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return BackendError(message, "HANDLE_INVALID", "VM", uuid)
    if code in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED):
        return BackendError(message, "NOT_IMPLEMENTED", message)
    if code == libvirt.VIR_ERR_OPERATION_INVALID:
        return BackendError(message, "OPERATION_NOT_ALLOWED", message)
    return BackendError(f"libvirt: {message}", "BACKEND_ERROR", f"libvirt: {message}")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


class LibvirtBackend(Backend):
    name = "libvirt"

    def __init__(self, uri: str, state_dir: str | Path, domain_type: str = "kvm", migrate_uri: str = "",
                 migrate_address: str = "") -> None:
        _start_event_loop()
        try:
            self.conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            raise ValueError(f"cannot connect to libvirt at {uri}: {exc.get_error_message()}") from None
        self.uri = uri
        self.driver = self.conn.getType()  # "Xen", "QEMU", "LXC", "TEST"...
        self.sched = SCHED_PARAMS.get(self.driver)
        self.domain_type = domain_type  # of the domains defined anew on a QEMU host
        if migrate_address and not migrate_uri:
            raise ValueError("--libvirt-migrate-address goes with --libvirt-migrate-uri")
        if migrate_uri and self.driver != "QEMU":
            raise ValueError(f"--libvirt-migrate-uri: libvirt's {self.driver} driver is not used for live migration "
                             "here (only QEMU's); leave it out: migration is save-based")
        self._live = libvirt_migrate.target(migrate_uri, migrate_address) if migrate_uri else {}
        self.partitions, reason = self._probe_partitions()
        if self.partitions is None:
            log.info("no scheduling domains on this libvirt host: %s", reason)
        self._sdoms: dict[str, SchedDomain] = {}  # master uuid -> its scheduling domain
        self._partition_of: dict[str, str] = {}  # domain uuid -> the partition it starts in
        self._samples: dict[str, tuple[int, float, dict[int, int]]] = {}  # uuid -> (domid, when, vCPU ns)
        self._util: dict[str, dict[int, float]] = {}  # uuid -> vCPU -> share of one pCPU, last window
        self._closed = threading.Event()
        self.pools_path = Path(state_dir) / POOLS_FILE
        self._lock = threading.RLock()
        self._cache: dict[str, Domain] = {}
        self._cache_until = 0.0
        self._first_seen: dict[str, dt.datetime] = {}
        self._info = self._describe()
        self.ncpus = len(self._info.cpus)
        self.table = PoolTable(self.ncpus)
        self._occupied: dict[int, frozenset[str]] = {}
        self._load_pools()
        self.capabilities = frozenset({
            Capability.HOST, Capability.LIFECYCLE, Capability.PAUSE, Capability.SUSPEND, Capability.SAVE,
            Capability.MIGRATE, Capability.MEMORY_LIVE, Capability.VCPUS_LIVE, Capability.PIN, Capability.POOLS,
            Capability.CPU_OCCUPY,
            *([Capability.SCHED_CREDIT] if self.sched else []),
            *([Capability.MEMORY_MAX_LIVE] if self.driver == "Xen" else []),  # QEMU refuses a live maximum
            *([Capability.NUMA] if len({c.numa_node for c in self._info.cpus}) > 1 else []),
            *([Capability.UTILISATION] if self.driver == "QEMU" else []),
            *([Capability.SCHED_DOMAIN] if self.partitions is not None else []),
        })
        if Capability.UTILISATION in self.capabilities:
            threading.Thread(target=self._sampler, name="libvirt-utilisation", daemon=True).start()
        self._notify = None
        self._changes: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._side = SideEffects()  # domains re-pinned by a pool or reservation change

    # -- the host ----------------------------------------------------------------------------
    def _describe(self) -> HostInfo:
        model, memory_mib, cpus, mhz, nodes, sockets, cores, threads = self.conn.getInfo()
        caps = etree.fromstring(self.conn.getCapabilities().encode())
        self.host_uuid = caps.findtext("host/uuid") or "00000000-0000-0000-0000-000000000000"
        node_of = {int(cpu.get("id")): int(cell.get("id"))
                   for cell in caps.iterfind("host/topology/cells/cell") for cpu in cell.iterfind("cpus/cpu")}
        # a host file of the test driver has no cells: every CPU is on node 0 (nodeGetInfo still counts them)
        physical = tuple(PhysicalCPU(number=n, vendor=caps.findtext("host/cpu/vendor") or "",
                                     modelname=caps.findtext("host/cpu/model") or model, speed_mhz=mhz,
                                     numa_node=node_of.get(n, 0)) for n in range(cpus))
        version = self.conn.getVersion()
        sched = "credit"
        if self.driver == "Xen":  # Domain-0 tells which scheduler Xen runs
            try:
                sched = self.conn.lookupByID(0).schedulerType()[0]
            except libvirt.libvirtError:
                pass
        return HostInfo(
            hostname=self.conn.getHostname(), cpus=physical, memory_total=memory_mib << 20, memory_free=0,
            sched_policy=sched if sched in SCHEDULERS else "credit",
            software_version={"product_brand": "xend-ext", "libvirt": str(libvirt.getVersion()),
                              "hypervisor": f"{self.driver} {version}", "libvirt_uri": self.uri,
                              "hostname": self.conn.getHostname(),
                              **({"libvirt_migrate_uri": self._live["libvirt_migrate_uri"]} if self._live else {})},
            cpu_configuration={"nr_cpus": str(cpus), "nr_nodes": str(max(1, len(set(node_of.values())))),
                               "sockets": str(sockets), "cores_per_socket": str(cores),
                               "threads_per_core": str(threads)},
        )

    def host_info(self) -> HostInfo:
        with self._lock:
            used = sum(d.memory for d in self._domains().values()
                       if d.power_state in (PowerState.RUNNING, PowerState.PAUSED) and not d.is_control_domain)
            free = self._info.memory_total - used
            if self.driver != "TEST":  # a real host knows better (its own OS uses memory too)
                try:
                    free = min(free, self.conn.getFreeMemory())
                except libvirt.libvirtError:
                    pass
            return replace(self._info, memory_free=max(0, free))

    # -- reading domains -----------------------------------------------------------------------
    def _meta(self, dom) -> etree._Element | None:
        try:
            text = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NS, 0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
                return None  # not one of ours (yet)
            raise
        return etree.fromstring(text.encode(), etree.XMLParser(resolve_entities=False, no_network=True))

    def _read(self, dom) -> Domain | None:
        """The live state of one libvirt domain; None when it is halted (shut off, no saved image)."""
        state = dom.state()[0]
        active = dom.isActive()
        if not active:
            if not dom.hasManagedSaveImage(0):
                return None
            power = PowerState.SUSPENDED
        elif state in (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PMSUSPENDED):
            power = PowerState.PAUSED
        else:
            power = PowerState.RUNNING
        uuid = dom.UUIDString()
        _state, max_kib, kib, nvcpus, _cputime = dom.info()
        meta = self._meta(dom)
        flags = libvirt.VIR_DOMAIN_AFFECT_LIVE if active else libvirt.VIR_DOMAIN_AFFECT_CONFIG
        vcpus_max = dom.vcpusFlags(flags | libvirt.VIR_DOMAIN_VCPU_MAXIMUM)
        if not active:
            nvcpus = dom.vcpusFlags(flags)
        where: dict[int, int] = {}
        pins: dict[int, frozenset[int]] = {}
        if active:
            info, maps = dom.vcpus()
            where = {v[0]: v[3] for v in info}
            if meta is None:  # a domain we did not start: its pins are what libvirt has
                for v, cpumap in enumerate(maps):
                    cpus = frozenset(c for c, on in enumerate(cpumap[:self.ncpus]) if on)
                    if cpus and len(cpus) < self.ncpus:
                        pins[v] = cpus
        weight, cap = 256, 0
        started = self._first_seen.setdefault(uuid, _now())
        keep: dict[str, str] = {}
        pool = POOL0_UUID
        if meta is not None:
            weight, cap = int(meta.get("weight", "256")), int(meta.get("cap", "0"))
            pool = meta.get("pool", POOL0_UUID)
            if meta.get("started"):
                started = dt.datetime.fromisoformat(meta.get("started"))
            pins = {int(p.get("vcpu")): cpuset.parse(p.get("cpus")) for p in meta.iterfind("{*}pin")}
            keep = {k.get("key"): k.text or "" for k in meta.iterfind("{*}keep")}
        if active and self.sched and power != PowerState.SUSPENDED and uuid not in self._partition_of:
            weight, cap = self._read_sched(dom, nvcpus, weight, cap)  # in a partition: as asked (see _own)
        return Domain(
            uuid=uuid, name=dom.name(), domid=dom.ID() if active else -1, power_state=power,
            memory=kib * KIB, memory_max=max_kib * KIB, vcpus=nvcpus, vcpus_max=vcpus_max, weight=weight,
            cap=cap, pins=pins, vcpu_cpu=where, start_time=started,
            utilisation={v: u for v, u in self._util.get(uuid, {}).items() if v < nvcpus} if active else {},
            is_control_domain=self.driver == "Xen" and active and dom.ID() == 0, metadata=keep,
            pool=pool if pool in self.table.pools else POOL0_UUID,
        )

    def _read_sched(self, dom, nvcpus: int, weight: int, cap: int) -> tuple[int, int]:
        name, scale, cap_name = self.sched
        try:
            params = dom.schedulerParametersFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError:
            return weight, cap
        if name in params:
            weight = int(params[name]) // scale
        if cap_name == "cap" and "cap" in params:
            cap = int(params["cap"])
        elif cap_name == "vcpu_quota" and "vcpu_quota" in params:
            quota = int(params["vcpu_quota"])
            cap = 0 if quota <= 0 else round(quota * nvcpus * 100 / int(params.get("vcpu_period", QUOTA_PERIOD)))
        return weight, cap

    def _control_domain(self) -> Domain | None:
        """On hosts where the control domain is the host itself (QEMU, LXC, test), Domain-0 stands
        for it: it runs, cannot be stopped, and its figures are the host's."""
        if self.driver == "Xen":
            return None
        return Domain(uuid=self.host_uuid, name="Domain-0", domid=0, power_state=PowerState.RUNNING,
                      memory=0, memory_max=0, vcpus=self.ncpus, vcpus_max=self.ncpus, weight=256, cap=0, pins={},
                      start_time=self._first_seen.setdefault(self.host_uuid, _now()), is_control_domain=True,
                      pool=POOL0_UUID)

    def _domains(self) -> dict[str, Domain]:
        if time.monotonic() >= self._cache_until:
            found = {}
            for dom in self.conn.listAllDomains(0):
                try:
                    d = self._read(dom)
                except libvirt.libvirtError:  # it went away while we looked
                    continue
                if d is not None:
                    found[d.uuid] = d
            control = self._control_domain()
            if control is not None:
                found[control.uuid] = control
            self._cache, self._cache_until = found, time.monotonic() + CACHE_SECONDS
        return self._cache

    def _refresh(self, uuid: str) -> Domain | None:
        """Read one domain again and keep the answer (after our own change, or an event)."""
        self._domains()
        if uuid == self.host_uuid and self.driver != "Xen":
            return self._cache.get(uuid)
        try:
            d = self._read(self.conn.lookupByUUIDString(uuid))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
            d = None
        if d is None:
            self._cache.pop(uuid, None)
        else:
            self._cache[uuid] = d
        return d

    def domains(self) -> list[Domain]:
        with self._lock:
            return list(self._domains().values())

    def domain(self, uuid: str) -> Domain | None:
        with self._lock:
            return self._domains().get(uuid)

    def definitions(self) -> list[DomainConfig]:
        """Persistent domains that are shut off: halted VMs the host keeps a definition of."""
        with self._lock:
            configs = []
            for dom in self.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_INACTIVE
                                                | libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT):
                if dom.hasManagedSaveImage(0):
                    continue
                root = etree.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode())
                vcpu = root.find("vcpu")
                vcpus_max = int(vcpu.text) if vcpu is not None else 1
                meta = self._meta(dom)
                configs.append(DomainConfig(
                    uuid=dom.UUIDString(), name=dom.name(),
                    memory=int(root.findtext("currentMemory") or root.findtext("memory") or 0) * KIB,
                    memory_max=int(root.findtext("memory") or 0) * KIB,
                    vcpus=int(vcpu.get("current", vcpus_max)) if vcpu is not None else 1, vcpus_max=vcpus_max,
                    weight=int(meta.get("weight", "256")) if meta is not None else 256,
                    cap=int(meta.get("cap", "0")) if meta is not None else 0,
                    pins={int(p.get("vcpu")): cpuset.parse(p.get("cpus")) for p in meta.iterfind("{*}pin")}
                    if meta is not None else {},
                    kernel=root.findtext("os/kernel") or "", ramdisk=root.findtext("os/initrd") or "",
                    args=root.findtext("os/cmdline") or "",
                    metadata={k.get("key"): k.text or "" for k in meta.iterfind("{*}keep")}
                    if meta is not None else {}))
            return configs

    # -- helpers for actions --------------------------------------------------------------------
    def _lookup(self, uuid: str):
        try:
            return self.conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as exc:
            raise _error(exc, uuid) from None

    def _get(self, uuid: str, *states: str) -> Domain:
        return checked(self._refresh(uuid), uuid, *states)  # a fresh look: it may have changed behind our back

    def _not_control(self, d: Domain) -> None:
        if d.is_control_domain and self.driver != "Xen":
            raise BackendError("Domain-0 is the host itself here", "OPERATION_NOT_ALLOWED",
                               f"on a {self.driver} host the control domain is the host itself")

    def _check_memory(self, needed: int, releasing: int = 0) -> None:
        check_free(needed, self.host_info().memory_free + releasing)

    def _affect(self, dom) -> int:
        """Change the running domain and, if libvirt keeps one, its persistent definition."""
        flags = libvirt.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0
        if dom.isPersistent():
            flags |= libvirt.VIR_DOMAIN_AFFECT_CONFIG
        return flags or libvirt.VIR_DOMAIN_AFFECT_CURRENT

    def _write_meta(self, dom, **changes) -> None:
        """Rewrite our metadata element with some attributes or children replaced."""
        meta = self._meta(dom)
        if meta is None:
            meta = etree.Element("xend")
        for key, value in changes.items():
            if key == "pins":
                for old in meta.findall("{*}pin"):
                    meta.remove(old)
                for v, cpus in sorted(value.items()):
                    etree.SubElement(meta, "pin", vcpu=str(v), cpus=cpuset.format(cpus))
            elif key in ("keep", "image"):
                for old in meta.findall("{*}" + key):
                    meta.remove(old)
                for k, v in sorted(value.items()):
                    etree.SubElement(meta, key, key=k).text = v
            else:
                meta.set(key, str(value))
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, etree.tostring(meta, encoding="unicode"),
                        NS_PREFIX, NS, self._affect(dom))

    def _allowed(self, uuid: str, pool: str, vcpu: int, pins: dict[int, frozenset[int]]) -> frozenset[int]:
        """Where a vCPU may run: its pool's CPUs, less CPUs reserved to others, within its pins."""
        home = self.table.pools[pool].cpus if pool in self.table.pools and self.table.pools[pool].cpus else \
            frozenset(range(self.ncpus))
        return narrowed(home, frozenset(cpu for cpu, who in self._occupied.items() if uuid not in who), pins.get(vcpu))

    def _repin(self, uuid: str) -> None:
        """Apply the pool, reservations and pins of a running domain to libvirt."""
        d = self._refresh(uuid)
        if d is None or d.power_state == PowerState.SUSPENDED or d.is_control_domain:
            return
        dom = self._lookup(uuid)
        for v in range(d.vcpus):
            cpus = self._allowed(uuid, d.pool, v, d.pins)
            dom.pinVcpu(v, tuple(c in cpus for c in range(self.ncpus)))
        self._refresh(uuid)
        self._side.add(uuid)

    def changed_domains(self) -> set[str]:
        return self._side.drain()

    def _definition(self, config: DomainConfig, base: str | None) -> str:
        """The domain XML for ``config``: the existing definition edited, or a new minimal one."""
        if base is None:
            kind = {"Xen": "xen", "QEMU": self.domain_type, "LXC": "lxc", "TEST": "test"}.get(self.driver, "test")
            root = etree.Element("domain", type=kind)
            os_el = etree.SubElement(root, "os")
            etree.SubElement(os_el, "type").text = "linux" if self.driver == "Xen" else "hvm"
        else:
            root = etree.fromstring(base.encode())
        for tag in ("name", "uuid", "memory", "currentMemory", "vcpu", "cputune"):
            for old in root.findall(tag):
                root.remove(old)
        for old in root.findall("resource"):  # a partition of ours (an admin's own stays unless we set one)
            if config.uuid in self._partition_of or (old.findtext("partition") or "").startswith(
                    partitions.partition("")):
                root.remove(old)
        pos = 0
        for tag, text in (("name", config.name), ("uuid", config.uuid), ("memory", str(config.memory_max // KIB)),
                          ("currentMemory", str(config.memory // KIB)), ("vcpu", str(config.vcpus_max))):
            el = etree.Element(tag)
            el.text = text
            root.insert(pos, el)
            pos += 1
        root.find("memory").set("unit", "KiB")
        root.find("currentMemory").set("unit", "KiB")
        root.find("vcpu").set("placement", "static")
        root.find("vcpu").set("current", str(config.vcpus))
        tune = etree.Element("cputune")
        if self.sched and self.sched[0] == "cpu_shares":
            weight, cap = self._own(config.uuid, config.weight, config.cap)
            etree.SubElement(tune, "shares").text = str(weight * self.sched[1])
            if cap and self.sched[2]:
                etree.SubElement(tune, "period").text = str(QUOTA_PERIOD)
                etree.SubElement(tune, "quota").text = str(cap * QUOTA_PERIOD // 100 // max(1, config.vcpus))
        for v in range(config.vcpus_max):
            cpus = self._allowed(config.uuid, config.pool or POOL0_UUID, v, config.pins)
            if len(cpus) < self.ncpus:
                etree.SubElement(tune, "vcpupin", vcpu=str(v), cpuset=cpuset.format(cpus))
        if len(tune):
            root.insert(pos, tune)
        if config.uuid in self._partition_of:  # the cgroup of its scheduling domain
            etree.SubElement(etree.SubElement(root, "resource"), "partition").text = self._partition_of[config.uuid]
        os_el = root.find("os")
        for tag, value in (("kernel", config.kernel), ("initrd", config.ramdisk), ("cmdline", config.args)):
            old = os_el.find(tag)
            if value:
                (old if old is not None else etree.SubElement(os_el, tag)).text = value
        meta_root = root.find("metadata")
        if meta_root is None:
            meta_root = etree.Element("metadata")
            root.insert(pos, meta_root)
        for old in meta_root.findall(f"{{{NS}}}xend"):
            meta_root.remove(old)
        meta = etree.SubElement(meta_root, f"{{{NS}}}xend", nsmap={NS_PREFIX: NS}, pool=config.pool or POOL0_UUID,
                                weight=str(config.weight), cap=str(config.cap))
        for v, cpus in sorted(config.pins.items()):
            etree.SubElement(meta, "pin", vcpu=str(v), cpus=cpuset.format(cpus))
        for k, v in sorted(config.metadata.items()):
            etree.SubElement(meta, "keep", key=k).text = v
        return etree.tostring(root, encoding="unicode")

    def _existing(self, uuid: str):
        try:
            return self.conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise _error(exc, uuid) from None

    def _boot(self, dom, paused: bool) -> None:
        """Start a defined domain (from its managed save image if it has one), paused if asked."""
        try:
            dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED if paused else 0)
        except libvirt.libvirtError as exc:
            if not paused or exc.get_error_code() != libvirt.VIR_ERR_INVALID_ARG:
                raise
            dom.create()  # a driver without START_PAUSED (libvirt's test driver): pause at once
            dom.suspend()

    def _own(self, uuid: str, weight: int, cap: int) -> tuple[int, int]:
        """The weight and cap a domain's own cgroup gets: in a scheduling domain's partition the
        partition's are the only ones in force (a member's own weight and cap do not count, as on
        the simulated host), so its own are neutral: the default weight, no cap."""
        return (256, 0) if uuid in self._partition_of else (weight, cap)

    def _apply_sched(self, dom, weight: int, cap: int, vcpus: int) -> None:
        if not self.sched:
            return
        weight, cap = self._own(dom.UUIDString(), weight, cap)
        name, scale, cap_name = self.sched
        params = {name: weight * scale}
        if cap_name == "cap":
            params["cap"] = cap
        elif cap_name == "vcpu_quota":
            params["vcpu_period"] = QUOTA_PERIOD
            params["vcpu_quota"] = cap * QUOTA_PERIOD // 100 // max(1, vcpus) if cap else -1
        dom.setSchedulerParametersFlags(params, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def _act(self, uuid: str, action):
        """Run libvirt calls for one domain under the lock; a libvirt failure becomes a BackendError."""
        with self._lock:
            try:
                return action()
            except libvirt.libvirtError as exc:
                self._refresh_quietly(uuid)
                raise _error(exc, uuid) from None

    def _refresh_quietly(self, uuid: str) -> None:
        try:
            self._refresh(uuid)
        except libvirt.libvirtError:
            self._cache_until = 0.0

    # -- lifecycle ---------------------------------------------------------------------------------
    def define(self, config: DomainConfig) -> None:
        def action():
            dom = self._existing(config.uuid)
            # no definition yet, or a transient domain: there is none to keep; the next start makes one
            if dom is not None and dom.isPersistent():
                self.conn.defineXML(self._definition(config, dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))
        self._act(config.uuid, action)

    def undefine(self, uuid: str) -> None:
        def action():
            dom = self._existing(uuid)
            if dom is not None and dom.isPersistent() and not dom.isActive():
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
        self._act(uuid, action)

    def start(self, config: DomainConfig, paused: bool) -> Domain:
        def action():
            check_pins(config.pins, self.ncpus)
            if (config.pool or POOL0_UUID) not in self.table.pools:
                raise BackendError("the CPU pool is not active", "POOL_BAD_STATE", "deactivated")
            dom = self._existing(config.uuid)
            if dom is not None and dom.isActive():
                raise BackendError(f"domain {config.name} already runs", "VM_BAD_POWER_STATE", config.uuid,
                                   "halted", "running")
            self._check_memory(config.memory)
            if dom is not None and dom.hasManagedSaveImage(0):
                dom.managedSaveRemove(0)  # a stale image: start means a fresh boot from the definition
            base = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) if dom is not None and dom.isPersistent() else None
            dom = self.conn.defineXML(self._definition(config, base))
            self._ensure_partition(config.uuid, config)
            self._boot(dom, paused)
            self._write_meta(dom, started=_now().isoformat())
            self._apply_sched(dom, config.weight, config.cap, config.vcpus)
            self._repin(config.uuid)
            return self._refresh(config.uuid)
        return self._act(config.uuid, action)

    def _stop(self, dom, clean: bool) -> None:
        if not clean:
            dom.destroy()
            return
        dom.shutdown()
        deadline = time.monotonic() + SHUTDOWN_WAIT
        while dom.isActive():  # the guest shuts itself down; we wait for it, within reason
            if time.monotonic() > deadline:
                raise BackendError(f"{dom.name()} did not shut down within {SHUTDOWN_WAIT:.0f} s",
                                   "OPERATION_NOT_ALLOWED", "the guest ignored the shutdown request; "
                                   "use hard_shutdown")
            time.sleep(0.1)

    def shutdown(self, uuid: str, clean: bool) -> None:
        def action():
            states = (PowerState.RUNNING,) if clean else (PowerState.RUNNING, PowerState.PAUSED, PowerState.SUSPENDED)
            d = self._get(uuid, *states)
            dom = self._lookup(uuid)
            if d.power_state == PowerState.SUSPENDED:
                dom.managedSaveRemove(0)
            else:
                self._stop(dom, clean)
            self._refresh(uuid)
        self._act(uuid, action)

    def reboot(self, uuid: str, clean: bool, config: DomainConfig) -> Domain:
        def action():
            states = (PowerState.RUNNING,) if clean else (PowerState.RUNNING, PowerState.PAUSED)
            old = self._get(uuid, *states)
            self._check_memory(config.memory, releasing=old.memory)
            # the stored definition applies at every start, reboots too: stop, redefine, boot
            self._stop(self._lookup(uuid), clean)
            self._refresh(uuid)
            return None
        self._act(uuid, action)
        return self.start(config, paused=False)

    def pause(self, uuid: str) -> Domain:
        def action():
            self._get(uuid, PowerState.RUNNING)
            self._lookup(uuid).suspend()
            return self._refresh(uuid)
        return self._act(uuid, action)

    def unpause(self, uuid: str) -> Domain:
        def action():
            self._get(uuid, PowerState.PAUSED)
            self._lookup(uuid).resume()
            return self._refresh(uuid)
        return self._act(uuid, action)

    def suspend(self, uuid: str) -> Domain:
        def action():
            self._get(uuid, PowerState.RUNNING, PowerState.PAUSED)
            dom = self._lookup(uuid)
            if not dom.isPersistent():
                raise BackendError("a transient domain has no definition to suspend to", "OPERATION_NOT_ALLOWED",
                                   "libvirt keeps suspended images only of persistent domains")
            dom.managedSave(0)
            return self._refresh(uuid)
        return self._act(uuid, action)

    def resume(self, uuid: str, paused: bool) -> Domain:
        def action():
            d = self._get(uuid, PowerState.SUSPENDED)
            self._check_memory(d.memory)
            self._ensure_partition(uuid)
            self._boot(self._lookup(uuid), paused)
            self._repin(uuid)
            return self._refresh(uuid)
        return self._act(uuid, action)

    # -- save / restore: libvirt's image, our VM record inside its domain XML ------------------------
    def save(self, uuid: str, path: Path, metadata: dict[str, str]) -> None:
        def action():
            self._get(uuid, PowerState.RUNNING, PowerState.PAUSED)
            dom = self._lookup(uuid)
            self._write_meta(dom, image=metadata)
            dom.save(str(path))
            if dom.isPersistent():  # the record belongs to the image, not to the next start
                self._write_meta(dom, image={})
            self._refresh(uuid)
        self._act(uuid, action)

    def _image_xml(self, path: Path) -> etree._Element:
        try:
            text = self.conn.saveImageGetXMLDesc(str(path), 0)
        except libvirt.libvirtError as exc:
            raise BackendError(f"{path} is not a saved domain image: {exc.get_error_message()}", "INVALID_VALUE",
                               "path", str(path)) from None
        return etree.fromstring(text.encode(), etree.XMLParser(resolve_entities=False, no_network=True))

    def read_image(self, path: Path) -> dict[str, str]:
        with self._lock:
            root = self._image_xml(path)
            return {e.get("key"): e.text or "" for e in root.iterfind(IMAGE_ENTRIES)}

    def restore(self, path: Path, paused: bool, config: DomainConfig | None = None) -> tuple[Domain, dict[str, str]]:
        def action():
            root = self._image_xml(path)
            uuid = root.findtext("uuid")
            meta = {e.get("key"): e.text or "" for e in root.iterfind(IMAGE_ENTRIES)}
            existing = self._existing(uuid)
            if existing is not None and (existing.isActive() or existing.hasManagedSaveImage(0)):
                raise BackendError(f"domain {existing.name()} is already here", "VM_BAD_POWER_STATE", uuid,
                                   "halted", "running")
            if config is not None and (config.pool or POOL0_UUID) not in self.table.pools:
                raise BackendError("the CPU pool of the domain is not active here", "POOL_BAD_STATE",
                                   "deactivated")
            self._check_memory(int(root.findtext("currentMemory") or 0) * KIB)
            dxml, part = self._restore_placement(uuid, root)
            self._ensure_partition(uuid, partition=part)
            try:
                self.conn.restoreFlags(str(path), dxml, libvirt.VIR_DOMAIN_SAVE_PAUSED if paused else 0)
            except libvirt.libvirtError as exc:
                if not paused or exc.get_error_code() != libvirt.VIR_ERR_INVALID_ARG:
                    raise
                self.conn.restore(str(path))  # the test driver has no SAVE_PAUSED: pause at once
                self.conn.lookupByUUIDString(uuid).suspend()
            dom = self.conn.lookupByUUIDString(uuid)
            changes = {"image": {}}
            if config is not None:  # the VM may have been moved or renamed meanwhile
                changes.update(keep=config.metadata, pool=config.pool or POOL0_UUID)
            self._write_meta(dom, **changes)
            self._repin(uuid)
            return self._refresh(uuid), meta
        return self._act("", action)

    # -- libvirt's own live migration, to and from another xend-ext server's host (libvirt_migrate.py) --
    def live_target(self) -> dict[str, str]:
        return dict(self._live)

    def send_live(self, uuid: str, target: dict[str, str]) -> None:
        with self._lock:  # not held while it migrates: the host serves everyone else meanwhile
            self._get(uuid, PowerState.RUNNING, PowerState.PAUSED)
            dom = self._lookup(uuid)
        self._migrating(uuid, libvirt_migrate.send, dom, target)

    def abort_live(self, uuid: str) -> None:
        log.info("aborting libvirt's migration of %s", uuid)
        try:
            self.conn.lookupByUUIDString(uuid).abortJob()
        except libvirt.libvirtError as exc:  # no job or no domain (any more): it ended either way
            log.info("abortJob of %s: %s", uuid, exc.get_error_message())

    def fetch_live(self, uuid: str, target: dict[str, str]) -> None:
        if not self._live:
            raise self.missing(Capability.MIGRATE)
        self._migrating(uuid, libvirt_migrate.fetch, uuid, target, self._live)

    def _migrating(self, uuid: str, move, *args) -> None:
        try:
            move(*args)
        except libvirt.libvirtError as exc:
            raise _error(exc, uuid) from None
        finally:
            with self._lock:
                self._refresh_quietly(uuid)

    def adopt(self, uuid: str, config: DomainConfig) -> tuple[Domain, dict[str, str]]:
        def action():
            self._get(uuid, PowerState.RUNNING, PowerState.PAUSED)
            dom = self._lookup(uuid)
            self._write_meta(dom, keep=config.metadata, pool=config.pool or POOL0_UUID)
            self._repin(uuid)
            return self._refresh(uuid), libvirt_migrate.figures(dom)
        return self._act(uuid, action)

    # -- allocation ---------------------------------------------------------------------------------
    def set_memory(self, uuid: str, memory: int) -> Domain:
        def action():
            d = self._get(uuid)
            self._not_control(d)
            require_live(d)
            check_memory(d, memory)
            self._check_memory(memory, releasing=d.memory)
            self._lookup(uuid).setMemoryFlags(memory // KIB, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            return self._refresh(uuid)
        return self._act(uuid, action)

    def set_memory_max(self, uuid: str, memory_max: int) -> Domain:
        if Capability.MEMORY_MAX_LIVE not in self.capabilities:
            raise self.missing(Capability.MEMORY_MAX_LIVE)

        def action():
            d = self._get(uuid, PowerState.RUNNING, PowerState.PAUSED)
            check_memory_max(d, memory_max)
            self._lookup(uuid).setMemoryFlags(memory_max // KIB,
                                              libvirt.VIR_DOMAIN_MEM_MAXIMUM | libvirt.VIR_DOMAIN_AFFECT_LIVE)
            return self._refresh(uuid)
        return self._act(uuid, action)

    def set_vcpus(self, uuid: str, vcpus: int) -> Domain:
        def action():
            d = self._get(uuid, PowerState.RUNNING, PowerState.PAUSED)
            self._not_control(d)
            check_vcpus(d, vcpus)
            self._lookup(uuid).setVcpusFlags(vcpus, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            self._repin(uuid)  # new vCPUs are confined like the others
            return self._refresh(uuid)
        return self._act(uuid, action)

    def pin(self, uuid: str, vcpu: int, cpus: frozenset[int] | None) -> Domain:
        def action():
            d = self._get(uuid, PowerState.RUNNING, PowerState.PAUSED)
            self._not_control(d)
            pins = dict(d.pins)
            if cpus is None:
                pins.pop(vcpu, None)
            else:
                check_pins({vcpu: cpus}, self.ncpus)
                pins[vcpu] = frozenset(cpus)
            self._write_meta(self._lookup(uuid), pins=pins)
            self._repin(uuid)
            return self._refresh(uuid)
        return self._act(uuid, action)

    def set_sched(self, uuid: str, weight: int, cap: int) -> Domain:
        if not self.sched:
            raise self.missing(Capability.SCHED_CREDIT)

        def action():
            d = self._get(uuid, PowerState.RUNNING, PowerState.PAUSED)
            self._not_control(d)
            dom = self._lookup(uuid)
            self._apply_sched(dom, weight, cap, d.vcpus)
            self._write_meta(dom, weight=weight, cap=cap)
            if uuid in self._sdoms:  # a running master's weight and cap are its domain's
                self.partitions.ensure(uuid, weight, cap)
            return self._refresh(uuid)
        return self._act(uuid, action)

    # -- CPU pools, emulated by pinning ---------------------------------------------------------------
    def _load_pools(self) -> None:
        state = sxp.loads(self.pools_path.read_text(encoding="utf-8")) if self.pools_path.exists() else None
        if state is not None:
            self.table.load_sxp(state)
            for child in state[1:]:
                if isinstance(child, list) and child and child[0] == "occupied":
                    self._occupied[int(sxp.child_value(child, "cpu"))] = frozenset(
                        u for u in (sxp.child_value(child, "domains", "") or "").split(",") if u)
        if POOL0_UUID not in self.table.pools:  # first start on this host: every pCPU in the boot pool
            self.table.boot(self._info.sched_policy)
            self._save_pools()

    def _save_pools(self) -> None:
        state = ["libvirt-pools", *self.table.to_sxp(),
                 *[["occupied", ["cpu", str(cpu)], ["domains", ",".join(sorted(who))]]
                   for cpu, who in sorted(self._occupied.items())]]
        self.pools_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.pools_path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(sxp.dumps(state) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.pools_path)

    def pools(self) -> list[CpuPool]:
        with self._lock:
            return self.table.active()

    def _in_pool(self, uuid: str) -> list[Domain]:
        """The domains a pool holds (Domain-0 in Pool-0: it keeps Pool-0's last CPU, as on Xen)."""
        return [d for d in self._domains().values() if d.pool == uuid]

    def _pools_changed(self, *uuids: str) -> None:
        """Persist the table, then pin the domains of the pools that changed to their new CPUs."""
        self._save_pools()
        for uuid in uuids:
            for d in self._in_pool(uuid):
                self._repin(d.uuid)

    def pool_activate(self, uuid: str, name: str, sched: str, cpus: frozenset[int]) -> CpuPool:
        def action():
            pool = self.table.activate(uuid, name, sched, cpus)
            self._pools_changed(uuid)
            return pool
        return self._act("", action)

    def pool_deactivate(self, uuid: str) -> None:
        def action():
            self.table.deactivate(uuid, bool(self._in_pool(uuid)))
            self._pools_changed()
        self._act("", action)

    def pool_add_cpu(self, uuid: str, cpu: int) -> CpuPool:
        def action():
            pool = self.table.add_cpu(uuid, cpu)
            self._pools_changed(uuid)
            return pool
        return self._act("", action)

    def pool_remove_cpu(self, uuid: str, cpu: int) -> CpuPool:
        def action():
            pool = self.table.remove_cpu(uuid, cpu, bool(self._in_pool(uuid)))
            self._pools_changed(uuid)
            return pool
        return self._act("", action)

    def pool_move_domain(self, domain: str, pool: str) -> Domain:
        def action():
            self._get(domain, PowerState.RUNNING, PowerState.PAUSED)
            self.table.get(pool)
            self._write_meta(self._lookup(domain), pool=pool)
            self._repin(domain)
            return self._refresh(domain)
        return self._act(domain, action)

    def set_occupancy(self, occupied: dict[int, frozenset[str]]) -> None:
        def action():
            check_occupancy(occupied, self.ncpus)
            self._occupied = {cpu: frozenset(who) for cpu, who in occupied.items() if who}
            self._save_pools()
            for d in list(self._domains().values()):
                if d.power_state in (PowerState.RUNNING, PowerState.PAUSED):
                    self._repin(d.uuid)
        self._act("", action)

    # -- scheduling domains: libvirt resource partitions (partitions.py) ----------------------------
    def _probe_partitions(self) -> tuple[partitions.Partitions | None, str]:
        if self.driver != "QEMU":
            return None, f"libvirt's {self.driver} driver has no resource partitions we can use"
        if urlsplit(self.uri).hostname:
            return None, "the libvirt host is remote: its cgroups cannot be written from here"
        try:
            mounts = Path("/proc/self/mounts").read_text(encoding="utf-8")
        except OSError as exc:
            return None, f"cannot read the cgroup mounts: {exc}"
        return partitions.Partitions.probe(mounts)

    def _in_force(self, sd: SchedDomain, config: DomainConfig | None = None) -> tuple[int, int]:
        """The weight and cap of a scheduling domain: its running master's, else its stored ones."""
        if config is not None:
            return config.weight, config.cap
        master = self._cache.get(sd.master)
        if master is not None and master.power_state in (PowerState.RUNNING, PowerState.PAUSED):
            return master.weight, master.cap
        return sd.weight, sd.cap

    def _ensure_partition(self, uuid: str, config: DomainConfig | None = None, partition: str | None = None) -> None:
        """Before a domain starts in a partition, the partition must exist (libvirt removes an empty
        one when a start in it fails; a host reboot removes them all)."""
        part = partition or self._partition_of.get(uuid)
        sd = next((sd for sd in self._sdoms.values() if partitions.partition(sd.master) == part), None)
        if sd is not None:
            self.partitions.ensure(sd.master, *self._in_force(sd, config if config and config.uuid == sd.master
                                                               else None))
        elif part and part.startswith(partitions.partition("")):  # arriving before its domain is made here
            self.partitions.ensure(part.removeprefix(partitions.partition("")), 256, 0)

    def _restore_placement(self, uuid: str, root: etree._Element) -> tuple[str | None, str | None]:
        """(the domain XML to restore with, or None for the image's own; the partition it restores
        into). An image keeps the partition its domain ran in: it is kept when it is where the
        current set puts the domain, or a scheduling domain unknown here (a migration: its domain is
        made here once its VMs arrived); else the domain is restored where the set puts it now."""
        part = root.findtext("resource/partition") or partitions.DEFAULT
        want = self._partition_of.get(uuid, partitions.DEFAULT)
        known = {partitions.partition(master) for master in self._sdoms}
        if self.partitions is None or part == want or (part.startswith(partitions.partition("")) and part not in known):
            return None, part
        for old in root.findall("resource"):
            root.remove(old)
        if want != partitions.DEFAULT:
            etree.SubElement(etree.SubElement(root, "resource"), "partition").text = want
        return etree.tostring(root, encoding="unicode"), want

    def _live_partition(self, uuid: str) -> str | None:
        """The partition a domain with a cgroup runs in (running, paused, or in its suspended image),
        None when it has none now (halted)."""
        dom = self._existing(uuid)
        if dom is None:
            return None
        if dom.isActive():
            xml = dom.XMLDesc(0)
        elif dom.hasManagedSaveImage(0):
            xml = dom.managedSaveGetXMLDesc(0)
        else:
            return None
        return etree.fromstring(xml.encode()).findtext("resource/partition") or partitions.DEFAULT

    def set_sched_domains(self, domains: list[SchedDomain]) -> None:
        if self.partitions is None:
            raise self.missing(Capability.SCHED_DOMAIN)

        def action():
            wanted = {uuid: partitions.partition(sd.master) for sd in domains for uuid in (sd.master, *sd.members)}
            # only the domains whose partition changes are looked at: a push costs what it changes
            for uuid in set(wanted) | set(self._partition_of):
                want = wanted.get(uuid, partitions.DEFAULT)
                live = self._live_partition(uuid) if want != self._partition_of.get(uuid, partitions.DEFAULT) \
                    else None
                if live is not None and live != want:
                    name = self._existing(uuid).name()
                    raise BackendError(f"domain {name} runs in cgroup partition {live}", "OPERATION_NOT_ALLOWED",
                                       f"libvirt places a domain in its cgroup partition when it starts and cannot "
                                       f"move it: {name} runs in {live}; shut it down first, it starts in {want} "
                                       f"from then on")
            for sd in domains:
                self.partitions.ensure(sd.master, *self._in_force(sd))
            for master in set(self._sdoms) - {sd.master for sd in domains}:
                self.partitions.remove(master)
            self._sdoms = {sd.master: sd for sd in domains}
            self._partition_of = wanted
        self._act("", action)

    # -- measured utilisation ---------------------------------------------------------------------
    def _sampler(self) -> None:
        while not self._closed.wait(UTIL_WINDOW):
            try:
                self._sample()
            except libvirt.libvirtError as exc:  # the next window will do (a domain went away meanwhile)
                log.debug("utilisation sample failed: %s", exc.get_error_message())

    def _sample(self) -> None:
        """One sample of every running domain's per-vCPU CPU time; each vCPU's utilisation over
        the window since the previous sample (a restarted domain starts a new one)."""
        before = time.monotonic()
        stats = self.conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_VCPU,
                                            libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE)
        now = (before + time.monotonic()) / 2
        samples, util = {}, {}
        for dom, values in stats:
            uuid, domid = dom.UUIDString(), dom.ID()
            times = {int(key.split(".")[1]): int(value) for key, value in values.items()
                     if key.startswith("vcpu.") and key.endswith(".time")}
            samples[uuid] = (domid, now, times)
            last = self._samples.get(uuid)
            if last is not None and last[0] == domid and now > last[1]:
                window = (now - last[1]) * 1e9
                util[uuid] = {v: max(0.0, (ns - last[2].get(v, ns)) / window) for v, ns in times.items()}
        with self._lock:
            self._samples, self._util = samples, util
            for uuid, share in util.items():
                if uuid in self._cache:
                    self._cache[uuid] = replace(self._cache[uuid], utilisation=share)

    # -- changes made outside xend-ext ------------------------------------------------------------
    def watch(self, notify) -> None:
        """libvirt's events say which domain changed; a worker re-reads it and reports only what
        differs from what we last knew (our own actions already updated that)."""
        self._notify = notify
        for event in (libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT,
                      libvirt.VIR_DOMAIN_EVENT_ID_BALLOON_CHANGE, libvirt.VIR_DOMAIN_EVENT_ID_TUNABLE,
                      libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE):
            try:
                self.conn.domainEventRegisterAny(None, event, self._on_event, None)
            except libvirt.libvirtError as exc:  # a driver without this event: the cache's refresh covers it
                log.info("libvirt event %d not available: %s", event, exc.get_error_message())
        threading.Thread(target=self._changes_worker, name="libvirt-changes", daemon=True).start()

    def _on_event(self, _conn, dom, *_args) -> None:
        self._changes.put(dom.UUIDString())  # no libvirt calls in the event loop's thread

    def _changes_worker(self) -> None:
        while True:
            uuid = self._changes.get()
            with self._lock:
                before = self._cache.get(uuid)
                try:
                    after = self._refresh(uuid)
                except libvirt.libvirtError:
                    continue
            if _differs(before, after) and self._notify is not None:
                self._notify("domain", uuid)

    def close(self) -> None:
        self._closed.set()
        try:
            self.conn.close()
        except libvirt.libvirtError:
            pass


def _differs(before: Domain | None, after: Domain | None) -> bool:
    """A change worth reporting: ignore where vCPUs happen to run."""
    if before is None or after is None:
        return before is not after
    return replace(before, vcpu_cpu={}, utilisation={}) != replace(after, vcpu_cpu={}, utilisation={})

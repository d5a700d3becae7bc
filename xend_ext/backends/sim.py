"""The simulated host: a faithful model of a Xen host, kept in its own state file.

Restarting xend-ext is a toolstack restart: the simulated hypervisor's domains outlive the server
in ``sim-host.sxp`` beside the store, as domains outlive xend on a real host. ``reboot=True``
models a host reboot first: every domain but Domain-0 is gone. Domains have domids, power states,
memory, vCPUs, pins, weight and cap; save and suspend write real image files; CPU use comes from
the fluid scheduler model (:mod:`xend_ext.sched_model`), with every vCPU of every running guest
busy. Domain-0 is modelled idle, so it takes no share from the guests.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import platform
import socket
import threading
import zlib
from dataclasses import replace
from pathlib import Path

from .. import sxp
from ..sched_model import VCPU, Entity, solve
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
    require_live,
)
from .pooltable import PoolTable

MIB = 1 << 20
STATE_FILE = "sim-host.sxp"
IMAGE_MAGIC = b"XEND-EXT-SIM-IMAGE 2\n"
IMAGE_CHUNK = 1 << 20  # bytes of an image's memory written or checked at a time
DOM0_UUID = "00000000-0000-0000-0000-000000000000"
DOM0_MEMORY = 1024 * MIB


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _pins_to_sxp(pins: dict[int, frozenset[int]]) -> list:
    return [["pin", str(v), ",".join(str(c) for c in sorted(cpus))] for v, cpus in sorted(pins.items())]


def _pins_from_sxp(items: list) -> dict[int, frozenset[int]]:
    return {int(v): frozenset(int(c) for c in cpus.split(",") if c) for _, v, cpus in items}


def _domain_to_sxp(d: Domain) -> list:
    return [
        "domain",
        ["uuid", d.uuid], ["name", d.name], ["domid", str(d.domid)], ["state", d.power_state],
        ["memory", str(d.memory)], ["maxmem", str(d.memory_max)], ["vcpus", str(d.vcpus)],
        ["vcpus_max", str(d.vcpus_max)], ["weight", str(d.weight)], ["cap", str(d.cap)],
        ["start_time", d.start_time.strftime("%Y%m%dT%H:%M:%SZ")], ["control", "1" if d.is_control_domain else "0"],
        ["pins", *_pins_to_sxp(d.pins)],
        ["metadata", *[[k, v] for k, v in sorted(d.metadata.items())]],
        ["pool", d.pool],
    ]


def _domain_from_sxp(node: list) -> Domain:
    get = lambda name, default=None: sxp.child_value(node, name, default)  # noqa: E731
    pins = next((child[1:] for child in node[1:] if isinstance(child, list) and child[0] == "pins"), [])
    meta = next((child[1:] for child in node[1:] if isinstance(child, list) and child[0] == "metadata"), [])
    return Domain(
        uuid=get("uuid"), name=get("name"), domid=int(get("domid")), power_state=get("state"),
        memory=int(get("memory")), memory_max=int(get("maxmem")), vcpus=int(get("vcpus")),
        vcpus_max=int(get("vcpus_max")), weight=int(get("weight")), cap=int(get("cap")),
        pins=_pins_from_sxp(pins),
        start_time=dt.datetime.strptime(get("start_time"), "%Y%m%dT%H:%M:%SZ").replace(tzinfo=dt.UTC),
        is_control_domain=get("control") == "1", metadata={k: v for k, v in meta}, pool=get("pool", POOL0_UUID),
    )


class SimBackend(Backend):
    name = "sim"
    migration = "copy"
    capabilities = frozenset({
        Capability.HOST, Capability.NUMA, Capability.LIFECYCLE, Capability.PAUSE, Capability.SUSPEND,
        Capability.SAVE, Capability.MIGRATE, Capability.MEMORY_LIVE, Capability.VCPUS_LIVE, Capability.PIN,
        Capability.SCHED_CREDIT, Capability.UTILISATION, Capability.POOLS, Capability.SCHED_DOMAIN,
        Capability.CPU_OCCUPY, Capability.MEMORY_MAX_LIVE,
    })

    def __init__(self, state_dir: str | Path, cpus: int = 8, memory_mib: int = 16384, numa_nodes: int = 1,
                 reboot: bool = False, image_bytes_per_mib: int = 1) -> None:
        if cpus < 1:
            raise ValueError("a simulated host needs at least one pCPU")
        if numa_nodes < 1 or numa_nodes > cpus:
            raise ValueError("NUMA nodes must be between 1 and the number of pCPUs")
        if memory_mib * MIB <= DOM0_MEMORY:
            raise ValueError(f"a simulated host needs more than {DOM0_MEMORY // MIB} MiB (Domain-0 has that)")
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / STATE_FILE
        self.images = self.state_dir / "sim-images"
        self.image_bytes_per_mib = max(1, image_bytes_per_mib)  # of guest memory, in a saved image
        self.ncpus = cpus
        self.memory_total = memory_mib * MIB
        self.numa_nodes = numa_nodes
        self._lock = threading.RLock()  # backend calls run in worker threads
        self._domains: dict[str, Domain] = {}
        self.table = PoolTable(cpus)
        self._sdoms: list[SchedDomain] = []
        self._occupied: dict[int, frozenset[str]] = {}
        self._next_domid = 1
        self.boot_id = 0
        self._util: tuple[dict[str, dict[int, float]], dict[tuple[str, int], int]] | None = None
        self._host: HostInfo | None = None
        self._load(reboot)
        self._info = self._describe()
        self._side = SideEffects()
        self._shown = self._placement()  # shares and placement as last reported (see changed_domains)

    # -- persistence of the simulated hypervisor ------------------------------------------
    def _load(self, reboot: bool) -> None:
        state = sxp.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else None
        previous = int(sxp.child_value(state, "boot", "0")) if state else 0
        # a new boot when the host never ran or was rebooted; otherwise the host kept running
        self.boot_id = previous + 1 if (state is None or reboot) else previous
        if state is not None and not reboot:
            self._next_domid = int(sxp.child_value(state, "next_domid", "1"))
            self.table.load_sxp(state)
            for child in state[1:]:
                if isinstance(child, list) and child and child[0] == "domain":
                    d = _domain_from_sxp(child)
                    self._domains[d.uuid] = d
                elif isinstance(child, list) and child and child[0] == "occupied":
                    self._occupied[int(sxp.child_value(child, "cpu"))] = frozenset(
                        u for u in (sxp.child_value(child, "domains", "") or "").split(",") if u)
                elif isinstance(child, list) and child and child[0] == "sched_domain":
                    self._sdoms.append(SchedDomain(
                        master=sxp.child_value(child, "master"), weight=int(sxp.child_value(child, "weight")),
                        cap=int(sxp.child_value(child, "cap")),
                        members=frozenset(m for m in (sxp.child_value(child, "members", "") or "").split(",") if m)))
        self.table.boot()  # a booting host: every pCPU in the boot pool
        if DOM0_UUID not in self._domains:
            self._domains[DOM0_UUID] = Domain(
                uuid=DOM0_UUID, name="Domain-0", domid=0, power_state=PowerState.RUNNING, memory=DOM0_MEMORY,
                memory_max=DOM0_MEMORY, vcpus=min(self.ncpus, 4), vcpus_max=self.ncpus, weight=256, cap=0,
                pins={}, start_time=_now(), is_control_domain=True, pool=POOL0_UUID)
        if reboot and self.images.exists():
            for image in self.images.iterdir():
                image.unlink()
        self._save()

    def _save(self) -> None:
        state = ["sim-host", ["boot", str(self.boot_id)], ["cpus", str(self.ncpus)],
                 ["next_domid", str(self._next_domid)], *self.table.to_sxp(),
                 *[["occupied", ["cpu", str(cpu)], ["domains", ",".join(sorted(who))]]
                   for cpu, who in sorted(self._occupied.items())],
                 *[["sched_domain", ["master", sd.master], ["weight", str(sd.weight)], ["cap", str(sd.cap)],
                    ["members", ",".join(sorted(sd.members))]] for sd in self._sdoms],
                 *[_domain_to_sxp(d) for d in self._domains.values()]]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(sxp.dumps(state) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def _commit(self, domain: Domain | None, uuid: str | None = None) -> Domain | None:
        """Record a domain's new state (None: it is gone) and persist the simulated host."""
        if domain is None:
            self._domains.pop(uuid or "", None)
        else:
            self._domains[domain.uuid] = domain
        self._model_changed()
        self._host = None
        self._save()
        return self._live(domain) if domain is not None else None

    # -- facts -----------------------------------------------------------------------------
    def host_info(self) -> HostInfo:
        info = self._host  # read per call by every host record: cached until a domain changes
        if info is None:
            with self._lock:
                info = self._host = replace(self._info, memory_free=self.memory_total - self._used_memory())
        return info

    def _describe(self) -> HostInfo:
        per_node = -(-self.ncpus // self.numa_nodes)
        cpus = tuple(
            PhysicalCPU(number=n, vendor="GenuineSim", modelname="Simulated CPU", speed_mhz=2400,
                        numa_node=n // per_node)
            for n in range(self.ncpus)
        )
        return HostInfo(
            hostname=socket.gethostname(),
            cpus=cpus,
            memory_total=self.memory_total,
            memory_free=self.memory_total,
            sched_policy="credit",
            software_version={"product_brand": "xend-ext", "xen": "simulated", "hostname": socket.gethostname(),
                              "platform": platform.machine()},
            cpu_configuration={"nr_cpus": str(self.ncpus), "nr_nodes": str(self.numa_nodes),
                               "cores_per_socket": str(self.ncpus), "threads_per_core": "1"},
        )

    def _used_memory(self) -> int:
        return sum(d.memory for d in self._domains.values() if d.power_state in (PowerState.RUNNING, PowerState.PAUSED))

    def domains(self) -> list[Domain]:
        with self._lock:
            return [self._live(d) for d in self._domains.values()]

    def domain(self, uuid: str) -> Domain | None:
        with self._lock:
            d = self._domains.get(uuid)
            return self._live(d) if d is not None else None

    def _live(self, d: Domain) -> Domain:
        share, where = self._placed(d)
        return replace(d, utilisation=share, vcpu_cpu=where)

    def _placed(self, d: Domain) -> tuple[dict[int, float], dict[int, int]]:
        """Each vCPU's share of a pCPU and the pCPU it runs on, from the scheduler model."""
        util, placed = self._utilisation()
        share = util.get(d.uuid, {})
        where = {}
        if d.power_state != PowerState.SUSPENDED:
            pool = self.table.pools.get(d.pool)
            home = (pool.cpus if pool is not None and pool.cpus else frozenset(range(self.ncpus)))
            for v in range(d.vcpus):  # where the model runs it most, else the first CPU it may use
                allowed = (d.pins.get(v) or home) & home or home
                where[v] = placed.get((d.uuid, v), min(allowed))
        return {v: share.get(v, 0.0) for v in range(d.vcpus)}, where

    def _placement(self) -> dict[str, tuple[dict[int, float], dict[int, int]]]:
        return {d.uuid: self._placed(d) for d in self._domains.values()}

    def _model_changed(self) -> None:
        """Domains, pools, reservations or scheduling domains changed: solve the scheduler model
        again and note the domains whose shares or placement moved."""
        self._util = None
        now = self._placement()
        self._side.add(*(uuid for uuid, placed in now.items() if self._shown.get(uuid) != placed))
        self._shown = now

    def changed_domains(self) -> set[str]:
        return self._side.drain()

    def _utilisation(self) -> tuple[dict[str, dict[int, float]], dict[tuple[str, int], int]]:
        """The scheduler model's answer for the running guests, cached until something changes."""
        if self._util is None:
            all_cpus = frozenset(range(self.ncpus))
            pool_cpus = {uuid: pool.cpus for uuid, pool in self.table.pools.items()}
            # a vCPU runs only on its pool's pCPUs: pools are scheduled apart, weights compare within one
            running = {d.uuid: d for d in self._domains.values()
                       if d.power_state == PowerState.RUNNING and not d.is_control_domain}

            def vcpus(d: Domain) -> tuple[VCPU, ...]:
                # its pool's CPUs, less those reserved to other domains (cpuoccupy), within its pins
                allowed = pool_cpus.get(d.pool, all_cpus) - {
                    cpu for cpu, who in self._occupied.items() if d.uuid not in who}
                return tuple(VCPU(owner=d.uuid, index=v, affinity=(d.pins.get(v) or all_cpus) & allowed)
                             for v in range(d.vcpus))

            entities = []
            grouped: set[str] = set()
            for sd in sorted(self._sdoms, key=lambda sd: sd.master):
                # a scheduling domain is one entity: the master's weight and cap over all its domains
                inside = [running[u] for u in sorted({sd.master} | sd.members) if u in running]
                grouped |= {sd.master} | sd.members
                if inside:
                    master = self._domains.get(sd.master)  # its live parameters while it exists
                    weight, cap = (master.weight, master.cap) if master else (sd.weight, sd.cap)
                    entities.append(Entity(name="sdom:" + sd.master, weight=weight, cap=cap,
                                           vcpus=tuple(v for d in inside for v in vcpus(d))))
            for d in sorted(running.values(), key=lambda d: d.domid):
                if d.uuid not in grouped:
                    entities.append(Entity(name=d.uuid, weight=d.weight, cap=d.cap, vcpus=vcpus(d)))
            allocation = solve(sorted(all_cpus), entities)
            result: dict[str, dict[int, float]] = {}
            for (owner, index), share in allocation.vcpu.items():
                result.setdefault(owner, {})[index] = share
            placed = {key: max(sorted(flows), key=lambda cpu: flows[cpu])
                      for key, flows in allocation.flows.items() if flows}
            self._util = (result, placed)
        return self._util

    # -- actions ---------------------------------------------------------------------------
    def _get(self, uuid: str, *states: str) -> Domain:
        return checked(self._domains.get(uuid), uuid, *states)

    def _check_memory(self, needed: int, releasing: int = 0) -> None:
        check_free(needed, self.memory_total - self._used_memory() + releasing)

    def _boot(self, config: DomainConfig, paused: bool, domid: int | None = None) -> Domain:
        check_pins(config.pins, self.ncpus)
        pool = config.pool or POOL0_UUID
        if pool not in self.table.pools:
            raise BackendError("the CPU pool is not active", "POOL_BAD_STATE", "deactivated")
        if domid is None:
            domid = self._next_domid
            self._next_domid += 1
        return Domain(
            uuid=config.uuid, name=config.name, domid=domid,
            power_state=PowerState.PAUSED if paused else PowerState.RUNNING, memory=config.memory,
            memory_max=config.memory_max, vcpus=config.vcpus, vcpus_max=config.vcpus_max, weight=config.weight,
            cap=config.cap, pins=dict(config.pins), start_time=_now(), metadata=dict(config.metadata), pool=pool)

    def start(self, config: DomainConfig, paused: bool) -> Domain:
        with self._lock:
            if config.uuid in self._domains:
                raise BackendError(f"domain {config.name} already exists", "VM_BAD_POWER_STATE", config.uuid,
                                   "halted", self._domains[config.uuid].power_state.lower())
            self._check_memory(config.memory)
            return self._commit(self._boot(config, paused))

    def shutdown(self, uuid: str, clean: bool) -> None:
        with self._lock:
            states = (PowerState.RUNNING,) if clean else (PowerState.RUNNING, PowerState.PAUSED, PowerState.SUSPENDED)
            self._get(uuid, *states)
            self._image(uuid).unlink(missing_ok=True)
            self._commit(None, uuid)

    def reboot(self, uuid: str, clean: bool, config: DomainConfig) -> Domain:
        with self._lock:
            states = (PowerState.RUNNING,) if clean else (PowerState.RUNNING, PowerState.PAUSED)
            old = self._get(uuid, *states)
            self._check_memory(config.memory, releasing=old.memory)
            return self._commit(self._boot(config, paused=False))

    def pause(self, uuid: str) -> Domain:
        with self._lock:
            d = self._get(uuid, PowerState.RUNNING)
            return self._commit(replace(d, power_state=PowerState.PAUSED))

    def unpause(self, uuid: str) -> Domain:
        with self._lock:
            d = self._get(uuid, PowerState.PAUSED)
            return self._commit(replace(d, power_state=PowerState.RUNNING))

    def _image(self, uuid: str) -> Path:
        return self.images / f"{uuid}.img"

    def suspend(self, uuid: str) -> Domain:
        with self._lock:
            d = self._get(uuid, PowerState.RUNNING, PowerState.PAUSED)
            self.images.mkdir(parents=True, exist_ok=True)
            self._write_image(self._image(uuid), d, {})
            return self._commit(replace(d, power_state=PowerState.SUSPENDED, domid=-1))

    def resume(self, uuid: str, paused: bool) -> Domain:
        with self._lock:
            d = self._get(uuid, PowerState.SUSPENDED)
            saved, _ = self._read_image(self._image(uuid))
            self._check_memory(saved.memory)
            self._image(uuid).unlink(missing_ok=True)
            domid = self._next_domid
            self._next_domid += 1
            state = PowerState.PAUSED if paused else PowerState.RUNNING
            return self._commit(replace(saved, power_state=state, domid=domid, start_time=d.start_time))

    def save(self, uuid: str, path: Path, metadata: dict[str, str]) -> None:
        with self._lock:
            d = self._get(uuid, PowerState.RUNNING, PowerState.PAUSED)
            self._write_image(Path(path), d, metadata)
            self._commit(None, uuid)

    def export(self, uuid: str, path: Path, metadata: dict[str, str]) -> None:
        with self._lock:
            self._write_image(Path(path), self._get(uuid, PowerState.RUNNING, PowerState.PAUSED), metadata)

    def restore(self, path: Path, paused: bool, config: DomainConfig | None = None) -> tuple[Domain, dict[str, str]]:
        with self._lock:
            saved, metadata = self._read_image(Path(path))
            if saved.uuid in self._domains:
                raise BackendError(f"domain {saved.name} is already running here", "VM_BAD_POWER_STATE",
                                   saved.uuid, "halted", self._domains[saved.uuid].power_state.lower())
            self._check_memory(saved.memory)
            domid = self._next_domid
            self._next_domid += 1
            state = PowerState.PAUSED if paused else PowerState.RUNNING
            restored = replace(saved, power_state=state, domid=domid)
            if config is not None:  # the VM may have been renamed or moved meanwhile
                restored = replace(restored, name=config.name, metadata=dict(config.metadata),
                                   pool=config.pool or restored.pool)
            if restored.pool not in self.table.pools:
                raise BackendError("the CPU pool of the saved domain is not active here", "POOL_BAD_STATE",
                                   "deactivated")
            return self._commit(restored), metadata

    def read_image(self, path: Path) -> dict[str, str]:
        return self._read_image(Path(path))[1]

    def _write_image(self, path: Path, d: Domain, metadata: dict[str, str]) -> None:
        """A real file: magic, the checksum and length of an SXP description of the domain and its
        metadata, the description, then a stand-in for guest memory (``image_bytes_per_mib`` per
        MiB, its length and CRC in the description), written a chunk at a time."""
        size = max(32, d.memory // MIB * self.image_bytes_per_mib)
        pattern = hashlib.sha256(f"{d.uuid}:{d.start_time}".encode()).digest()
        chunk = pattern * (min(size, IMAGE_CHUNK) // len(pattern) + 1)
        crc = 0
        for offset in range(0, size, IMAGE_CHUNK):  # the CRC goes in the header, before the memory
            crc = zlib.crc32(chunk[:min(IMAGE_CHUNK, size - offset)], crc)
        body = sxp.dumps(["image", _domain_to_sxp(d), ["metadata", *[[k, v] for k, v in sorted(metadata.items())]],
                          ["memory", str(size), str(crc)]]).encode("utf-8")
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(IMAGE_MAGIC + f"{hashlib.sha256(body).hexdigest()} {len(body)}\n".encode() + body + b"\n")
            for offset in range(0, size, IMAGE_CHUNK):
                fh.write(chunk[:min(IMAGE_CHUNK, size - offset)])
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def _read_image(self, path: Path) -> tuple[Domain, dict[str, str]]:
        """The domain and metadata of an image, its checksums verified (the memory a chunk at a time)."""
        def bad(why):
            return BackendError(f"{path} {why}", "INVALID_VALUE", "path", str(path))

        try:
            with open(path, "rb") as fh:
                if fh.readline(64) != IMAGE_MAGIC:
                    raise bad("is not a saved domain image")
                digest, _, length = fh.readline(128).strip().partition(b" ")
                body = fh.read(int(length)) if length.isdigit() else b""
                if hashlib.sha256(body).hexdigest().encode() != digest or fh.read(1) != b"\n":
                    raise bad("is damaged (checksum mismatch)")
                image = sxp.loads(body.decode("utf-8"))
                size, crc = next(c[1:] for c in image[1:] if c[0] == "memory")
                got, seen = 0, 0
                while piece := fh.read(IMAGE_CHUNK):
                    got, seen = zlib.crc32(piece, got), seen + len(piece)
                if (seen, got) != (int(size), int(crc)):
                    raise bad("is damaged (its memory does not match its checksum)")
        except OSError as exc:
            raise BackendError(f"cannot read {path}: {exc.strerror}", "INVALID_VALUE", "path", str(path)) from None
        domain = _domain_from_sxp(next(c for c in image[1:] if c[0] == "domain"))
        meta = next((c[1:] for c in image[1:] if c[0] == "metadata"), [])
        return domain, {k: v for k, v in meta}

    def set_memory(self, uuid: str, memory: int) -> Domain:
        with self._lock:
            d = self._get(uuid)
            require_live(d)
            check_memory(d, memory)
            self._check_memory(memory, releasing=d.memory)
            return self._commit(replace(d, memory=memory))

    def set_memory_max(self, uuid: str, memory_max: int) -> Domain:
        with self._lock:
            d = self._get(uuid)
            require_live(d)
            check_memory_max(d, memory_max)
            return self._commit(replace(d, memory_max=memory_max))

    def set_vcpus(self, uuid: str, vcpus: int) -> Domain:
        with self._lock:
            d = self._get(uuid)
            check_vcpus(d, vcpus)
            return self._commit(replace(d, vcpus=vcpus))

    def pin(self, uuid: str, vcpu: int, cpus: frozenset[int] | None) -> Domain:
        with self._lock:
            d = self._get(uuid)
            pins = dict(d.pins)
            if cpus is None:
                pins.pop(vcpu, None)
            else:
                check_pins({vcpu: cpus}, self.ncpus)
                pins[vcpu] = frozenset(cpus)
            return self._commit(replace(d, pins=pins))

    def set_sched(self, uuid: str, weight: int, cap: int) -> Domain:
        with self._lock:
            d = self._get(uuid)
            return self._commit(replace(d, weight=weight, cap=cap))

    # -- CPU pools --------------------------------------------------------------------------
    def pools(self) -> list[CpuPool]:
        with self._lock:
            return self.table.active()

    def _pools_changed(self, pool: CpuPool | None = None) -> CpuPool | None:
        self._model_changed()
        self._save()
        return pool

    def _in_use(self, uuid: str) -> bool:
        return any(d.pool == uuid for d in self._domains.values())

    def pool_activate(self, uuid: str, name: str, sched: str, cpus: frozenset[int]) -> CpuPool:
        with self._lock:
            return self._pools_changed(self.table.activate(uuid, name, sched, cpus))

    def pool_deactivate(self, uuid: str) -> None:
        with self._lock:
            self.table.deactivate(uuid, self._in_use(uuid))
            self._pools_changed()

    def pool_add_cpu(self, uuid: str, cpu: int) -> CpuPool:
        with self._lock:
            return self._pools_changed(self.table.add_cpu(uuid, cpu))

    def pool_remove_cpu(self, uuid: str, cpu: int) -> CpuPool:
        with self._lock:
            return self._pools_changed(self.table.remove_cpu(uuid, cpu, self._in_use(uuid)))

    def pool_move_domain(self, domain: str, pool: str) -> Domain:
        with self._lock:
            d = self._get(domain, PowerState.RUNNING, PowerState.PAUSED)
            self.table.get(pool)
            return self._commit(replace(d, pool=pool))

    # -- scheduling domains --------------------------------------------------------------------
    def set_sched_domains(self, domains: list[SchedDomain]) -> None:
        with self._lock:
            before = {sd.master: sd for sd in self._sdoms}
            self._sdoms = list(domains)
            after = {sd.master: sd for sd in self._sdoms}
            # the domains of a scheduling domain that changed are scheduled as another entity now,
            # whether their shares moved or not
            for master in before.keys() | after.keys():
                if before.get(master) != after.get(master):
                    for sd in (before.get(master), after.get(master)):
                        if sd is not None:
                            self._side.add(sd.master, *sd.members)
            self._model_changed()
            self._save()

    # -- cpuoccupy -------------------------------------------------------------------------------
    def set_occupancy(self, occupied: dict[int, frozenset[str]]) -> None:
        with self._lock:
            check_occupancy(occupied, self.ncpus)
            self._occupied = {cpu: frozenset(who) for cpu, who in occupied.items() if who}
            self._model_changed()
            self._save()

"""The xl backend: a real Xen host, driven through Xen's own toolstack command ``xl``.

Every hypervisor action is one ``xl`` invocation (argv lists, never a shell); every fact comes from
parsing what ``xl`` prints (``xl list -l`` JSON for the configuration libxl keeps, ``xl list -v -c``
for power state and pool, ``xl vcpu-list`` for pins, ``xl sched-credit``/``sched-credit2`` for
weight and cap, ``xl cpupool-list`` for pools). ``xl`` sometimes exits 0 after a libxl error (e.g.
``cpupool-cpu-add`` of a CPU that is not free), so an error line on stderr is a failure too.

What Xen does not keep, this backend keeps in ``xl-backend.json`` in the state directory: the
uuids of CPU pools (xl pools have names only; Pool-0 has a fixed uuid), the metadata and start
time of each domain, and suspended domains (Xen has no suspended state: suspend is ``xl save``
into ``xl-suspended/`` and resume is ``xl restore``).

Each ``xl`` call costs a fraction of a second (more on an emulated host), and the server reads
``host_info``/``domains``/``pools`` for almost every request, so facts are cached: actions update
the cache with what Xen answers right after them, and a poll (``watch``, every ``poll`` seconds)
brings in changes made outside xend-ext and reports them to the server.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import re
import subprocess
import threading
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from .base import (
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
from .xl_sdom import CpuMeter, SchedDomains

log = logging.getLogger(__name__)

MIB = 1 << 20
KIB = 1 << 10
STATE_FILE = "xl-backend.json"
POOL0 = "Pool-0"
POOL0_UUID = "00000000-0000-0000-0000-0000000000f0"  # the boot pool, as the simulated host names it
DOM0_UUID = "00000000-0000-0000-0000-000000000000"
XL_TIMEOUT = 120.0  # a create under emulation takes ~10 s; a clean shutdown waits for the guest
SCHEDULERS = ("credit", "credit2")  # the schedulers with weight and cap, and with an xl sched-* command

# stderr lines that mean failure even when xl exits 0 (libxl reports, then xl carries on)
ERROR_LINE = re.compile(r"^(?:libxl|xc|xl)\S*: error|^error\b|cpus may (?:not|have not)", re.I | re.M)

# `xl list -v -c`: Name ID Mem VCPUs State Time(s) UUID Reason-Code Security-Label Cpupool
LIST_ROW = re.compile(r"^(?P<name>.*?)\s+(?P<domid>\d+)\s+(?P<mem>\d+)\s+(?P<vcpus>\d+)\s+(?P<state>[-a-z]{6})\s+"
                      r"(?P<time>[\d.]+)\s+(?P<uuid>[0-9a-f]{8}-[0-9a-f-]{27})\s+\S+\s+\S+\s+(?P<pool>\S+)\s*$")
# `xl vcpu-list`: Name ID VCPU CPU State Time(s) Affinity (Hard / Soft)
VCPU_ROW = re.compile(r"^(?P<name>.*?)\s+(?P<domid>\d+)\s+(?P<vcpu>\d+)\s+(?P<cpu>\d+|-)\s+(?P<state>[-a-z]{3})\s+"
                      r"(?P<time>[\d.]+)\s+(?P<hard>\S+)\s*/\s*(?P<soft>\S+)\s*$")
# `xl sched-credit` / `sched-credit2`: Name ID Weight Cap (after a "Cpupool NAME: ..." line per pool)
SCHED_ROW = re.compile(r"^(?P<name>.*?)\s+(?P<domid>\d+)\s+(?P<weight>\d+)\s+(?P<cap>\d+)\s*$")
# `xl cpupool-list`: Name CPUs Sched Active Domain-count
POOL_ROW = re.compile(r"^(?P<name>\S+)\s+(?P<ncpus>\d+)\s+(?P<sched>\S+)\s+(?P<active>[yn])\s+(?P<ndoms>\d+)\s*$")


def parse_cpulist(text: str) -> frozenset[int]:
    """'0,2-3' -> {0, 2, 3}; 'all' and '' are not lists (the caller decides what they mean)."""
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return frozenset(cpus)


def format_cpulist(cpus) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def parse_list(text: str) -> list[dict]:
    return [m.groupdict() for line in text.splitlines() if (m := LIST_ROW.match(line))]


def parse_vcpu_list(text: str) -> dict[int, list[dict]]:
    """{domid: [{vcpu, cpu, online, hard, time}]} from ``xl vcpu-list`` (time: seconds run)."""
    found: dict[int, list[dict]] = {}
    for line in text.splitlines():
        m = VCPU_ROW.match(line)
        if m:
            found.setdefault(int(m["domid"]), []).append({
                "vcpu": int(m["vcpu"]), "cpu": -1 if m["cpu"] == "-" else int(m["cpu"]),
                "online": m["state"][2] != "p",  # the third flag is 'p' for an offline vCPU
                "hard": None if m["hard"] == "all" else parse_cpulist(m["hard"]), "time": float(m["time"])})
    return found


def parse_sched(text: str) -> dict[int, tuple[int, int]]:
    """{domid: (weight, cap)} from ``xl sched-credit`` or ``xl sched-credit2``."""
    return {int(m["domid"]): (int(m["weight"]), int(m["cap"]))
            for line in text.splitlines() if (m := SCHED_ROW.match(line)) and not line.startswith("Name")}


def parse_pools(listing: str, cpus_listing: str, any_sched: bool = False) -> list[tuple[str, str, frozenset[int]]]:
    """[(name, sched, cpus)] in xl's order (by pool id) from ``xl cpupool-list`` and ``-c``
    (``any_sched``: from ``-c`` alone, the scheduler unknown)."""
    scheds = {m["name"]: m["sched"] for line in listing.splitlines() if (m := POOL_ROW.match(line))}
    pools = []
    for line in cpus_listing.splitlines()[1:]:  # the first line is the header
        parts = line.split()
        if not parts or (parts[0] not in scheds and not any_sched):
            continue
        if any_sched:
            scheds.setdefault(parts[0], "")
        pools.append((parts[0], scheds[parts[0]], parse_cpulist(parts[1]) if len(parts) > 1 else frozenset()))
    return pools


def _fields(text: str) -> dict[str, str]:
    """``key : value`` lines of ``xl info`` (the first of each key; indented lines are tables)."""
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and not line.startswith(" "):
            info.setdefault(key.strip(), value.strip())
    return info


def _quote(value: str) -> str:
    """A string in xl's config syntax (C-like escapes inside double quotes)."""
    if "\n" in value or "\r" in value:
        raise BackendError("xl config values cannot contain line breaks", "INVALID_VALUE", "value", value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


class XlBackend(Backend):
    name = "xl"
    # Migration is save-based (xl save, streamed to the other server, xl restore there): `xl
    # migrate` is live only and needs log-dirty paging, which a PV guest has only where Xen has
    # shadow paging (virt_caps "shadow"); Debian's Xen 4.17 has none (README, Migration).
    # Utilisation is measured from the CPU time Xen keeps, and scheduling domains (never merged
    # into Xen) are a control loop over caps and weights: xl_sdom.py.
    capabilities = frozenset({
        Capability.HOST, Capability.LIFECYCLE, Capability.PAUSE, Capability.SUSPEND, Capability.SAVE,
        Capability.MIGRATE, Capability.MEMORY_LIVE, Capability.MEMORY_MAX_LIVE, Capability.VCPUS_LIVE, Capability.PIN,
        Capability.SCHED_CREDIT, Capability.POOLS, Capability.CPU_OCCUPY, Capability.UTILISATION,
        Capability.SCHED_DOMAIN,
    })

    def __init__(self, xl_path: str = "xl", state_dir: str | Path = ".", poll: float = 2.0) -> None:
        self.xl_path = xl_path
        self.state_dir = Path(state_dir)
        self.poll = max(0.1, float(poll))
        self.configs = self.state_dir / "xl-configs"
        self.suspended_dir = self.state_dir / "xl-suspended"
        self.path = self.state_dir / STATE_FILE
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._generation = 0  # bumped by every action: a poll that overlapped one does not report it
        self._state = self._load()
        self._meter = CpuMeter(max(self.poll, 10.0))
        self._sdoms = SchedDomains(self._state, self._meter, interval=max(self.poll, 6.0))
        self._domains: dict[str, Domain] = {}  # live domains (not suspended ones), by uuid
        self._listed: dict[str, tuple] = {}  # each domain's `xl list` row at our last read (see _sync)
        self._raw: dict[str, dict] = {}  # what xl last printed about each domain (see _refresh)
        self._pools: list[CpuPool] = []
        self._digests: dict[Path, tuple[tuple, str]] = {}  # image -> (its stat when hashed, SHA-256)
        self._synced = 0.0
        self._side = SideEffects()  # domains re-pinned or moved by a pool or reservation change
        self._static = self._describe()
        self._host: HostInfo = self._static  # its free memory is fresh too
        self._host_at = time.monotonic()
        with self._lock:
            self._refresh_pools()
            self._refresh_all()

    # -- running xl ------------------------------------------------------------------------
    def _xl(self, *args: str, timeout: float = XL_TIMEOUT) -> str:
        """Run ``xl ARGS``; its stdout, or BackendError with xl's own words."""
        argv = [self.xl_path, *args]
        try:
            run = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError:
            raise BackendError(f"the xl command {self.xl_path!r} does not exist", "BACKEND_ERROR") from None
        except subprocess.TimeoutExpired:
            raise BackendError(f"xl {' '.join(args)} did not finish within {timeout:.0f} s", "BACKEND_ERROR") from None
        if run.returncode != 0 or ERROR_LINE.search(run.stderr):
            words = " / ".join(line.strip() for line in (run.stderr or run.stdout).splitlines() if line.strip())
            raise XlError(args, run.returncode, words or f"exit status {run.returncode}")
        return run.stdout

    # -- our own state file ----------------------------------------------------------------
    def _load(self) -> dict:
        try:
            state = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            state = {}
        except (OSError, ValueError) as exc:
            raise BackendError(f"cannot read {self.path}: {exc}", "BACKEND_ERROR") from None
        state.setdefault("pools", {})
        state.setdefault("domains", {})
        state.setdefault("occupied", {})  # cpuoccupy: {pCPU: [uuids of the domains it is reserved to]}
        state["pools"][POOL0] = POOL0_UUID
        return state

    def _save_state(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.path, json.dumps(self._state, indent=1, sort_keys=True).encode())

    def _record(self, uuid: str) -> dict:
        return self._state["domains"].setdefault(uuid, {})

    # -- host ----------------------------------------------------------------------------------
    def _info(self) -> dict[str, str]:
        return _fields(self._xl("info"))

    def _describe(self) -> HostInfo:
        topology = self._xl("info", "-n")  # everything `xl info` prints, and the CPU topology: one call
        info = _fields(topology)
        nodes = {}
        in_topology = False
        for line in topology.splitlines():
            if line.startswith("cpu_topology"):
                in_topology = True
            elif in_topology:
                m = re.match(r"^\s*(\d+):\s+(\d+)\s+(\d+)\s+(\d+)\s*$", line)
                if m:
                    nodes[int(m[1])] = int(m[4])
                elif not line.startswith("cpu:"):
                    in_topology = False
        ncpus = int(info.get("nr_cpus", "0"))
        mhz = int(float(info.get("cpu_mhz", "0") or 0))
        host = info.get("host", "")
        return HostInfo(
            hostname=host if host and host != "(none)" else "xen",
            cpus=tuple(PhysicalCPU(number=n, speed_mhz=mhz, numa_node=nodes.get(n, 0)) for n in range(ncpus)),
            memory_total=int(info.get("total_memory", "0")) * MIB,
            memory_free=int(info.get("free_memory", "0")) * MIB,
            sched_policy=info.get("xen_scheduler", "credit"),
            software_version={"product_brand": "xend-ext", "xen": info.get("xen_version", ""),
                              "hostname": host, "dom0_kernel": info.get("release", "")},
            cpu_configuration={"nr_cpus": str(ncpus), "nr_nodes": info.get("nr_nodes", "1"),
                               "cores_per_socket": info.get("cores_per_socket", ""),
                               "threads_per_core": info.get("threads_per_core", "")},
        )

    def host_info(self) -> HostInfo:
        """The host as described at start, with the free memory last read (most requests need only
        the CPUs; each read of the free memory is an xl call)."""
        return self._host

    def memory_free(self) -> int:
        """Read at most ``poll`` seconds ago, and not before our last action."""
        with self._lock:
            if time.monotonic() - self._host_at > self.poll:
                self._read_host()
            return self._host.memory_free

    def _read_host(self) -> HostInfo:
        free = int(self._info().get("free_memory", "0")) * MIB
        self._host = replace(self._static, memory_free=free)
        self._host_at = time.monotonic()
        return self._host

    def _check_memory(self, needed: int, releasing: int = 0) -> None:
        """As the other backends: ``needed`` bytes against what is free, counting the ``releasing``
        bytes the domain holds now (read now: the check decides)."""
        check_free(needed, self._read_host().memory_free + releasing)

    # -- domains: reading Xen ----------------------------------------------------------------
    def _sched_table(self) -> dict[int, tuple[int, int]]:
        table: dict[int, tuple[int, int]] = {}
        for sched in sorted({p.sched for p in self._pools} & set(SCHEDULERS)):
            table.update(parse_sched(self._xl(f"sched-{sched}")))
        return table

    def _build(self, row: dict, long: dict, vcpus: list[dict], sched: tuple[int, int] | None) -> Domain:
        uuid = row["uuid"]
        b_info = long.get("b_info", {})
        record = self._record(uuid)
        if "start_time" not in record:
            record["start_time"] = _now().isoformat()
        control = int(row["domid"]) == 0
        state = PowerState.PAUSED if "p" in row["state"] else PowerState.RUNNING
        vcpus_max = int(b_info.get("max_vcpus") or len(vcpus) or int(row["vcpus"]))
        avail = b_info.get("avail_vcpus")
        online = len(avail) if isinstance(avail, list) and avail else int(row["vcpus"])
        weight, cap = sched if sched else (256, 0)
        if uuid in self._sdoms.controlled():  # the loop's values are Xen's; the domain's are as asked
            weight, cap = self._sdoms.asked(uuid) or (weight, cap)
        return Domain(
            uuid=uuid, name=row["name"], domid=int(row["domid"]), power_state=state,
            memory=int(b_info.get("target_memkb") or int(row["mem"]) * KIB) * KIB,
            memory_max=int(b_info.get("max_memkb") or int(row["mem"]) * KIB) * KIB,
            vcpus=online, vcpus_max=vcpus_max, weight=weight, cap=cap,
            pins=_pins_from_json(record["pins"]) if "pins" in record else {
                v["vcpu"]: v["hard"] for v in vcpus if v["hard"] is not None},
            vcpu_cpu={v["vcpu"]: v["cpu"] for v in vcpus if v["cpu"] >= 0},
            utilisation=self._meter.shares(int(row["domid"])),
            start_time=dt.datetime.fromisoformat(record["start_time"]),
            is_control_domain=control, metadata=dict(record.get("metadata", {})),
            pool=self._pool_uuid(row["pool"]))

    def _long(self, *which: str) -> dict[int, dict]:
        """{domid: libxl's domain configuration} from ``xl list -l``."""
        text = self._xl("list", "-l", *which)
        try:
            entries = json.loads(text) if text.strip() else []
        except ValueError:
            raise BackendError(f"xl list -l printed something that is not JSON: {text[:200]!r}") from None
        if isinstance(entries, dict):
            entries = [entries]
        return {int(e["domid"]): e.get("config", {}) for e in entries}

    def _refresh_all(self) -> None:
        """Read every domain from Xen (discovery at start, and after an outside change)."""
        rows = parse_list(self._xl("list", "-v", "-c"))
        configs = self._long()
        vcpus = parse_vcpu_list(self._xl("vcpu-list"))
        sched = self._sched_table()
        self._domains = {}
        self._raw = {}
        self._listed = {row["uuid"]: _row_print(row) for row in rows}
        for row in rows:
            domid = int(row["domid"])
            raw = self._raw[row["uuid"]] = {"row": row, "long": configs.get(domid, {}), "vcpus": vcpus.get(domid, []),
                                            "sched": sched.get(domid)}
            self._domains[row["uuid"]] = self._build(**raw)
        self._synced = time.monotonic()
        self._forget_gone()

    def _refresh(self, uuid: str, *parts: str, sched: tuple[int, int] | None = None) -> Domain | None:
        """Read one domain from Xen after an action on it (None: Xen has no such domain). ``parts``
        names what the action can have changed (row, long, vcpus, sched); the rest is as last read,
        since each xl call costs a noticeable fraction of a second. ``sched``: weight and cap known
        without asking (those a create just applied)."""
        raw = self._raw.get(uuid)
        if raw is None or not parts:
            parts = ("row", "long", "vcpus", "sched")
            raw = {}
        if sched is not None:
            parts = tuple(p for p in parts if p != "sched")
            raw["sched"] = sched
        if "row" in parts:
            row = next((r for r in parse_list(self._xl("list", "-v", "-c")) if r["uuid"] == uuid), None)
            if row is None:
                self._domains.pop(uuid, None)
                self._listed.pop(uuid, None)
                self._raw.pop(uuid, None)
                return None
            self._listed[uuid] = _row_print(row)  # our own action's result: not an outside change
            raw["row"] = row
        domid = raw["row"]["domid"]
        if "long" in parts:
            raw["long"] = self._long(domid).get(int(domid), {})
        if "vcpus" in parts:
            raw["vcpus"] = parse_vcpu_list(self._xl("vcpu-list", domid)).get(int(domid), [])
        if "sched" in parts:
            raw["sched"] = None
            pool = self._pool_by_uuid(self._pool_uuid(raw["row"]["pool"]))
            if pool is not None and pool.sched in SCHEDULERS:
                raw["sched"] = parse_sched(self._xl(f"sched-{pool.sched}", "-d", domid)).get(int(domid))
        self._raw[uuid] = raw
        d = self._domains[uuid] = self._build(**raw)
        return d

    def _forget_gone(self) -> None:
        """Drop our records of domains Xen no longer has (unless we keep them suspended)."""
        gone = [u for u, r in self._state["domains"].items()
                if u not in self._domains and "suspended" not in r]
        for u in gone:
            del self._state["domains"][u]
        self._save_state()

    def _suspended(self) -> list[Domain]:
        found = []
        for uuid, record in self._state["domains"].items():
            saved = record.get("suspended")
            if saved and uuid not in self._domains:
                found.append(_domain_from_json(saved))
        return found

    def _fresh(self) -> None:
        """Reads between polls use the cache; without a poll thread, re-read when it is stale."""
        if (self._thread is None or not self._thread.is_alive()) and time.monotonic() - self._synced > self.poll:
            self._sync()

    def domains(self) -> list[Domain]:
        with self._lock:
            self._fresh()
            return [*self._domains.values(), *self._suspended()]

    def domain(self, uuid: str) -> Domain | None:
        with self._lock:
            self._fresh()
            return self._domains.get(uuid) or next((d for d in self._suspended() if d.uuid == uuid), None)

    # -- domains: acting -------------------------------------------------------------------------
    def _get(self, uuid: str, *states: str) -> Domain:
        d = self._domains.get(uuid) or next((s for s in self._suspended() if s.uuid == uuid), None)
        return checked(d, uuid, *states)

    def _acted(self) -> None:
        self._generation += 1
        self._host_at = 0.0  # free memory may have changed: read it again when asked

    def _restore_config(self, saved: Domain, pool: str, config: DomainConfig | None) -> list[str]:
        """The config file argument of ``xl restore``: the image carries the configuration the domain
        was created with, whose pool may no longer exist (cpupool-migrate does not update it), so
        we give xl the domain as saved, in the pool it is to run in now."""
        boot = ({"kernel": config.kernel, "ramdisk": config.ramdisk, "args": config.args} if config is not None
                else self._state["domains"].get(saved.uuid, {}).get("boot"))
        if not boot or not boot.get("kernel"):
            return []  # an image from elsewhere without a definition: xl's own saved configuration
        as_saved = DomainConfig(
            uuid=saved.uuid, name=config.name if config is not None else saved.name, memory=saved.memory,
            memory_max=saved.memory_max, vcpus=saved.vcpus, vcpus_max=saved.vcpus_max, weight=saved.weight,
            cap=saved.cap, pins=saved.pins, kernel=boot["kernel"], ramdisk=boot.get("ramdisk", ""),
            args=boot.get("args", ""), pool=pool)
        return [str(self._write_config(as_saved, "restore"))]

    def _write_config(self, config: DomainConfig, purpose: str = "start") -> Path:
        """The xl domain configuration for a start: a PV guest from the stored definition."""
        pool = self._pool_by_uuid(config.pool or POOL0_UUID)
        if pool is None:
            raise BackendError("the CPU pool is not active", "POOL_BAD_STATE", "deactivated")
        if not config.kernel:
            raise BackendError("a PV guest needs a kernel (PV_kernel)", "VALUE_NOT_SUPPORTED", "PV_kernel", "",
                               "the xl backend starts PV guests, which need a kernel")
        check_pins(config.pins, len(self._static.cpus))
        lines = [
            f"name = {_quote(config.name)}",
            f"uuid = {_quote(config.uuid)}",
            'type = "pv"',
            f"kernel = {_quote(config.kernel)}",
            f"memory = {-(-config.memory // MIB)}",
            f"maxmem = {-(-max(config.memory_max, config.memory) // MIB)}",
            f"vcpus = {config.vcpus}",
            f"maxvcpus = {max(config.vcpus_max, config.vcpus)}",
            f"pool = {_quote(pool.name)}",
            "cpu_weight = {}\ncap = {}".format(*self._admit(config)),
            # what xend did: a crashed guest is gone, and the server learns it through the poll
            'on_crash = "destroy"',
        ]
        if config.ramdisk:
            lines.append(f"ramdisk = {_quote(config.ramdisk)}")
        if config.args:
            lines.append(f"extra = {_quote(config.args)}")
        affinity = self._affinity(config.uuid, pool, config.pins, max(config.vcpus_max, config.vcpus))
        if any(cpus is not None for cpus in affinity.values()):
            # one entry per vCPU: xl's list form pins vCPU i to entry i
            lines.append("cpus = [" + ", ".join(
                _quote("all" if cpus is None else format_cpulist(cpus)) for cpus in affinity.values()) + "]")
        self.configs.mkdir(parents=True, exist_ok=True)
        path = self.configs / f"{config.uuid}-{purpose}.cfg"
        _write_atomic(path, ("\n".join(lines) + "\n").encode())
        return path

    def _create(self, config: DomainConfig, paused: bool) -> Domain:
        path = self._write_config(config)
        self._check_memory(config.memory)
        self._acted()
        try:
            self._xl("create", *(["-p"] if paused else []), str(path))
        except XlError as exc:
            raise exc.as_backend_error(config.uuid) from None
        finally:
            self._acted()
        record = self._record(config.uuid)
        record["metadata"] = dict(config.metadata)
        record["boot"] = {"kernel": config.kernel, "ramdisk": config.ramdisk, "args": config.args}
        record["start_time"] = _now().isoformat()
        record.pop("suspended", None)
        self._keep_pins(record, config.pins)
        self._save_state()
        # libxl sets weight and cap while it builds the domain (a create that cannot, fails)
        d = self._refresh(config.uuid, sched=(config.weight, config.cap))
        if d is None:
            raise BackendError(f"xl create of {config.name} succeeded, but the domain is gone (it crashed at boot?)",
                               "BACKEND_ERROR")
        return d

    def start(self, config: DomainConfig, paused: bool) -> Domain:
        with self._lock:
            known = self._domains.get(config.uuid) or next(
                (s for s in self._suspended() if s.uuid == config.uuid), None)
            if known is not None:
                raise BackendError(f"domain {config.name} already exists", "VM_BAD_POWER_STATE", config.uuid,
                                   "halted", known.power_state.lower())
            return self._create(config, paused)

    def _act(self, uuid: str, *args: str, timeout: float = XL_TIMEOUT) -> str:
        """One xl action on a domain, mapped to BackendError; the cache learns of it afterwards."""
        self._acted()
        try:
            return self._xl(*args, timeout=timeout)
        except XlError as exc:
            raise exc.as_backend_error(uuid) from None
        finally:
            self._acted()

    def _gone(self, uuid: str) -> None:
        self._domains.pop(uuid, None)
        self._raw.pop(uuid, None)
        self._listed.pop(uuid, None)
        self._state["domains"].pop(uuid, None)
        self._save_state()

    def shutdown(self, uuid: str, clean: bool) -> None:
        with self._lock:
            states = (PowerState.RUNNING,) if clean else (PowerState.RUNNING, PowerState.PAUSED, PowerState.SUSPENDED)
            d = self._get(uuid, *states)
            if d.power_state == PowerState.SUSPENDED:
                self._image(uuid).unlink(missing_ok=True)
            elif clean:  # ask the guest, and wait until it has gone (xend's clean shutdown)
                self._act(uuid, "shutdown", "-w", str(d.domid))
            else:
                self._act(uuid, "destroy", str(d.domid))
            self._gone(uuid)

    def reboot(self, uuid: str, clean: bool, config: DomainConfig) -> Domain:
        # Not `xl reboot`: xl would restart the domain with the configuration it was created with,
        # and the stored definition (which may have changed since) applies at every start.
        with self._lock:
            states = (PowerState.RUNNING,) if clean else (PowerState.RUNNING, PowerState.PAUSED)
            d = self._get(uuid, *states)
            self._act(uuid, "shutdown" if clean else "destroy", *(["-w"] if clean else []), str(d.domid))
            self._domains.pop(uuid, None)
            return self._create(config, paused=False)

    def pause(self, uuid: str) -> Domain:
        with self._lock:
            d = self._get(uuid, PowerState.RUNNING)
            self._act(uuid, "pause", str(d.domid))
            return self._after(uuid, "row")

    def unpause(self, uuid: str) -> Domain:
        with self._lock:
            d = self._get(uuid, PowerState.PAUSED)
            self._act(uuid, "unpause", str(d.domid))
            return self._after(uuid, "row")

    def _after(self, uuid: str, *parts: str) -> Domain:
        d = self._refresh(uuid, *parts)
        if d is None:
            raise BackendError(f"domain {uuid} disappeared from Xen", "HANDLE_INVALID", "VM", uuid)
        return d

    # -- suspend / save: xl save images, with our metadata beside them ---------------------------
    def _image(self, uuid: str) -> Path:
        return self.suspended_dir / f"{uuid}.xlsave"

    def suspend(self, uuid: str) -> Domain:
        with self._lock:
            d = self._get(uuid, PowerState.RUNNING, PowerState.PAUSED)
            self.suspended_dir.mkdir(parents=True, exist_ok=True)
            image = self._image(uuid)
            image.unlink(missing_ok=True)
            self._save(d, image)
            suspended = replace(d, power_state=PowerState.SUSPENDED, domid=-1, vcpu_cpu={})
            self._domains.pop(uuid, None)
            self._raw.pop(uuid, None)
            self._record(uuid)["suspended"] = _domain_to_json(suspended)
            self._save_state()
            return suspended

    def resume(self, uuid: str, paused: bool) -> Domain:
        with self._lock:
            d = self._get(uuid, PowerState.SUSPENDED)
            pool = d.pool if self._pool_by_uuid(d.pool) is not None else POOL0_UUID
            self._check_memory(d.memory)
            self._act(uuid, "restore", *(["-p"] if paused else []), *self._restore_config(d, pool, None),
                      str(self._image(uuid)))
            record = self._record(uuid)
            record.pop("suspended", None)
            self._keep_pins(record, d.pins)  # the reservations may have changed while it was suspended
            self._save_state()
            self._image(uuid).unlink(missing_ok=True)
            return self._after(uuid)

    def save(self, uuid: str, path: Path, metadata: dict[str, str]) -> None:
        with self._lock:
            d = self._get(uuid, PowerState.RUNNING, PowerState.PAUSED)
            path = Path(path)
            sidecar = _sidecar(path)
            record = {"domain": _domain_to_json(d), "metadata": metadata}
            _write_atomic(sidecar, json.dumps(record).encode())
            try:
                self._save(d, path)
            except BackendError:
                sidecar.unlink(missing_ok=True)
                raise
            # the image's digest: a damaged or replaced image is refused before xl reads it
            record["sha256"] = self._digest(path)
            _write_atomic(sidecar, json.dumps(record).encode())
            self._gone(uuid)

    def _save(self, d: Domain, image: Path) -> None:
        """``xl save``: Xen asks a PV guest to suspend itself, which a paused guest cannot do, so a
        paused domain runs for the moment of the save (and is paused again if the save fails).
        Whether it comes back paused is the resume's or restore's choice."""
        paused = d.power_state == PowerState.PAUSED
        if paused:
            self._act(d.uuid, "unpause", str(d.domid))
        try:
            self._act(d.uuid, "save", str(d.domid), str(image))
        except BackendError:
            if paused:
                with contextlib.suppress(BackendError):
                    self._act(d.uuid, "pause", str(d.domid))
            raise

    def read_image(self, path: Path) -> dict[str, str]:
        return self._read_sidecar(Path(path))[1]

    def _read_sidecar(self, path: Path) -> tuple[Domain, dict[str, str]]:
        if not path.is_file():
            raise BackendError(f"cannot read {path}: no such file", "INVALID_VALUE", "path", str(path))
        try:
            data = json.loads(_sidecar(path).read_text(encoding="utf-8"))
            saved = _domain_from_json(data["domain"]), {str(k): str(v) for k, v in data["metadata"].items()}
            digest = data["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            raise BackendError(f"{path} is not an image saved by xend-ext (no readable {_sidecar(path).name})",
                               "INVALID_VALUE", "path", str(path)) from None
        if self._digest(path) != digest:
            raise BackendError(f"{path} is damaged or was changed since it was saved (checksum mismatch)",
                               "INVALID_VALUE", "path", str(path))
        return saved

    # -- migration: the image's record (its sidecar) travels in the VM's record ------------------
    def image_extra(self, path: Path) -> str:
        return _sidecar(Path(path)).read_text(encoding="utf-8")

    def take_image(self, path: Path, extra: str) -> None:
        _write_atomic(_sidecar(Path(path)), extra.encode())
        self._read_sidecar(Path(path))  # refused now (INVALID_VALUE) if damaged on the way

    def drop_image(self, path: Path) -> None:
        Path(path).unlink(missing_ok=True)
        _sidecar(Path(path)).unlink(missing_ok=True)

    def _digest(self, path: Path) -> str:
        """The image's SHA-256, computed once per version of the file (a restore reads the image's
        record first, then restores: two checks of 128 MiB and more, moments apart)."""
        try:
            st = path.stat()
        except OSError as exc:
            raise BackendError(f"cannot read {path}: {exc.strerror}", "INVALID_VALUE", "path", str(path)) from None
        version = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        known = self._digests.get(path)
        if known is None or known[0] != version:
            known = self._digests[path] = (version, _sha256(path))
        return known[1]

    def restore(self, path: Path, paused: bool, config: DomainConfig | None = None) -> tuple[Domain, dict[str, str]]:
        with self._lock:
            path = Path(path)
            saved, metadata = self._read_sidecar(path)
            known = self._domains.get(saved.uuid) or next((s for s in self._suspended() if s.uuid == saved.uuid), None)
            if known is not None:
                raise BackendError(f"domain {saved.name} is already running here", "VM_BAD_POWER_STATE",
                                   saved.uuid, "halted", known.power_state.lower())
            target = (config.pool if config is not None and config.pool else saved.pool) or POOL0_UUID
            if self._pool_by_uuid(target) is None:
                raise BackendError("the CPU pool of the saved domain is not active here", "POOL_BAD_STATE",
                                   "deactivated")
            self._check_memory(saved.memory)
            # paused while we put it right (name, pool), then unpaused unless asked otherwise
            self._act(saved.uuid, "restore", "-p", *self._restore_config(saved, target, config), str(path))
            d = self._after(saved.uuid)
            if config is not None and config.name != d.name:
                self._act(saved.uuid, "rename", str(d.domid), config.name)
            if d.pool != target:
                self._act(saved.uuid, "cpupool-migrate", str(d.domid), self._pool_by_uuid(target).name)
            if not paused:
                self._act(saved.uuid, "unpause", str(d.domid))
            record = self._record(saved.uuid)
            record["metadata"] = dict(config.metadata if config is not None else saved.metadata)
            record["start_time"] = saved.start_time.isoformat()
            if config is not None:
                record["boot"] = {"kernel": config.kernel, "ramdisk": config.ramdisk, "args": config.args}
            self._keep_pins(record, saved.pins)
            self._save_state()
            return self._after(saved.uuid), metadata

    # -- live changes ------------------------------------------------------------------------------
    def set_memory(self, uuid: str, memory: int) -> Domain:
        with self._lock:
            d = self._get(uuid)
            require_live(d)
            check_memory(d, memory)
            if memory > d.memory:
                self._check_memory(memory, releasing=d.memory)
            self._act(uuid, "mem-set", str(d.domid), f"{-(-memory // KIB)}k")
            return self._after(uuid, "row", "long")

    def set_memory_max(self, uuid: str, memory_max: int) -> Domain:
        with self._lock:
            d = self._get(uuid)
            require_live(d)
            check_memory_max(d, memory_max)
            self._act(uuid, "mem-max", str(d.domid), f"{-(-memory_max // KIB)}k")
            return self._after(uuid, "row", "long")

    def set_vcpus(self, uuid: str, vcpus: int) -> Domain:
        with self._lock:
            d = self._get(uuid)
            require_live(d)
            check_vcpus(d, vcpus)
            self._act(uuid, "vcpu-set", str(d.domid), str(vcpus))
            return self._after(uuid, "row", "long", "vcpus")

    def pin(self, uuid: str, vcpu: int, cpus: frozenset[int] | None) -> Domain:
        with self._lock:
            d = self._get(uuid)
            if d.power_state == PowerState.SUSPENDED:  # Xen has no such domain now; it resumes as saved
                raise BackendError(f"domain {d.name} is suspended", "VM_BAD_POWER_STATE", uuid, "running",
                                   "suspended")
            if cpus is not None:
                if not cpus:
                    raise BackendError("an empty pCPU set", "INVALID_VALUE", f"cpumap{vcpu}", "")
                check_pins({vcpu: cpus}, len(self._static.cpus))
            pins = {v: c for v, c in d.pins.items() if v != vcpu} | ({vcpu: cpus} if cpus is not None else {})
            given = self._affinity(uuid, self._pool_by_uuid(d.pool), pins, vcpu + 1)[vcpu]
            self._act(uuid, "vcpu-pin", str(d.domid), str(vcpu), "all" if given is None else format_cpulist(given))
            if self._keep_pins(self._record(uuid), pins):
                self._save_state()
            return self._after(uuid, "vcpus")

    def set_sched(self, uuid: str, weight: int, cap: int) -> Domain:
        """``xm sched-credit``: weight and cap through ``xl sched-credit`` or ``xl sched-credit2``,
        whichever scheduler the domain's pool runs (Pool-0 runs credit2 by default since Xen 4.12;
        credit2 has weights, and caps since 4.10, with the same meaning and ranges). A domain of a
        scheduling domain keeps them as asked and the control loop gives Xen its part of the set's."""
        with self._lock:
            d = self._get(uuid)
            if d.power_state == PowerState.SUSPENDED:
                raise BackendError(f"domain {d.name} is suspended", "VM_BAD_POWER_STATE", uuid, "running",
                                   "suspended")
            if uuid in self._sdoms.controlled():
                self._sched_of(d)  # a scheduler with weight and cap, or refused before anything changes
                self._sdoms.ask(uuid, weight, cap)
                self._save_state()
                self._control(force=True)
            else:
                self._give(uuid, d, weight, cap)
            return self._after(uuid, "sched")

    def _give(self, uuid: str, d: Domain, weight: int, cap: int) -> None:
        """Set a running domain's weight and cap in Xen, with its pool's scheduler's command."""
        self._act(uuid, f"sched-{self._sched_of(d)}", "-d", str(d.domid), "-w", str(weight), "-c", str(cap))

    def _sched_of(self, d: Domain) -> str:
        pool = self._pool_by_uuid(d.pool)
        sched = pool.sched if pool is not None else self._static.sched_policy
        if sched not in SCHEDULERS:
            raise BackendError(f"the {sched} scheduler has no weight and cap", "OPERATION_NOT_ALLOWED",
                               f"the domain's pool runs the {sched} scheduler, which has no weight and cap")
        return sched

    # -- measured shares and scheduling domains (the control loop: xl_sdom.py) -----------------------
    def _sample(self) -> None:
        """One ``xl vcpu-list``: the CPU time of every vCPU, for utilisation and the control loop."""
        before = time.monotonic()
        listed = parse_vcpu_list(self._xl("vcpu-list"))
        self._meter.add((before + time.monotonic()) / 2, {
            domid: {v["vcpu"]: v["time"] for v in vcpus if v["online"]} for domid, vcpus in listed.items()})
        for uuid, d in self._domains.items():  # a new figure, not a change to announce
            self._domains[uuid] = replace(d, utilisation=self._meter.shares(d.domid))

    def _running(self) -> dict[str, tuple[int, int]]:
        return {u: (d.domid, d.vcpus_max) for u, d in self._domains.items() if not d.is_control_domain}

    def _control(self, force: bool = False, newcomer: str = "") -> dict[str, tuple[int, int]]:
        """A step of the control loop (when due, or ``force``): give Xen each running domain's part of
        its set's weight and cap, lowered caps first so that the set's sum holds at every moment."""
        if not (force or self._sdoms.due(time.monotonic())):
            return {}
        wanted = self._sdoms.step(time.monotonic(), self._running(), newcomer)
        changes = sorted(((u, wc) for u, wc in wanted.items() if u != newcomer and self._sdoms.given.get(u) != wc),
                         key=lambda item: item[1][1] - (self._sdoms.given.get(item[0]) or (0, 1 << 30))[1])
        for uuid, (weight, cap) in changes:
            d = self._domains[uuid]
            self._give(uuid, d, weight, cap)
            self._sdoms.given[uuid] = (weight, cap)
        return wanted

    def _admit(self, config: DomainConfig) -> tuple[int, int]:
        """The weight and cap a domain starts with: its own, or, in a scheduling domain, its part of
        the set's once the others' have been lowered to make room."""
        if config.uuid not in self._sdoms.controlled():
            return config.weight, config.cap
        self._sdoms.ask(config.uuid, config.weight, config.cap)
        self._save_state()
        given = self._control(force=True, newcomer=config.uuid)[config.uuid]
        self._sdoms.given[config.uuid] = given
        return given

    def set_sched_domains(self, domains: list[SchedDomain]) -> None:
        with self._lock:
            for sd in domains:
                for uuid in (sd.master, *sd.members):
                    d = self._domains.get(uuid)
                    if d is not None:
                        self._sched_of(d)  # a scheduler with weight and cap, or refused before anything changes
                    if uuid not in self._sdoms.controlled() and d is not None:
                        self._sdoms.ask(uuid, d.weight, d.cap)  # its own, given back when it leaves
            left = self._sdoms.replace_sets(domains)
            for uuid in sorted(left):
                own = self._sdoms.asked(uuid)
                self._sdoms.forget(uuid)
                d = self._domains.get(uuid)
                if d is not None and own is not None:
                    self._give(uuid, d, *own)
            self._save_state()
            self._control(force=True)
            for uuid in [*left, *self._sdoms.controlled()]:
                if uuid in self._domains:
                    self._refresh(uuid, "sched")
                    self._side.add(uuid)

    # -- CPU pools ------------------------------------------------------------------------------------
    def _pool_uuid(self, name: str) -> str:
        """Our uuid of an xl pool (xl pools have only names): remembered, or made up once."""
        pools = self._state["pools"]
        if name not in pools:
            pools[name] = str(uuidlib.uuid4())
            self._save_state()
        return pools[name]

    def _pool_by_uuid(self, uuid: str) -> CpuPool | None:
        return next((p for p in self._pools if p.uuid == uuid), None)

    def _refresh_pools(self) -> list[CpuPool]:
        found = parse_pools(self._xl("cpupool-list"), self._xl("cpupool-list", "-c"))
        # xl prints pools by pool id and does not show the id: the position stands in for it
        self._pools = [CpuPool(self._pool_uuid(name), name, i, sched, cpus)
                       for i, (name, sched, cpus) in enumerate(found)]
        names = {name for name, _, _ in found}
        stale = [n for n in self._state["pools"] if n not in names and n != POOL0]
        for n in stale:  # a pool destroyed outside: its uuid goes (a new one of that name is another pool)
            del self._state["pools"][n]
        if stale:
            self._save_state()
        return self._pools

    def pools(self) -> list[CpuPool]:
        with self._lock:
            self._fresh()
            return list(self._pools)

    def _pool(self, uuid: str) -> CpuPool:
        pool = self._pool_by_uuid(uuid)
        if pool is None:
            raise BackendError("the CPU pool is not active", "POOL_BAD_STATE", "deactivated")
        return pool

    def _owner(self, cpu: int) -> CpuPool | None:
        return next((p for p in self._pools if cpu in p.cpus), None)

    def _pool_act(self, *args: str) -> None:
        self._acted()
        try:
            self._xl(*args)
        except XlError as exc:
            raise exc.as_backend_error("") from None
        finally:
            self._acted()
            self._refresh_pools()
            if args[0] in ("cpupool-cpu-add", "cpupool-cpu-remove"):
                self._refresh_vcpus()  # the pool's domains may now run on other pCPUs

    def _refresh_vcpus(self) -> None:
        """Where every domain's vCPUs run now: one ``xl vcpu-list``."""
        vcpus = parse_vcpu_list(self._xl("vcpu-list"))
        for uuid, raw in self._raw.items():
            raw["vcpus"] = vcpus.get(int(raw["row"]["domid"]), [])
            before, self._domains[uuid] = self._domains.get(uuid), self._build(**raw)
            if before != self._domains[uuid]:
                self._side.add(uuid)

    def changed_domains(self) -> set[str]:
        return self._side.drain()

    def pool_activate(self, uuid: str, name: str, sched: str, cpus: frozenset[int]) -> CpuPool:
        with self._lock:
            if self._pool_by_uuid(uuid) is not None:
                raise BackendError("the pool is already active", "POOL_BAD_STATE", "activated")
            if sched not in SCHEDULERS:
                raise BackendError(f"the xl backend has no {sched} scheduler", "UNKOWN_SCHED_POLICY")
            if any(p.name == name for p in self._pools):
                raise BackendError(f"Xen already has a pool named {name}", "POOL_BAD_STATE", "activated")
            self._check_mixing(sched)
            for cpu in sorted(cpus):
                owner = self._owner(cpu)
                if not 0 <= cpu < len(self._static.cpus) or owner is not None:
                    raise BackendError(f"pCPU {cpu} is not free", "INVALID_CPU",
                                       f'cpu already assigned to pool "{owner.name}"' if owner else f"no pCPU {cpu}")
            # the uuid first: the pool list read right after the create must know it
            self._state["pools"][name] = uuid
            self._save_state()
            cpulist = "[" + ", ".join(f'"{c}"' for c in sorted(cpus)) + "]"
            try:
                self._pool_act("cpupool-create", f"name={_quote(name)}", f"sched={_quote(sched)}", f"cpus={cpulist}")
            except BackendError:
                if all(p.name != name for p in self._pools):
                    self._state["pools"].pop(name, None)
                    self._save_state()
                raise
            return self._pool(uuid)

    def _check_mixing(self, sched: str) -> None:
        """Refused on Xen 4.17: a pool whose scheduler differs from another active pool's. Its credit
        scheduler panics the whole host now and then (a NULL pointer in csched_tick) once a pCPU
        has moved from a credit2 pool into a credit one, which is what making such a pool does
        (its pCPUs come from Pool-0). A refusal costs the admin a choice that xl still offers; a
        warning in our log would not stop the panic, which takes every guest down with it."""
        version = self._static.software_version.get("xen", "")
        others = sorted({p.sched for p in self._pools} - {sched})
        if version.startswith("4.17") and others:
            raise BackendError(
                f"Xen {version} may panic with {sched} beside {others[0]} pools", "VALUE_NOT_SUPPORTED",
                "sched_policy", sched, f"Xen {version} panics now and then when pCPUs move between "
                f"{others[0]} and {sched} pools; keep every pool on {others[0]} (see the README)")

    def pool_deactivate(self, uuid: str) -> None:
        with self._lock:
            pool = self._pool(uuid)
            if pool.poolid == 0 or pool.name == POOL0:
                raise BackendError("the boot pool cannot be destroyed", "OPERATION_NOT_ALLOWED",
                                   "Pool-0 cannot be deactivated")
            if any(d.pool == uuid for d in self._domains.values()):
                raise BackendError("domains run in the pool", "POOL_BAD_STATE", "in use")
            self._pool_act("cpupool-destroy", pool.name)

    def pool_add_cpu(self, uuid: str, cpu: int) -> CpuPool:
        with self._lock:
            pool = self._pool(uuid)
            if not 0 <= cpu < len(self._static.cpus):
                raise BackendError(f"no pCPU {cpu}", "INVALID_CPU", f"no pCPU {cpu} on this host")
            owner = self._owner(cpu)
            if owner is not None:
                raise BackendError("pCPU in a pool", "INVALID_CPU", f'cpu already assigned to pool "{owner.name}"')
            self._pool_act("cpupool-cpu-add", pool.name, str(cpu))
            return self._pool(uuid)

    def pool_remove_cpu(self, uuid: str, cpu: int) -> CpuPool:
        with self._lock:
            pool = self._pool(uuid)
            if cpu not in pool.cpus:
                raise BackendError("pCPU not in the pool", "INVALID_CPU", "CPU not assigned to pool")
            if pool.cpus == {cpu} and any(d.pool == uuid for d in self._domains.values()):
                raise BackendError("last pCPU of a pool in use", "LAST_CPU_NOT_REMOVEABLE", "could not remove last cpu")
            self._pool_act("cpupool-cpu-remove", pool.name, str(cpu))
            return self._pool(uuid)

    def pool_move_domain(self, domain: str, pool: str) -> Domain:
        with self._lock:
            d = self._get(domain, PowerState.RUNNING, PowerState.PAUSED)
            target = self._pool(pool)
            if d.pool != pool:
                self._act(domain, "cpupool-migrate", str(d.domid), target.name)
                if self._barred(domain):  # its affinity was narrowed within the pool it left
                    self._apply_affinity(replace(d, pool=pool))
            return self._after(domain, "row", "vcpus", "sched")  # its vCPUs now run on the pool's pCPUs

    # -- cpuoccupy: pCPUs reserved to some domains, kept by narrowing the others' hard affinity ---------
    def set_occupancy(self, occupied: dict[int, frozenset[str]]) -> None:
        with self._lock:
            check_occupancy(occupied, len(self._static.cpus))
            live = [d for d in self._domains.values() if not d.is_control_domain]
            asked = {d.uuid: d.pins for d in live}  # read before the map changes what _build reports
            self._state["occupied"] = {str(c): sorted(who) for c, who in sorted(occupied.items()) if who}
            for d in live:
                self._keep_pins(self._record(d.uuid), asked[d.uuid])
            self._save_state()
            for d in live:
                self._apply_affinity(d)
            self._refresh_vcpus()

    def _barred(self, uuid: str) -> frozenset[int]:
        """The pCPUs reserved to domains other than ``uuid``."""
        return frozenset(int(c) for c, who in self._state["occupied"].items() if uuid not in who)

    def _affinity(self, uuid: str, pool: CpuPool | None, pins: dict[int, frozenset[int]],
                  vcpus: int) -> dict[int, frozenset[int] | None]:
        """The hard affinity Xen gets for each vCPU (None: anywhere): its pins, less the pCPUs reserved
        to other domains, within its pool, as on libvirt (the server refuses pins left with none)."""
        barred = self._barred(uuid)
        if not barred:
            return {v: pins.get(v) for v in range(vcpus)}
        home = pool.cpus if pool is not None and pool.cpus else frozenset(range(len(self._static.cpus)))
        affinity = {v: narrowed(home, barred, pins.get(v)) for v in range(vcpus)}
        return {v: None if v not in pins and cpus == home else cpus for v, cpus in affinity.items()}

    def _apply_affinity(self, d: Domain) -> None:
        """Give Xen the affinity of each vCPU of a live domain: one call when all are alike."""
        affinity = self._affinity(d.uuid, self._pool_by_uuid(d.pool), d.pins, d.vcpus_max)
        given = {v: "all" if cpus is None else format_cpulist(cpus) for v, cpus in affinity.items()}
        self._side.add(d.uuid)
        if len(set(given.values())) == 1:
            self._act(d.uuid, "vcpu-pin", str(d.domid), "all", next(iter(given.values())))
            return
        for v, cpus in given.items():
            self._act(d.uuid, "vcpu-pin", str(d.domid), str(v), cpus)

    def _keep_pins(self, record: dict, pins: dict[int, frozenset[int]]) -> bool:
        """While a reservation is in force Xen holds narrowed affinities: the pins as asked are kept
        in our record (True: the record changed)."""
        if not self._state["occupied"]:
            return record.pop("pins", None) is not None
        kept = {str(v): sorted(c) for v, c in sorted(pins.items())}
        changed, record["pins"] = record.get("pins") != kept, kept
        return changed

    # -- changes made outside xend-ext ----------------------------------------------------------------
    def _sync(self) -> tuple[set[str], bool]:
        """Compare Xen with what we last read; re-read what changed. Returns (changed uuids, pools changed)."""
        generation = self._generation
        rows = {r["uuid"]: r for r in parse_list(self._xl("list", "-v", "-c"))}
        # names and CPUs tell a change (a pool's scheduler is fixed when it is made): one call, not two
        pool_cpus = self._xl("cpupool-list", "-c")
        if generation != self._generation:
            return set(), False  # an action of ours ran meanwhile: it knows its results; look again next time
        pools_changed = [(p.name, p.cpus) for p in self._pools] != [
            (name, cpus) for name, _, cpus in parse_pools(pool_cpus, pool_cpus, any_sched=True)]
        if pools_changed:
            self._refresh_pools()
        changed = {u for u, row in rows.items() if self._listed.get(u) != _row_print(row)}
        changed |= {u for u in self._domains if u not in rows}
        if changed:
            self._refresh_all()
        self._synced = time.monotonic()
        return changed, pools_changed

    def watch(self, notify: Callable[[str, str], None]) -> None:
        def loop() -> None:
            while not self._stop.wait(self.poll):
                try:
                    with self._lock:
                        changed, pools_changed = self._sync()
                        self._sample()
                        self._control()
                except Exception as exc:  # noqa: BLE001 - a failed poll is retried at the next one
                    log.warning("xl backend: polling Xen failed: %s", exc)
                    continue
                if pools_changed:
                    notify("pools", "")
                for uuid in sorted(changed):
                    notify("domain", uuid)

        with self._lock:
            self._synced = time.monotonic()
        self._thread = threading.Thread(target=loop, name="xl-watch", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


class XlError(BackendError):
    """xl failed; ``as_backend_error`` names the Xen-API error that fits xl's words."""

    def __init__(self, args: tuple[str, ...], rc: int, words: str) -> None:
        super().__init__(f"xl {' '.join(args)} failed: {words}", "BACKEND_ERROR")
        self.xl_args = args
        self.words = words

    def as_backend_error(self, uuid: str) -> BackendError:
        w = self.words
        message = str(self)
        if "invalid domain identifier" in w or "unknown domain" in w:
            return BackendError(message, "HANDLE_INVALID", "VM", uuid)
        if re.search(r"out of memory|not enough (free )?memory|failed to free memory|cannot allocate", w, re.I):
            return BackendError(message, "HOST_NOT_ENOUGH_FREE_MEMORY", 0, 0)
        if "vcpu-pin" in self.xl_args and ("affinity" in w or "Invalid argument" in w):
            return BackendError(message, "INVALID_VALUE", f"cpumap{self.xl_args[2]}", self.xl_args[3])
        if "cpupool-cpu-add" in self.xl_args or "cpupool-cpu-remove" in self.xl_args:
            return BackendError(message, "INVALID_CPU", w)
        if "cpupool-destroy" in self.xl_args:
            return BackendError(message, "POOL_BAD_STATE", "in use")
        if "cpupool-create" in self.xl_args:
            return BackendError(message, "INVALID_CPU", w)
        return BackendError(message, "BACKEND_ERROR", message)


def _row_print(row: dict) -> tuple:
    """What the poll compares for a domain: a row of ``xl list -v -c`` (domid, state, memory, vCPUs, pool)."""
    return (row["domid"], row["state"].replace("b", "-").replace("r", "-"), row["mem"], row["vcpus"], row["pool"])


def _domain_to_json(d: Domain) -> dict:
    return {"uuid": d.uuid, "name": d.name, "memory": d.memory, "memory_max": d.memory_max, "vcpus": d.vcpus,
            "vcpus_max": d.vcpus_max, "weight": d.weight, "cap": d.cap,
            "pins": {str(v): sorted(c) for v, c in d.pins.items()}, "start_time": d.start_time.isoformat(),
            "metadata": d.metadata, "pool": d.pool}


def _domain_from_json(data: dict) -> Domain:
    return Domain(
        uuid=data["uuid"], name=data["name"], domid=-1, power_state=PowerState.SUSPENDED, memory=int(data["memory"]),
        memory_max=int(data["memory_max"]), vcpus=int(data["vcpus"]), vcpus_max=int(data["vcpus_max"]),
        weight=int(data["weight"]), cap=int(data["cap"]),
        pins={int(v): frozenset(c) for v, c in data.get("pins", {}).items()},
        start_time=dt.datetime.fromisoformat(data["start_time"]), metadata=dict(data.get("metadata", {})),
        pool=data.get("pool", POOL0_UUID))


def _pins_from_json(data: dict) -> dict[int, frozenset[int]]:
    return {int(v): frozenset(cpus) for v, cpus in data.items()}


def _sha256(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as exc:
        raise BackendError(f"cannot read {path}: {exc.strerror}", "INVALID_VALUE", "path", str(path)) from None


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".xend-ext.json")


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)

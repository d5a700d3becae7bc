"""Finding domains the way xm users name them, and reading what they are.

A DOMAIN argument is a name, a uuid or (for a running domain) a domid, as xend accepted. The
VM record is the stored next-start definition; VM_metrics is what runs now; the helpers here say
which of the two a column shows.
"""

from __future__ import annotations

import datetime as dt
import re
import xmlrpc.client
from dataclasses import dataclass, field

from .args import MIB
from .client import Client
from .connection import CliError, XenAPIFailure

UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
LIVE = ("Running", "Paused")
#: xend's six state letters: running, blocked, paused, shutdown, crashed, dying
#: and ?????? when its host of the pool is not live (power_state Unknown)
STATE_LETTERS = {"Running": "r-----", "Paused": "--p---", "Suspended": "---s--", "Halted": "------",
                 "Unknown": "??????"}
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass
class Domain:
    """One VM with its metrics: the stored definition and, when it runs, the live values."""

    ref: str
    record: dict
    metrics: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.record["name_label"]

    @property
    def power_state(self) -> str:
        return self.record["power_state"]

    @property
    def live(self) -> bool:
        return self.power_state in LIVE

    @property
    def domid(self) -> int:
        return int(self.record["domid"])

    @property
    def domid_text(self) -> str:
        """Blank for a domain without a domid (halted or suspended), as xm list showed it."""
        return str(self.domid) if self.domid >= 0 else ""

    @property
    def memory_mib(self) -> int:
        """What it has now when it runs, else what it will get at the next start."""
        if self.live and self.metrics:
            return int(self.metrics["memory_actual"]) // MIB
        return int(self.record["memory_target"]) // MIB

    @property
    def memory_max_mib(self) -> int:
        """The running domain's maximum (mem-max --dynamic changes it), else the stored one."""
        if self.live and self.metrics.get("memory_max"):
            return int(self.metrics["memory_max"]) // MIB
        return int(self.record["memory_static_max"]) // MIB

    @property
    def vcpus(self) -> int:
        if self.live and self.metrics:
            return int(self.metrics["VCPUs_number"])
        return int(self.record["VCPUs_at_startup"])

    @property
    def state(self) -> str:
        return STATE_LETTERS.get(self.power_state, "------")

    def sched(self, running: bool | None = None) -> tuple[int, int]:
        """(weight, cap): the live ones for a running domain, else the stored ones."""
        use_live = self.live if running is None else running
        params = self.metrics.get("VCPUs_params", {}) if use_live else self.record["VCPUs_params"]
        return int(params.get("weight") or 256), int(params.get("cap") or 0)

    def uptime(self) -> float:
        """Seconds since the domain started (0.0 when it does not run)."""
        if not self.live or not self.metrics:
            return 0.0
        started = as_datetime(self.metrics.get("start_time"))
        if started <= EPOCH:
            return 0.0
        return max(0.0, (dt.datetime.now(dt.UTC) - started).total_seconds())


def as_datetime(value) -> dt.datetime:
    """An XML-RPC dateTime (UTC on our wire) as an aware datetime."""
    if value is None or value == "":
        return EPOCH
    text = value.value if isinstance(value, xmlrpc.client.DateTime) else str(value)
    text = text.rstrip("Z").replace("-", "")
    for fmt in ("%Y%m%dT%H:%M:%S", "%Y%m%dT%H%M%S"):
        try:
            return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.UTC)
        except ValueError:
            continue
    return EPOCH


def not_found(text: str) -> CliError:
    return CliError(f"Domain '{text}' does not exist.")


def find_ref(client: Client, text: str) -> str:
    """The VM a DOMAIN argument names: a name first, then a uuid, then a running domain's domid."""
    refs = client.call("VM.get_by_name_label", text)
    if len(refs) > 1:
        raise CliError(f"{len(refs)} domains are called '{text}'; name it by uuid instead (see 'xm list -l').")
    if refs:
        client.names[refs[0]] = text
        return refs[0]
    if UUID.match(text):
        try:
            ref = client.call("VM.get_by_uuid", text.lower())
        except XenAPIFailure as exc:
            if exc.code not in ("UUID_INVALID", "HANDLE_INVALID"):
                raise
        else:
            client.names.setdefault(ref, text)
            return ref
    if text.isdigit():
        found = client.call("VM.get_all_records_where", f'field "domid"="{int(text)}"')
        for ref, record in found.items():
            if record["power_state"] in LIVE:
                client.remember(ref, record)
                return ref
    raise not_found(text)


def find(client: Client, text: str, with_metrics: bool = True) -> Domain:
    """A DOMAIN argument as a Domain with its record (and metrics)."""
    ref = find_ref(client, text)
    record = client.call("VM.get_record", ref)
    client.remember(ref, record)
    metrics = {}
    if with_metrics and record.get("metrics", "OpaqueRef:NULL") != "OpaqueRef:NULL":
        metrics = client.call("VM_metrics.get_record", record["metrics"])
    return Domain(ref, record, metrics)


def all_domains(client: Client) -> list[Domain]:
    """Every VM with its metrics, Domain-0 first, then by domid, then the halted ones by name."""
    records = client.call("VM.get_all_records")
    metrics = client.call("VM_metrics.get_all_records")
    out = []
    for ref, record in records.items():
        client.remember(ref, record)
        out.append(Domain(ref, record, metrics.get(record.get("metrics", ""), {})))
    return sorted(out, key=sort_key)


def sort_key(d: Domain) -> tuple:
    return (d.domid < 0, d.domid, d.name)


def select(client: Client, names: list[str]) -> list[Domain]:
    """The named domains (each must exist), or every domain when none is named."""
    domains = all_domains(client)
    if not names:
        return domains
    by_ref = {d.ref: d for d in domains}
    chosen: dict[str, Domain] = {}
    for text in names:
        ref = find_ref(client, text)
        if ref not in chosen:
            chosen[ref] = by_ref.get(ref) or find(client, text)  # find: created since the listing was read
    return list(chosen.values())


def host_cpus(client: Client) -> int:
    host = client.this_host()
    return len(client.call("host.get_host_CPUs", host))

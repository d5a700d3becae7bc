"""Scheduling commands: sched-credit (weight and cap), vcpu-pin and vcpu-list.

A change is made in one of the allocation modes of API.md §8. xend applied a change to a running
domain and always saved the config; xend-ext lets the user say which (--dynamic, --static,
--perm). With no flag, a running domain gets a dynamic change and a halted one a static change,
since a halted domain has nothing to change but its stored definition (what xend did too).
"""

from __future__ import annotations

from .. import cpuset
from . import sdom
from .args import UsageError, arg, mode_arguments, note_on_success
from .client import Client
from .sxpout import dumps_json
from .vms import Domain, find, host_cpus, select

SCHED_HEADER = "%-33s %4s %6s %4s" % ("Name", "ID", "Weight", "Cap")  # noqa: UP031 xend's format
SCHED_ROW = "%-32s %5s %6d %4d"
VCPU_HEADER = "%-32s %5s %5s %5s %5s %9s %s" % (  # noqa: UP031 xend's format
    "Name", "ID", "VCPU", "CPU", "State", "Time(s)", "CPU Affinity")
VCPU_ROW = "%-32s %5s %5d %5s %5s %9.1f %s"
JSON = arg("--json", action="store_true", help="the same rows as JSON")


def mode_for(d: Domain, mode: str | None) -> str:
    """The mode asked for, else dynamic for a running domain and static (with a note) for a halted one."""
    if mode is not None:
        return mode
    if d.live:
        return "dynamic"
    note_on_success(f"Domain '{d.name}' is {d.power_state.lower()}: the change is stored for its next start "
                    "(--static).")
    return "static"


def sched_credit(client: Client, args) -> int:
    """Show or set credit scheduler weight and cap.

    Without -w/-c, lists every domain (or the one given with -d): the values in force for a running
    domain, the stored ones for a halted one. Weight is 1..65535 (default 256); cap is in % of one
    pCPU, 0 (none)..100 x vCPUs.
    """
    changing = args.weight is not None or args.cap is not None
    if not changing:
        if args.mode is not None:
            raise UsageError("--dynamic, --static and --perm go with -w or -c")
        domains = select(client, [args.domain] if args.domain else [])
        if args.json:
            print(dumps_json([{"name": d.name, "domid": d.domid, "weight": d.sched()[0], "cap": d.sched()[1],
                               "sched_domain": sdom.sdom_of(client, d.ref).strip().removeprefix("sdom=") or None}
                              for d in domains]))
            return 0
        print(SCHED_HEADER)
        for d in domains:
            weight, cap = d.sched()
            print(SCHED_ROW % (d.name, d.domid_text, weight, cap) + sdom.sdom_of(client, d.ref))
        return 0
    if not args.domain:
        raise UsageError("-w and -c need the domain: -d DOMAIN")
    d = find(client, args.domain, with_metrics=False)
    mode = mode_for(d, args.mode)
    if args.weight is not None:
        client.call("VM.set_sched_weight", d.ref, str(args.weight), mode)
    if args.cap is not None:
        client.call("VM.set_sched_cap", d.ref, str(args.cap), mode)
    return 0


def _vcpu_numbers(text: str, vcpus_max: int) -> list[int]:
    if text == "all":
        return list(range(vcpus_max))
    if not text.isdigit():
        raise UsageError(f"VCPU must be a vCPU number or 'all', not '{text}'")
    return [int(text)]


def vcpu_pin(client: Client, args) -> int:
    """Restrict a vCPU (or all) to some pCPUs: "2", "2-3", "0-3,^1", or all to lift the pin."""
    d = find(client, args.domain, with_metrics=False)
    numbers = _vcpu_numbers(args.vcpu, int(d.record["VCPUs_max"]))
    mode = mode_for(d, args.mode)
    for vcpu in numbers:
        client.call("VM.pin_VCPU", d.ref, str(vcpu), args.cpus, mode)
    return 0


def _affinity(text: str, ncpus: int) -> str:
    """A pin as xm showed it: compact ranges, or ``any cpu`` when it allows every pCPU."""
    if not text:
        return "any cpu"
    try:
        cpus = cpuset.parse(text, ncpus)
    except cpuset.CpuSetError:
        return text
    return "any cpu" if cpus >= frozenset(range(ncpus)) else cpuset.format(cpus)


def _vcpu_rows(d: Domain, ncpus: int) -> list[tuple]:
    vcpus_max = int(d.record["VCPUs_max"])
    if not d.live or not d.metrics:
        params = d.record["VCPUs_params"]
        return [(d.name, d.domid_text, v, "-", "---", 0.0, _affinity(params.get(f"cpumap{v}", ""), ncpus))
                for v in range(vcpus_max)]
    online = int(d.metrics["VCPUs_number"])
    where = d.metrics.get("VCPUs_CPU", {})
    use = d.metrics.get("VCPUs_utilisation", {})
    params = d.metrics.get("VCPUs_params", {})
    uptime = d.uptime()
    rows = []
    for v in range(max(vcpus_max, online)):
        share = float(use.get(str(v), 0.0))
        if v >= online:
            state, cpu = "--p", "-"
        elif d.power_state == "Paused":
            state, cpu = "--p", str(where.get(str(v), "-"))
        else:
            # without a utilisation figure (libvirt, xl) a running domain's online vCPU counts as running
            state = "r--" if share > 0 or not use else "-b-"
            cpu = str(where.get(str(v), "-"))
        rows.append((d.name, d.domid_text, v, cpu, state, uptime * share if v < online else 0.0,
                     _affinity(params.get(f"cpumap{v}", ""), ncpus)))
    return rows


def vcpu_list(client: Client, args) -> int:
    """List each domain's vCPUs: where they run, their state and affinity.

    State: r-- running, -b- blocked (idle), --p paused or offline, --- the domain does not run.
    Time(s) is the seconds since the domain started times the vCPU's share of a pCPU (the
    scheduler's model of its CPU time). Affinity is the pin in force, or the stored one when halted.
    """
    domains = select(client, args.domains)
    ncpus = host_cpus(client)
    rows = [row for d in domains for row in _vcpu_rows(d, ncpus)]
    if args.json:
        keys = ("name", "domid", "vcpu", "cpu", "state", "time", "affinity")
        print(dumps_json([dict(zip(keys, row, strict=True)) for row in rows]))
        return 0
    print(VCPU_HEADER)
    for row in rows:
        print(VCPU_ROW % row)
    return 0


COMMANDS = {
    "sched-credit": (sched_credit, [
        arg("-d", "--domain", metavar="DOMAIN", help="the domain to show or change"),
        arg("-w", "--weight", type=int, metavar="WEIGHT", help="relative share, 1..65535 (default 256)"),
        arg("-c", "--cap", type=int, metavar="CAP", help="most CPU in %% of one pCPU, 0 = no cap"),
        mode_arguments(),
        JSON,
    ]),
    "vcpu-pin": (vcpu_pin, [
        arg("domain", metavar="DOMAIN", help="name, uuid or (running) domain id"),
        arg("vcpu", metavar="VCPU|all", help="vCPU number, or all of them"),
        arg("cpus", metavar="CPUS|all", help='pCPUs: "2", "2-3", "0-3,^1"; all lifts the pin'),
        mode_arguments(),
    ]),
    "vcpu-list": (vcpu_list, [
        arg("domains", nargs="*", metavar="DOMAIN", help="name, uuid or (running) domain id; default all"),
        JSON,
    ]),
}

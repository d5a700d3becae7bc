"""Allocation commands (seed 002) and the policy manager (seed 003): mem-set, mem-max, vcpu-set,
cpu-occupy and cpu-policy.

Every change is made in one of the allocation modes of API.md §8: ``--dynamic`` changes the
running domain only (its next start reverts), ``--static`` the stored definition only (it applies
at the next start), ``--perm`` both. With no flag a running domain gets a dynamic change and a
halted one a static change, with a note, as for ``xm sched-credit`` and ``xm vcpu-pin``. The
virsh names of the seed (``setmem``, ``setmaxmem``, ``setvcpus``) are aliases.

``cpu-occupy PCPU DOMAIN...`` reserves a pCPU to some domains: every other domain is kept off it.
``cpu-policy DOMAIN`` shows a domain's CPU policy, stored and running side by side.
"""

from __future__ import annotations

from .args import MIB, UsageError, arg, mode_arguments
from .client import Client
from .connection import CliError, XenAPIFailure
from .sched import mode_for
from .sxpout import dumps_json
from .vms import find, find_ref

NULL = "OpaqueRef:NULL"


def _change(client: Client, args, message: str, value: str) -> int:
    d = find(client, args.domain, with_metrics=False)
    mode = mode_for(d, args.mode)
    client.about.update(domain=d.name, mode=mode)
    client.call(message, d.ref, value, mode)
    return 0


def _number(text: str) -> int:
    """A count the user types; 0 and negatives reach the server, which says why they are refused."""
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"'{text}' is not a whole number") from None


def mem_set(client: Client, args) -> int:
    """Set a domain's memory, in MiB.

    --dynamic (default for a running domain) changes what it has now and its next start reverts;
    --static (default for a halted domain) changes the memory it gets at its next start; --perm
    does both. The memory stays within the domain's maximum (xm mem-max) and what the host has free.
    """
    mib = _number(args.memory)
    return _change(client, args, "VM.set_memory", str(mib * MIB))


def mem_max(client: Client, args) -> int:
    """Set the most memory a domain may have, in MiB.

    --dynamic (default for a running domain) changes the running domain's limit and its next start
    reverts; --static (default for a halted domain) the stored maximum; --perm both. The maximum
    may not fall below the memory the domain has (lower that first with xm mem-set).
    """
    mib = _number(args.memory)
    return _change(client, args, "VM.set_memory_max", str(mib * MIB))


def vcpu_set(client: Client, args) -> int:
    """Set the number of vCPUs a domain has online, 1..its VCPUs_max.

    --dynamic (default for a running domain) changes the running domain and its next start reverts;
    --static (default for a halted domain) the vCPUs it starts with; --perm both.
    """
    count = _number(args.vcpus)
    return _change(client, args, "VM.set_VCPUs", str(count))


# -- cpu-occupy ------------------------------------------------------------------------------

def _host_cpus(client: Client) -> dict[int, tuple[str, dict]]:
    """{number: (ref, record)} of the host's pCPUs."""
    return {int(rec["number"]): (ref, rec) for ref, rec in client.call("host_cpu.get_all_records").items()}


def _pcpu(cpus: dict[int, tuple[str, dict]], text: str) -> tuple[str, dict]:
    if not text.isdigit():
        raise UsageError(f"PCPU must be a pCPU number, not '{text}'")
    number = int(text)
    if number not in cpus:
        last = max(cpus) if cpus else -1
        raise CliError(f"pCPU {number} does not exist; the host has pCPUs 0-{last} ('xm info' shows nr_cpus).")
    return cpus[number]


def _vm_names(client: Client, refs: list[str]) -> list[str]:
    out = []
    for ref in refs:
        if ref not in client.names:
            try:
                client.names[ref] = client.call("VM.get_name_label", ref)
            except XenAPIFailure:
                client.names[ref] = ref  # a VM gone meanwhile: show its reference
        out.append(client.names[ref])
    return out


def cpu_occupy(client: Client, args) -> int:
    """Reserve a pCPU to some domains: only they may run on it, every other domain is kept off it.

    'xm cpu-occupy PCPU DOMAIN...' reserves it (replacing an earlier reservation of that pCPU),
    'xm cpu-occupy PCPU --clear' frees it, 'xm cpu-occupy [PCPU]' shows the reservations. A pCPU
    cannot be reserved while another domain is pinned to it alone (it would have nowhere to run).
    Reservations hold for halted domains too and apply whenever a domain starts or reboots.
    """
    if args.clear and args.domains:
        raise UsageError("--clear frees the pCPU for every domain; do not name domains with it")
    if args.clear and args.pcpu is None:
        raise UsageError("--clear needs the pCPU to free: xm cpu-occupy PCPU --clear")
    cpus = _host_cpus(client)
    if args.pcpu is None:
        return _show_occupancy(client, cpus, sorted(cpus), args.json)
    ref, _rec = _pcpu(cpus, args.pcpu)
    number = int(args.pcpu)
    client.about["cpu"] = str(number)
    if args.clear:
        client.call("host_cpu.clear_occupants", ref)
        print(f"pCPU {number} is free for every domain.")
        return 0
    if not args.domains:
        return _show_occupancy(client, cpus, [number], args.json)
    vms: list[str] = []
    for text in args.domains:
        vm = find_ref(client, text)
        if vm not in vms:
            vms.append(vm)
    names = _vm_names(client, vms)
    client.about["domains"] = ",".join(names)
    client.call("host_cpu.set_occupants", ref, vms)
    print(f"pCPU {number} is reserved to {', '.join(names)}; other domains are kept off it.")
    return 0


def _show_occupancy(client: Client, cpus: dict[int, tuple[str, dict]], numbers: list[int], as_json: bool) -> int:
    """The reservations of ``numbers``: every one asked for by number, else only those held."""
    rows = [(number, sorted(_vm_names(client, cpus[number][1].get("occupants", [])))) for number in numbers]
    rows = [(number, names) for number, names in rows if names or len(numbers) == 1]
    if as_json:
        print(dumps_json([{"cpu": number, "occupants": names} for number, names in rows]))
        return 0
    print("%-5s %s" % ("CPU", "Occupants"))  # noqa: UP031 xm's style
    for number, names in rows:
        print("%-5d %s" % (number, ", ".join(names) or "-"))  # noqa: UP031
    return 0


# -- cpu-policy ------------------------------------------------------------------------------

def _sched_domain(client: Client, ref: str, vm_ref: str) -> str:
    if not ref or ref == NULL:
        return "none"
    try:
        rec = client.call("sched_domain.get_record", ref)
    except XenAPIFailure:
        return ref
    if rec.get("master") == vm_ref:
        return f"{rec['name_label']} (master)"
    master = _vm_names(client, [rec["master"]])[0] if rec.get("master") else "?"
    return f"{rec['name_label']} (member; master {master}: its weight and cap apply)"


def _cpus_text(cpus: list[str]) -> str:
    return ",".join(cpus) if cpus else "-"


def cpu_policy(client: Client, args) -> int:
    """Show a domain's CPU policy: stored (applied at its next start) and running, side by side.

    Rows: weight, cap, CPU pool, the pin of each vCPU (any = no pin), where each vCPU runs now and
    its share of a pCPU with every vCPU busy (the scheduler's model); then the pCPUs reserved to
    this domain (occupied, xm cpu-occupy), those of its pool reserved to others and kept from it (excluded),
    and its scheduling domain. --json prints the server's VM.get_cpu_policy struct.
    """
    d = find(client, args.domain)
    policy = client.call("VM.get_cpu_policy", d.ref)
    if args.json:
        print(dumps_json({"name": d.name, "uuid": d.record["uuid"], "power_state": d.power_state, **policy}))
        return 0
    stored, running = policy.get("stored", {}), policy.get("running", {})
    vcpus = int(d.record["VCPUs_max"])
    numbers = {int(v) for v in stored.get("pins", {})} | {int(v) for v in running.get("pins", {})}
    if running:
        numbers |= {int(v) for v in running.get("utilisation", {})}
    count = max([vcpus, *(n + 1 for n in numbers)])

    def now(key: str) -> str:
        return str(running[key]) if running else "-"

    rows = [("weight", str(stored.get("weight", "")), now("weight")),
            ("cap", str(stored.get("cap", "")), now("cap")),
            ("pool", stored.get("pool", ""), now("pool") if running else "-")]
    where = d.metrics.get("VCPUs_CPU", {}) if running else {}
    share = running.get("utilisation", {}) if running else {}
    for v in range(count):
        key = str(v)
        stored_pin = stored.get("pins", {}).get(key, "any")
        if not running:
            live_pin, load = "-", ""
        elif key in share:
            live_pin = running.get("pins", {}).get(key, "any")
            load = f"pCPU {where.get(key, '-')}, {float(share[key]) * 100:.0f}%"
        else:
            live_pin, load = running.get("pins", {}).get(key, "any"), "offline"
        rows.append((f"vcpu {v}", stored_pin, live_pin, load))
    domid = f", id {d.domid}" if d.domid >= 0 else ""
    print(f"Domain {d.name} ({d.power_state.lower()}{domid})")
    print("%-10s %-12s %-12s %s" % ("Policy", "Stored", "Running", "Now"))  # noqa: UP031 xm's style
    for row in rows:
        name, first, second, *rest = row
        print(("%-10s %-12s %-12s %s" % (name, first, second, rest[0] if rest else "")).rstrip())  # noqa: UP031
    print(f"Occupied pCPUs: {_cpus_text(policy.get('occupied_cpus', []))}  (reserved to this domain)")
    print(f"Excluded pCPUs: {_cpus_text(policy.get('excluded_cpus', []))}  (reserved to other domains, in its pool)")
    print(f"Scheduling domain: {_sched_domain(client, policy.get('sched_domain', ''), d.ref)}")
    return 0


DOMAIN = arg("domain", metavar="DOMAIN", help="name, uuid or (running) domain id")
MEMORY = arg("memory", metavar="MiB", help="memory in MiB")


def _alias(command: str, target):
    """The same command under virsh's name; the first help line says so."""

    def alias(client: Client, args) -> int:
        return target(client, args)

    alias.__doc__ = f"Alias of 'xm {command}'.\n\n" + (target.__doc__ or "")
    return alias


COMMANDS = {
    "mem-set": (mem_set, [DOMAIN, MEMORY, mode_arguments()]),
    "mem-max": (mem_max, [DOMAIN, MEMORY, mode_arguments()]),
    "vcpu-set": (vcpu_set, [DOMAIN, arg("vcpus", metavar="N", help="vCPUs online, 1..VCPUs_max"), mode_arguments()]),
    "cpu-occupy": (cpu_occupy, [
        arg("pcpu", nargs="?", metavar="PCPU", help="the pCPU number; none: show every reservation"),
        arg("domains", nargs="*", metavar="DOMAIN", help="the domains it is reserved to"),
        arg("--clear", action="store_true", help="free the pCPU for every domain"),
        arg("--json", action="store_true", help="the reservations shown as JSON"),
    ]),
    "cpu-policy": (cpu_policy, [DOMAIN, arg("--json", action="store_true", help="the policy as JSON")]),
}
COMMANDS["setmem"] = (_alias("mem-set", mem_set), COMMANDS["mem-set"][1])
COMMANDS["setmaxmem"] = (_alias("mem-max", mem_max), COMMANDS["mem-max"][1])
COMMANDS["setvcpus"] = (_alias("vcpu-set", vcpu_set), COMMANDS["vcpu-set"][1])

"""CPU pool commands: ``xm cpupool-*`` (xend 4.1's names and output formats) and the deprecated
``pool-*`` aliases.

A pool is *defined* (``cpupool-new``), then *activated* (``cpupool-start``), when it takes CPUs that
no pool holds. At boot Pool-0 holds every CPU, so CPUs are first freed with ``cpupool-cpu-remove
Pool-0 N``. ``cpupool-destroy`` deactivates (the CPUs become free again) and ``cpupool-delete``
forgets the definition, as in xend.

Errors about a pool carry neither its name nor the CPU (``POOL_BAD_STATE [activated]``); each
command records both in ``client.about`` so the sentence (errors.py) can name them and say what to
type next.
"""

from __future__ import annotations

import inspect
import shlex
import sys
from pathlib import Path

from .. import cpuset, sxp
from . import pool_config, tasks
from .args import Exclusive, UsageError, arg, note
from .client import Client
from .connection import CliError, XenAPIFailure
from .sxpout import dumps_json, pretty
from .vms import UUID, find_ref

POOL0 = "Pool-0"
LIST_HEADER = "Name               CPUs   Sched     Active   Domain count"
LIST_ROW = "%-16s   %3s  %8s       %s          %s"
CPUS_ROW = "%-16s %s"
CPUS_HEADER = CPUS_ROW % ("Name", "CPU list")


# -- lookups ---------------------------------------------------------------------------------

def find_pool(client: Client, text: str) -> str:
    """The pool a POOL argument names (its name, or its uuid); later errors then name it."""
    refs = client.call("cpu_pool.get_by_name_label", text)
    if refs:
        client.about["pool"] = text
        return refs[0]
    if UUID.match(text):
        try:
            ref = client.call("cpu_pool.get_by_uuid", text.lower())
        except XenAPIFailure as exc:
            if exc.code not in ("UUID_INVALID", "HANDLE_INVALID"):
                raise
        else:
            client.about["pool"] = client.call("cpu_pool.get_name_label", ref)
            return ref
    raise CliError(f"Pool '{text}' does not exist.")


def host_cpus(client: Client) -> dict[int, tuple[str, dict]]:
    """Every host_cpu by its number: (ref, record)."""
    return {int(rec["number"]): (ref, rec) for ref, rec in client.call("host_cpu.get_all_records").items()}


def _numbers(refs: list[str], cpus: dict[int, tuple[str, dict]]) -> list[int]:
    by_ref = {ref: n for n, (ref, _rec) in cpus.items()}
    return sorted(by_ref[r] for r in refs if r in by_ref)


def _cpu_list(numbers: list[int]) -> str:
    return ",".join(map(str, numbers)) or "-"


def _cpu_argument(text: str, cpus: dict[int, tuple[str, dict]]) -> list[int]:
    """A CPU argument: a number, or (an xend-ext extension) a list such as ``4-7`` or ``4,6``."""
    try:
        wanted = sorted(cpuset.parse(text))
    except cpuset.CpuSetError:
        raise UsageError(f"CPU must be a CPU number such as 3 (or a list such as 4-7), not '{text}'") from None
    unknown = [n for n in wanted if n not in cpus]
    if unknown or not wanted:
        have = cpuset.format(set(cpus)) or "none"
        raise CliError(f"cpu number unknown: {','.join(map(str, unknown)) or text} (this host has CPUs {have})")
    return wanted


def _show_sched(record: dict, client: Client, cache: dict[str, str]) -> str:
    """``''`` means the host's default scheduler, which is what the pool gets at activation."""
    if record["sched_policy"]:
        return record["sched_policy"]
    if "host" not in cache:
        cache["host"] = client.call("host.get_sched_policy", client.this_host())
    return cache["host"]


def _sorted_pools(records: dict[str, dict]) -> list[tuple[str, dict]]:
    return sorted(records.items(), key=lambda item: (item[1]["name_label"] != POOL0, item[1]["name_label"]))


# -- new / create ----------------------------------------------------------------------------

def _config(args) -> tuple[list, pool_config.Source]:
    """The pool's SXP from the Python-syntax config (with VAR=VALUE) or from a raw SXP (-F)."""
    variables = list(args.vars)
    cfg = args.config
    if cfg and "=" in cfg and not Path(cfg).is_file() and (args.defconfig or args.sxp_config):
        variables.insert(0, cfg)  # xm cpupool-create -f web.pool name=web2: the var came first
        cfg = None
    if args.sxp_config:
        if cfg:
            raise UsageError("give either a Python-syntax config (CFG or -f) or a raw SXP one (-F), not both")
        if variables:
            raise UsageError("VAR=VALUE settings apply to Python-syntax configs only; edit the SXP given with -F")
        return pool_config.read_sxp(args.sxp_config, args.path)
    if cfg and args.defconfig:
        raise UsageError("give the config file once: as CFG or with -f, not both")
    cfg = cfg or args.defconfig
    if not cfg:
        raise UsageError("give a pool config file (CFG), or a raw SXP one with -F FILE")
    values, source = pool_config.load(cfg, variables, args.path)
    return pool_config.to_sxp(values, source), source


CREATED_BY = ("created_by", "xm cpupool-create")  # other_config of a pool cpupool-destroy deletes


def _define(client: Client, args, transient: bool = False) -> tuple[str, str] | None:
    """Define the pool the config describes: (ref, name), or None after a dry run. A ``transient``
    pool (cpupool-create) is marked so that cpupool-destroy deletes it (seed 000)."""
    node, source = _config(args)
    record = pool_config.to_record(node, source)
    if transient:
        record["other_config"] = {**record.get("other_config", {}), CREATED_BY[0]: CREATED_BY[1]}
    if args.dryrun:
        print(pretty(node))
        return None
    name = str(record["name_label"])
    client.about["pool"] = name
    return client.call("cpu_pool.create", record), name


def new(client: Client, args) -> int:
    """Define a CPU pool from a config file; it stays inactive until 'xm cpupool-start'.

    The config sets name, sched (credit or credit2; default credit), cpus (a number of CPUs:
    4 or "#4"; or the CPUs to prefer: "2-3", "0-3,^1", ["2", "3"]), other_config (["key=value"]),
    auto_power_on and description. With -F it is a raw SXP (pool (name_label N) (ncpu K) ...),
    as -n prints.
    """
    defined = _define(client, args)
    if defined is not None:
        _ref, name = defined
        print(f"Pool '{name}' defined; start it with 'xm cpupool-start {shlex.quote(name)}'.")
    return 0


def create(client: Client, args) -> int:
    """Define a CPU pool from a config file and activate it.

    If the activation fails (too few free CPUs, say), the definition just made is removed again, so
    a failed create leaves nothing behind; 'xm cpupool-destroy' deletes it (seed 000: a pool made by
    pool-create is deleted when destroyed). See 'xm cpupool-new --help' for the config.
    """
    defined = _define(client, args, transient=True)
    if defined is None:
        return 0
    ref, name = defined
    try:
        _activate(client, ref)
    except XenAPIFailure:
        try:
            client.call("cpu_pool.destroy", ref)
        except (XenAPIFailure, CliError):
            note(f"Note: pool '{name}' stays defined; remove it with 'xm cpupool-delete {shlex.quote(name)}'.")
        else:
            note(f"Pool '{name}' was not created (its definition was removed again):")
        raise
    _report_started(client, ref, name)
    return 0


def _activate(client: Client, ref: str) -> None:
    """Activate as an Async task (progress on a terminal); a shortage of free CPUs is answered with
    the command that frees enough of them."""
    try:
        tasks.run(client, "cpu_pool.activate", ref, label=f"activating {client.about.get('pool', 'pool')}")
    except XenAPIFailure as exc:
        if exc.code == "INSUFFICIENT_CPUS":
            _suggest_freeing(client, ref, exc)
        raise


def _suggest_freeing(client: Client, ref: str, failure: XenAPIFailure) -> None:
    """Which Pool-0 CPUs to take (it keeps at least one): the pool's proposed ones first, as
    activation prefers them, then the highest numbers."""
    try:
        short = int(failure.params[0]) - int(failure.params[1])
        pool0 = client.call("cpu_pool.get_by_name_label", POOL0)
        cpus = host_cpus(client)
        have = _numbers(client.call("cpu_pool.get_host_CPUs", pool0[0]), cpus) if pool0 else []
        proposed = {int(c) for c in client.call("cpu_pool.get_proposed_CPUs", ref)}
    except (XenAPIFailure, CliError, ValueError, IndexError):
        return
    if short < 1 or len(have) - 1 < short:
        return
    give = sorted(sorted(have, key=lambda n: (n not in proposed, -n))[:short])
    client.about["free_with"] = f"xm cpupool-cpu-remove {POOL0} {cpuset.format(give)}"


def _report_started(client: Client, ref: str, name: str) -> None:
    numbers = _numbers(client.call("cpu_pool.get_host_CPUs", ref), host_cpus(client))
    sched = client.call("cpu_pool.get_sched_policy", ref)
    print(f"Pool '{name}' started with CPU{'s' if len(numbers) != 1 else ''} {_cpu_list(numbers)}"
          f"{f' ({sched})' if sched else ''}.")


CONFIG_ARGS = [
    arg("config", nargs="?", metavar="CFG", help="pool config file (Python syntax): the name as given, else "
                                                  "searched in --path"),
    arg("vars", nargs="*", metavar="VAR=VALUE", help="set or override a config variable (a Python literal or text)"),
    arg("-f", "--defconfig", metavar="FILE", help="the pool config file (same as CFG)"),
    arg("-F", "--config", dest="sxp_config", metavar="FILE",
        help="read a raw SXP pool config, (pool (name_label N) (ncpu K) ...), instead"),
    arg("-n", "--dryrun", action="store_true", help="print the pool's SXP and do nothing else"),
    arg("--path", default=pool_config.DEFAULT_PATH,
        help="colon-separated directories searched for the config (default %(default)s)"),
]


# -- lifecycle -------------------------------------------------------------------------------

def start(client: Client, args) -> int:
    """Activate a defined CPU pool: it takes its proposed CPUs if free, then other free CPUs (ncpu in all)."""
    ref = find_pool(client, args.pool)
    _activate(client, ref)
    _report_started(client, ref, client.about["pool"])
    return 0


def destroy(client: Client, args) -> int:
    """Deactivate a CPU pool (no domain may run in it); its CPUs become free. The definition stays,
    unless 'xm cpupool-create' made the pool: then it is deleted too (seed 000)."""
    ref = find_pool(client, args.pool)
    try:
        client.call("cpu_pool.deactivate", ref)
    except XenAPIFailure as exc:
        if exc.code == "POOL_BAD_STATE" and exc.params[:1] == ["in use"]:
            _name_started(client, ref)
        raise
    if client.call("cpu_pool.get_other_config", ref).get(CREATED_BY[0]) == CREATED_BY[1]:
        client.call("cpu_pool.destroy", ref)
    return 0


def _name_started(client: Client, ref: str) -> None:
    try:
        names = sorted(client.call("VM.get_name_label", vm) for vm in client.call("cpu_pool.get_started_VMs", ref))
    except (XenAPIFailure, CliError):
        return
    if names:
        client.about["domains"] = ", ".join(names)


def delete(client: Client, args) -> int:
    """Remove an inactive CPU pool's definition from the server."""
    client.call("cpu_pool.destroy", find_pool(client, args.pool))
    return 0


def rename(client: Client, args) -> int:
    """Give a CPU pool another name; the domains that start in it (pool_name) follow it."""
    ref = find_pool(client, args.pool)
    client.call("cpu_pool.set_name_label", ref, args.name)
    return 0


def _cpu_change(method: str, doc: str):
    """cpupool-cpu-add / cpupool-cpu-remove: one call per CPU, in order, stopping at the first refusal.

    For a list, the CPUs the server would refuse (held by another pool, or not in this one) are
    found first, so such a mistake changes nothing rather than half the list.
    """
    adding = method.endswith("add_host_CPU_live")

    def command(client: Client, args) -> int:
        ref = find_pool(client, args.pool)
        cpus = host_cpus(client)
        wanted = _cpu_argument(args.cpu, cpus)
        held = {n for n, (_ref, rec) in cpus.items() if ref in rec["cpu_pool"]}
        if not adding and len(wanted) > 1 and held and held <= set(wanted):  # refused at the last: change nothing
            raise CliError(f"that is every CPU of pool \"{client.about['pool']}\"; an active pool keeps at "
                           f"least one (seed 000). 'xm cpupool-destroy {shlex.quote(client.about['pool'])}' frees "
                           "them all")
        if len(wanted) > 1:
            wanted.sort(key=lambda n: not _refused(cpus[n][1], ref, adding))
        done: list[int] = []
        try:
            for number in wanted:
                client.about["cpu"] = str(number)
                client.call(method, ref, cpus[number][0])
                done.append(number)
        except XenAPIFailure:
            if done:
                note(f"CPU{'s' if len(done) > 1 else ''} {cpuset.format(set(done))} "
                     f"{'joined' if adding else 'left'} the pool before that.")
            raise
        return 0

    command.__doc__ = doc
    return command


def _refused(cpu: dict, pool: str, adding: bool) -> bool:
    """Whether the server will refuse this CPU (sorted first, so the refusal comes before any change)."""
    return bool(cpu["cpu_pool"]) if adding else pool not in cpu["cpu_pool"]


cpu_add = _cpu_change("cpu_pool.add_host_CPU_live", """Give an active CPU pool a free CPU (see 'xm info' free_cpus).

    CPU is a CPU number (xend-ext also takes a list such as 4-7). The pool's proposed CPUs and ncpu
    follow, so it takes the same CPUs when it is activated again.
    """)
cpu_remove = _cpu_change("cpu_pool.remove_host_CPU_live", """Take a CPU out of an active CPU pool; it becomes free.

    CPU is a CPU number (xend-ext also takes a list such as 4-7). An active pool keeps its last CPU
    (seed 000; 'xm cpupool-destroy' frees them all), and a CPU stays while a domain running there
    could run nowhere else.
    """)


def migrate(client: Client, args) -> int:
    """Move a domain into a CPU pool: a running one moves at once, a halted one starts there next time."""
    vm = find_ref(client, args.domain)
    pool = find_pool(client, args.pool)
    client.call("VM.cpu_pool_migrate", vm, pool)
    return 0


# -- list ------------------------------------------------------------------------------------

def list_pools(client: Client, args) -> int:
    """List CPU pools (all, or those named: POOL or p1,p2,...): CPUs, scheduler, whether active,
    and how many domains run in each.

    An inactive pool shows the number of CPUs it will take (ncpu) and no domains. -c lists each
    pool's CPU numbers, -l one SXP per pool, --json the Xen-API records.
    """
    records = client.call("cpu_pool.get_all_records")
    if args.pool:
        refs = [find_pool(client, name) for name in dict.fromkeys(n.strip() for n in args.pool.split(",")) if name]
        records = {ref: records[ref] if ref in records else client.call("cpu_pool.get_record", ref) for ref in refs}
    pools = _sorted_pools(records)
    cpus = host_cpus(client) if (args.cpus or args.long or args.json) else {}
    names = _vm_names(client, pools) if (args.long or args.json) else {}
    cache: dict[str, str] = {}
    if args.json:
        print(dumps_json([{**rec, "ref": ref, "host_CPU_numbers": _numbers(rec["host_CPUs"], cpus),
                           "started_VM_names": [names.get(v, v) for v in rec["started_VMs"]]}
                          for ref, rec in pools]))
    elif args.long:
        for _ref, rec in pools:
            print(pretty(_long_sxp(rec, cpus, names, _show_sched(rec, client, cache))))
    elif args.cpus:
        print(CPUS_HEADER)
        for _ref, rec in pools:
            print(CPUS_ROW % (rec["name_label"], _cpu_list(_numbers(rec["host_CPUs"], cpus))))
    else:
        print(LIST_HEADER)
        for _ref, rec in pools:
            active = bool(rec["activated"])
            count = len(rec["host_CPUs"]) if active else int(rec["ncpu"])
            print(LIST_ROW % (rec["name_label"], count, _show_sched(rec, client, cache), "y" if active else "n",
                              len(rec["started_VMs"]) if active else 0))
    return 0


def _vm_names(client: Client, pools: list[tuple[str, dict]]) -> dict[str, str]:
    if not any(rec["started_VMs"] for _ref, rec in pools):
        return {}
    return {ref: rec["name_label"] for ref, rec in client.call("VM.get_all_records").items()}


def _long_sxp(rec: dict, cpus: dict[int, tuple[str, dict]], names: dict[str, str], sched: str) -> sxp.Sxp:
    """xend's ``cpupool-list -l``: the record by field, plus the CPU numbers and the domains' names."""
    return [
        rec["uuid"],
        ["name_label", rec["name_label"]],
        ["name_description", rec["name_description"]],
        ["ncpu", str(rec["ncpu"])],
        ["sched_policy", sched],
        ["activated", "1" if rec["activated"] else "0"],
        ["proposed_CPUs", *sorted(rec["proposed_CPUs"], key=int)],
        ["auto_power_on", "1" if rec["auto_power_on"] else "0"],
        ["other_config", *([k, v] for k, v in sorted(rec["other_config"].items()))],
        ["host_CPU_numbers", *map(str, _numbers(rec["host_CPUs"], cpus))],
        ["started_VM_names", *sorted(names.get(v, v) for v in rec["started_VMs"])],
    ]


# -- numa-split ------------------------------------------------------------------------------

def numa_split(client: Client, args) -> int:
    """Make one CPU pool per NUMA node: Pool-0 keeps node 0's CPUs, node N gets pool Pool-node<N>.

    Domains in a pool then use one node's CPUs (and memory stays near them). It needs a host with
    several nodes and no pool but Pool-0; each new pool has Pool-0's scheduler.
    """
    pools = client.call("cpu_pool.get_all_records")
    others = sorted(rec["name_label"] for rec in pools.values() if rec["name_label"] != POOL0)
    if others:
        listed = ", ".join(others)
        raise CliError(f"numa-split makes one pool per NUMA node on a host with Pool-0 only, but {listed} "
                       f"exist{'s' if len(others) == 1 else ''}; deactivate and remove "
                       f"{'it' if len(others) == 1 else 'them'} first ('xm cpupool-destroy POOL', then "
                       "'xm cpupool-delete POOL')")
    pool0 = next((ref for ref, rec in pools.items() if rec["name_label"] == POOL0), None)
    if pool0 is None:
        raise CliError("the server has no Pool-0; numa-split starts from the boot pool")
    cpus = host_cpus(client)
    nodes: dict[int, list[int]] = {}
    for number, (_ref, rec) in sorted(cpus.items()):
        nodes.setdefault(int(rec.get("numa_node") or 0), []).append(number)
    if len(nodes) < 2:
        raise CliError("this host has a single NUMA node, so there is nothing to split ('xm info' shows nr_nodes)")
    client.about["pool"] = POOL0
    sched = pools[pool0]["sched_policy"]
    first, *rest = sorted(nodes)
    done: list[tuple[str, str, str]] = []  # (what, ref, cpu ref), undone in reverse on failure
    try:
        in_pool0 = set(_numbers(client.call("cpu_pool.get_host_CPUs", pool0), cpus))
        for number in nodes[first]:
            if number not in in_pool0 and not cpus[number][1]["cpu_pool"]:
                client.about["cpu"] = str(number)
                client.call("cpu_pool.add_host_CPU_live", pool0, cpus[number][0])
                done.append(("added", pool0, cpus[number][0]))
        for node in rest:
            name = f"Pool-node{node}"
            for number in nodes[node]:
                if number in in_pool0:
                    client.about.update(pool=POOL0, cpu=str(number))
                    client.call("cpu_pool.remove_host_CPU_live", pool0, cpus[number][0])
                    done.append(("removed", pool0, cpus[number][0]))
            client.about["pool"] = name
            ref = client.call("cpu_pool.create", {"name_label": name, "name_description": f"NUMA node {node}",
                                                  "sched_policy": sched, "ncpu": str(len(nodes[node])),
                                                  "proposed_CPUs": [str(n) for n in nodes[node]]})
            done.append(("created", ref, ""))
            _activate(client, ref)
            done.append(("activated", ref, ""))
    except (XenAPIFailure, CliError, KeyboardInterrupt):
        _undo(client, done)
        raise
    print(CPUS_HEADER)
    after = host_cpus(client)
    for _ref, rec in _sorted_pools(client.call("cpu_pool.get_all_records")):
        print(CPUS_ROW % (rec["name_label"], _cpu_list(_numbers(rec["host_CPUs"], after))))
    return 0


def _undo(client: Client, done: list[tuple[str, str, str]]) -> None:
    """Put the host back as it was before a numa-split that failed half-way."""
    steps = {"activated": lambda ref, _cpu: client.call("cpu_pool.deactivate", ref),
             "created": lambda ref, _cpu: client.call("cpu_pool.destroy", ref),
             "removed": lambda ref, cpu: client.call("cpu_pool.add_host_CPU_live", ref, cpu),
             "added": lambda ref, cpu: client.call("cpu_pool.remove_host_CPU_live", ref, cpu)}
    failed = 0
    for what, ref, cpu in reversed(done):
        try:
            steps[what](ref, cpu)
        except (XenAPIFailure, CliError):
            failed += 1
    note("numa-split failed; the pools are as they were before." if not failed else
         f"numa-split failed, and {failed} step(s) could not be undone; see 'xm cpupool-list -c'.")


# -- the table -------------------------------------------------------------------------------

POOL = arg("pool", metavar="POOL", help="CPU pool name (or uuid)")
CPU = arg("cpu", metavar="CPU", help="CPU number (or a list such as 4-7)")

COMMANDS = {
    "cpupool-new": (new, CONFIG_ARGS),
    "cpupool-create": (create, CONFIG_ARGS),
    "cpupool-start": (start, [POOL]),
    "cpupool-destroy": (destroy, [POOL]),
    "cpupool-delete": (delete, [POOL]),
    "cpupool-list": (list_pools, [
        arg("pool", nargs="?", metavar="POOL[,POOL...]", help="only these pools (comma-separated, as the seed's "
                                                                "[poolname,...])"),
        Exclusive([arg("-l", "--long", action="store_true", help="one SXP per pool, all fields"),
                   arg("-c", "--cpus", action="store_true", help="the CPU numbers of each pool"),
                   arg("--json", action="store_true", help="the Xen-API records, as JSON")]),
    ]),
    "cpupool-cpu-add": (cpu_add, [POOL, CPU]),
    "cpupool-cpu-remove": (cpu_remove, [POOL, CPU]),
    "cpupool-migrate": (migrate, [arg("domain", metavar="DOMAIN", help="name, uuid or (running) domain id"), POOL]),
    "cpupool-rename": (rename, [POOL, arg("name", metavar="NEWNAME", help="the new name")]),
    "cpupool-numa-split": (numa_split, []),
}


def _deprecated(old: str, new_name: str):
    """xend 4.1 kept the 4.0-era ``pool-*`` names, saying so on every use."""
    func, arguments = COMMANDS[new_name]

    def command(client: Client, args) -> int:
        print(f"Command {old} is deprecated.  Please use xm {new_name} instead.", file=sys.stderr)
        args.command = new_name  # error sentences go by the command's real name
        return func(client, args)

    command.__doc__ = f"Deprecated: use 'xm {new_name}'.\n\n{inspect.cleandoc(func.__doc__ or '')}"
    return command, arguments


ALIASES = ("new", "create", "start", "list", "destroy", "delete", "cpu-add", "cpu-remove", "migrate")
COMMANDS.update({f"pool-{name}": _deprecated(f"pool-{name}", f"cpupool-{name}") for name in ALIASES})

"""Domain commands: list, new, create, and the lifecycle (start, shutdown, save, migrate, ...)."""

from __future__ import annotations

import urllib.parse

from .. import cpuset
from . import domain_config, tasks
from .args import MIB, Exclusive, UsageError, arg, note
from .client import Client
from .connection import CliError, XenAPIFailure
from .errors import explain
from .sxpout import dumps_json, pretty
from .vms import Domain, find, find_ref, select

BRIEF_HEADER = "%-40s %5s %5s %5s %10s %9s" % ("Name", "ID", "Mem", "VCPUs", "State", "Time(s)")  # noqa: UP031 xend's
BRIEF_ROW = "%-40s %5s %5d %5d %10s %9.1f"
SHUTDOWN_GRACE = 2.0  # seconds ``xm shutdown`` (without -w) waits to report an immediate refusal


# -- list ------------------------------------------------------------------------------------

def list_domains(client: Client, args) -> int:
    """List domains: name, id, memory (MiB), vCPUs, state and time.

    Mem and VCPUs are what a running domain has now, else what it gets at its next start. Time(s)
    is the seconds since the domain started (the server reports no CPU time; 0.0 when halted).
    State: r----- running, --p--- paused, ---s-- suspended, ------ halted, ?????? unknown (in a
    pool, its host is not live).
    """
    if args.pool and args.domains:
        raise UsageError("You may specify either a pool or a particular VM, but not both")
    domains = select(client, args.domains)
    if args.pool:
        domains = [d for d in domains if d.record.get("pool_name") == args.pool]
        if not domains:
            _check_pool(client, args.pool)
    if args.json:
        print(dumps_json([{**d.record, "metrics_record": d.metrics} for d in domains]))
    elif args.long:
        for d in domains:
            print(pretty(long_sxp(d)))
    else:
        print(BRIEF_HEADER)
        for d in domains:
            print(BRIEF_ROW % (d.name, d.domid_text, d.memory_mib, d.vcpus, d.state, d.uptime()))
    return 0


def _check_pool(client: Client, pool: str) -> None:
    """An empty listing is fine for a pool without VMs, not for a pool that does not exist."""
    try:
        refs = client.call("cpu_pool.get_by_name_label", pool)
    except XenAPIFailure as exc:
        if exc.code == "MESSAGE_METHOD_UNKNOWN":  # a server without cpu_pool: every name is possible
            return
        raise
    if not refs:
        raise CliError(f"Pool '{pool}' does not exist.")


def _cpus(params: dict, count: int) -> list[str]:
    """One entry per vCPU: its pin (``cpumap<N>``, as compact ranges) or ``any``."""
    out = []
    for n in range(count):
        text = params.get(f"cpumap{n}") or "any"
        try:
            text = cpuset.format(cpuset.parse(text))
        except cpuset.CpuSetError:
            pass  # "all", or an exclusion alone: shown as stored
        out.append(text)
    return out


def long_sxp(d: Domain) -> list:
    """xm list -l: the effective values first, then the stored definition and the running values apart.

    xend-ext keeps them apart (a --dynamic change leaves the definition alone), so both are shown.
    """
    rec = d.record
    weight, cap = d.sched()
    stored_weight, stored_cap = d.sched(running=False)
    node: list = [
        "domain",
        ["domid", str(d.domid)],
        ["uuid", rec["uuid"]],
        ["name", d.name],
        ["memory", str(d.memory_mib)],
        ["maxmem", str(d.memory_max_mib)],
        ["vcpus", str(d.vcpus)],
        ["cpu_weight", str(weight)],
        ["cpu_cap", str(cap)],
        ["pool_name", rec.get("pool_name", "")],
        ["cpu_pool", rec.get("pool_name") or "Pool-0"],  # seed 000's name for it
        ["state", d.state],
        ["power_state", d.power_state],
        ["cpu_time", f"{d.uptime():.1f}"],
        ["on_poweroff", rec.get("actions_after_shutdown", "")],
        ["on_reboot", rec.get("actions_after_reboot", "")],
        ["on_crash", rec.get("actions_after_crash", "")],
        ["auto_power_on", "1" if rec.get("auto_power_on") else "0"],
        ["order", str(rec.get("order", "0"))],
        ["start_delay", str(rec.get("start_delay", "0"))],
        ["shutdown_delay", str(rec.get("shutdown_delay", "0"))],
        ["kernel", rec.get("PV_kernel", "")],
        ["ramdisk", rec.get("PV_ramdisk", "")],
        ["cmdline", rec.get("PV_args", "")],
        ["stored",
         ["memory", str(int(rec["memory_target"]) // MIB)],
         ["maxmem", str(int(rec["memory_static_max"]) // MIB)],
         ["vcpus", str(rec["VCPUs_at_startup"])],
         ["maxvcpus", str(rec["VCPUs_max"])],
         ["cpu_weight", str(stored_weight)],
         ["cpu_cap", str(stored_cap)],
         ["cpus", *_cpus(rec["VCPUs_params"], int(rec["VCPUs_max"]))]],
    ]
    if d.live and d.metrics:
        live_weight, live_cap = d.sched(running=True)
        vcpus = int(d.metrics["VCPUs_number"])
        node.append(["running",
                     ["memory", str(int(d.metrics["memory_actual"]) // MIB)],
                     ["maxmem", str(d.memory_max_mib)],
                     ["vcpus", str(vcpus)],
                     ["cpu_weight", str(live_weight)],
                     ["cpu_cap", str(live_cap)],
                     ["cpus", *_cpus(d.metrics.get("VCPUs_params", {}), vcpus)]])
    return node


# -- new / create ----------------------------------------------------------------------------

def _record_from_args(args) -> dict:
    values, source = domain_config.load(args.config, args.vars, args.path)
    record = domain_config.to_record(values, source, warn=note)
    note(f'Using config file "{source.path}".')  # errors name the file themselves
    return domain_config.wire_record(record)


def define(client: Client, record: dict) -> str:
    ref = client.call("VM.create", record)
    client.names[ref] = str(record["name_label"])
    wanted = record.get("uuid")
    if wanted:
        got = client.call("VM.get_uuid", ref)
        if got != wanted:
            note(f"Warning: the server gave '{record['name_label']}' the uuid {got}; it does not keep the uuid "
                 f"{wanted} from the config.")
    return ref


def new(client: Client, args) -> int:
    """Define a domain from a config file (it stays halted; start it with 'xm start')."""
    record = _record_from_args(args)
    if args.dryrun:
        print(dumps_json(record))
        return 0
    define(client, record)
    print(f"Domain '{record['name_label']}' defined; start it with 'xm start {record['name_label']}'.")
    return 0


def create(client: Client, args) -> int:
    """Define a domain from a config file and start it.

    The definition stays (as after 'xm new' + 'xm start'): 'xm delete' removes it once halted. If
    the start fails, the definition just made is removed again, so a failed create leaves nothing.
    """
    record = _record_from_args(args)
    if args.dryrun:
        print(dumps_json(record))
        return 0
    ref = define(client, record)
    try:
        tasks.run(client, "VM.start", ref, bool(args.paused), False, label="starting")
    except XenAPIFailure:  # refused (an interrupted start goes on, so its definition stays)
        try:
            client.call("VM.destroy", ref)
        except XenAPIFailure:
            note(f"Note: the definition of '{record['name_label']}' stays; remove it with 'xm delete'.")
        raise
    domid = client.call("VM.get_domid", ref)
    print(f"Started domain {record['name_label']} (id={domid})")
    return 0


CONFIG_ARGS = [
    arg("config", metavar="CFG", help="domain config file: the name as given, else searched in --path"),
    arg("vars", nargs="*", metavar="var=val", help="set or override a config variable (a Python literal or text)"),
    arg("-n", "--dryrun", action="store_true", help="print the VM record that would be sent (JSON) and stop"),
    arg("--path", default=domain_config.DEFAULT_PATH,
        help="colon-separated directories searched for CFG (default %(default)s)"),
]


# -- lifecycle -------------------------------------------------------------------------------

def start(client: Client, args) -> int:
    """Start a halted domain from its stored definition."""
    ref = find_ref(client, args.domain)
    tasks.run(client, "VM.start", ref, bool(args.paused), False, label="starting")
    return 0


def shutdown(client: Client, args) -> int:
    """Ask a running domain (or, with -a, every running domain) to power off.

    Without -w, xm returns once the server has taken the request (refusals are still reported);
    with -w it waits until the domain is halted. -a leaves the control domain (Domain-0) alone.
    """
    if args.all == bool(args.domain):
        raise UsageError("name one domain, or give -a for all of them")
    if args.all:
        return _shutdown_all(client, args.wait)
    ref = find_ref(client, args.domain)
    status, _ = tasks.run(client, "VM.clean_shutdown", ref, label="shutting down",
                          wait=None if args.wait else SHUTDOWN_GRACE)
    if status == "pending":
        note(f"Domain '{args.domain}' is shutting down; 'xm shutdown -w' waits until it is halted.")
    return 0


def _shutdown_all(client: Client, wait: bool) -> int:
    """Every running or paused domain but Domain-0, each asked in turn (one refusal stops none)."""
    failed = 0
    for d in select(client, []):
        if not d.live or d.record.get("is_control_domain"):
            continue
        try:
            status, _ = tasks.run(client, "VM.clean_shutdown", d.ref, label=f"shutting down {d.name}",
                                  wait=None if wait else SHUTDOWN_GRACE)
        except XenAPIFailure as exc:
            note(f"Error: {explain(exc, 'shutdown', client.names, client.about)}")
            failed += 1
            continue
        note(f"Domain '{d.name}' {'is halted' if status != 'pending' else 'is shutting down'}.")
    return 1 if failed else 0


def _direct(method: str, doc: str):
    """A lifecycle command that is one quick call: destroy, delete, pause, unpause."""

    def command(client: Client, args) -> int:
        client.call(method, find_ref(client, args.domain))
        return 0

    command.__doc__ = doc
    return command


destroy = _direct("VM.hard_shutdown", "Stop a domain at once, as pulling the plug (a suspended one loses its "
                                      "saved state).")
delete = _direct("VM.destroy", "Remove a halted domain's definition from the server.")
pause = _direct("VM.pause", "Stop scheduling a running domain (it keeps its memory).")
unpause = _direct("VM.unpause", "Schedule a paused domain again.")


def reboot(client: Client, args) -> int:
    """Restart a running domain; its stored definition applies, as at every start."""
    tasks.run(client, "VM.clean_reboot", find_ref(client, args.domain), label="rebooting")
    return 0


def suspend(client: Client, args) -> int:
    """Suspend a domain to an image the server keeps; 'xm resume' brings it back."""
    tasks.run(client, "VM.suspend", find_ref(client, args.domain), label="suspending")
    return 0


def resume(client: Client, args) -> int:
    """Resume a suspended domain (paused with -p)."""
    tasks.run(client, "VM.resume", find_ref(client, args.domain), bool(args.paused), False, label="resuming")
    return 0


def save(client: Client, args) -> int:
    """Save a domain to FILE in the server's image directory and halt it; 'xm restore FILE' brings
    it back.

    FILE is relative to the server's image directory (xend-ext serve --image-dir), or absolute
    inside it. An existing file is replaced only with -f.
    """
    d = find(client, args.domain, with_metrics=False)
    path = args.file
    tasks.run(client, "VM.save", d.ref, path, bool(args.force), label="saving")
    print(f"Domain '{d.name}' saved to {path} in the server's image directory.")
    return 0


def restore(client: Client, args) -> int:
    """Restore a domain from FILE in the server's image directory (written by 'xm save'), paused
    with -p. FILE is relative to the image directory, or absolute inside it.
    """
    path = args.file
    _, ref = tasks.run(client, "VM.restore", path, bool(args.paused), label="restoring")
    if isinstance(ref, str) and ref.startswith("OpaqueRef:"):
        record = client.call("VM.get_record", ref)
        print(f"Restored domain {record['name_label']} (id={record['domid']}) from {path}.")
    return 0


def _public(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


DEFAULT_PORT = 9363  # xend-ext's Xen-API port, where a destination given without one listens


def destination_url(text: str) -> str:
    """``host``, ``host:port`` or a URL, as the URL of the other server (port 9363 when none is given)."""
    url = text if "://" in text else "http://" + text
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"'{text}' has no valid port; give host:port or http(s)://host:port/") from None
    if port is None and parts.hostname:
        url = urllib.parse.urlunsplit((parts.scheme, f"{parts.netloc}:{DEFAULT_PORT}", parts.path or "/",
                                       parts.query, parts.fragment))
    return url


def migrate(client: Client, args) -> int:
    """Move a running domain to another xend-ext server; it runs there and is gone from here.

    URL is the other server's Xen-API address, http(s)://[user:password@]host[:port]/, or just
    host[:port]; the port is 9363 when none is given.
    """
    url = destination_url(args.destination)
    d = find(client, args.domain, with_metrics=False)
    tasks.run(client, "VM.migrate", d.ref, url, bool(args.live), label="migrating")
    print(f"Domain '{d.name}' migrated to {_public(url)}.")
    return 0


DOMAIN = arg("domain", metavar="DOMAIN", help="name, uuid or (running) domain id")
PAUSED = arg("-p", "--paused", action="store_true", help="leave it paused")

COMMANDS = {
    "list": (list_domains, [
        Exclusive([arg("-l", "--long", action="store_true", help="one SXP per domain, stored and running values"),
                   arg("--json", action="store_true", help="the Xen-API records (VM + metrics_record), as JSON")]),
        arg("--pool", metavar="POOL", help="only the domains of this CPU pool"),
        arg("domains", nargs="*", metavar="DOMAIN", help="name, uuid or (running) domain id; default all"),
    ]),
    "new": (new, CONFIG_ARGS),
    "create": (create, [*CONFIG_ARGS, PAUSED]),
    "start": (start, [DOMAIN, PAUSED]),
    "shutdown": (shutdown, [arg("domain", metavar="DOMAIN", nargs="?", help="name, uuid or (running) domain id"),
                            arg("-a", "--all", action="store_true", help="every running domain but Domain-0"),
                            arg("-w", "--wait", action="store_true", help="wait until it is (they are) halted")]),
    "destroy": (destroy, [DOMAIN]),
    "delete": (delete, [DOMAIN]),
    "reboot": (reboot, [DOMAIN]),
    "pause": (pause, [DOMAIN]),
    "unpause": (unpause, [DOMAIN]),
    "suspend": (suspend, [DOMAIN]),
    "resume": (resume, [DOMAIN, PAUSED]),
    "save": (save, [DOMAIN, arg("file", metavar="FILE", help="path in the server's image directory"),
                    arg("-f", "--force", action="store_true", help="replace an existing file")]),
    "restore": (restore, [arg("file", metavar="FILE", help="path in the server's image directory"), PAUSED]),
    "migrate": (migrate, [DOMAIN, arg("destination", metavar="URL", help="http(s)://[user:password@]host[:port]/ "
                                      "of the other xend-ext server (port 9363 by default)"),
                          arg("-l", "--live", action="store_true", help="keep it running while it is copied")]),
}

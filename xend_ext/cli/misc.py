"""The smaller xend commands: uptime, domid, domname, rename, reset, top, log, dmesg and console.

``top`` has a batch form for scripts and tests (``xm top -b -n 1``: one table, no screen control)
and an interactive one (the table redrawn every few seconds until Ctrl-C). ``dmesg`` and
``console`` say what the server's backend offers instead, since Xen-API carries neither.
"""

from __future__ import annotations

import argparse
import sys
import time

from . import tasks
from .args import arg, note
from .client import Client
from .connection import CliError
from .sxpout import dumps_json, jsonable
from .vms import Domain, find, find_ref, select

DOMAIN = arg("domain", metavar="DOMAIN", help="name, uuid or (running) domain id")
DOMAINS = arg("domains", nargs="*", metavar="DOMAIN", help="name, uuid or (running) domain id; default all")
JSON = arg("--json", action="store_true", help="the same rows as JSON")
UPTIME_HEADER = "%-33s %4s %s" % ("Name", "ID", "Uptime")  # noqa: UP031 xend's format
TOP_HEADER = "%-24s %5s %8s %7s %8s %6s %10s  %s" % (  # noqa: UP031 xentop's columns
    "NAME", "ID", "STATE", "CPU(%)", "MEM(MiB)", "VCPUS", "UPTIME(s)", "POOL")


def _duration(seconds: float) -> str:
    """xm uptime's ``[N days, ]H:MM:SS``."""
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:d}:{minutes:02d}:{secs:02d}"
    return f"{days} day{'s' if days != 1 else ''}, {clock}" if days else clock


def uptime(client: Client, args) -> int:
    """Show how long each running domain has been up (halted ones are left out)."""
    running = [d for d in select(client, args.domains) if d.live]
    if args.json:
        print(dumps_json([{"name": d.name, "domid": d.domid, "uptime_seconds": round(d.uptime(), 1)}
                          for d in running]))
        return 0
    if args.short:
        for d in running:
            print(f"{d.name} up {_duration(d.uptime())}")
        return 0
    print(UPTIME_HEADER)
    for d in running:
        print("%-33s %4s %s" % (d.name, d.domid_text, _duration(d.uptime())))  # noqa: UP031
    return 0


def domid(client: Client, args) -> int:
    """Print a domain's id (the domain must run: a halted one has none)."""
    d = find(client, args.domain, with_metrics=False)
    if d.domid < 0:
        raise CliError(f"Domain '{d.name}' is {d.power_state.lower()}: it has no domain id until it starts.")
    print(d.domid)
    return 0


def domname(client: Client, args) -> int:
    """Print the name of the domain with this id (or uuid)."""
    print(find(client, args.domain, with_metrics=False).name)
    return 0


def rename(client: Client, args) -> int:
    """Give a domain a new name (running or not)."""
    ref = find_ref(client, args.domain)
    client.call("VM.set_name_label", ref, args.name)
    return 0


def reset(client: Client, args) -> int:
    """Restart a running domain at once, as pressing its reset button (no clean shutdown)."""
    tasks.run(client, "VM.hard_reboot", find_ref(client, args.domain), label="resetting")
    return 0


def _cpu_percent(d: Domain) -> float:
    """The domain's CPU use as xentop counts it: 100 per pCPU's worth (the vCPUs' shares summed)."""
    if not d.live or not d.metrics:
        return 0.0
    use = d.metrics.get("VCPUs_utilisation", {}) or {}
    return 100.0 * sum(float(v) for v in use.values())


def _top_rows(client: Client, names: list[str]) -> list[dict]:
    return [{"name": d.name, "domid": d.domid, "state": d.state, "cpu_percent": round(_cpu_percent(d), 1),
             "memory_mib": d.memory_mib, "vcpus": d.vcpus, "uptime_seconds": round(d.uptime(), 1),
             "pool": d.record.get("pool_name", "") or "Pool-0"} for d in select(client, names)]


def _top_table(rows: list[dict]) -> str:
    lines = [TOP_HEADER]
    for r in rows:
        lines.append("%-24s %5s %8s %7.1f %8d %6d %10.1f  %s" % (  # noqa: UP031
            r["name"], r["domid"] if r["domid"] >= 0 else "", r["state"], r["cpu_percent"], r["memory_mib"],
            r["vcpus"], r["uptime_seconds"], r["pool"]))
    return "\n".join(lines)


def top(client: Client, args) -> int:
    """Show the domains' CPU, memory and vCPUs, refreshed every few seconds (Ctrl-C stops).

    -b (batch) prints plain tables one after another, for scripts and logs; -n N stops after N
    tables. CPU(%) is 100 per pCPU's worth of the scheduler's share (the simulated host's
    utilisation; backends that report none show 0).
    """
    interactive = not args.batch and sys.stdout.isatty()
    shown = 0
    try:
        while args.iterations is None or shown < args.iterations:
            if shown:
                time.sleep(args.delay)
            rows = _top_rows(client, args.domains)
            if args.json:
                print(dumps_json(rows), flush=True)
            elif interactive:
                sys.stdout.write("\x1b[H\x1b[2J" + time.strftime("xm top - %H:%M:%S") + "  (Ctrl-C quits)\n\n"
                                 + _top_table(rows) + "\n")
                sys.stdout.flush()
            else:
                print(_top_table(rows) + ("\n" if args.iterations != 1 else ""), flush=True)
            shown += 1
    except KeyboardInterrupt:
        return 0
    return 0


def log(client: Client, args) -> int:
    """Show the operations the server still keeps as tasks: when, what, and how each ended.

    xm forgets its own tasks once they end; those of other clients stay until they are destroyed.
    The server's own log and its audit log of every change are files on the server host (said on
    stderr).
    """
    note("The server's log is on its host (journalctl -u xend-ext, or the stderr of 'xend-ext serve'); "
         "its audit log of every change is <state dir>/audit.log there (--audit-log).")
    records = client.call("task.get_all_records")
    rows = sorted(records.values(), key=lambda r: str(r.get("created", "")))
    if args.json:
        print(dumps_json(rows))
        return 0
    for rec in rows:
        outcome = rec.get("status", "")
        if outcome == "failure" and rec.get("error_info"):
            outcome += " " + " ".join(str(x) for x in rec["error_info"][:2])
        print(f"{jsonable(rec.get('created', ''))} {rec.get('name_label', '')} "
              f"{outcome} {rec.get('owner', '') or ''}".rstrip())
    return 0


def _backend(client: Client) -> str:
    host = client.this_host()
    version = client.call("host.get_software_version", host)
    if "libvirt" in version:
        return "libvirt"
    return "sim" if version.get("xen") == "simulated" else "xl"


def dmesg(client: Client, args) -> int:
    """Say where the hypervisor's message buffer is: Xen-API does not carry it."""
    where = {"sim": "the simulated host has none",
             "libvirt": "on the server host, 'journalctl -k' or 'virsh -c URI sysinfo'",
             "xl": "on the server host, 'xl dmesg'"}[_backend(client)]
    raise CliError(f"the server does not pass the hypervisor's message buffer over Xen-API; {where}.")


def console(client: Client, args) -> int:
    """Say how to reach a domain's console: Xen-API (and so xend-ext) does not carry it."""
    d = find(client, args.domain, with_metrics=False)
    where = {"sim": "the simulated host runs no guest, so there is no console to attach to",
             "libvirt": f"on the server host, 'virsh console {d.record['uuid']}'",
             "xl": f"on the server host, 'xl console {d.domid if d.domid >= 0 else d.name}'"}[_backend(client)]
    raise CliError(f"xend-ext does not carry consoles over Xen-API; {where}.")


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError("it must be more than 0")
        return value

    return parse


COMMANDS = {
    "uptime": (uptime, [DOMAINS, arg("-s", "--short", action="store_true", help="one 'NAME up TIME' line each"),
                        JSON]),
    "domid": (domid, [DOMAIN]),
    "domname": (domname, [DOMAIN]),
    "rename": (rename, [DOMAIN, arg("name", metavar="NEWNAME", help="the new name")]),
    "reset": (reset, [DOMAIN]),
    "top": (top, [
        DOMAINS,
        arg("-b", "--batch", action="store_true", help="plain tables one after another (no screen control)"),
        arg("-n", "--iterations", type=_positive(int), metavar="N", help="stop after N tables"),
        arg("-d", "--delay", type=_positive(float), default=3.0, metavar="SECONDS",
            help="seconds between tables (default %(default)s)"),
        JSON,
    ]),
    "log": (log, [JSON]),
    "dmesg": (dmesg, []),
    "console": (console, [DOMAIN]),
}

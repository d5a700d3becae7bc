"""``xm``: the command-line client of xend-ext, over Xen-API (XML-RPC), local or remote."""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from pathlib import Path

from .. import __version__
from . import alloc, cpupool, domain, events, groups, host, hosts, misc, sched, sdom
from .args import Exclusive, UsageError, arg, flush_notes
from .client import Client
from .connection import CliError, XenAPIFailure, catch_interrupts, default_url, forget_interrupt, read_conf
from .errors import explain

GROUPS = (host, domain, misc, sched, alloc, cpupool, sdom, groups, events, hosts)


def describe(func) -> tuple[str, str]:
    """(one-line help, description) from the command's docstring: command docstrings are written
    for the user, so ``xm CMD --help`` and the code say the same thing."""
    doc = inspect.cleandoc(func.__doc__ or "")
    return (doc.splitlines()[0] if doc else ""), doc


GLOBAL_OPTIONS = [
    arg("--url", help="http(s)://host:port/ or a Unix socket path (default $XM_URL, ~/.xm.conf, then the "
        "server's default socket: /run/xend-ext/xen-api.sock for root, $XDG_RUNTIME_DIR/xend-ext/xen-api.sock "
        "for others, <dir>/xen-api.sock with $XEND_EXT_STATE=<dir>)"),
    arg("-u", "--user", help="user name (default $XM_USER or root)"),
    arg("-p", "--password", help="password (default $XM_PASSWORD or empty)"),
    arg("-k", "--insecure", action="store_true", help="do not verify the server's certificate"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xm", description="Manage a xend-ext server.")
    parser.add_argument("--version", action="version", version=f"xm (xend-ext) {__version__}")
    for flags, options in GLOBAL_OPTIONS:
        parser.add_argument(*flags, **options)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        for name, (func, arguments) in group.COMMANDS.items():
            summary, description = describe(func)
            cmd = sub.add_parser(name, help=summary, description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
            for spec in arguments:
                if isinstance(spec, Exclusive):
                    exclusive = cmd.add_mutually_exclusive_group()
                    for flags, options in spec:
                        exclusive.add_argument(*flags, **options)
                else:
                    flags, options = spec
                    cmd.add_argument(*flags, **options)
            cmd.set_defaults(func=func, subparser=cmd)
    return parser


NAMED_BY_FIRST_PARAM = ("VM_BAD_POWER_STATE", "VM_MIGRATE_FAILED", "SCHED_DOMAIN_POOL_MISMATCH")


def _learn_name(client: Client, failure: XenAPIFailure) -> None:
    """An error about a VM the command did not look up by name (xm restore): ask for its name."""
    if failure.code not in NAMED_BY_FIRST_PARAM or not failure.params or failure.params[0] in client.names:
        return
    try:
        client.names[failure.params[0]] = client.call("VM.get_name_label", failure.params[0])
    except (XenAPIFailure, CliError):
        pass  # the sentence names the reference instead


def _learn_pool(client: Client, failure: XenAPIFailure) -> None:
    """A pool error from starting a domain (``POOL_BAD_STATE [deactivated]``, ``INSUFFICIENT_CPUS``)
    names no pool: ask the domain's."""
    if failure.code not in ("POOL_BAD_STATE", "INSUFFICIENT_CPUS") or "pool" in client.about:
        return
    vms = {ref for ref in client.names if ref.startswith("OpaqueRef:")}
    if len(vms) != 1:
        return
    (ref,) = vms
    try:
        client.about["pool"] = client.call("VM.get_pool_name", ref) or "Pool-0"
    except (XenAPIFailure, CliError):
        return  # the domain is gone (a failed create removes it): the sentence says "the domain's pool"
    client.about["domain"] = client.names[ref]


def main(argv: list[str] | None = None) -> int:
    """Run one command. Output cut short by its reader (``xm list | head -1``) ends the command
    quietly with 141, the status of a process SIGPIPE ended, as other Unix tools do."""
    try:
        return _run(argv)
    except BrokenPipeError:
        _discard_output()
        return 141


def _discard_output() -> None:
    """Point stdout and stderr at /dev/null, so the interpreter's last flush finds no closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError):
            pass
    os.close(devnull)


def _run(argv: list[str] | None) -> int:
    catch_interrupts()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # var=val after an option (xm create web.cfg -p memory=512): argparse leaves them over
        if hasattr(args, "vars") and all("=" in item and not item.startswith("-") for item in extra):
            args.vars = [*args.vars, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    conf = read_conf(Path(os.environ.get("XM_CONF", Path.home() / ".xm.conf")))
    url = args.url or os.environ.get("XM_URL") or conf.get("url") or default_url()
    user = args.user or os.environ.get("XM_USER") or conf.get("user") or "root"
    password = args.password or os.environ.get("XM_PASSWORD") or conf.get("password") or ""
    client = Client(url, user, password, insecure=args.insecure)
    try:
        try:
            status = args.func(client, args)
            flush_notes(status == 0)
            sys.stdout.flush()  # a closed pipe shows here, while the session can still be closed
            return status
        finally:
            forget_interrupt()  # a Ctrl-C the command answered: logging out is still wanted
            client.close()
    except UsageError as exc:
        args.subparser.error(str(exc))  # exits 2, as argparse does for what it catches itself
    except XenAPIFailure as exc:
        _learn_name(client, exc)
        _learn_pool(client, exc)
        print(f"Error: {explain(exc, args.command, client.names, client.about)}", file=sys.stderr)
    except CliError as exc:
        print(f"Error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())

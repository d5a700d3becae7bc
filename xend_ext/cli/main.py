"""``xm``: the command-line client of xend-ext, over Xen-API (XML-RPC), local or remote."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import host
from .connection import CliError, Connection, XenAPIFailure, default_url, read_conf
from .errors import explain

GROUPS = (host,)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xm", description="Manage a xend-ext server.")
    parser.add_argument("--url", help="http(s)://host:port/ or a Unix socket path "
                        "(default $XM_URL, ~/.xm.conf, then ./var/state/xen-api.sock)")
    parser.add_argument("-u", "--user", help="user name (default $XM_USER or root)")
    parser.add_argument("-p", "--password", help="password (default $XM_PASSWORD or empty)")
    parser.add_argument("-k", "--insecure", action="store_true", help="do not verify the server's certificate")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        for name, (func, arguments) in group.COMMANDS.items():
            cmd = sub.add_parser(name, help=(func.__doc__ or "").strip().splitlines()[0])
            for flags, options in arguments:
                cmd.add_argument(*flags, **options)
            cmd.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    conf = read_conf(Path(os.environ.get("XM_CONF", Path.home() / ".xm.conf")))
    url = args.url or os.environ.get("XM_URL") or conf.get("url") or default_url()
    user = args.user or os.environ.get("XM_USER") or conf.get("user") or "root"
    password = args.password or os.environ.get("XM_PASSWORD") or conf.get("password") or ""
    try:
        conn = Connection(url, user, password, insecure=args.insecure)
        try:
            return args.func(conn, args)
        finally:
            conn.close()
    except XenAPIFailure as exc:
        print(f"Error: {explain(exc)}", file=sys.stderr)
        return 1
    except CliError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""``xend-ext``: the server command (``serve``), its password tool (``passwd``) and ``fsck``.

Every refusal to start is one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from pathlib import Path

from . import __version__, paths, settings
from .auth import AuthError, set_password
from .datamodel import ROLES


def default_state_dir() -> Path:
    return paths.default_state_dir()


# The HTTP layer's connection limits and deadlines: Config field (and flag), type, default, help.
CONNECTION_FLAGS = [
    ("first_byte_timeout", float, 10.0, "seconds a new connection may wait before its first request starts"),
    ("idle_timeout", float, 300.0, "seconds a keep-alive connection may stay idle between requests"),
    ("max_connections", int, 1000, "connections per TCP listener"),
    ("max_per_peer", int, 100, "connections per TCP listener from one address, an IPv6 /64"),
    ("unix_connections", int, 64, "connections on the Unix socket, counted apart from TCP"),
    ("max_pipelined", int, 32, "requests a connection may have waiting for their answer"),
]


class _Parser(argparse.ArgumentParser):
    """Bad flags are one line (no usage block): the same shape as every other refusal."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="xend-ext", description="A Xen-API server with CPU pools, VM groups, "
                     "scheduling domains and a runtime policy manager.")
    parser.add_argument("--version", action="version", version=f"xend-ext {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = sub.add_parser("serve", help="run the server")
    parser.serve_parser = serve  # its flags are the settings a --config file may hold
    serve.add_argument("--config", type=Path, metavar="FILE",
                       help="settings file (TOML, keys named as these flags; flags given here override it; "
                       "default $XEND_EXT_CONFIG; see contrib/xend-ext.toml)")
    serve.add_argument("--state-dir", type=Path, default=None,
                       help="where the store lives (default $XEND_EXT_STATE, else /var/lib/xend-ext for root, "
                       "$XDG_STATE_HOME/xend-ext for others)")
    serve.add_argument("--listen", action="append", metavar="HOST:PORT",
                       help="TCP listener, repeatable; 'none' disables TCP (default 127.0.0.1:9363)")
    serve.add_argument("--unix", metavar="PATH",
                       help="Unix socket; 'none' disables it (default <state dir>/xen-api.sock when --state-dir or "
                       "$XEND_EXT_STATE is given, else /run/xend-ext/xen-api.sock for root, "
                       "$XDG_RUNTIME_DIR/xend-ext/xen-api.sock for others)")
    serve.add_argument("--backend", choices=["sim", "libvirt", "xl"], default="sim",
                       help="hypervisor backend: the simulated host, libvirt, or Xen's xl (default sim)")
    serve.add_argument("--libvirt-uri", metavar="URI",
                       help="libvirt connection for --backend libvirt, e.g. qemu:///system or xen:///system")
    serve.add_argument("--libvirt-domain-type", choices=["kvm", "qemu"], default="kvm",
                       help="the <domain type> of domains defined anew on a QEMU host: kvm (hardware "
                       "virtualisation) or qemu (TCG emulation, where /dev/kvm cannot run guests); default kvm")
    serve.add_argument("--libvirt-migrate-uri", default="", metavar="URI",
                       help="the libvirt URI other hosts' libvirtds reach this host's by (e.g. "
                       "qemu+tls://HOST/system): with it, VM.migrate live=true between two servers that both have "
                       "one is libvirt's own peer-to-peer live migration (QEMU driver only); else save-based")
    serve.add_argument("--libvirt-migrate-address", default="", metavar="ADDRESS",
                       help="the address QEMU's migration stream comes to on this host (QEMU listens there only); "
                       "default: libvirt's choice (qemu.conf migration_host, else the host name)")
    serve.add_argument("--xl-path", default="xl", metavar="PATH", help="the xl command for --backend xl")
    serve.add_argument("--xl-poll", type=float, default=2.0, metavar="SECONDS",
                       help="how often --backend xl looks for changes made outside xend-ext (default 2)")
    serve.add_argument("--cpus", type=int, default=8, help="pCPUs of the simulated host (default 8)")
    serve.add_argument("--memory", type=int, default=16384, metavar="MIB",
                       help="RAM of the simulated host in MiB (default 16384)")
    serve.add_argument("--numa-nodes", type=int, default=1, help="NUMA nodes of the simulated host")
    serve.add_argument("--sim-reboot", action="store_true",
                       help="model a reboot of the simulated host before starting")
    serve.add_argument("--sim-image-bytes", type=int, default=1, metavar="N",
                       help="bytes of a simulated saved image per MiB of guest memory (default 1; 1048576: "
                            "images as large as the guest)")
    serve.add_argument("--auth", choices=["none", "file"], default="none",
                       help="none: anyone is pool-admin; file: users of the password file")
    serve.add_argument("--insecure-no-auth", action="store_true",
                       help="allow --auth none on a listener that is not loopback (warned at every start)")
    serve.add_argument("--passwd-file", type=Path, help="password file (default <state dir>/passwd)")
    serve.add_argument("--tls-cert", type=Path, help="certificate (PEM): TCP listeners serve HTTPS")
    serve.add_argument("--tls-key", type=Path, help="private key (PEM) of --tls-cert")
    serve.add_argument("--max-body", type=int, default=16 << 20, help="largest request body in bytes")
    serve.add_argument("--read-timeout", type=float, default=30.0,
                       help="seconds a client may take to send one request, or to take a reply it "
                       "stopped reading (default 30)")
    for name, kind, default, text in CONNECTION_FLAGS:
        serve.add_argument("--" + name.replace("_", "-"), type=kind, default=default, metavar="S" if kind is float
                           else "N", help=f"{text} (default {default:g})")
    serve.add_argument("--event-queue", type=int, default=10_000,
                       help="events queued per event.register session before EVENTS_LOST (default 10000)")
    serve.add_argument("--image-dir", type=Path, default=None, metavar="DIR",
                       help="where VM.save, VM.restore and group save/restore read and write image files; "
                            "paths outside it are refused (default <state dir>/images)")
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                       type=str.upper, help="the least severe log lines written (default INFO)")
    serve.add_argument("--audit-log", metavar="PATH",
                       help="file of the audit log: one line per change and per failed login (default <state "
                       "dir>/audit.log); 'none' writes those lines to the main log instead")
    serve.add_argument("--cluster", metavar="ENDPOINTS",
                       help="join a pool of hosts whose state is in etcd v3: its client endpoints, "
                            "HOST:PORT,... (IPv4 addresses when more than one); default: this host alone")
    serve.add_argument("--cluster-prefix", default="/xend-ext/", metavar="PREFIX",
                       help="the etcd key prefix of the pool's state (default /xend-ext/)")
    serve.add_argument("--cluster-address", metavar="URL",
                       help="the Xen-API URL the other hosts of the pool reach this one at, published as "
                            "host.address (default: the first --listen address)")
    serve.add_argument("--cluster-lease", type=int, default=5, metavar="SECONDS",
                       help="this host's etcd lease: the pool shows it not live that long after its server "
                            "stops renewing it (killed, frozen, cut from etcd); renewed every third (default 5)")
    serve.add_argument("--verify-state", action="store_true",
                       help="validate the snapshot against the state schema as it loads (it always is when "
                            "written, and when loaded after an upgrade)")

    pw = sub.add_parser("passwd", help="add a user or change a password or role (auth 'file')")
    pw.add_argument("user")
    pw.add_argument("--role", choices=ROLES, default="read-only")
    pw.add_argument("--state-dir", type=Path, default=None)
    pw.add_argument("--passwd-file", type=Path, help="default <state dir>/passwd")
    pw.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    fsck = sub.add_parser("fsck", help="check a stopped server's state directory (checksums, schema, "
                          "every record); --repair keeps everything before any damage")
    fsck.add_argument("--state-dir", type=Path, default=None)
    fsck.add_argument("--repair", action="store_true",
                      help="cut the state at the first damage (the damaged file is copied aside first)")
    sub.add_parser("schema", help="print the RelaxNG schema of the state file (schemas/state.rng)")
    sub.add_parser("describe", help="print the API as JSON: classes, fields, messages (schemas/xenapi.json)")
    return parser


def schema(args: argparse.Namespace) -> int:
    from xenapi_classes import build_registry

    from .store.schema import relaxng

    sys.stdout.write(relaxng(build_registry().description()))
    return 0


def describe(args: argparse.Namespace) -> int:
    import json

    from xenapi_classes import build_registry

    from .datamodel import describe as describe_api

    sys.stdout.write(json.dumps(describe_api(build_registry()), indent=1, sort_keys=True) + "\n")
    return 0


def _config(args: argparse.Namespace):
    from .server import Config, parse_listen

    state_dir = (args.state_dir or default_state_dir()).absolute()
    explicit_state = args.state_dir is not None or bool(os.environ.get("XEND_EXT_STATE"))
    listen_args = args.listen or ["127.0.0.1:9363"]
    listen = [] if listen_args == ["none"] else [parse_listen(x) for x in listen_args if x != "none"]
    if args.unix == "none":
        unix = None
    else:
        default_socket = state_dir / paths.SOCKET if explicit_state else paths.default_socket()
        unix = Path(args.unix).absolute() if args.unix else default_socket
    connections = {name: getattr(args, name) for name, *_ in CONNECTION_FLAGS}
    for name, value in connections.items():
        if value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be more than 0")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    return Config(state_dir=state_dir, listen=listen, unix=unix, backend=args.backend, cpus=args.cpus,
                  libvirt_uri=args.libvirt_uri, libvirt_domain_type=args.libvirt_domain_type,
                  libvirt_migrate_uri=args.libvirt_migrate_uri, libvirt_migrate_address=args.libvirt_migrate_address,
                  xl_path=args.xl_path, xl_poll=args.xl_poll,
                  memory_mib=args.memory, numa_nodes=args.numa_nodes, sim_reboot=args.sim_reboot,
                  sim_image_bytes=args.sim_image_bytes,
                  auth=args.auth, passwd_file=args.passwd_file, tls_cert=args.tls_cert, tls_key=args.tls_key,
                  max_body=args.max_body, read_timeout=args.read_timeout, event_queue=args.event_queue,
                  image_dir=(args.image_dir or state_dir / "images").absolute(),
                  insecure_no_auth=args.insecure_no_auth, verify_state=args.verify_state,
                  cluster=_cluster(args.cluster), cluster_prefix=args.cluster_prefix,
                  cluster_address=args.cluster_address,
                  cluster_lease=_lease(args.cluster_lease),
                  audit_log=None if args.audit_log == "none" else Path(args.audit_log or state_dir / "audit.log")
                  .absolute(), **connections)


def _cluster(endpoints: str | None) -> str | None:
    """``--cluster``, checked before anything starts (ValueError: one line)."""
    if endpoints:
        try:
            from .cluster import parse_endpoints
        except ImportError as exc:
            raise ValueError(f"--cluster needs the etcd client ({exc}): pip install 'xend-ext[cluster]'") from None
        parse_endpoints(endpoints)
    return endpoints or None


def _lease(seconds: int) -> int:
    if seconds < 1:
        raise ValueError("--cluster-lease must be at least 1 second (etcd rounds it up to its own minimum)")
    return seconds


class CannotStart(Exception):
    """A refusal to start, said in one line by :func:`serve`."""


async def _serve(config) -> int:
    from .backends.base import BackendError
    from .server import Server
    from .store import StoreError

    server = Server(config)
    try:
        await server.start()
    except (StoreError, BackendError) as exc:  # the lock held, damaged state, no hypervisor...
        raise CannotStart(str(exc)) from None
    settings.notify_ready(", ".join(server.addresses))
    await server.serve_forever()
    return 0


def run_loop(coro) -> int:
    """uvloop where it is installed: libuv's loop halves the per-request cost of asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def serve(args: argparse.Namespace) -> int:
    settings.setup_logging(args.log_level)
    try:
        config = _config(args)
        config.state_dir.mkdir(parents=True, exist_ok=True)
        return run_loop(_serve(config))
    except (CannotStart, ValueError, OSError) as exc:
        print(f"xend-ext: cannot start: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def fsck(args: argparse.Namespace) -> int:
    from xenapi_classes import build_registry

    from .store import StoreError
    from .store.fsck import fsck as check

    state_dir = (args.state_dir or default_state_dir()).absolute()
    try:
        return check(state_dir, build_registry().description(), repair=args.repair)
    except (StoreError, OSError) as exc:
        print(f"xend-ext fsck: {_one_line(exc)}", file=sys.stderr)
        return 2


def passwd(args: argparse.Namespace) -> int:
    path = args.passwd_file or (args.state_dir or default_state_dir()) / "passwd"
    if args.password_stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"New password for {args.user}: ")
        if getpass.getpass("Again: ") != password:
            print("xend-ext: the passwords differ; nothing changed", file=sys.stderr)
            return 1
    try:
        set_password(Path(path), args.user, password, args.role)
    except AuthError as exc:
        print(f"xend-ext: {exc}", file=sys.stderr)
        return 1
    print(f"{args.user} is now {args.role} in {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        try:
            settings.apply_file(args, parser.serve_parser, sys.argv[1:] if argv is None else argv)
        except settings.SettingsError as exc:
            print(f"xend-ext: cannot start: {exc}", file=sys.stderr)
            return 2
    commands = {"serve": serve, "passwd": passwd, "fsck": fsck, "schema": schema, "describe": describe}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())

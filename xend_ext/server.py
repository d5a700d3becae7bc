"""The server: state, backend and listeners on one asyncio loop.

Start-up order matters: lock and load the store, bind the model, ask the backend what the host
is, let the class modules reconcile (``registry.on_start``), make that durable, and only then
listen. Shutdown stops listening, finishes the journal and writes a final snapshot.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import gc
import importlib
import inspect
import ipaddress
import logging
import os
import resource
import signal
import socket
import ssl
import stat
import threading
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import forward, hosts, jsonrpc, migration, observe, wire
from .auth import FileAuth, NoAuth
from .dispatch import Context, Dispatcher, Services
from .events import EventHub
from .http import Gate, HttpProtocol, Limits, Request, sweep
from .model import Change, Database, current_change
from .store import Store, WriteRefused

log = logging.getLogger("xend_ext")

PARSE_IN_THREAD = 256 << 10  # bodies larger than this are parsed off the loop
XML_RPC_PATHS = frozenset(("/", "/RPC2"))
# Connections the kernel queues before we accept them: with asyncio's 100, a burst of connects
# overflowed it and a newcomer's SYN waited a second for its retransmission.
BACKLOG = 1024
Response = tuple[int, str, bytes]


@dataclass
class Config:
    state_dir: Path
    listen: list[tuple[str, int]] = field(default_factory=lambda: [("127.0.0.1", 9363)])
    unix: Path | None = None
    backend: str = "sim"
    libvirt_uri: str | None = None
    libvirt_domain_type: str = "kvm"
    libvirt_migrate_uri: str = ""  # the URI other hosts' libvirtds reach ours by (live migration)
    libvirt_migrate_address: str = ""  # where QEMU's migration stream comes to ("" = libvirt's choice)
    xl_path: str = "xl"
    xl_poll: float = 2.0
    cpus: int = 8
    memory_mib: int = 16384
    numa_nodes: int = 1
    sim_reboot: bool = False
    sim_image_bytes: int = 1  # per MiB of guest memory in the simulated host's saved images
    auth: str = "none"
    passwd_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_body: int = 16 << 20
    max_depth: int = 64
    read_timeout: float = 30.0
    first_byte_timeout: float = 10.0
    idle_timeout: float = 300.0
    max_connections: int = 1000  # per TCP listener
    max_per_peer: int = 100  # per TCP listener and peer address
    unix_connections: int = 64  # the Unix socket's own room, whatever TCP clients do
    max_pipelined: int = 32
    insecure_no_auth: bool = False
    event_queue: int = 10_000
    compact_min_bytes: int = 4 << 20
    image_dir: Path | None = None  # VM.save/restore files live here (None: <state dir>/images)
    verify_state: bool = False  # validate the snapshot against the schema on load too
    audit_log: Path | None = None  # one line per change and failed login (None: into the main log)
    cluster: str | None = None  # etcd endpoints of the pool (xend_ext.cluster); None: the embedded store
    cluster_prefix: str = "/xend-ext/"
    cluster_address: str | None = None  # the Xen-API URL other hosts of the pool reach this one at
    cluster_lease: int = 5  # seconds of this host's etcd lease: not live that long after it stops renewing


def make_backend(config: Config):
    if config.backend == "sim":
        from .backends.sim import SimBackend

        return SimBackend(config.state_dir, cpus=config.cpus, memory_mib=config.memory_mib,
                          numa_nodes=config.numa_nodes, reboot=config.sim_reboot,
                          image_bytes_per_mib=config.sim_image_bytes)
    if config.backend == "libvirt":
        if not config.libvirt_uri:
            raise ValueError("--backend libvirt needs --libvirt-uri (e.g. qemu:///system or xen:///system)")
        from .backends.libvirt import LibvirtBackend

        return LibvirtBackend(config.libvirt_uri, config.state_dir, config.libvirt_domain_type,
                              config.libvirt_migrate_uri, config.libvirt_migrate_address)
    if config.backend == "xl":
        from .backends.xl import XlBackend

        return XlBackend(config.xl_path, config.state_dir, poll=config.xl_poll)
    raise ValueError(f"unknown backend {config.backend!r} (this build has: sim, libvirt, xl)")


def wrap_for_tests(backend):
    """Tests only: ``XEND_EXT_TEST_BACKEND_WRAPPER=module:callable`` wraps the backend in a named
    stand-in that injects faults (tests/faultbackend.py). Unset in any real deployment."""
    hook = os.environ.get("XEND_EXT_TEST_BACKEND_WRAPPER")
    if not hook:
        return backend
    module, _, name = hook.partition(":")
    return getattr(importlib.import_module(module), name)(backend)


class Server:
    def __init__(self, config: Config) -> None:
        from xenapi_classes import build_registry

        self.config = config
        self.registry = build_registry()
        if config.cluster:  # a pool: the journal is etcd (xend_ext/cluster)
            from .cluster import ClusterStore

            self.store = ClusterStore(config.cluster, config.cluster_prefix, self.registry.description(),
                                      config.state_dir)
        else:
            self.store = Store(config.state_dir, self.registry.description(),
                               compact_min_bytes=config.compact_min_bytes, verify=config.verify_state)
        self.hub = EventHub(queue_limit=config.event_queue)
        self.db = Database(self.registry, self.store, self.hub)
        self.backend = None
        self.services: Services | None = None
        self.dispatcher: Dispatcher | None = None
        self.listeners: list[asyncio.base_events.Server] = []
        self.gates: list[Gate] = []
        self.limits = Limits(max_body=config.max_body, read_timeout=config.read_timeout,
                             first_byte_timeout=config.first_byte_timeout, idle_timeout=config.idle_timeout,
                             max_pipelined=config.max_pipelined)
        self.stopping = asyncio.Event()
        self.addresses: list[str] = []
        self.observer: observe.Observer | None = None
        self._audit_writer = None
        self.liveness = None  # in a pool: this host's lease (xend_ext.cluster.liveness)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        check_exposure(self.config)
        if threading.current_thread() is threading.main_thread():  # an embedding thread has no signals
            for sig in (signal.SIGTERM, signal.SIGINT):  # before the first "listening" line is logged
                loop.add_signal_handler(sig, self.stopping.set)
        if self.config.cluster:
            await self.store.connect()
        seq = self.db.load_from(self.store)
        try:
            self.db.last_seq = seq
            self.hub.durable_seq = seq
            self.hub.bind(self.db)
            self.store.set_capture(self.db.capture)
            if self.config.cluster:  # other hosts' changes, from etcd's watch, into the model
                self.store.follow(self.db)
            self.backend = wrap_for_tests(make_backend(self.config))
            if self.config.cluster:  # this server's own host of the pool (xend_ext.hosts)
                from .cluster.identity import HostIdentities

                self.db.host_uuid = hosts.identity(self.config.state_dir)
                self.backend = HostIdentities(self.backend, self.db.host_uuid)
            self.db.backend = self.backend
            self.services = Services(self.registry, self.db, self.backend, self.store, self.hub, self.config)
            self.services.auth = self._auth()
            self.dispatcher = Dispatcher(self.services)
            if self.config.cluster:  # calls on another host's objects are made there
                forward.install(self.registry, self.services)
            if self.config.audit_log is not None:
                self._audit_writer = observe.AuditFile(self.config.audit_log)
            self.observer = observe.Observer(self.dispatcher, self.services, self.gates, self._audit_writer)
            ctx = Context(self.services, "start")
            current_change.set(Change(live=True))  # reconciling records what the hypervisor has
            if self.config.cluster:  # this host's lease; its VMs settled before they are reconciled
                from .cluster import ha

                self.liveness = await ha.join(self.services)
            for hook in self.registry.on_start:
                result = hook(ctx)
                if asyncio.iscoroutine(result):
                    await result
            hosts.publish(ctx)
            try:
                await self.services.commit(self.db.last_seq)
            except WriteRefused as exc:  # kept in memory, written when the disk takes writes again
                log.error("%s; serving reads, changes are refused until it can be written", exc)
            current_change.set(None)
            _return_free_memory()
            self._pending_changes: set[tuple[str, str]] = set()
            self.backend.watch(lambda kind, ident: loop.call_soon_threadsafe(self._outside_change, kind, ident))
            await self._listen()
            if self.config.cluster:
                await self._publish_address()
        except BaseException:
            if self.liveness is not None:
                await self.liveness.close()
            await self.store.close()
            raise

    async def _publish_address(self) -> None:
        """The URL the other hosts of the pool reach this one at, in its host record."""
        url = self.config.cluster_address or next((a for a in self.addresses if not a.startswith("unix:")), "")
        url = url.replace("//0.0.0.0:", f"//{socket.getfqdn()}:").replace("//[::]:", f"//{socket.getfqdn()}:")
        host = hosts.this_host(self.db)
        if host is not None:
            self.db.set(host, "address", url)
            await self.services.commit(self.db.last_seq)

    def _outside_change(self, kind: str, ident: str) -> None:
        """The backend saw a change made behind our back; one reconciliation per object at a time."""
        if (kind, ident) not in self._pending_changes:
            self._pending_changes.add((kind, ident))
            asyncio.get_running_loop().create_task(self._reconcile(kind, ident))

    async def _reconcile(self, kind: str, ident: str) -> None:
        self._pending_changes.discard((kind, ident))  # a change arriving from now on needs another look
        current_change.set(Change(live=True))  # this task's records mirror the hypervisor
        ctx = Context(self.services, "backend")
        try:
            for hook in self.registry.on_backend_change:
                result = hook(ctx, kind, ident)
                if asyncio.iscoroutine(result):
                    await result
            await self.services.commit(self.db.last_seq)
        except Exception:  # noqa: BLE001 - one bad report must not stop the server
            log.exception("could not record an outside change of %s %s", kind, ident)

    def _auth(self):
        if self.config.auth == "none":
            return NoAuth()
        if self.config.auth == "file":
            return FileAuth(self.config.passwd_file or self.config.state_dir / "passwd")
        raise ValueError(f"unknown auth {self.config.auth!r}: use none or file")

    def _gate(self, name: str, limit: int, per_peer: int = 0):
        """A listener's own connection limits, and the factory of its connections."""
        gate = Gate(name, limit, per_peer)
        self.gates.append(gate)
        return lambda: HttpProtocol(self.handle, self.limits, gate,
                                    lambda *head: migration.body_sink(self.services, *head))

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        config = self.config
        tcp_limit = _file_room(len(config.listen), config.max_connections, config.unix_connections)
        tls = None
        if self.config.tls_cert:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(str(self.config.tls_cert), str(self.config.tls_key))
        self._sweeper = loop.create_task(sweep(self.gates, self.limits))
        scheme = "https" if tls else "http"
        for host, port in self.config.listen:
            factory = self._gate(f"{host}:{port}", tcp_limit, config.max_per_peer)
            srv = await loop.create_server(factory, host, port, ssl=tls, reuse_address=True, backlog=BACKLOG)
            self.listeners.append(srv)
            bound = srv.sockets[0].getsockname()
            address = f"{scheme}://{_hostport(bound[0], bound[1])}/"
            self.addresses.append(address)
            log.info("listening on %s (Xen-API over %s)", address, "HTTPS" if tls else "HTTP")
        if self.config.unix is not None:
            path = self.config.unix
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _remove_stale_socket(path)
            srv = await loop.create_unix_server(self._gate(str(path), config.unix_connections), str(path),
                                               backlog=BACKLOG)
            os.chmod(path, 0o600)
            self.listeners.append(srv)
            self.addresses.append(f"unix:{path}")
            log.info("listening on unix socket %s (Xen-API over HTTP)", path)

    def handle(self, request: Request) -> Response | Awaitable[Response]:
        """A response, or an awaitable of one when the call has to wait (see Dispatcher.call)."""
        if request.method != "POST" or request.path not in XML_RPC_PATHS:  # the Xen-API's own paths first
            return self._elsewhere(request)
        body = request.body
        if len(body) > PARSE_IN_THREAD:
            return self._handle_large(request)
        try:
            method, params = wire.loads_request(body, self.config.max_depth)
        except wire.BadRequest as exc:
            return 400, "text/plain; charset=utf-8", f"{exc}\n".encode()
        result = self.dispatcher.call(method, params)
        if type(result) is tuple:  # answered at once; raw replies (system.*) are simply not wrapped
            return 200, "text/xml", wire.dumps_response(result[0])
        return self._respond_later(result)

    def _elsewhere(self, request: Request) -> Response | Awaitable[Response]:
        """Every path but XML-RPC's: metrics, the index page, migration imports, JSON-RPC."""
        path, method = request.path, request.method
        if path == "/metrics" and method == "GET":
            return observe.handle_metrics(self.observer)
        if path == "/" and method == "GET":
            return observe.handle_index(self.addresses)
        if path == "/import":
            return migration.finish(request)
        if path == "/jsonrpc":
            return jsonrpc.handle(self.dispatcher, request)
        if path.startswith(forward.PATH) and method == "POST":
            return self._forwarded(request)
        if path not in ("/", "/RPC2"):
            return 404, "text/plain", b"Xen-API is served on POST / and POST /RPC2\n"
        return 405, "text/plain", b"Xen-API needs POST\n"

    async def _forwarded(self, request: Request) -> Response:
        """A call another host of the pool hands over (xend_ext.forward), answered once this server
        has seen the pool as that host had it (its etcd revision, the rest of the path)."""
        revision = request.path.removeprefix(forward.PATH)
        if revision.isdigit() and self.config.cluster:
            await self.store.reached(int(revision))
        result = self.handle(dataclasses.replace(request, path="/"))
        return (await result) if inspect.isawaitable(result) else result

    def _respond(self, result: Any) -> Response | Awaitable[Response]:
        if type(result) is tuple:
            return 200, "text/xml", wire.dumps_response(result[0])
        return self._respond_later(result)

    async def _respond_later(self, pending: Awaitable) -> Response:
        reply, _raw = await pending
        return 200, "text/xml", wire.dumps_response(reply)

    async def _handle_large(self, request: Request) -> Response:
        """Big bodies are parsed off the loop so other clients are not held up."""
        try:
            method, params = await asyncio.get_running_loop().run_in_executor(
                None, wire.loads_request, request.body, self.config.max_depth)
        except wire.BadRequest as exc:
            return 400, "text/plain; charset=utf-8", f"{exc}\n".encode()
        result = self._respond(self.dispatcher.call(method, params))
        return (await result) if inspect.isawaitable(result) else result

    async def serve_forever(self) -> None:
        await self.stopping.wait()
        log.info("stopping: flushing the journal")
        await self.stop()

    async def stop(self) -> None:
        if getattr(self, "_sweeper", None) is not None:
            self._sweeper.cancel()
        for srv in self.listeners:
            srv.close()
        for gate in self.gates:
            for conn in list(gate.connections):
                conn.close()
        if self.liveness is not None:  # given back: the pool sees this host not live at once
            await self.liveness.close()
        await self.store.close()
        if self.backend is not None:
            self.backend.close()
        if self._audit_writer is not None:
            self._audit_writer.close()
        if self.config.unix is not None:
            _remove_stale_socket(self.config.unix)
        log.info("stopped")


def _return_free_memory() -> None:
    """Loading freed the parsed state file and the store's encoded copy of it: give those pages back
    to the system (glibc keeps a freed heap otherwise), so the server's size is its model's. The
    loaded model lives as long as the server: the collector's full passes need not walk it."""
    gc.freeze()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def check_exposure(config: Config) -> None:
    """``--auth none`` makes every client pool-admin: refused on a listener other hosts can reach
    unless the user said they mean it (and then said again at every start)."""
    if config.auth != "none":
        return
    exposed = [_hostport(host, port) for host, port in config.listen if not _loopback(host)]
    if not exposed:
        return
    if not config.insecure_no_auth:
        raise ValueError(f"--auth none on {', '.join(exposed)} would make anyone who can reach it pool-admin; "
                         "use --auth file, listen on a loopback address, or add --insecure-no-auth")
    log.warning("WARNING: --auth none on %s: anyone who can reach it is pool-admin (--insecure-no-auth)",
                ", ".join(exposed))


def _loopback(host: str) -> bool:
    """Whether every address the name stands for is a loopback one."""
    try:
        infos = socket.getaddrinfo(host or None, 0, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE)
    except OSError:
        return False
    return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def _file_room(tcp_listeners: int, tcp_limit: int, unix_limit: int) -> int:
    """Make sure every admitted connection can have its file descriptor: raise the soft limit
    as far as the hard one allows, and lower the TCP listeners' limit to fit what is left."""
    reserve = 256  # the store, the backend, the executor's threads, libvirt
    needed = tcp_listeners * tcp_limit + unix_limit + reserve
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if tcp_listeners and soft != resource.RLIM_INFINITY and soft < needed:
        fitted = max(1, (soft - unix_limit - reserve) // tcp_listeners)
        log.warning("open-file limit %d: at most %d connections per TCP listener (not %d)", soft, fitted, tcp_limit)
        return fitted
    return tcp_limit


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _remove_stale_socket(path: Path) -> None:
    """Only a socket is removed: a typo must never delete a regular file."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen wants HOST:PORT, got {text!r}")
    host = host.strip("[]") or "127.0.0.1"
    socket.getaddrinfo(host, int(port))  # fails early with a clear error for a bad name
    return host, int(port)

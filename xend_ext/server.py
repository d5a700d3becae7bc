"""The server: state, backend and listeners on one asyncio loop.

Start-up order matters: lock and load the store, bind the model, ask the backend what the host
is, let the class modules reconcile (``registry.on_start``), make that durable, and only then
listen. Shutdown stops listening, finishes the journal and writes a final snapshot.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import os
import signal
import socket
import ssl
import stat
import threading
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import wire
from .auth import FileAuth, NoAuth
from .dispatch import Context, Dispatcher, Services
from .events import EventHub
from .http import HttpProtocol, Limits, Request, sweep
from .model import Change, Database, current_change
from .store import Store, WriteRefused

log = logging.getLogger("xend_ext")

PARSE_IN_THREAD = 256 << 10  # bodies larger than this are parsed off the loop
Response = tuple[int, str, bytes]


@dataclass
class Config:
    state_dir: Path
    listen: list[tuple[str, int]] = field(default_factory=lambda: [("127.0.0.1", 9363)])
    unix: Path | None = None
    backend: str = "sim"
    libvirt_uri: str | None = None
    xl_path: str = "xl"
    xl_poll: float = 2.0
    cpus: int = 8
    memory_mib: int = 16384
    numa_nodes: int = 1
    sim_reboot: bool = False
    auth: str = "none"
    passwd_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_body: int = 16 << 20
    max_depth: int = 64
    read_timeout: float = 30.0
    event_queue: int = 10_000
    compact_min_bytes: int = 4 << 20
    verify_state: bool = False  # validate the snapshot against the schema on load too


def make_backend(config: Config):
    if config.backend == "sim":
        from .backends.sim import SimBackend

        return SimBackend(config.state_dir, cpus=config.cpus, memory_mib=config.memory_mib,
                          numa_nodes=config.numa_nodes, reboot=config.sim_reboot)
    if config.backend == "libvirt":
        if not config.libvirt_uri:
            raise ValueError("--backend libvirt needs --libvirt-uri (e.g. qemu:///system or xen:///system)")
        from .backends.libvirt import LibvirtBackend

        return LibvirtBackend(config.libvirt_uri, config.state_dir)
    if config.backend == "xl":
        from .backends.xl import XlBackend

        return XlBackend(config.xl_path, config.state_dir, poll=config.xl_poll)
    raise ValueError(f"unknown backend {config.backend!r} (this build has: sim, libvirt, xl)")


class Server:
    def __init__(self, config: Config) -> None:
        from xenapi_classes import build_registry

        self.config = config
        self.registry = build_registry()
        self.store = Store(config.state_dir, self.registry.description(),
                           compact_min_bytes=config.compact_min_bytes, verify=config.verify_state)
        self.hub = EventHub(queue_limit=config.event_queue)
        self.db = Database(self.registry, self.store, self.hub)
        self.backend = None
        self.services: Services | None = None
        self.dispatcher: Dispatcher | None = None
        self.listeners: list[asyncio.base_events.Server] = []
        self.connections: set[HttpProtocol] = set()
        self.limits = Limits(max_body=config.max_body, read_timeout=config.read_timeout)
        self.stopping = asyncio.Event()
        self.addresses: list[str] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():  # an embedding thread has no signals
            for sig in (signal.SIGTERM, signal.SIGINT):  # before the first "listening" line is logged
                loop.add_signal_handler(sig, self.stopping.set)
        tables, seq = self.store.open()
        try:
            self.db.load(tables)
            self.db.last_seq = seq
            self.hub.durable_seq = seq
            self.hub.bind(self.db)
            self.store.set_capture(self.db.capture)
            self.backend = make_backend(self.config)
            self.db.backend = self.backend
            self.services = Services(self.registry, self.db, self.backend, self.store, self.hub, self.config)
            self.services.auth = self._auth()
            self.dispatcher = Dispatcher(self.services)
            ctx = Context(self.services, "start")
            current_change.set(Change(live=True))  # reconciling records what the hypervisor has
            for hook in self.registry.on_start:
                result = hook(ctx)
                if asyncio.iscoroutine(result):
                    await result
            try:
                await self.services.commit(self.db.last_seq)
            except WriteRefused as exc:  # kept in memory, written when the disk takes writes again
                log.error("%s; serving reads, changes are refused until it can be written", exc)
            current_change.set(None)
            gc.collect()
            gc.freeze()  # the model loaded at start is never rescanned by the cyclic GC (long pauses at 100k)
            self._pending_changes: set[tuple[str, str]] = set()
            self.backend.watch(lambda kind, ident: loop.call_soon_threadsafe(self._outside_change, kind, ident))
            await self._listen()
        except BaseException:
            await self.store.close()
            raise

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

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        factory = lambda: HttpProtocol(self.handle, self.limits, self.connections)  # noqa: E731
        tls = None
        if self.config.tls_cert:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(str(self.config.tls_cert), str(self.config.tls_key))
        self._sweeper = loop.create_task(sweep(self.connections, self.limits))
        scheme = "https" if tls else "http"
        for host, port in self.config.listen:
            srv = await loop.create_server(factory, host, port, ssl=tls, reuse_address=True)
            self.listeners.append(srv)
            bound = srv.sockets[0].getsockname()
            address = f"{scheme}://{_hostport(bound[0], bound[1])}/"
            self.addresses.append(address)
            log.info("listening on %s (Xen-API over %s)", address, "HTTPS" if tls else "HTTP")
        if self.config.unix is not None:
            path = self.config.unix
            _remove_stale_socket(path)
            srv = await loop.create_unix_server(factory, str(path))
            os.chmod(path, 0o600)
            self.listeners.append(srv)
            self.addresses.append(f"unix:{path}")
            log.info("listening on unix socket %s (Xen-API over HTTP)", path)

    def handle(self, request: Request) -> Response | Awaitable[Response]:
        """A response, or an awaitable of one when the call has to wait (see Dispatcher.call)."""
        if request.path not in ("/", "/RPC2"):
            return 404, "text/plain", b"Xen-API is served on POST / and POST /RPC2\n"
        if request.method != "POST":
            return 405, "text/plain", b"Xen-API needs POST\n"
        if len(request.body) > PARSE_IN_THREAD:
            return self._handle_large(request)
        try:
            method, params = wire.loads_request(request.body, self.config.max_depth)
        except wire.BadRequest as exc:
            return 400, "text/plain; charset=utf-8", f"{exc}\n".encode()
        return self._respond(self.dispatcher.call(method, params))

    def _respond(self, result: Any) -> Response | Awaitable[Response]:
        if inspect.isawaitable(result):
            return self._respond_later(result)
        return 200, "text/xml", wire.dumps_response(result[0])  # raw replies are simply not wrapped

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
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        await self.store.close()
        if self.backend is not None:
            self.backend.close()
        if self.config.unix is not None:
            _remove_stale_socket(self.config.unix)
        log.info("stopped")


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

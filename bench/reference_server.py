"""A Xen-API server built the way xend was, as the benchmark's yardstick.

xend-ext claims to be faster than xend; to measure that claim without
resurrecting Python 2 and the whole of xend, this module rebuilds the two
parts of xend that decide its cost per call, and nothing else:

* **Transport.**  xend served Xen-API with ``SimpleXMLRPCServer`` mixed with
  ``SocketServer.ThreadingMixIn``: one new thread per connection, and the
  stock request handler, which speaks HTTP/1.0, so every call pays for a TCP
  connect, a thread start and a close.  We do exactly that here
  (``logRequests=False``, ``allow_none=True``; keep-alive is *not* enabled).
* **Persistence.**  xend's ``XendStateStore`` kept every object in memory and,
  on each mutation, serialised the objects into an XML document (one element
  per object, one child per field, tagged with its type) and wrote it with
  ``open(path, "w")`` -- no fsync, no rename.  We do the same, for the whole
  state (the host and its host_cpu objects) in one file, under one lock, so
  the cost of a write grows with the number of stored objects, as in xend.

Two deliberate departures make the reference *stronger* than xend, so that a
ratio measured against it is, if anything, an underestimate:

* xend built the document with ``xml.dom.minidom``; we use the C-accelerated
  ``xml.etree.ElementTree``, several times faster on large states.
* ``socketserver`` listens with a backlog of 5.  With 16 clients reconnecting
  per call that queue overflows and the kernel drops SYNs, which costs a 1 s
  retransmission and would measure a kernel setting rather than the design.
  The backlog is raised to 128 (``--backlog`` restores xend's 5).

Only the calls the benchmark issues are implemented:
``session.login_with_password``, ``host.get_all``, ``host.get_record`` and
``host.add_to_other_config``.  Results are Xen-API structs
(``{"Status": "Success", "Value": ...}``) and the host record has the same
shape as xend-ext's.  Refs are bare UUIDs, as in xend.

Run: ``python -m bench.reference_server --port P --state FILE --objects N``.
"""

from __future__ import annotations

import argparse
import signal
import socketserver
import sys
import threading
import uuid
import xml.etree.ElementTree as ET
from typing import Any
from xmlrpc.server import SimpleXMLRPCServer

XenApiResult = dict[str, Any]


def _success(value: Any) -> XenApiResult:
    """Wrap a value the way every Xen-API call returns it."""
    return {"Status": "Success", "Value": value}


def _failure(*description: str) -> XenApiResult:
    """Xen-API reports errors in-band, never as XML-RPC faults."""
    return {"Status": "Failure", "ErrorDescription": list(description)}


class ReferenceState:
    """The in-memory objects plus xend-style whole-state XML persistence.

    One lock serialises every call that touches the state, as xend's
    XendAPI did for mutations; reads take it too so they never observe a
    half-applied write.
    """

    def __init__(self, path: str, n_cpus: int) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.sessions: set[str] = set()
        self.host_ref = str(uuid.uuid4())
        # Same fields as xend-ext's host and host_cpu classes (sim backend),
        # so that both servers store, and the reference rewrites, the same data.
        self.cpus: dict[str, dict[str, Any]] = {}
        for number in range(n_cpus):
            ref = str(uuid.uuid4())
            self.cpus[ref] = {
                "uuid": ref,
                "host": self.host_ref,
                "number": str(number),
                "vendor": "GenuineSim",
                "modelname": "Simulated CPU",
                "speed": "2400",
                "numa_node": "0",
                "cpu_pool": [],
                "occupants": [],
                "other_config": {},
            }
        self.host: dict[str, Any] = {
            "uuid": self.host_ref,
            "name_label": "reference",
            "name_description": "",
            "API_version_major": "2",
            "API_version_minor": "0",
            "software_version": {"product_brand": "reference", "xen": "simulated"},
            "cpu_configuration": {
                "nr_cpus": str(n_cpus),
                "nr_nodes": "1",
                "cores_per_socket": str(n_cpus),
                "threads_per_core": "1",
            },
            "sched_policy": "credit",
            "resident_VMs": [],
            "resident_cpu_pools": [],
            "host_CPUs": list(self.cpus),
            "free_cpus": str(n_cpus),
            "memory_total": str(16 << 30),
            "memory_free": str(16 << 30),
            "other_config": {},
        }
        self.save()

    # -- persistence, as XendStateStore did it --------------------------

    def save(self) -> None:
        """Rewrite the whole state file; the caller holds the lock.

        Like xend: build the document from every object, then
        ``open(path, "w")``, write, close -- no fsync, no atomic rename.
        """
        root = ET.Element("xend")
        _object_element(root, "host", self.host)
        for record in self.cpus.values():
            _object_element(root, "host_cpu", record)
        with open(self.path, "w", encoding="utf-8") as stream:
            stream.write('<?xml version="1.0" encoding="utf-8"?>\n')
            ET.ElementTree(root).write(stream, encoding="unicode")

    # -- Xen-API calls ----------------------------------------------------

    def login_with_password(self, username: str, password: str) -> XenApiResult:
        """Accept any credentials: the benchmark measures calls, not auth."""
        del username, password
        session = str(uuid.uuid4())
        with self.lock:
            self.sessions.add(session)
        return _success(session)

    def host_get_all(self, session: str) -> XenApiResult:
        """Return the single host ref."""
        with self.lock:
            if session not in self.sessions:
                return _failure("SESSION_INVALID", session)
            return _success([self.host_ref])

    def host_get_record(self, session: str, ref: str) -> XenApiResult:
        """Return a copy so marshalling runs outside the lock."""
        with self.lock:
            if session not in self.sessions:
                return _failure("SESSION_INVALID", session)
            if ref != self.host_ref:
                return _failure("HANDLE_INVALID", "host", ref)
            record = dict(self.host)
            record["other_config"] = dict(self.host["other_config"])
            record["host_CPUs"] = list(self.host["host_CPUs"])
        return _success(record)

    def host_add_to_other_config(self, session: str, ref: str, key: str, value: str) -> XenApiResult:
        """Mutate, then persist the whole state before replying, like xend."""
        with self.lock:
            if session not in self.sessions:
                return _failure("SESSION_INVALID", session)
            if ref != self.host_ref:
                return _failure("HANDLE_INVALID", "host", ref)
            if key in self.host["other_config"]:
                return _failure("MAP_DUPLICATE_KEY", "host", "other_config", ref, key)
            self.host["other_config"][key] = value
            self.save()
        return _success(None)


def _object_element(parent: ET.Element, cls: str, record: dict[str, Any]) -> None:
    """One object in XendStateStore's layout: typed child per field."""
    obj = ET.SubElement(parent, cls, uuid=record["uuid"])
    for name, value in record.items():
        if name == "uuid":
            continue
        field = ET.SubElement(obj, name)
        if isinstance(value, dict):
            field.set("type", "dict")
            for key, item in value.items():
                ET.SubElement(field, "item", key=key, type="string").text = str(item)
        elif isinstance(value, list):
            field.set("type", "list")
            for item in value:
                ET.SubElement(field, "item", uuid=str(item))
        elif isinstance(value, float):
            field.set("type", "float")
            field.text = repr(value)
        else:
            field.set("type", "string")
            field.text = str(value)


class ReferenceXMLRPCServer(socketserver.ThreadingMixIn, SimpleXMLRPCServer):
    """xend's TCPXMLRPCServer: a thread per connection, HTTP/1.0 handler."""

    allow_reuse_address = True
    daemon_threads = True


def build_server(host: str, port: int, state: ReferenceState, backlog: int = 128) -> ReferenceXMLRPCServer:
    """Bind the server and register the four Xen-API calls it supports."""

    class Server(ReferenceXMLRPCServer):
        request_queue_size = backlog

    server = Server((host, port), logRequests=False, allow_none=True)
    server.register_function(state.login_with_password, "session.login_with_password")
    server.register_function(state.host_get_all, "host.get_all")
    server.register_function(state.host_get_record, "host.get_record")
    server.register_function(state.host_add_to_other_config, "host.add_to_other_config")
    return server


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM or SIGINT; the bench stops us with SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m bench.reference_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", required=True, help="XML state file to rewrite")
    parser.add_argument("--objects", type=int, default=8, help="host_cpu objects")
    parser.add_argument("--backlog", type=int, default=128, help="listen backlog (xend: 5)")
    args = parser.parse_args(argv)

    state = ReferenceState(args.state, args.objects)
    server = build_server(args.host, args.port, state, args.backlog)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(f"reference: listening on {args.host}:{args.port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()

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
``session.login_with_password``, ``host.get_all``, ``host.get_record``,
``host.add_to_other_config``, and on VMs ``VM.get_all``,
``VM.get_all_records``, ``VM.get_all_records_where`` (the one form
``field "NAME"="VALUE"``, answered by a plain loop over the VMs),
``VM.set_name_label`` and ``VM.add_to_other_config``.  Results are Xen-API
structs (``{"Status": "Success", "Value": ...}``) and the host record has the
same shape as xend-ext's.  Host refs are bare UUIDs, as in xend.

VMs come from a state directory the bench built for xend-ext (``--vms-from
reference-state.xml``, its snapshot's objects in the per-object XML of format
2): at start the reference reads the VM and VM_metrics tables of that file, as
xend read its state files, so both servers hold the same objects.  Every
field is kept as the text the snapshot holds (Xen-API sends ints as strings
too); an empty set or map, which the snapshot cannot tell from an empty string,
is served as ``""``.

Run: ``python -m bench.reference_server --port P --state FILE --objects N
[--vms-from DIR/reference-state.xml]``.
"""

from __future__ import annotations

import argparse
import re
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

    def __init__(self, path: str, n_cpus: int, vms_from: str | None = None) -> None:
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
        # Other stored objects, by class then ref (VM and VM_metrics from --vms-from).
        self.tables: dict[str, dict[str, dict[str, Any]]] = load_tables(vms_from) if vms_from else {}
        self.vms = self.tables.setdefault("VM", {})
        if not vms_from:  # a loaded state is on disk already; a start does not rewrite it
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
        for cls, table in self.tables.items():
            for record in table.values():
                _object_element(root, cls, record)
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

    def _vm_call(self, session: str, ref: str) -> XenApiResult | None:
        """The failure for a bad session or VM ref; the caller holds the lock."""
        if session not in self.sessions:
            return _failure("SESSION_INVALID", session)
        if ref not in self.vms:
            return _failure("HANDLE_INVALID", "VM", ref)
        return None

    def vm_get_all(self, session: str) -> XenApiResult:
        with self.lock:
            if session not in self.sessions:
                return _failure("SESSION_INVALID", session)
            return _success(list(self.vms))

    def vm_get_all_records(self, session: str) -> XenApiResult:
        """Copies taken under the lock; marshalling runs outside it."""
        with self.lock:
            if session not in self.sessions:
                return _failure("SESSION_INVALID", session)
            return _success({ref: dict(record) for ref, record in self.vms.items()})

    def vm_get_all_records_where(self, session: str, expr: str) -> XenApiResult:
        """Only ``field "NAME"="VALUE"``, by a plain loop over every VM."""
        match = _FIELD_EQUALS.fullmatch(expr)
        if match is None:
            return _failure("FILTER_NOT_SUPPORTED", expr)
        name, value = match.groups()
        with self.lock:
            if session not in self.sessions:
                return _failure("SESSION_INVALID", session)
            return _success({ref: dict(r) for ref, r in self.vms.items() if r.get(name) == value})

    def vm_set_name_label(self, session: str, ref: str, value: str) -> XenApiResult:
        """Mutate, then persist the whole state before replying, like xend."""
        with self.lock:
            failure = self._vm_call(session, ref)
            if failure is not None:
                return failure
            self.vms[ref]["name_label"] = value
            self.save()
        return _success(None)

    def vm_add_to_other_config(self, session: str, ref: str, key: str, value: str) -> XenApiResult:
        """Mutate, then persist the whole state before replying, like xend."""
        with self.lock:
            failure = self._vm_call(session, ref)
            if failure is not None:
                return failure
            config = self.vms[ref].get("other_config")
            if not isinstance(config, dict):
                config = self.vms[ref]["other_config"] = {}
            if key in config:
                return _failure("MAP_DUPLICATE_KEY", "VM", "other_config", ref, key)
            config[key] = value
            self.save()
        return _success(None)


_FIELD_EQUALS = re.compile(r'\s*field\s*"([^"]*)"\s*=\s*"([^"]*)"\s*')
#: The classes read from xend-ext's snapshot.
LOADED_CLASSES = ("VM", "VM_metrics")


def load_tables(path: str) -> dict[str, dict[str, dict[str, Any]]]:
    """The VM and VM_metrics objects of a xend-ext snapshot (format 2: scalar fields as
    attributes, set items as ``<s f=...>`` and map entries as ``<m f=... k=...>`` children),
    fields as text, sets as lists, maps as dicts."""
    tables: dict[str, dict[str, dict[str, Any]]] = {cls: {} for cls in LOADED_CLASSES}
    for _, element in ET.iterparse(path):
        if element.tag not in LOADED_CLASSES or element.get("ref") is None:
            continue
        record: dict[str, Any] = {name: value for name, value in element.attrib.items() if name != "ref"}
        for child in element:
            name = child.get("f")
            if child.tag == "m":
                held = record[name] = record.get(name) or {}
                held[child.get("k")] = child.text or ""
            else:
                held = record[name] = record.get(name) or []
                held.append(child.text or "")
        tables[element.tag][element.get("ref")] = record
        element.clear()
    return tables


def _object_element(parent: ET.Element, cls: str, record: dict[str, Any]) -> None:
    """One object in XendStateStore's layout: typed child per field."""
    obj = ET.SubElement(parent, cls, uuid=str(record.get("uuid", "")))
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
    """Bind the server and register the Xen-API calls it supports."""

    class Server(ReferenceXMLRPCServer):
        request_queue_size = backlog

    server = Server((host, port), logRequests=False, allow_none=True)
    server.register_function(state.login_with_password, "session.login_with_password")
    server.register_function(state.host_get_all, "host.get_all")
    server.register_function(state.host_get_record, "host.get_record")
    server.register_function(state.host_add_to_other_config, "host.add_to_other_config")
    server.register_function(state.vm_get_all, "VM.get_all")
    server.register_function(state.vm_get_all_records, "VM.get_all_records")
    server.register_function(state.vm_get_all_records_where, "VM.get_all_records_where")
    server.register_function(state.vm_set_name_label, "VM.set_name_label")
    server.register_function(state.vm_add_to_other_config, "VM.add_to_other_config")
    return server


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM or SIGINT; the bench stops us with SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m bench.reference_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", required=True, help="XML state file to rewrite")
    parser.add_argument("--objects", type=int, default=8, help="host_cpu objects")
    parser.add_argument("--backlog", type=int, default=128, help="listen backlog (xend: 5)")
    parser.add_argument("--vms-from", metavar="STATE_XML", help="serve the VMs of this xend-ext snapshot")
    args = parser.parse_args(argv)

    state = ReferenceState(args.state, args.objects, args.vms_from)
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

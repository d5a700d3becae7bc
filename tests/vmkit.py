"""Helpers of the VM tests: the official client against a real server, and looks at the simulated host.

The simulated backend keeps its domains in ``<state dir>/sim-host.sxp``; reading that file is how
the tests see "the backend's domain" without going through the server under test.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import XenAPI

from xend_ext import sxp

MIB = 1 << 20
_names = itertools.count()


def session(server) -> XenAPI.Session:
    """A logged-in official client on the server's TCP listener."""
    s = XenAPI.Session(server.url)
    s.xenapi.login_with_password("root", "", "1.0", "xend-ext tests")
    return s


def failure(call, *args) -> list[str]:
    """The ErrorDescription of a call that must fail with a Xen-API error."""
    try:
        call(*args)
    except XenAPI.Failure as exc:
        return exc.details
    raise AssertionError(f"{call} {args} succeeded")


def unique(prefix: str = "vm") -> str:
    return f"{prefix}-{next(_names)}-{time.monotonic_ns() % 100000}"


def new_vm(x, name: str | None = None, **fields) -> str:
    """VM.create with small defaults; integers go as strings (XML-RPC ints are 32-bit)."""
    record = {"name_label": name or unique(), "memory_target": str(128 * MIB), "memory_static_max": str(256 * MIB),
              "VCPUs_at_startup": "1", "VCPUs_max": "2", "VCPUs_params": {}}
    record.update({k: (str(v) if isinstance(v, int) and not isinstance(v, bool) else v) for k, v in fields.items()})
    return x.VM.create(record)


def bring_to(x, vm: str, state: str) -> None:
    """From Halted to ``state`` (Halted, Running, Paused, Suspended)."""
    if state == "Halted":
        return
    x.VM.start(vm, state == "Paused", False)
    if state == "Suspended":
        x.VM.suspend(vm)
    assert x.VM.get_power_state(vm) == state


def metrics(x, vm: str) -> dict:
    record = x.VM_metrics.get_record(x.VM.get_metrics(vm))
    record.pop("last_updated")
    return record


def backend_domains(server) -> dict[str, list]:
    """{uuid: sxp node} of the simulated host's state file."""
    state = sxp.loads((Path(server.state_dir) / "sim-host.sxp").read_text(encoding="utf-8"))
    return {sxp.child_value(node, "uuid"): node for node in state[1:]
            if isinstance(node, list) and node and node[0] == "domain"}


def backend_domain(server, uuid: str) -> dict | None:
    """One domain of the simulated host as {field: value} (pins and metadata as lists), None if absent."""
    node = backend_domains(server).get(uuid)
    if node is None:
        return None
    return {child[0]: child[1] if len(child) == 2 and not isinstance(child[1], list) else child[1:]
            for child in node[1:] if isinstance(child, list)}


def everything(server, x, vm: str) -> tuple:
    """What a refused operation must leave alone: record, live metrics, the backend's domain."""
    return x.VM.get_record(vm), metrics(x, vm), backend_domain(server, x.VM.get_uuid(vm))


def event_from(x, classes, token, timeout=5.0) -> dict:
    return getattr(x.event, "from")(classes, token, float(timeout))


def token_now(x, classes=("*",)) -> str:
    return event_from(x, list(classes), "", 0.0)["token"]


def cleanup(x, vms) -> None:
    """Hard-stop and destroy what a test made, so that the next one has the host to itself."""
    for vm in vms:
        try:
            if x.VM.get_power_state(vm) != "Halted":
                x.VM.hard_shutdown(vm)
            x.VM.destroy(vm)
        except XenAPI.Failure:
            pass


class Kit:
    """One test's client on a (possibly shared) server; removes the VMs it made when the test ends."""

    def __init__(self, server) -> None:
        self.server = server
        self.session = session(server)
        self.x = self.session.xenapi
        self.made: list[str] = []

    def vm(self, name: str | None = None, **fields) -> str:
        ref = new_vm(self.x, name, **fields)
        self.made.append(ref)
        return ref

    def close(self) -> None:
        cleanup(self.x, self.made)
        try:
            self.x.session.logout()
        except Exception:  # noqa: BLE001 - the server may be gone already
            pass

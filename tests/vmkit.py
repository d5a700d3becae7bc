"""Helpers of the VM tests: the official client against a real server, and looks at its hypervisor.

The simulated backend keeps its domains in ``<state dir>/sim-host.sxp``; reading that file is how
the tests see "the backend's domain" without going through the server under test. libvirt's test
driver keeps its host inside the server process, where no other process can look: there the
backend's domain is what the server's live view reads from the backend at each request (the VM
record's power state and domid, VM_metrics, the pool it runs in), in the same shape.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
import XenAPI

from xend_ext import sxp

MIB = 1 << 20
_names = itertools.count()

BOTH = ("sim", "libvirt")
"""The backends the VM and class integration tests run on (``pytestmark = pytest.mark.backends(*BOTH)``)."""


def on_xl(when=None):
    """Mark a test of such a module to run on real Xen as well (the xl backend, tests/realxen.py),
    for every case of a parametrised test or those ``when(**params)`` accepts.

    Real Xen runs under emulation there, where each xl call costs about 0.2 s and the stage has
    five minutes: it runs the tests of what reaches the hypervisor, one case of each behaviour.
    What the server decides before the backend is reached (argument checks, refusals by power
    state, naming, permissions) is the same on every backend and is left to sim and libvirt. The
    README lists what stays off xl and why."""
    return pytest.mark.backends("sim", "libvirt", "xl", xl_when=when)


def off_xl(reason: str, when=None):
    """Keep a test of such a module (or the cases ``when(**params)`` accepts) off real Xen, saying
    why: what one emulated Xen machine cannot show. Only XEND_EXT_XL=all would run it there (see
    conftest); the README lists these."""
    return pytest.mark.backends(*BOTH, off_xl=reason, off_xl_when=when)


def sim_only(reason: str):
    """Mark a test of a module running on every backend as one for the simulated host only, saying
    why (what libvirt's test driver, or our libvirt backend, cannot do). The README lists them."""
    return pytest.mark.backends("sim", reason=reason)


#: the capabilities each test backend lacks (the server answers NOT_IMPLEMENTED [capability])
LACKS = {"sim": frozenset(), "libvirt": frozenset({"sched_credit", "sched_domain", "memory_max_live",
                                                  "utilisation", "numa"}),
         "xl": frozenset({"numa"})}

#: what VMs need to boot on the backend of the tests running now (conftest's ``backend`` sets it:
#: on xl a PV kernel); new_vm adds it to every record
BOOT_FIELDS: dict[str, str] = {}


def lacks(server, capability: str) -> bool:
    """Whether the server's backend lacks ``capability`` (libvirt's test driver: see LACKS)."""
    return capability in LACKS[getattr(getattr(server, "host", None), "name", "sim")]


#: backends whose VCPUs_utilisation is measured CPU use (xl: the test guests mostly sleep), not the
#: sim's scheduler model of every vCPU busy, whose figures the shared tests check
MEASURED = frozenset({"xl"})


def modelled(server) -> bool:
    """Whether VCPUs_utilisation is the sim's model (figures a test can predict)."""
    return not lacks(server, "utilisation") and getattr(getattr(server, "host", None), "name", "sim") not in MEASURED


def shares_fit(server, got: dict, model: dict) -> bool:
    """VCPUs_utilisation as the backend gives it: the model's figures where it is modelled, none
    where the backend lacks utilisation, and where it is measured a share in [0, 1] for some of
    the model's vCPUs (none before two polls have seen the domain)."""
    if modelled(server):
        return got == model
    if lacks(server, "utilisation"):
        return got == {}
    return {str(v) for v in got} <= {str(v) for v in model} and all(0 <= float(u) <= 1 for u in got.values())


#: the capability an allocation or mobility message needs (the dispatcher checks it before anything else)
NEEDS = {"set_sched_weight": "sched_credit", "set_sched_cap": "sched_credit", "set_memory_max": "memory_max_live",
         "migrate": "migrate"}


MODES = ("dynamic", "static", "perm")


def touches_live(x, vm: str, message: str, args: tuple) -> bool:
    """Whether the call changes the running domain (what needs the capability): dynamic always,
    perm on a running or paused VM; static changes only the definition. Migration always."""
    if message == "migrate":
        return True
    mode = args[-1] if args and args[-1] in MODES else "dynamic"
    return mode == "dynamic" or (mode == "perm" and x.VM.get_power_state(vm) in ("Running", "Paused"))


def not_implemented_here(server, x, vm: str, message: str, *args) -> bool:
    """On a backend lacking what VM.``message`` needs for a live change: check that the call is
    refused with ``NOT_IMPLEMENTED [capability]`` and changes nothing, and say True (the test has
    nothing more to check there). False where the backend has it, or the call is a static change."""
    capability = NEEDS.get(message)
    if capability is None or not lacks(server, capability) or not touches_live(x, vm, message, args):
        return False
    before = everything(server, x, vm)
    assert failure(getattr(x.VM, message), vm, *args) == ["NOT_IMPLEMENTED", capability]
    assert everything(server, x, vm) == before
    return True


# why a test stays on the simulated host (the reasons of sim_only)
NO_SCHED = "libvirt's test driver has a stub scheduler: weight and cap cannot be set (no capability sched_credit)"
NO_MIGRATE = "libvirt migrates by save and restore: the domain does not keep running on the source meanwhile"
NO_MEMORY_MAX_LIVE = "libvirt cannot change a running domain's maximum memory (no capability memory_max_live)"
NO_UTILISATION = "libvirt has no per-vCPU utilisation model (no capability utilisation)"
NO_SDOM = "libvirt has no scheduling domains (no capability sched_domain)"
NO_NUMA = "a libvirt test-driver host cannot describe NUMA cells"
NO_SURVIVAL = "a server restart reboots the test driver's host (it lives in the server process): no domain survives it"
SIM_FILES = "reads the simulated host's own files (sim-host.sxp, sim-images)"


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
              "VCPUs_at_startup": "1", "VCPUs_max": "2", "VCPUs_params": {}, **BOOT_FIELDS}
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


def on_sim(server) -> bool:
    """Whether the server runs on the simulated host (whose state file the tests can read)."""
    return getattr(getattr(server, "host", None), "name", "sim") == "sim"


def backend_domains(server, x=None) -> dict[str, list]:
    """{uuid: sxp node} of every domain the hypervisor has (see :func:`backend_domain` for ``x``)."""
    if on_sim(server):
        state = sxp.loads((Path(server.state_dir) / "sim-host.sxp").read_text(encoding="utf-8"))
        return {sxp.child_value(node, "uuid"): node for node in state[1:]
                if isinstance(node, list) and node and node[0] == "domain"}
    x = x or root_client(server)
    return {node[1][1]: node for node in (_live_domain(x, vm) for vm in x.VM.get_all()) if node is not None}


def backend_domain(server, uuid: str, x=None) -> dict | None:
    """One domain of the hypervisor as {field: value} (pins and metadata as lists), None if absent.

    On the sim, read from its state file; elsewhere from the server's live view, through ``x`` (a
    client of the server; default: a root session, for servers without a password file)."""
    if on_sim(server):
        node = backend_domains(server).get(uuid)
    else:
        x = x or root_client(server)
        refs = [vm for vm in x.VM.get_all() if x.VM.get_uuid(vm) == uuid]
        node = _live_domain(x, refs[0]) if refs else None
    if node is None:
        return None
    return {child[0]: child[1] if len(child) == 2 and not isinstance(child[1], list) else child[1:]
            for child in node[1:] if isinstance(child, list)}


def root_client(server):
    """A root client of ``server``, logged in once and kept with it."""
    if getattr(server, "_vmkit_root", None) is None:
        server._vmkit_root = session(server).xenapi
    return server._vmkit_root


def _live_domain(x, vm: str) -> list | None:
    """The VM's domain as the server reads it from the backend now, as the sim's sxp node; None when
    the VM has none (halted)."""
    record = x.VM.get_record(vm)
    if record["power_state"] == "Halted":
        return None
    live = metrics(x, vm)
    params = dict(live["VCPUs_params"])
    pins = [["pin", key[len("cpumap"):], params.pop(key)] for key in sorted(params) if key.startswith("cpumap")]
    pools = record["cpu_pool"]
    return ["domain", ["uuid", record["uuid"]], ["name", record["name_label"]], ["domid", record["domid"]],
            ["state", record["power_state"]], ["memory", live["memory_actual"]], ["vcpus", live["VCPUs_number"]],
            ["weight", params.get("weight", "")], ["cap", params.get("cap", "")],
            ["control", "1" if record["is_control_domain"] else "0"], ["pins", *pins],
            ["pool", x.cpu_pool.get_uuid(pools[0]) if pools else ""]]


def everything(server, x, vm: str) -> tuple:
    """What a refused operation must leave alone: record, live metrics, the backend's domain."""
    return x.VM.get_record(vm), metrics(x, vm), backend_domain(server, x.VM.get_uuid(vm), x)


def migrate_live(x, vm: str, url: str) -> tuple[dict, float]:
    """``Async.VM.migrate(vm, url, live)``, waited for: the task's record (the task is then
    destroyed) and the seconds from the call to its end."""
    began = time.monotonic()
    task = x.Async.VM.migrate(vm, url, True)
    while x.task.get_status(task) == "pending":
        time.sleep(0.1)
    took = time.monotonic() - began
    record = x.task.get_record(task)
    x.task.destroy(task)
    return record, took


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

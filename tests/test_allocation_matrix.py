"""The state-transition matrices of seed 002 (API.md §8), one test per cell, through the official client.

The seed follows one domain through five steps — 1 start it, 2 change its allocation from X to Y, 3
stop it, 4 start it again, 5 delete it — in three modes: CASE A ``dynamic`` (the running domain
only: running Y, stored X, the next start reverts to X), CASE B ``static`` (the stored definition
only: running X, stored Y, the next start runs Y) and CASE C ``perm`` (both Y). Xenstore of the
seed is the running value here (``VM_metrics``; the running maximum memory, which VM_metrics does
not carry, is read from the simulated hypervisor's own state file), virt.sxp is the stored
definition (the ``VM`` record). The seed writes the matrices for memory; the same cells are checked
for vCPUs, maximum memory, pinning, weight and cap.

On a backend lacking the capability a quantity's message needs (libvirt: weight and cap, the
maximum memory of a running domain), every cell of it checks instead that the message is refused
with ``NOT_IMPLEMENTED [capability]`` in that mode and changes nothing: neither side moves.

Then: changes of a halted domain are stored and applied at start, a static change made while
running is applied by a reboot (and a dynamic one undone), both survive a toolstack restart, and
the bounds of API.md §8 are refused with the error the contract names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from conftest import ServerProcess
from vmkit import (
    BOOT_FIELDS,
    BOTH,
    MIB,
    NO_SURVIVAL,
    Kit,
    backend_domain,
    everything,
    failure,
    lacks,
    metrics,
    not_implemented_here,
    on_sim,
    on_xl,
    session,
    sim_only,
)

pytestmark = pytest.mark.backends(*BOTH)

GIB = 1024 * MIB
HOST_MEMORY_MIB = 16384  # the simulated host's default


@pytest.fixture(scope="module")
def srv(tmp_path_factory, backend):
    server = ServerProcess(tmp_path_factory.mktemp("alloc-matrix") / "state", unix=False, host=backend).start()
    yield server
    server.stop()


@pytest.fixture
def kit(srv):
    k = Kit(srv)
    yield k
    k.close()


# -- what is changed, and where each side of it is read ----------------------------------------------

@dataclass(frozen=True)
class Quantity:
    """One allocation: the message changing it, X and Y as sent, and the readers of both sides."""

    name: str
    message: str
    x: str
    y: str
    fields: dict
    stored: Callable  # (client, vm) -> the stored next-start value
    running: Callable  # (server, client, vm) -> the value in force now
    before: tuple = ()  # arguments between the VM and the value (pin_VCPU's vCPU)
    policy: str = ""  # the key of VM.get_cpu_policy showing it too
    extra: dict = field(default_factory=dict)


def _param(key, default=None):
    return lambda x, vm: x.VM.get_VCPUs_params(vm).get(key, default)


def _live_param(key, default=None):
    return lambda server, x, vm: metrics(x, vm)["VCPUs_params"].get(key, default)


QUANTITIES = [
    Quantity("memory", "set_memory", str(128 * MIB), str(200 * MIB),
             {"memory_target": 128 * MIB, "memory_static_max": 256 * MIB},
             stored=lambda x, vm: x.VM.get_memory_target(vm),
             running=lambda server, x, vm: metrics(x, vm)["memory_actual"]),
    Quantity("VCPUs", "set_VCPUs", "1", "3", {"VCPUs_at_startup": 1, "VCPUs_max": 4},
             stored=lambda x, vm: x.VM.get_VCPUs_at_startup(vm),
             running=lambda server, x, vm: metrics(x, vm)["VCPUs_number"]),
    Quantity("memory_max", "set_memory_max", str(256 * MIB), str(384 * MIB),
             {"memory_target": 128 * MIB, "memory_static_max": 256 * MIB},
             stored=lambda x, vm: x.VM.get_memory_static_max(vm),
             running=lambda server, x, vm: backend_domain(server, x.VM.get_uuid(vm))["maxmem"]),
    Quantity("pin", "pin_VCPU", "1", "2", {"VCPUs_params": {"cpumap0": "1"}}, before=("0",),
             stored=_param("cpumap0"), running=_live_param("cpumap0"), policy="pins"),
    Quantity("weight", "set_sched_weight", "300", "600", {"VCPUs_params": {"weight": "300"}},
             stored=_param("weight"), running=_live_param("weight"), policy="weight"),
    Quantity("cap", "set_sched_cap", "50", "80", {"VCPUs_params": {"cap": "50"}},
             stored=_param("cap"), running=_live_param("cap"), policy="cap"),
]
BY_NAME = {q.name: q for q in QUANTITIES}

MODES = ("dynamic", "static", "perm")
STEPS = {1: "start", 2: "change", 3: "stop", 4: "start-again", 5: "delete"}
#: (running, stored) after each step; None: nothing runs. The seed's matrices, CASE A, B and C.
MATRIX = {
    "dynamic": {1: ("x", "x"), 2: ("y", "x"), 3: (None, "x"), 4: ("x", "x")},
    "static": {1: ("x", "x"), 2: ("x", "y"), 3: (None, "y"), 4: ("y", "y")},
    "perm": {1: ("x", "x"), 2: ("y", "y"), 3: (None, "y"), 4: ("y", "y")},
}


def change(x, q: Quantity, vm: str, value: str, mode: str | None = None) -> None:
    args = (vm, *q.before, value) + ((mode,) if mode is not None else ())
    assert getattr(x.VM, q.message)(*args) == ""


def value_of(q: Quantity, which: str | None) -> str | None:
    return None if which is None else getattr(q, which)


def check_running(server, x, q: Quantity, vm: str, want: str) -> None:
    assert x.VM.get_power_state(vm) == "Running"
    # the running maximum memory shows in no Xen-API field: only the sim's own state file tells it
    if q.name != "memory_max" or on_sim(server):
        assert q.running(server, x, vm) == want, f"running {q.name}"
    if q.name == "pin":  # the vCPU runs where it is pinned
        assert metrics(x, vm)["VCPUs_CPU"]["0"] == want
    if q.policy:
        running = x.VM.get_cpu_policy(vm)["running"][q.policy]
        assert (running["0"] if q.policy == "pins" else running) == want, f"get_cpu_policy running {q.name}"


def check_stored(x, q: Quantity, vm: str, want: str) -> None:
    assert q.stored(x, vm) == want, f"stored {q.name}"
    if q.policy:
        stored = x.VM.get_cpu_policy(vm)["stored"][q.policy]
        assert (stored["0"] if q.policy == "pins" else stored) == want, f"get_cpu_policy stored {q.name}"


def refused_here(kit, q: Quantity, vm: str, mode: str | None = None) -> bool:
    """On a backend lacking q's capability: VM.<message> is refused with NOT_IMPLEMENTED in ``mode`` and
    changes nothing, the stored X stays (True: the cell has nothing else to check there)."""
    args = (*q.before, q.y) + ((mode,) if mode is not None else ())
    if not not_implemented_here(kit.server, kit.x, vm, q.message, *args):
        return False
    check_stored(kit.x, q, vm, q.x)
    return True


def check_not_running(server, x, vm: str) -> None:
    """Stopped: no domain on the host, and VM_metrics shows none."""
    assert x.VM.get_power_state(vm) == "Halted" and x.VM.get_domid(vm) == "-1"
    live = metrics(x, vm)
    assert (live["memory_actual"], live["VCPUs_number"], live["VCPUs_params"], live["VCPUs_utilisation"]) == (
        "0", "0", {}, {})
    assert backend_domain(server, x.VM.get_uuid(vm)) is None
    assert x.VM.get_cpu_policy(vm)["running"] == {}


# -- one test per cell ----------------------------------------------------------------------------------

CELLS = [pytest.param(q, mode, step, id=f"{q.name}-{mode}-{step}-{STEPS[step]}")
         for q in QUANTITIES for mode in MODES for step in STEPS]


# on real Xen: a cell that goes through a live change and through the stored one at the next start
XL_CELLS = {("memory", "perm", 4)}


@pytest.mark.parametrize("q, mode, step", CELLS)
@on_xl(when=lambda q, mode, step: (q.name, mode, step) in XL_CELLS)
def test_matrix_cell(kit, q, mode, step):
    x, server = kit.x, kit.server
    vm = kit.vm(**q.fields)
    uuid = x.VM.get_uuid(vm)
    metrics_ref = x.VM.get_metrics(vm)
    x.VM.start(vm, False, False)  # 1
    if refused_here(kit, q, vm, mode):
        return
    if step >= 2:
        change(x, q, vm, q.y, mode)
    if step >= 3:
        x.VM.clean_shutdown(vm)
    if step >= 4:
        x.VM.start(vm, False, False)
    if step >= 5:
        x.VM.hard_shutdown(vm)
        assert x.VM.destroy(vm) == ""
        check_deleted(kit, q, vm, uuid, metrics_ref)
        return
    want_running, want_stored = (value_of(q, w) for w in MATRIX[mode][step])
    if want_running is None:
        check_not_running(server, x, vm)
    else:
        check_running(server, x, q, vm, want_running)
    check_stored(x, q, vm, want_stored)


def check_deleted(kit, q: Quantity, vm: str, uuid: str, metrics_ref: str) -> None:
    """Step 5: the VM, its metrics and its domain are gone, and nothing of Y is left for a VM defined
    again with the same uuid (the seed deletes virt.sxp)."""
    x = kit.x
    assert failure(x.VM.get_record, vm)[:2] == ["HANDLE_INVALID", "VM"]
    assert failure(x.VM_metrics.get_record, metrics_ref)[:2] == ["HANDLE_INVALID", "VM_metrics"]
    assert failure(x.VM.get_by_uuid, uuid)[0] in ("UUID_INVALID", "HANDLE_INVALID")
    assert vm not in x.VM.get_all()
    assert backend_domain(kit.server, uuid) is None
    again = kit.vm(uuid=uuid, **q.fields)
    check_stored(x, q, again, q.x)
    x.VM.start(again, False, False)
    check_running(kit.server, x, q, again, q.x)


# -- halted domains: stored, applied at start --------------------------------------------------------

@pytest.mark.parametrize("mode", ["static", "perm"])
@pytest.mark.parametrize("q", QUANTITIES, ids=[q.name for q in QUANTITIES])
def test_a_halted_domain_change_is_stored_and_applied_at_start(kit, q, mode):
    x = kit.x
    vm = kit.vm(**q.fields)
    if refused_here(kit, q, vm, mode):
        return
    change(x, q, vm, q.y, mode)
    check_stored(x, q, vm, q.y)
    check_not_running(kit.server, x, vm)
    x.VM.start(vm, False, False)
    check_running(kit.server, x, q, vm, q.y)
    check_stored(x, q, vm, q.y)


@pytest.mark.parametrize("q", QUANTITIES, ids=[q.name for q in QUANTITIES])
def test_dynamic_on_a_halted_domain_is_refused_and_changes_nothing(kit, q):
    x = kit.x
    vm = kit.vm(**q.fields)
    if refused_here(kit, q, vm, "dynamic") and refused_here(kit, q, vm):
        return
    before = everything(kit.server, x, vm)
    for mode in ("dynamic", None):  # None: the default mode is dynamic
        args = (vm, *q.before, q.y) + ((mode,) if mode else ())
        assert failure(getattr(x.VM, q.message), *args) == ["VM_BAD_POWER_STATE", vm, "running", "halted"]
    assert everything(kit.server, x, vm) == before


@pytest.mark.parametrize("q", QUANTITIES, ids=[q.name for q in QUANTITIES])
def test_the_default_mode_of_a_running_domain_is_dynamic(kit, q):
    x = kit.x
    vm = kit.vm(**q.fields)
    x.VM.start(vm, False, False)
    if refused_here(kit, q, vm):
        return
    change(x, q, vm, q.y)
    check_running(kit.server, x, q, vm, q.y)
    check_stored(x, q, vm, q.x)


# -- reboot: the stored definition applies, as at every start ----------------------------------------

@pytest.mark.parametrize("mode, after", [("static", "y"), ("dynamic", "x"), ("perm", "y")])
@pytest.mark.parametrize("reboot", ["clean_reboot", "hard_reboot"])
@pytest.mark.parametrize("q", QUANTITIES, ids=[q.name for q in QUANTITIES])
def test_a_reboot_applies_the_stored_definition(kit, q, reboot, mode, after):
    """A static change made while running applies at the reboot; a dynamic one is undone by it."""
    x = kit.x
    vm = kit.vm(**q.fields)
    x.VM.start(vm, False, False)
    if refused_here(kit, q, vm, mode):
        return
    change(x, q, vm, q.y, mode)
    getattr(x.VM, reboot)(vm)
    check_running(kit.server, x, q, vm, getattr(q, after))
    check_stored(x, q, vm, getattr(q, after))


def test_a_reboot_applies_every_stored_policy_at_once(kit):
    """Pins, weight and cap changed statically while running (the policy manager's policy) all apply
    together at the reboot."""
    x = kit.x
    vm = kit.vm(VCPUs_at_startup=2, VCPUs_max=2, VCPUs_params={"weight": "300", "cap": "50", "cpumap0": "1"})
    x.VM.start(vm, False, False)
    x.VM.pin_VCPU(vm, "0", "3", "static")
    x.VM.pin_VCPU(vm, "1", "4-5", "static")
    if lacks(kit.server, "sched_credit"):  # no set_sched_*: the stored definition itself, as xm new gives it
        x.VM.set_VCPUs_params(vm, {**x.VM.get_VCPUs_params(vm), "weight": "900", "cap": "120"})
    else:
        x.VM.set_sched_weight(vm, "900", "static")
        x.VM.set_sched_cap(vm, "120", "static")
    assert metrics(x, vm)["VCPUs_params"] == {"weight": "300", "cap": "50", "cpumap0": "1"}
    x.VM.clean_reboot(vm)
    want = {"weight": "900", "cap": "120", "cpumap0": "3", "cpumap1": "4,5"}
    assert metrics(x, vm)["VCPUs_params"] == want
    assert x.VM.get_VCPUs_params(vm) == want
    policy = x.VM.get_cpu_policy(vm)
    assert policy["running"]["pins"] == policy["stored"]["pins"] == {"0": "3", "1": "4-5"}


# -- toolstack restart: running and stored values both survive -------------------------------------

def _restart(make_server, server):
    assert server.stop() == 0
    again = make_server(state_dir=server.state_dir, unix=False)
    return again, session(again).xenapi


@sim_only(NO_SURVIVAL)
@pytest.mark.parametrize("mode", MODES)
def test_a_server_restart_keeps_running_and_stored_values(make_server, backend, mode):
    """Restarting xend-ext is a toolstack restart (API.md §9): every domain keeps running with the
    values it had (a dynamic change included), every stored definition is kept, and the next start
    still applies the stored one."""
    server = make_server(unix=False)
    x = session(server).xenapi
    vms = {}
    for q in QUANTITIES:
        vm = x.VM.create({"name_label": f"{q.name}-{mode}", "memory_target": str(128 * MIB),
                          "memory_static_max": str(256 * MIB), "VCPUs_at_startup": "1", "VCPUs_max": "4",
                          **{k: (str(v) if isinstance(v, int) else v) for k, v in q.fields.items()}})
        x.VM.start(vm, False, False)
        change(x, q, vm, q.y, mode)
        vms[q.name] = vm
    halted = {}  # and a halted domain's stored change
    for q in QUANTITIES:
        if mode == "dynamic":
            continue
        vm = x.VM.create({"name_label": f"{q.name}-{mode}-halted", "memory_target": str(128 * MIB),
                          "memory_static_max": str(256 * MIB), "VCPUs_at_startup": "1", "VCPUs_max": "4",
                          **{k: (str(v) if isinstance(v, int) else v) for k, v in q.fields.items()}})
        change(x, q, vm, q.y, mode)
        halted[q.name] = vm
    server, x = _restart(make_server, server)
    running_after, stored_after = MATRIX[mode][2]
    for name, vm in vms.items():
        q = BY_NAME[name]
        check_running(server, x, q, vm, value_of(q, running_after))
        check_stored(x, q, vm, value_of(q, stored_after))
    for name, vm in halted.items():
        check_stored(x, BY_NAME[name], vm, BY_NAME[name].y)
        check_not_running(server, x, vm)
    # the stored definitions still apply at the next start
    server, x = _restart(make_server, server)
    for name, vm in vms.items():
        x.VM.hard_shutdown(vm)
        x.VM.start(vm, False, False)
        check_running(server, x, BY_NAME[name], vm, value_of(BY_NAME[name], MATRIX[mode][4][0]))
    for name, vm in halted.items():
        x.VM.start(vm, False, False)
        check_running(server, x, BY_NAME[name], vm, BY_NAME[name].y)


def test_a_host_reboot_ends_dynamic_changes_and_keeps_stored_ones(make_server, backend):
    """``--sim-reboot`` (libvirt's test host reboots at every server restart): every domain stopped
    with the host; what the next start gets is the stored definition, so a dynamic change is gone and
    a static one applies. Weight goes with memory where the backend can set it."""
    server = make_server(unix=False)
    sched = not lacks(server, "sched_credit")
    x = session(server).xenapi
    dyn = x.VM.create({"name_label": "dyn", "memory_target": str(128 * MIB), "memory_static_max": str(256 * MIB),
                       "VCPUs_max": "2", "VCPUs_params": {"weight": "300"}, **BOOT_FIELDS})
    sta = x.VM.create({"name_label": "sta", "memory_target": str(128 * MIB), "memory_static_max": str(256 * MIB),
                       "VCPUs_max": "2", "VCPUs_params": {"weight": "300"}, **BOOT_FIELDS})
    for vm in (dyn, sta):
        x.VM.start(vm, False, False)
    x.VM.set_memory(dyn, str(200 * MIB), "dynamic")
    x.VM.set_memory(sta, str(200 * MIB), "static")
    if sched:
        x.VM.set_sched_weight(dyn, "700", "dynamic")
        x.VM.set_sched_weight(sta, "700", "static")
    assert metrics(x, dyn)["memory_actual"] == str(200 * MIB) and metrics(x, sta)["memory_actual"] == str(128 * MIB)
    assert server.stop() == 0
    server = make_server("--sim-reboot", state_dir=server.state_dir, unix=False)
    x = session(server).xenapi
    for vm in (dyn, sta):
        check_not_running(server, x, vm)
        x.VM.start(vm, False, False)
    assert (metrics(x, dyn)["memory_actual"], metrics(x, dyn)["VCPUs_params"]["weight"]) == (str(128 * MIB), "300")
    assert (metrics(x, sta)["memory_actual"], metrics(x, sta)["VCPUs_params"]["weight"]) == (
        str(200 * MIB), "700" if sched else "300")


# -- validation: the bounds of API.md §8, in every mode, changing nothing -------------------------------

def _bounded_vm(kit, state):
    """2 vCPUs online of VCPUs_max 4, 128 MiB of at most 256 MiB."""
    vm = kit.vm(memory_target=128 * MIB, memory_static_max=256 * MIB, VCPUs_at_startup=2, VCPUs_max=4)
    if state == "Running":
        kit.x.VM.start(vm, False, False)
    return vm


#: (message, arguments, the error's code and field); the VM has VCPUs_max 4 and 256 MiB at most
BOUNDS = [
    ("weight-0", "set_sched_weight", ["0"], ["VALUE_NOT_SUPPORTED", "weight"]),
    ("weight-65536", "set_sched_weight", ["65536"], ["VALUE_NOT_SUPPORTED", "weight"]),
    ("cap-negative", "set_sched_cap", ["-1"], ["VALUE_NOT_SUPPORTED", "cap"]),
    ("cap-above-100-per-vcpu", "set_sched_cap", ["401"], ["VALUE_NOT_SUPPORTED", "cap"]),
    ("memory-above-max", "set_memory", [str(257 * MIB)], ["VALUE_NOT_SUPPORTED"]),
    ("memory-0", "set_memory", ["0"], ["VALUE_NOT_SUPPORTED"]),
    ("memory-max-below-memory", "set_memory_max", [str(127 * MIB)], ["VALUE_NOT_SUPPORTED"]),
    ("memory-max-0", "set_memory_max", ["0"], ["VALUE_NOT_SUPPORTED"]),
    ("vcpus-above-max", "set_VCPUs", ["5"], ["VALUE_NOT_SUPPORTED"]),
    ("vcpus-0", "set_VCPUs", ["0"], ["VALUE_NOT_SUPPORTED"]),
    ("pin-no-such-pcpu", "pin_VCPU", ["0", "8"], ["VALUE_NOT_SUPPORTED"]),
    ("pin-no-such-vcpu", "pin_VCPU", ["4", "1"], ["VALUE_NOT_SUPPORTED", "vcpu"]),
]


@pytest.mark.parametrize("state, mode", [("Running", "dynamic"), ("Running", "static"), ("Running", "perm"),
                                         ("Halted", "static"), ("Halted", "perm")])
@pytest.mark.parametrize("message, args, error", [b[1:] for b in BOUNDS], ids=[b[0] for b in BOUNDS])
def test_out_of_bounds_changes_are_refused(kit, message, args, error, state, mode):
    x = kit.x
    vm = _bounded_vm(kit, state)
    if not_implemented_here(kit.server, x, vm, message, *args, mode):  # the capability is checked first
        return
    before = everything(kit.server, x, vm)
    err = failure(getattr(x.VM, message), vm, *args, mode)
    assert err[:len(error)] == error and len(err) == 4, err
    assert everything(kit.server, x, vm) == before


@pytest.mark.parametrize("mode", ["dynamic", "static", "perm"])
def test_the_bounds_themselves_are_accepted(kit, mode):
    x = kit.x
    vm = _bounded_vm(kit, "Running")
    for message, value in [("set_sched_weight", "1"), ("set_sched_weight", "65535"), ("set_sched_cap", "0"),
                           ("set_sched_cap", "400"), ("set_memory", str(256 * MIB)), ("set_memory", str(MIB)),
                           ("set_VCPUs", "4"), ("set_VCPUs", "1"),
                           ("set_memory_max", str(MIB if mode != "static" else 256 * MIB))]:
        if not not_implemented_here(kit.server, x, vm, message, value, mode):
            assert getattr(x.VM, message)(vm, value, mode) == ""


@pytest.mark.parametrize("mode", ["dynamic", "perm"])
def test_memory_beyond_what_the_host_has_free(kit, mode):
    x = kit.x
    vm = kit.vm(memory_target=128 * MIB, memory_static_max=32 * GIB)
    x.VM.start(vm, False, False)
    before = everything(kit.server, x, vm)
    err = failure(x.VM.set_memory, vm, str(20 * GIB), mode)
    assert err[0] == "HOST_NOT_ENOUGH_FREE_MEMORY" and int(err[1]) == 20 * GIB and int(err[2]) < 20 * GIB, err
    assert everything(kit.server, x, vm) == before  # perm: the stored definition is not changed either


@pytest.mark.parametrize("mode", ["static", "perm"])
def test_stored_memory_beyond_the_host_is_refused(kit, mode):
    """"memory within the host" (issue 7): a definition the host could never start is refused, not kept
    until the next start fails with HOST_NOT_ENOUGH_FREE_MEMORY."""
    x = kit.x
    vm = kit.vm(memory_target=128 * MIB, memory_static_max=32 * GIB)
    before = everything(kit.server, x, vm)
    err = failure(x.VM.set_memory, vm, str((HOST_MEMORY_MIB + 1024) * MIB), mode)
    assert err[0] in ("VALUE_NOT_SUPPORTED", "HOST_NOT_ENOUGH_FREE_MEMORY"), err
    assert everything(kit.server, x, vm) == before


# -- pins inside the VM's pool ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pooled(tmp_path_factory, backend):
    """A server whose pool P67 has pCPUs 6 and 7, and a running VM in it."""
    server = ServerProcess(tmp_path_factory.mktemp("alloc-pool") / "state", unix=False, host=backend).start()
    x = session(server).xenapi
    cpus = {int(x.host_cpu.get_number(ref)): ref for ref in x.host_cpu.get_all()}
    pool0 = x.cpu_pool.get_by_name_label("Pool-0")[0]
    for n in (6, 7):
        x.cpu_pool.remove_host_CPU_live(pool0, cpus[n])
    pool = x.cpu_pool.create({"name_label": "P67", "ncpu": "2", "proposed_CPUs": ["6", "7"]})
    x.cpu_pool.activate(pool)
    yield server
    server.stop()


@pytest.mark.parametrize("mode", ["dynamic", "perm"])
def test_a_live_pin_outside_the_pool_is_refused(pooled, mode):
    k = Kit(pooled)
    try:
        vm = k.vm(pool_name="P67", VCPUs_params={"cpumap0": "6"})
        k.x.VM.start(vm, False, False)
        before = everything(pooled, k.x, vm)
        err = failure(k.x.VM.pin_VCPU, vm, "0", "2", mode)
        assert err[:3] == ["VALUE_NOT_SUPPORTED", "cpus", "2"] and "P67" in err[3], err
        assert everything(pooled, k.x, vm) == before
        assert k.x.VM.pin_VCPU(vm, "0", "7", mode) == ""
        assert metrics(k.x, vm)["VCPUs_CPU"]["0"] == "7"
    finally:
        k.close()


def test_a_stored_pin_outside_the_pool_of_a_running_domain_is_refused(pooled):
    """--static on a domain running in P67 (pCPUs 6, 7): a pin to pCPU 2 can never apply there, and
    its next reboot would be refused; the same pin is refused in perm mode, so static must be too."""
    k = Kit(pooled)
    try:
        vm = k.vm(pool_name="P67")
        k.x.VM.start(vm, False, False)
        before = everything(pooled, k.x, vm)
        err = failure(k.x.VM.pin_VCPU, vm, "0", "2", "static")
        assert err[:2] == ["VALUE_NOT_SUPPORTED", "cpus"] and "P67" in err[3], err
        assert everything(pooled, k.x, vm) == before
    finally:
        k.close()


def test_a_start_with_stored_pins_outside_the_pool_is_refused(pooled):
    k = Kit(pooled)
    try:
        vm = k.vm(pool_name="P67", VCPUs_params={"cpumap0": "1"})
        err = failure(k.x.VM.start, vm, False, False)
        assert err[:3] == ["VALUE_NOT_SUPPORTED", "cpumap0", "1"] and "P67" in err[3], err
        assert k.x.VM.get_power_state(vm) == "Halted"
    finally:
        k.close()

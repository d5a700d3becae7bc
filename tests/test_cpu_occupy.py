"""cpuoccupy (seed 003, API.md §8): a pCPU reserved to some VMs, seen through the scheduler model.

``host_cpu.set_occupants(cpu, [vm...])`` keeps every other VM off that pCPU: the simulated host's
scheduler model (``VM_metrics.VCPUs_utilisation`` with every vCPU busy, and ``VCPUs_CPU``, where a
vCPU runs most) must never place another VM there. A reservation is refused while a VM has nowhere
else to run, holds for halted VMs, is applied whenever a VM starts or reboots, survives a server
restart, and ends with its occupant. Every test uses fresh VMs and leaves no reservation behind.

On libvirt (no utilisation model) a reservation is pinning: the placement (``VCPUs_CPU``) is checked
there, the shares only where the backend models them (``k.model``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ServerProcess
from vmkit import BOTH, MIB, NO_SURVIVAL, Kit, failure, metrics, modelled, on_sim, on_xl, session, sim_only

from xend_ext import sxp

pytestmark = pytest.mark.backends(*BOTH)

CPUS = 8


@pytest.fixture(scope="module")
def srv(tmp_path_factory, backend):
    server = ServerProcess(tmp_path_factory.mktemp("cpu-occupy") / "state", unix=False, host=backend).start()
    yield server
    server.stop()


class OccKit(Kit):
    """A Kit with the host's pCPUs at hand; frees every reservation when the test ends."""

    def __init__(self, server) -> None:
        super().__init__(server)
        self.cpu = {int(self.x.host_cpu.get_number(ref)): ref for ref in self.x.host_cpu.get_all()}
        self.model = modelled(server)  # the sim's scheduler model gives the shares

    def one(self, pins: str | None = None, **fields) -> str:
        """A 1-vCPU VM (pinned to ``pins`` if given)."""
        params = {"cpumap0": pins} if pins else {}
        return self.vm(VCPUs_at_startup=1, VCPUs_max=1, VCPUs_params=params, **fields)

    def running(self, pins: str | None = None, **fields) -> str:
        vm = self.one(pins, **fields)
        self.x.VM.start(vm, False, False)
        return vm

    def runs_on(self, vm: str, cpu: int, allowed) -> bool:
        """vCPU 0 of ``vm`` runs on ``cpu``: where the sim's model puts an occupant (alone on its reserved
        pCPU); a real hypervisor's scheduler may run it anywhere it is allowed (``allowed``)."""
        return where(self.x, vm) == cpu if self.model else where(self.x, vm) in set(allowed)

    def occupy(self, number: int, *vms: str) -> None:
        assert self.x.host_cpu.set_occupants(self.cpu[number], list(vms)) == ""

    def occupants(self, number: int) -> list[str]:
        return sorted(self.x.host_cpu.get_occupants(self.cpu[number]))

    def close(self) -> None:
        for ref in self.cpu.values():
            try:
                self.x.host_cpu.clear_occupants(ref)
            except Exception:  # noqa: BLE001 - the server may be gone already
                pass
        super().close()


@pytest.fixture
def k(srv):
    kit = OccKit(srv)
    yield kit
    kit.close()


def share(x, vm) -> float:
    """vCPU 0's share of a pCPU."""
    return float(metrics(x, vm)["VCPUs_utilisation"]["0"])


def where(x, vm) -> int:
    """The pCPU vCPU 0 runs on (most)."""
    return int(metrics(x, vm)["VCPUs_CPU"]["0"])


def on_cpus(x, vm) -> set[int]:
    return {int(c) for c in metrics(x, vm)["VCPUs_CPU"].values()}


def backend_occupied(server, x=None) -> dict[int, set[str]]:
    """{pCPU: {domain uuid}} the simulated hypervisor's scheduler model is told; off the sim, the
    server's view of it (host_cpu.occupants), in the same shape."""
    if not on_sim(server):
        x = x or session(server).xenapi
        out = {}
        for ref in x.host_cpu.get_all():
            if occupants := x.host_cpu.get_occupants(ref):
                out[int(x.host_cpu.get_number(ref))] = {x.VM.get_uuid(vm) for vm in occupants}
        return out
    state = sxp.loads((Path(server.state_dir) / "sim-host.sxp").read_text(encoding="utf-8"))
    out = {}
    for node in state[1:]:
        if isinstance(node, list) and node and node[0] == "occupied":
            out[int(sxp.child_value(node, "cpu"))] = set(sxp.child_value(node, "domains").split(","))
    return out


def policy(x, vm) -> tuple[list[str], list[str]]:
    p = x.VM.get_cpu_policy(vm)
    return p["occupied_cpus"], p["excluded_cpus"]


# -- the scheduler model honours a reservation ------------------------------------------------------

def test_vms_pinned_to_a_reserved_pcpu_and_another_move_to_the_other(k):
    """Three VMs pinned to {0,1}; reserving 0 for A leaves B and C on 1 only, sharing it."""
    x = k.x
    a, b, c = (k.running("0-1") for _ in range(3))
    if k.model:
        assert sum(share(x, vm) for vm in (a, b, c)) == pytest.approx(2.0)
        assert [share(x, vm) for vm in (a, b, c)] == pytest.approx([2 / 3] * 3)
    k.occupy(0, a)
    assert k.occupants(0) == [a]
    assert k.runs_on(a, 0, {0, 1}) and (not k.model or share(x, a) == pytest.approx(1.0))
    for other in (b, c):
        assert where(x, other) == 1 and (not k.model or share(x, other) == pytest.approx(0.5))
    assert backend_occupied(k.server, x) == {0: {x.VM.get_uuid(a)}}
    assert policy(x, a) == (["0"], [])
    assert policy(x, b) == ([], ["0"]) and policy(x, c) == ([], ["0"])


def test_unpinned_vms_are_kept_off_a_reserved_pcpu(k):
    """Ten busy unpinned VMs on eight pCPUs; with pCPU 0 reserved for A, the nine others share the
    seven other pCPUs and none of them runs on 0."""
    x = k.x
    a = k.running()
    others = [k.running() for _ in range(9)]
    assert not k.model or [share(x, vm) for vm in [a, *others]] == pytest.approx([0.8] * 10)
    k.occupy(0, a)
    assert k.runs_on(a, 0, range(CPUS)) and (not k.model or share(x, a) == pytest.approx(1.0))
    if k.model:
        assert sum(share(x, vm) for vm in others) == pytest.approx(CPUS - 1)
        assert [share(x, vm) for vm in others] == pytest.approx([7 / 9] * 9)
    assert all(where(x, vm) != 0 for vm in others)


def test_a_two_vcpu_vm_keeps_both_vcpus_off_a_reserved_pcpu(k):
    x = k.x
    a = k.running("2")
    two = k.vm(VCPUs_at_startup=2, VCPUs_max=2, VCPUs_params={"cpumap0": "2-3", "cpumap1": "2-3"})
    x.VM.start(two, False, False)
    k.occupy(2, a)
    assert on_cpus(x, two) == {3} and where(x, a) == 2
    if k.model:
        assert sum(float(u) for u in metrics(x, two)["VCPUs_utilisation"].values()) == pytest.approx(1.0)
        assert share(x, a) == pytest.approx(1.0)


def test_a_pcpu_reserved_to_several_vms(k):
    x = k.x
    a, b, c = (k.running("0-1") for _ in range(3))
    k.occupy(0, a, b)
    assert k.occupants(0) == sorted([a, b])
    assert where(x, c) == 1
    assert not k.model or [share(x, vm) for vm in (a, b, c)] == pytest.approx([2 / 3] * 3)
    assert policy(x, a) == (["0"], []) and policy(x, b) == (["0"], []) and policy(x, c) == ([], ["0"])


@on_xl()
def test_a_new_reservation_of_a_pcpu_replaces_the_old_one(k):
    x = k.x
    a, b = k.running("0-1"), k.running("0-1")
    k.occupy(0, a)
    assert where(x, b) == 1
    k.occupy(0, b)
    assert k.occupants(0) == [b]
    assert where(x, a) == 1 and k.runs_on(b, 0, {0, 1})
    assert policy(x, a) == ([], ["0"]) and policy(x, b) == (["0"], [])


def test_clearing_a_reservation_restores_the_shares(k):
    x = k.x
    a, b, c = (k.running("0-1") for _ in range(3))
    k.occupy(0, a)
    assert where(x, b) == 1 and (not k.model or share(x, b) == pytest.approx(0.5))
    assert x.host_cpu.clear_occupants(k.cpu[0]) == ""
    assert k.occupants(0) == []
    assert not k.model or [share(x, vm) for vm in (a, b, c)] == pytest.approx([2 / 3] * 3)
    assert {int(m) for vm in (b, c) for m in metrics(x, vm)["VCPUs_params"]["cpumap0"].split(",")} == {0, 1}
    assert backend_occupied(k.server, x) == {}
    assert all(policy(x, vm) == ([], []) for vm in (a, b, c))


def test_the_reservation_holds_while_its_occupant_is_halted(k):
    """The pCPU stays kept from the others even when nothing of its occupant runs."""
    x = k.x
    a = k.one()
    b = k.running("0-1")
    k.occupy(0, a)
    assert where(x, b) == 1 and (not k.model or share(x, b) == pytest.approx(1.0))
    x.VM.start(a, False, False)
    assert k.runs_on(a, 0, range(CPUS))


def test_a_vm_starting_later_is_kept_off_the_reserved_pcpu(k):
    x = k.x
    a = k.running()
    k.occupy(5, a)
    late = k.running("4-5")
    assert where(x, late) == 4
    x.VM.clean_reboot(late)
    assert where(x, late) == 4


# -- refusals -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["stored-pin-running", "dynamic-pin-running", "stored-pin-paused"])
def test_refused_while_another_vm_is_pinned_to_that_pcpu_alone(k, how):
    x = k.x
    a = k.running()
    name = f"alone-{how}"
    if how == "dynamic-pin-running":
        b = k.running(name_label=name)
        x.VM.pin_VCPU(b, "0", "3", "dynamic")
        assert x.VM.get_VCPUs_params(b) == {}
    else:
        b = k.one("3", name_label=name)
        x.VM.start(b, how == "stored-pin-paused", False)
    before = (x.VM.get_cpu_policy(a), x.VM.get_cpu_policy(b), metrics(x, a), backend_occupied(k.server, x))
    err = failure(x.host_cpu.set_occupants, k.cpu[3], [a])
    assert err[0] == "OPERATION_NOT_ALLOWED" and name in err[1] and "pCPU 3" in err[1], err
    assert k.occupants(3) == []
    after = (x.VM.get_cpu_policy(a), x.VM.get_cpu_policy(b), metrics(x, a), backend_occupied(k.server, x))
    assert after == before
    # the pinned VM may be one of the occupants; then nothing is in its way
    k.occupy(3, a, b)
    assert k.occupants(3) == sorted([a, b])


def test_a_halted_vms_stored_pin_does_not_block_a_reservation(k):
    """Issue 17 item 10, seed 003's "(*)": only a *running* domain pinned to that pCPU alone blocks
    cpuoccupy. A halted one does not; its start then says exactly why it cannot run."""
    x = k.x
    a = k.running()
    b = k.one("3", name_label="halted-on-3")
    k.occupy(3, a)
    assert k.occupants(3) == [a]
    err = failure(x.VM.start, b, False, False)
    assert err[0] == "OPERATION_NOT_ALLOWED" and "cpumap0=3" in err[1] and "reserved" in err[1], err
    assert x.VM.get_power_state(b) == "Halted"


def test_the_occupant_itself_may_be_pinned_to_the_pcpu_alone(k):
    x = k.x
    a = k.running("6")
    other = k.running()
    k.occupy(6, a)
    assert where(x, a) == 6 and (not k.model or share(x, a) == pytest.approx(1.0))
    assert where(x, other) != 6


def test_a_vm_pinned_only_to_pcpus_reserved_to_others_cannot_start(k):
    x = k.x
    a = k.running()
    k.occupy(2, a)
    stuck = k.one("2", name_label="stuck-on-2")
    err = failure(x.VM.start, stuck, False, False)
    assert err[0] == "OPERATION_NOT_ALLOWED" and "cpumap0" in err[1] and "reserved" in err[1], err
    assert x.VM.get_power_state(stuck) == "Halted"
    assert policy(x, stuck) == ([], ["2"])
    # a pin that also allows a free pCPU starts, and runs there only
    fine = k.one("2-3")
    x.VM.start(fine, False, False)
    assert where(x, fine) == 3


def test_a_reboot_onto_pcpus_reserved_to_others_is_refused_and_the_vm_keeps_running(k):
    x = k.x
    a = k.running()
    b = k.running("4-5")
    k.occupy(4, a)
    x.VM.remove_from_VCPUs_params(b, "cpumap0")
    x.VM.add_to_VCPUs_params(b, "cpumap0", "4")  # the stored definition, bypassing pin_VCPU's check
    err = failure(x.VM.clean_reboot, b)
    assert err[0] == "OPERATION_NOT_ALLOWED" and "reserved" in err[1], err
    assert x.VM.get_power_state(b) == "Running" and where(x, b) == 5


@pytest.mark.parametrize("mode", ["dynamic", "static", "perm"])
def test_pinning_onto_pcpus_reserved_to_others_is_refused(k, mode):
    x = k.x
    a = k.running()
    b = k.running()
    k.occupy(6, a)
    k.occupy(7, a)
    for cpus in ("6", "7", "6-7"):
        err = failure(x.VM.pin_VCPU, b, "0", cpus, mode)
        assert err[0] == "OPERATION_NOT_ALLOWED" and "reserved" in err[1], err
    assert x.VM.get_VCPUs_params(b) == {} and "cpumap0" not in metrics(x, b)["VCPUs_params"]
    # the occupant may pin itself there; another VM to a set with a free pCPU in it
    assert x.VM.pin_VCPU(a, "0", "7", mode) == ""
    assert x.VM.pin_VCPU(b, "0", "5-6", mode) == ""
    if mode != "static":
        assert where(x, b) == 5


def test_set_occupants_needs_a_vm(k):
    err = failure(k.x.host_cpu.set_occupants, k.cpu[1], [])
    assert err[0] == "VALUE_NOT_SUPPORTED", err
    assert k.occupants(1) == []


def test_set_occupants_refuses_a_vm_that_does_not_exist(k):
    """A reference to no VM is HANDLE_INVALID, as everywhere else; accepted, it reserves the pCPU to
    nobody and keeps every VM off it."""
    x = k.x
    nobody = "OpaqueRef:6b1d3c3e-0000-4000-8000-00000000dead"  # no such VM (not Domain-0's all-zero uuid)
    err = failure(x.host_cpu.set_occupants, k.cpu[1], [nobody])
    assert err == ["HANDLE_INVALID", "VM", nobody], err
    assert k.occupants(1) == []
    assert backend_occupied(k.server, x) == {}
    b = k.running("1-2")
    assert policy(x, b) == ([], [])


# -- the reservation's life: destroy, restart -------------------------------------------------------

def test_destroying_an_occupant_releases_the_pcpu(k):
    x = k.x
    a, b = k.one(), k.one()
    c = k.running("0-1")
    k.occupy(0, a, b)
    assert where(x, c) == 1
    x.VM.destroy(a)
    k.made.remove(a)
    assert k.occupants(0) == [b]  # still reserved to the other occupant
    assert where(x, c) == 1
    x.VM.destroy(b)
    k.made.remove(b)
    assert k.occupants(0) == []
    assert backend_occupied(k.server, x) == {}
    assert policy(x, c) == ([], [])
    other = k.running("0-1")
    assert {where(x, c), where(x, other)} == {0, 1} if k.model else {where(x, c), where(x, other)} <= {0, 1}


@sim_only(NO_SURVIVAL)
def test_a_reservation_survives_a_server_restart(make_server, backend):
    server = make_server(unix=False)
    k = OccKit(server)
    a = k.one()
    b = k.running("0-1")
    k.occupy(0, a)
    uuid_a = k.x.VM.get_uuid(a)
    assert server.stop() == 0
    server = make_server(state_dir=server.state_dir, unix=False)
    x = session(server).xenapi
    cpu0 = next(ref for ref in x.host_cpu.get_all() if x.host_cpu.get_number(ref) == "0")
    assert x.host_cpu.get_occupants(cpu0) == [a]
    assert backend_occupied(server) == {0: {uuid_a}}
    assert where(x, b) == 1 and share(x, b) == pytest.approx(1.0)
    assert policy(x, a) == (["0"], []) and policy(x, b) == ([], ["0"])
    x.VM.start(a, False, False)
    assert where(x, a) == 0
    x.VM.clean_reboot(b)
    assert where(x, b) == 1


# -- server bugs: a reservation must never leave a VM nowhere to run ---------------------------------

def test_a_reservation_leaving_a_vm_no_pcpu_at_all_is_refused(k):
    """B is pinned to {0,1}; 0 is reserved to A. Reserving 1 to A too leaves B nowhere to run (the start
    rule already refuses a VM whose pins lie only on pCPUs reserved to others): refused, as a pin to
    that pCPU alone is."""
    x = k.x
    a = k.running()
    b = k.running("0-1", name_label="two-pcpus")
    k.occupy(0, a)
    err = failure(x.host_cpu.set_occupants, k.cpu[1], [a])
    assert err[0] == "OPERATION_NOT_ALLOWED" and "two-pcpus" in err[1], err
    assert k.occupants(1) == []
    assert where(x, b) == 1 and (not k.model or share(x, b) == pytest.approx(1.0))


def test_reserving_the_only_pcpu_of_another_vms_pool_is_refused(make_server, backend):
    """C runs in pool P7 (pCPU 7 only). Reserving 7 to A (in Pool-0) would leave C nowhere to run."""
    server = make_server(unix=False)
    k = OccKit(server)
    try:
        x = k.x
        pool0 = x.cpu_pool.get_by_name_label("Pool-0")[0]
        x.cpu_pool.remove_host_CPU_live(pool0, k.cpu[7])
        pool = x.cpu_pool.create({"name_label": "P7", "ncpu": "1", "proposed_CPUs": ["7"]})
        x.cpu_pool.activate(pool)
        a = k.running()
        c = k.running(name_label="in-p7", pool_name="P7")
        assert where(x, c) == 7 and (not k.model or share(x, c) == pytest.approx(1.0))
        err = failure(x.host_cpu.set_occupants, k.cpu[7], [a])
        assert err[0] == "OPERATION_NOT_ALLOWED" and "in-p7" in err[1], err
        assert where(x, c) == 7 and (not k.model or share(x, c) == pytest.approx(1.0))
    finally:
        k.close()


@pytest.mark.backends(*BOTH)
def test_migrating_an_occupant_away_releases_its_pcpu(make_server, backend, tmp_path):
    """An occupant that leaves the host (VM.migrate) leaves its reservations, as a destroyed one does;
    else host_cpu.occupants keeps a dangling reference and the pCPU stays kept from every VM here."""
    src = make_server(unix=False)
    dst = make_server(state_dir=tmp_path / "dst", unix=False)
    k = OccKit(src)
    try:
        x = k.x
        a = k.running()
        b = k.running("2-3")
        k.occupy(2, a)
        assert where(x, b) == 3
        x.VM.migrate(a, dst.url, True)
        k.made.remove(a)
        assert k.occupants(2) == []
        assert backend_occupied(src) == {}
        assert policy(x, b) == ([], [])
        c = k.running("2")
        assert where(x, c) == 2
    finally:
        k.close()


def test_memory_of_occupants_is_untouched(k):
    """A reservation is about pCPUs only: memory and vCPU counts stay as they were."""
    x = k.x
    a = k.running(memory_target=192 * MIB)
    k.occupy(1, a)
    live = metrics(x, a)
    assert live["memory_actual"] == str(192 * MIB) and live["VCPUs_number"] == "1"

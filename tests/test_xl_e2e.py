"""xend-ext on real Xen (the xl backend, tests/realxen.py) through the official XenAPI client and
through ``xm``: every step is checked in xl's own output as well as through Xen-API."""

from __future__ import annotations

import time

import pytest
from conftest import ServerProcess
from hosts import HOSTS
from poolkit import PoolKit
from realxen import (  # noqa: F401 - clean_xen_fixture and xen_fixture are the fixtures clean_xen and xen
    GUEST_MIB,
    MIB,
    clean_xen_fixture,
    pv_fields,
    xen_fixture,
)
from vmkit import event_from, new_vm, token_now
from xmkit import ok, xm

# every xl call takes ~0.2 s under emulation
pytestmark = [pytest.mark.timeout(300), pytest.mark.realxen]


@pytest.fixture
def xl_server(clean_xen, tmp_path):
    server = ServerProcess(tmp_path / "state", host=HOSTS["xl"]).start()
    yield server
    server.stop()


def pv_guest(x, name: str, **fields) -> str:
    """A tiny PV guest: none of these tests needs the guest's help (see realxen.TINY_KERNEL)."""
    return new_vm(x, name, memory_target=str(GUEST_MIB * MIB), memory_static_max=str(GUEST_MIB * MIB),
                  VCPUs_at_startup="1", VCPUs_max="1", **pv_fields(), **fields)


def test_done_means_a_pool_and_a_guest_on_real_xen(xl_server, clean_xen):
    k = PoolKit(xl_server)
    x = k.x
    # a pool with two CPUs taken from Pool-0
    pool = k.active_pool([2, 3], name="xp")
    assert clean_xen.pools() == {"Pool-0": {"sched": "credit2", "cpus": {0, 1, 4, 5, 6, 7}},
                                 "xp": {"sched": "credit2", "cpus": {2, 3}}}
    assert k.cpus_of(k.pool0) == {0, 1, 4, 5, 6, 7} and x.cpu_pool.get_activated(pool)

    # a PV guest started in it
    vm = pv_guest(x, "g-e2e", pool_name="xp")
    x.VM.start(vm, False, False)
    row = clean_xen.domains()["g-e2e"]
    assert row["pool"] == "xp" and row["uuid"] == x.VM.get_uuid(vm) and int(x.VM.get_domid(vm)) == row["domid"]
    assert x.VM.get_power_state(vm) == "Running" and x.VM.get_cpu_pool(vm) == [pool]

    # weight and cap
    x.VM.set_sched_weight(vm, "512", "dynamic")
    x.VM.set_sched_cap(vm, "40", "dynamic")
    assert clean_xen.sched("g-e2e", "credit2") == (512, 40)
    running = x.VM.get_cpu_policy(vm)["running"]
    assert (int(running["weight"]), int(running["cap"])) == (512, 40)

    # its vCPU pinned
    x.VM.pin_VCPU(vm, "0", "3", "dynamic")
    assert clean_xen.vcpus("g-e2e")[0]["hard"] == "3"
    assert x.VM.get_cpu_policy(vm)["running"]["pins"] == {"0": "3"}

    # paused and unpaused
    x.VM.pause(vm)
    assert "p" in clean_xen.domains()["g-e2e"]["state"] and x.VM.get_power_state(vm) == "Paused"
    x.VM.unpause(vm)
    assert "p" not in clean_xen.domains()["g-e2e"]["state"] and x.VM.get_power_state(vm) == "Running"

    # back to Pool-0 (its pin on CPU 3 is outside Pool-0: unpin first, as xend required)
    x.VM.pin_VCPU(vm, "0", "all", "dynamic")
    assert clean_xen.vcpus("g-e2e")[0]["hard"] == "all"
    x.VM.cpu_pool_migrate(vm, k.pool0)
    assert clean_xen.domains()["g-e2e"]["pool"] == "Pool-0" and x.VM.get_cpu_pool(vm) == [k.pool0]

    # the pool deactivated and destroyed
    x.cpu_pool.deactivate(pool)
    assert list(clean_xen.pools()) == ["Pool-0"] and not x.cpu_pool.get_activated(pool)
    x.cpu_pool.destroy(pool)
    assert x.cpu_pool.get_by_name_label("xp") == []

    x.VM.hard_shutdown(vm)
    assert "g-e2e" not in clean_xen.domains() and x.VM.get_power_state(vm) == "Halted"


def _table(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()[1:] if line.strip()]


def test_xm_cpupool_list_prints_what_xl_prints(xl_server, clean_xen):
    k = PoolKit(xl_server)
    k.free(3)
    pool = k.pool("xq", ncpu=1, proposed_CPUs=["3"], sched_policy="credit2")
    k.x.cpu_pool.activate(pool)
    k.pool("xdefined", ncpu=1)  # a definition only: xm lists it inactive, xl knows nothing of it
    xm_rows = {r[0]: r for r in _table(ok(xm(xl_server, "cpupool-list")))}
    xl_rows = {r[0]: r for r in _table(clean_xen.out("cpupool-list"))}
    assert xm_rows.pop("xdefined")[3] == "n"
    assert xm_rows == xl_rows  # name, CPUs, scheduler, active, domain count: the same words
    assert xl_rows["xq"][:3] == ["xq", "1", "credit2"]
    xm_cpus = {r[0]: r[1:] for r in _table(ok(xm(xl_server, "cpupool-list", "-c")))}
    xl_cpus = {r[0]: r[1:] for r in _table(clean_xen.out("cpupool-list", "-c"))}
    xm_cpus.pop("xdefined", None)
    assert xm_cpus == xl_cpus == {"Pool-0": ["0,1,2,4,5,6,7"], "xq": ["3"]}


def test_an_xl_pause_behind_the_servers_back_is_a_mod_event(xl_server, clean_xen):
    k = PoolKit(xl_server)
    x = k.x
    vm = pv_guest(x, "g-outside")
    x.VM.start(vm, False, False)
    token = token_now(x, ["vm"])
    clean_xen.out("pause", "g-outside")  # xl itself, not xend-ext
    deadline = time.monotonic() + 20
    seen = []
    while time.monotonic() < deadline:
        reply = event_from(x, ["vm"], token, 5.0)
        token = reply["token"]
        seen += [e for e in reply["events"] if e["ref"] == vm and e["operation"] == "mod"]
        if any(e["snapshot"]["power_state"] == "Paused" for e in seen):
            break
    assert any(e["snapshot"]["power_state"] == "Paused" for e in seen), seen
    assert x.VM.get_power_state(vm) == "Paused"
    x.VM.hard_shutdown(vm)

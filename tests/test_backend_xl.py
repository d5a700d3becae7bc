"""The xl backend against a real Xen hypervisor (tests/realxen.py): every action is checked in
xl's own output (``xl list``, ``xl cpupool-list``, ``xl vcpu-list``, ``xl sched-credit``), not in
what the backend says about itself."""

from __future__ import annotations

import threading
import time

import pytest
from realxen import (  # noqa: F401 - clean_xen_fixture and xen_fixture are the fixtures clean_xen and xen
    GUEST_MIB,
    MIB,
    NCPUS,
    TINY_KERNEL,
    clean_xen_fixture,
    xen_fixture,
)

from xend_ext.backends.base import BackendError, Capability, DomainConfig, PowerState
from xend_ext.backends.xl import POOL0_UUID, XlBackend, parse_cpulist, parse_vcpu_list

# every xl call takes ~0.2 s under emulation
pytestmark = [pytest.mark.timeout(300), pytest.mark.realxen]

POOL_UUID = "5eed0000-0000-4000-8000-000000000001"


def guest(name: str, uuid: str, pool: str = "", **fields) -> DomainConfig:
    """A tiny guest (realxen.TINY_KERNEL)."""
    values = dict(uuid=uuid, name=name, memory=GUEST_MIB * MIB, memory_max=(GUEST_MIB + 32) * MIB, vcpus=1,
                  vcpus_max=2, pool=pool, metadata={"pool_name": "test"}, kernel=TINY_KERNEL, ramdisk="", args="")
    values.update(fields)
    return DomainConfig(**values)


@pytest.fixture
def xlb(clean_xen, tmp_path):
    b = XlBackend(clean_xen.xl, tmp_path / "state", poll=0.5)
    yield b
    b.close()


def test_parsers_read_xl_formats():
    assert parse_cpulist("0,2-3") == {0, 2, 3}
    rows = parse_vcpu_list("Name  ID  VCPU   CPU State   Time(s) Affinity (Hard / Soft)\n"
                           "g1    4     0    3   -b-       9.0  3 / all\n"
                           "g1    4     1    -   --p       2.1  all / all\n")
    assert rows == {4: [{"vcpu": 0, "cpu": 3, "online": True, "hard": frozenset({3}), "time": 9.0},
                        {"vcpu": 1, "cpu": -1, "online": False, "hard": None, "time": 2.1}]}


def test_discovers_the_host_dom0_and_pool0(xlb, clean_xen):
    info = xlb.host_info()
    assert len(info.cpus) == NCPUS
    assert info.sched_policy == "credit2"
    assert info.software_version["xen"].startswith("4.17")
    assert 0 < info.memory_free < info.memory_total
    (dom0,) = xlb.domains()
    assert dom0.is_control_domain and dom0.domid == 0 and dom0.name == "Domain-0"
    assert abs(dom0.memory - clean_xen.domains()["Domain-0"]["mem"] * MIB) <= MIB
    (pool0,) = xlb.pools()
    assert (pool0.uuid, pool0.name, pool0.cpus) == (POOL0_UUID, "Pool-0", frozenset(range(NCPUS)))
    assert Capability.POOLS in xlb.capabilities and xlb.migration == "save"
    with pytest.raises(BackendError) as refused:
        xlb.pause(dom0.uuid)
    assert refused.value.code == "OPERATION_NOT_ALLOWED"


def test_pools_through_xl_cpupool(xlb, clean_xen, tmp_path):
    xlb.pool_remove_cpu(POOL0_UUID, 3)
    xlb.pool_remove_cpu(POOL0_UUID, 2)
    assert clean_xen.pools()["Pool-0"]["cpus"] == {0, 1, 4, 5, 6, 7}
    pool = xlb.pool_activate(POOL_UUID, "px", "credit2", frozenset({2}))
    assert (pool.uuid, pool.name, pool.cpus, pool.sched) == (POOL_UUID, "px", {2}, "credit2")
    assert clean_xen.pools()["px"] == {"sched": "credit2", "cpus": {2}}
    with pytest.raises(BackendError) as busy:
        xlb.pool_add_cpu(POOL_UUID, 0)  # still Pool-0's
    assert busy.value.code == "INVALID_CPU"
    xlb.pool_add_cpu(POOL_UUID, 3)
    assert clean_xen.pools()["px"]["cpus"] == {2, 3}
    # xl exits 0 when libxl fails to add a CPU that is not free: the error line must still count
    done = clean_xen.run("cpupool-cpu-add", "px", "1")
    assert done.returncode == 0 and "libxl: error" in done.stderr, done
    with pytest.raises(BackendError):
        xlb._xl("cpupool-cpu-add", "px", "1")
    xlb.pool_remove_cpu(POOL_UUID, 3)
    assert clean_xen.pools()["px"]["cpus"] == {2}
    # the uuid survives a restart of the backend (xl knows names only)
    again = XlBackend(clean_xen.xl, tmp_path / "state", poll=0.5)
    assert {p.name: p.uuid for p in again.pools()} == {"Pool-0": POOL0_UUID, "px": POOL_UUID}
    xlb.pool_deactivate(POOL_UUID)
    assert list(clean_xen.pools()) == ["Pool-0"]
    with pytest.raises(BackendError) as gone:
        xlb.pool_add_cpu(POOL_UUID, 2)
    assert gone.value.code == "POOL_BAD_STATE"
    with pytest.raises(BackendError) as boot_pool:
        xlb.pool_deactivate(POOL0_UUID)
    assert boot_pool.value.code == "OPERATION_NOT_ALLOWED"


def test_a_guest_through_its_live_changes(xlb, clean_xen):
    """One tiny PV guest: start in a pool, pause, weight and cap, pin, memory, vCPUs, move, destroy
    (what Xen does without the guest's help; the next test has what needs it)."""
    uuid = "5eed0000-0000-4000-8000-0000000000a1"
    for cpu in (2, 3):
        xlb.pool_remove_cpu(POOL0_UUID, cpu)
    xlb.pool_activate(POOL_UUID, "px", "credit2", frozenset({2, 3}))  # not credit: see machine.py
    d = xlb.start(guest("g-life", uuid, pool=POOL_UUID, weight=300, cap=20, pins={0: frozenset({3})}), paused=True)
    row = clean_xen.domains()["g-life"]
    assert (row["uuid"], row["pool"], row["mem"], row["vcpus"]) == (uuid, "px", GUEST_MIB, 1)
    assert "p" in row["state"] and d.power_state == PowerState.PAUSED and d.pool == POOL_UUID
    assert clean_xen.sched("g-life", "credit2") == (300, 20) and (d.weight, d.cap) == (300, 20)
    assert clean_xen.vcpus("g-life")[0]["hard"] == "3" and d.pins == {0: {3}}
    assert d.metadata == {"pool_name": "test"}

    with pytest.raises(BackendError) as twice:
        xlb.start(guest("g-life", uuid), paused=False)
    assert twice.value.code == "VM_BAD_POWER_STATE"
    d = xlb.unpause(uuid)
    assert d.power_state == PowerState.RUNNING and "p" not in clean_xen.domains()["g-life"]["state"]
    with pytest.raises(BackendError) as not_paused:
        xlb.unpause(uuid)
    assert not_paused.value.code == "VM_BAD_POWER_STATE"
    d = xlb.pause(uuid)
    assert d.power_state == PowerState.PAUSED and "p" in clean_xen.domains()["g-life"]["state"]
    xlb.unpause(uuid)

    d = xlb.set_sched(uuid, 512, 50)
    assert clean_xen.sched("g-life", "credit2") == (512, 50) == (d.weight, d.cap)
    d = xlb.pin(uuid, 0, frozenset({2}))
    assert clean_xen.vcpus("g-life")[0]["hard"] == "2" and d.pins == {0: {2}}
    d = xlb.pin(uuid, 0, None)
    assert clean_xen.vcpus("g-life")[0]["hard"] == "all" and d.pins == {}

    with pytest.raises(BackendError) as in_use:
        xlb.pool_deactivate(POOL_UUID)
    assert in_use.value.code == "POOL_BAD_STATE"
    xlb.pool_remove_cpu(POOL_UUID, 3)
    with pytest.raises(BackendError) as last:
        xlb.pool_remove_cpu(POOL_UUID, 2)
    assert last.value.code == "LAST_CPU_NOT_REMOVEABLE"
    assert clean_xen.pools()["px"]["cpus"] == {2}

    d = xlb.set_memory_max(uuid, 150 * MIB)
    assert d.memory_max == 150 * MIB
    d = xlb.set_memory(uuid, 112 * MIB)
    assert d.memory == 112 * MIB
    with pytest.raises(BackendError) as above:
        xlb.set_memory(uuid, 200 * MIB)
    assert above.value.code == "VALUE_NOT_SUPPORTED"
    d = xlb.set_vcpus(uuid, 2)
    assert d.vcpus == 2 and len(clean_xen.vcpus("g-life")) == 2

    d = xlb.pool_move_domain(uuid, POOL0_UUID)
    assert d.pool == POOL0_UUID and clean_xen.domains()["g-life"]["pool"] == "Pool-0"
    xlb.pool_deactivate(POOL_UUID)
    assert list(clean_xen.pools()) == ["Pool-0"]

    xlb.shutdown(uuid, clean=False)
    assert list(clean_xen.domains()) == ["Domain-0"] and xlb.domain(uuid) is None


def test_reserved_pcpus_narrow_the_other_guests_hard_affinity(xlb, clean_xen, tmp_path):
    """cpuoccupy: Xen has no reservations, so the backend keeps the other guests off a reserved pCPU
    by their hard affinity (``xl vcpu-list``) while it reports their pins as asked, and gives them
    back when the reservation ends; a guest started meanwhile is created that way."""
    a, b, c = (f"5eed0000-0000-4000-8000-0000000000c{i}" for i in (1, 2, 3))
    xlb.start(guest("g-occ", a), paused=False)
    xlb.start(guest("g-free", b, pins={1: frozenset({4, 5})}), paused=False)
    xlb.set_occupancy({4: frozenset({a}), 5: frozenset({a})})
    assert [v["hard"] for v in clean_xen.vcpus("g-occ")] == ["all", "all"]
    assert [v["hard"] for v in clean_xen.vcpus("g-free")] == ["0-3,6-7", "0-3,6-7"]
    assert xlb.domain(b).pins == {1: {4, 5}}  # as asked; Xen holds them narrowed
    assert all(v["cpu"] not in ("4", "5") for v in clean_xen.vcpus("g-free"))
    xlb.pin(b, 0, frozenset({5, 6}))
    assert clean_xen.vcpus("g-free")[0]["hard"] == "6" and xlb.domain(b).pins == {0: {5, 6}, 1: {4, 5}}
    xlb.start(guest("g-late", c), paused=True)
    assert [v["hard"] for v in clean_xen.vcpus("g-late")] == ["0-3,6-7", "0-3,6-7"]
    again = XlBackend(clean_xen.xl, tmp_path / "state", poll=0.5)  # a restarted server knows it all
    try:
        assert again.domain(b).pins == {0: {5, 6}, 1: {4, 5}}
    finally:
        again.close()

    xlb.set_occupancy({})
    assert [v["hard"] for v in clean_xen.vcpus("g-free")] == ["5-6", "4-5"]
    assert [v["hard"] for v in clean_xen.vcpus("g-late")] == ["all", "all"]
    assert xlb.domain(b).pins == {0: {5, 6}, 1: {4, 5}}


def test_a_guest_answering_suspend_save_and_shutdown(xlb, clean_xen, tmp_path):
    """What needs the guest's help (the tiny guest answers as a PV Linux does): suspend/resume,
    save/restore, clean shutdown."""
    uuid = "5eed0000-0000-4000-8000-0000000000a2"
    xlb.start(guest("g-life", uuid, memory=32 * MIB), paused=False)
    d = xlb.suspend(uuid)
    assert d.power_state == PowerState.SUSPENDED and "g-life" not in clean_xen.domains()
    assert xlb.domain(uuid).power_state == PowerState.SUSPENDED
    # a restarted backend still knows the suspended domain (Xen does not)
    assert XlBackend(clean_xen.xl, tmp_path / "state").domain(uuid).power_state == PowerState.SUSPENDED
    d = xlb.resume(uuid, paused=False)
    assert d.power_state == PowerState.RUNNING and clean_xen.domains()["g-life"]["uuid"] == uuid

    image = tmp_path / "g-life.img"
    xlb.save(uuid, image, {"name_label": "g-life", "note": "kept"})
    assert "g-life" not in clean_xen.domains() and xlb.domain(uuid) is None
    assert xlb.read_image(image) == {"name_label": "g-life", "note": "kept"}
    d, meta = xlb.restore(image, paused=True, config=guest("g-back", uuid))
    assert meta["note"] == "kept" and d.name == "g-back" and d.power_state == PowerState.PAUSED
    row = clean_xen.domains()["g-back"]
    assert row["uuid"] == uuid and "p" in row["state"]

    data = bytearray(image.read_bytes())
    data[-1] ^= 1
    image.write_bytes(bytes(data))  # damaged since: refused before xl reads it
    with pytest.raises(BackendError) as damaged:
        xlb.restore(image, paused=False)
    assert damaged.value.code == "INVALID_VALUE" and list(clean_xen.domains()) == ["Domain-0", "g-back"]

    xlb.unpause(uuid)
    xlb.shutdown(uuid, clean=True)  # the guest acknowledges the request and powers off
    assert list(clean_xen.domains()) == ["Domain-0"] and xlb.domain(uuid) is None


def test_outside_changes_are_reported_once(xlb, clean_xen):
    """A pool made with xl behind the backend's back is reported; the backend's own change is not."""
    seen: list[tuple[str, str]] = []
    reported = threading.Event()

    def notify(kind: str, ident: str) -> None:
        seen.append((kind, ident))
        reported.set()

    xlb.watch(notify)
    xlb.pool_remove_cpu(POOL0_UUID, 3)  # ours: must not be reported
    time.sleep(2.5)
    assert seen == []
    clean_xen.out("cpupool-create", 'name="outside"', 'sched="credit2"', 'cpus=["3"]')
    assert reported.wait(10), "the poll did not report a pool made with xl"
    assert seen[0] == ("pools", "")
    assert "outside" in {p.name for p in xlb.pools()}

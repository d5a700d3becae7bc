"""The simulated host as a unit: no server, a SimBackend on a temporary directory.

Its domains live in ``sim-host.sxp`` and outlive the object (a toolstack restart), ``reboot=True``
is a host reboot, images are real files with a checksum, memory is accounted like a Xen host's.
"""

from __future__ import annotations

import pytest

from xend_ext.backends.base import BackendError, Capability, DomainConfig, PowerState
from xend_ext.backends.sim import DOM0_MEMORY, DOM0_UUID, STATE_FILE, SimBackend

MIB = 1 << 20


def config(n: int = 1, **kw) -> DomainConfig:
    values = dict(uuid=f"00000000-0000-0000-0000-{n:012d}", name=f"guest{n}", memory=256 * MIB,
                  memory_max=512 * MIB, vcpus=1, vcpus_max=2)
    values.update(kw)
    return DomainConfig(**values)


@pytest.fixture
def sim(tmp_path):
    return SimBackend(tmp_path, cpus=4)


def guests(backend):
    return {d.uuid: d for d in backend.domains() if not d.is_control_domain}


def test_a_new_host_runs_domain0_only(sim, tmp_path):
    domains = sim.domains()
    assert [d.uuid for d in domains] == [DOM0_UUID]
    dom0 = domains[0]
    assert (dom0.name, dom0.domid, dom0.power_state, dom0.is_control_domain) == ("Domain-0", 0, "Running", True)
    assert dom0.memory == DOM0_MEMORY
    assert (tmp_path / STATE_FILE).is_file()
    info = sim.host_info()
    assert [c.number for c in info.cpus] == [0, 1, 2, 3]
    assert info.memory_free == info.memory_total - DOM0_MEMORY


def test_capabilities(sim):
    assert sim.capabilities == {
        Capability.HOST, Capability.NUMA, Capability.LIFECYCLE, Capability.PAUSE, Capability.SUSPEND,
        Capability.SAVE, Capability.MIGRATE, Capability.MEMORY_LIVE, Capability.VCPUS_LIVE, Capability.PIN,
        Capability.SCHED_CREDIT, Capability.UTILISATION, Capability.POOLS, Capability.SCHED_DOMAIN,
        Capability.CPU_OCCUPY, Capability.MEMORY_MAX_LIVE,
    }
    assert all(isinstance(c, str) for c in sim.capabilities)


def test_start_gives_increasing_domids_and_the_config(sim):
    a = sim.start(config(1, weight=300, cap=50, pins={0: frozenset({2})}), paused=False)
    b = sim.start(config(2), paused=True)
    assert (a.power_state, b.power_state) == (PowerState.RUNNING, PowerState.PAUSED)
    assert 0 < a.domid < b.domid
    assert (a.memory, a.memory_max, a.vcpus, a.vcpus_max, a.weight, a.cap) == (256 * MIB, 512 * MIB, 1, 2, 300, 50)
    assert a.pins == {0: frozenset({2})} and a.vcpu_cpu == {0: 2}
    assert sim.domain(a.uuid).utilisation == {0: pytest.approx(0.5)}  # cap 50
    err = pytest.raises(BackendError, sim.start, config(1), False).value
    assert err.code == "VM_BAD_POWER_STATE"


def test_domains_persist_across_a_new_backend_on_the_same_dir(tmp_path):
    first = SimBackend(tmp_path, cpus=4)
    running = first.start(config(1, pins={1: frozenset({3})}, weight=512), paused=False)
    paused = first.start(config(2), paused=True)
    suspended = first.start(config(3), paused=False)
    first.suspend(suspended.uuid)
    first.close()
    second = SimBackend(tmp_path, cpus=4)
    found = guests(second)
    assert set(found) == {running.uuid, paused.uuid, suspended.uuid}
    assert found[running.uuid].domid == running.domid and found[running.uuid].power_state == "Running"
    assert found[running.uuid].pins == {1: frozenset({3})} and found[running.uuid].weight == 512
    assert found[running.uuid].start_time == running.start_time
    assert found[paused.uuid].power_state == "Paused"
    assert found[suspended.uuid].power_state == "Suspended"
    assert second.boot_id == first.boot_id  # the host did not reboot
    # domids keep counting
    assert second.start(config(4), paused=False).domid > max(d.domid for d in found.values())
    # and the suspended domain resumes from the image the first instance wrote
    assert second.resume(suspended.uuid, paused=False).power_state == "Running"


def test_reboot_clears_guests_but_not_domain0(tmp_path):
    first = SimBackend(tmp_path, cpus=4)
    first.start(config(1), paused=False)
    first.start(config(2), paused=False)
    first.suspend(config(2).uuid)
    assert list((tmp_path / "sim-images").iterdir())
    rebooted = SimBackend(tmp_path, cpus=4, reboot=True)
    assert [d.uuid for d in rebooted.domains()] == [DOM0_UUID]
    assert rebooted.domain(DOM0_UUID).power_state == "Running"
    assert rebooted.boot_id == first.boot_id + 1
    assert not list((tmp_path / "sim-images").iterdir())  # suspend images do not survive a reboot
    assert SimBackend(tmp_path, cpus=4).domains() == rebooted.domains()  # and the reboot persisted


def test_save_writes_a_real_image_and_restore_brings_it_back(sim, tmp_path):
    d = sim.start(config(1, memory=300 * MIB, weight=700, pins={0: frozenset({1})}), paused=False)
    path = tmp_path / "saved.img"
    sim.save(d.uuid, path, {"name_label": "guest1", "k": "v"})
    assert sim.domain(d.uuid) is None
    data = path.read_bytes()
    assert data.startswith(b"XEND-EXT-SIM-IMAGE") and len(data) > 100
    assert sim.read_image(path) == {"name_label": "guest1", "k": "v"}
    restored, meta = sim.restore(path, paused=True)
    assert meta == {"name_label": "guest1", "k": "v"}
    assert restored.power_state == "Paused" and restored.domid > d.domid
    assert (restored.memory, restored.weight, restored.pins) == (300 * MIB, 700, {0: frozenset({1})})
    assert restored.start_time == d.start_time
    err = pytest.raises(BackendError, sim.restore, path, False).value
    assert err.code == "VM_BAD_POWER_STATE"  # it runs already


@pytest.mark.parametrize("where", ["header", "body", "end"])
def test_a_tampered_image_is_refused(sim, tmp_path, where):
    d = sim.start(config(1), paused=False)
    path = tmp_path / "saved.img"
    sim.save(d.uuid, path, {"k": "v"})
    data = bytearray(path.read_bytes())
    index = {"header": len(b"XEND-EXT-SIM-IMAGE 2\n") + 3, "body": len(data) // 2, "end": len(data) - 2}[where]
    data[index] ^= 0x04
    path.write_bytes(bytes(data))
    free = sim.host_info().memory_free
    for call in (lambda: sim.restore(path, False), lambda: sim.read_image(path)):
        err = pytest.raises(BackendError, call).value
        assert err.code == "INVALID_VALUE" and str(path) in err.params
    assert sim.domain(d.uuid) is None and sim.host_info().memory_free == free


def test_restore_of_garbage_or_a_missing_file(sim, tmp_path):
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"not an image at all")
    for path in (junk, tmp_path / "missing.img"):
        assert pytest.raises(BackendError, sim.restore, path, False).value.code == "INVALID_VALUE"


def test_memory_accounting(tmp_path):
    sim = SimBackend(tmp_path, cpus=2, memory_mib=2048)
    total = sim.host_info().memory_total
    assert total == 2048 * MIB
    free = lambda: sim.host_info().memory_free  # noqa: E731
    assert free() == total - DOM0_MEMORY
    a = sim.start(config(1, memory=256 * MIB), paused=False)
    assert free() == total - DOM0_MEMORY - 256 * MIB
    sim.pause(a.uuid)
    assert free() == total - DOM0_MEMORY - 256 * MIB  # a paused domain keeps its memory
    sim.suspend(a.uuid)
    assert free() == total - DOM0_MEMORY  # a suspended one does not
    sim.resume(a.uuid, paused=False)
    sim.set_memory(a.uuid, 512 * MIB)
    assert free() == total - DOM0_MEMORY - 512 * MIB
    err = pytest.raises(BackendError, sim.start, config(2, memory=700 * MIB, memory_max=700 * MIB), False).value
    assert err.code == "HOST_NOT_ENOUGH_FREE_MEMORY"
    assert config(2).uuid not in guests(sim)
    assert pytest.raises(BackendError, sim.set_memory, a.uuid, 600 * MIB).value.code == "VALUE_NOT_SUPPORTED"
    # a reboot may use the memory the old domain releases
    rebooted = sim.reboot(a.uuid, True, config(1, memory=1000 * MIB, memory_max=1000 * MIB))
    assert rebooted.memory == 1000 * MIB and free() == total - DOM0_MEMORY - 1000 * MIB
    sim.shutdown(a.uuid, clean=True)
    assert free() == total - DOM0_MEMORY


def test_memory_accounting_refuses_what_is_not_there(tmp_path):
    sim = SimBackend(tmp_path, cpus=2, memory_mib=2048)
    a = sim.start(config(1, memory=512 * MIB, memory_max=1024 * MIB), paused=False)
    sim.start(config(2, memory=400 * MIB), paused=False)
    err = pytest.raises(BackendError, sim.set_memory, a.uuid, 1024 * MIB).value
    assert err.code == "HOST_NOT_ENOUGH_FREE_MEMORY"
    assert sim.domain(a.uuid).memory == 512 * MIB
    sim.suspend(a.uuid)
    sim.start(config(3, memory=500 * MIB), paused=False)
    assert pytest.raises(BackendError, sim.resume, a.uuid, False).value.code == "HOST_NOT_ENOUGH_FREE_MEMORY"
    assert sim.domain(a.uuid).power_state == "Suspended"


def test_power_state_rules(sim):
    d = sim.start(config(1), paused=False)
    assert pytest.raises(BackendError, sim.unpause, d.uuid).value.code == "VM_BAD_POWER_STATE"
    assert pytest.raises(BackendError, sim.resume, d.uuid, False).value.code == "VM_BAD_POWER_STATE"
    sim.pause(d.uuid)
    assert pytest.raises(BackendError, sim.shutdown, d.uuid, True).value.code == "VM_BAD_POWER_STATE"
    assert pytest.raises(BackendError, sim.reboot, d.uuid, True, config(1)).value.code == "VM_BAD_POWER_STATE"
    assert sim.reboot(d.uuid, False, config(1)).power_state == "Running"  # hard reboot of a paused domain
    sim.suspend(d.uuid)
    assert sim.domain(d.uuid).domid == -1
    assert pytest.raises(BackendError, sim.pause, d.uuid).value.code == "VM_BAD_POWER_STATE"
    sim.shutdown(d.uuid, clean=False)  # a suspended domain can be thrown away
    assert sim.domain(d.uuid) is None
    assert pytest.raises(BackendError, sim.pause, d.uuid).value.code == "HANDLE_INVALID"


def test_domain0_is_protected(sim):
    for call in (lambda: sim.shutdown(DOM0_UUID, False), lambda: sim.pause(DOM0_UUID),
                 lambda: sim.suspend(DOM0_UUID), lambda: sim.reboot(DOM0_UUID, False, config(0, uuid=DOM0_UUID))):
        assert pytest.raises(BackendError, call).value.code == "OPERATION_NOT_ALLOWED"
    assert sim.domain(DOM0_UUID).power_state == "Running" and sim.domain(DOM0_UUID).domid == 0


def test_pins_and_scheduler_parameters(sim):
    a = sim.start(config(1, pins={0: frozenset({0})}), paused=False)
    b = sim.start(config(2, pins={0: frozenset({0})}), paused=False)
    assert sim.domain(a.uuid).utilisation == {0: pytest.approx(0.5)}
    sim.set_sched(a.uuid, 512, 0)
    assert sim.domain(a.uuid).utilisation == {0: pytest.approx(2 / 3)}
    assert sim.domain(b.uuid).utilisation == {0: pytest.approx(1 / 3)}
    sim.pin(b.uuid, 0, frozenset({3}))
    assert sim.domain(a.uuid).utilisation == {0: 1.0} and sim.domain(b.uuid).vcpu_cpu == {0: 3}
    sim.pin(b.uuid, 0, None)
    assert sim.domain(b.uuid).pins == {}
    assert pytest.raises(BackendError, sim.pin, a.uuid, 0, frozenset({4})).value.code == "INVALID_VALUE"
    assert pytest.raises(BackendError, sim.start, config(3, pins={0: frozenset({9})}), False).value.code \
        == "INVALID_VALUE"
    assert sim.set_vcpus(a.uuid, 2).vcpus == 2
    assert pytest.raises(BackendError, sim.set_vcpus, a.uuid, 3).value.code == "VALUE_NOT_SUPPORTED"
    assert pytest.raises(BackendError, sim.set_vcpus, a.uuid, 0).value.code == "VALUE_NOT_SUPPORTED"


def test_invalid_memory_is_refused(sim):
    d = sim.start(config(1), paused=False)
    for memory in (0, -4096):
        assert pytest.raises(BackendError, sim.set_memory, d.uuid, memory).value.code == "VALUE_NOT_SUPPORTED"
    assert sim.domain(d.uuid).memory == 256 * MIB


def test_a_bad_host_description_is_refused(tmp_path):
    for kw in ({"cpus": 0}, {"cpus": 2, "numa_nodes": 3}, {"memory_mib": 1024}):
        with pytest.raises(ValueError):
            SimBackend(tmp_path, **kw)

"""cpu_pool across server restarts (API.md §5, §9): definitions are persisted; restarting the server
is a toolstack restart, so active pools keep their CPUs and VMs; ``--sim-reboot`` is a host reboot,
after which only Pool-0 exists in the hypervisor; ``auto_power_on`` pools activate at every server
start, before ``auto_power_on`` VMs start, taking their CPUs from Pool-0 on a host that just booted."""

from __future__ import annotations

from poolkit import CPUS, PoolKit, backend_pools, failure

POOL0_UUID = "00000000-0000-0000-0000-0000000000f0"
COMPUTED = ("activated", "host_CPUs", "started_VMs")


def _start(make_server) -> PoolKit:
    return PoolKit(make_server("--cpus", str(CPUS), unix=False))


def _restart(make_server, kit: PoolKit, how: str = "stop", reboot: bool = False) -> PoolKit:
    """The same state dir served again: a toolstack restart, or a host reboot first."""
    server = kit.server
    if how == "kill9":
        server.kill9()
    else:
        assert server.stop() == 0
    extra = [a for a in server.extra if a != "--sim-reboot"] + (["--sim-reboot"] if reboot else [])
    return PoolKit(make_server(*extra, state_dir=server.state_dir, unix=False))


def _definitions(kit: PoolKit) -> dict:
    return {ref: {k: v for k, v in rec.items() if k not in COMPUTED}
            for ref, rec in kit.x.cpu_pool.get_all_records().items()}


def test_definitions_survive_a_restart_and_a_kill9(make_server):
    kit = _start(make_server)
    x = kit.x
    full = kit.pool("full", name_description="d", ncpu=3, sched_policy="credit2", proposed_CPUs=["1", "4"],
                    other_config={"a": "b"})
    bare = kit.pool("bare")
    x.cpu_pool.destroy(kit.pool("gone"))
    before = x.cpu_pool.get_all_records()
    assert len(before) == 3
    kit = _restart(make_server, kit)
    x = kit.x
    assert x.cpu_pool.get_all_records() == before
    assert x.cpu_pool.get_by_name_label("gone") == []
    # changes made just before a kill -9 are kept
    x.cpu_pool.set_ncpu(full, 2)
    x.cpu_pool.add_to_other_config(full, "c", "d")
    x.cpu_pool.destroy(bare)
    newer = kit.pool("newer", sched_policy="credit2")
    before = x.cpu_pool.get_all_records()
    kit = _restart(make_server, kit, "kill9")
    x = kit.x
    assert x.cpu_pool.get_all_records() == before
    assert sorted(x.cpu_pool.get_all()) == sorted([kit.pool0, full, newer])
    assert x.cpu_pool.get_other_config(full) == {"a": "b", "c": "d"} and x.cpu_pool.get_ncpu(full) == "2"
    assert failure(x.cpu_pool.get_record, bare) == ["HANDLE_INVALID", "cpu_pool", bare]


def _busy_host(kit: PoolKit) -> tuple[str, str, str]:
    """A (5, 6; credit2) with a running VM, B (7) with none, CPU 4 free."""
    a = kit.active_pool([5, 6], "A", sched_policy="credit2", other_config={"k": "v"})
    b = kit.active_pool([7], "B")
    kit.free(4)
    vm = kit.vm(pool_name="A", VCPUs_max=2, VCPUs_at_startup=2)
    kit.x.VM.start(vm, False, False)
    return a, b, vm


def test_active_pools_keep_their_cpus_and_vms_across_a_toolstack_restart(make_server):
    kit = _start(make_server)
    a, b, vm = _busy_host(kit)
    before, util = kit.everything(), kit.utilisation(vm)
    for how in ("stop", "kill9"):
        kit = _restart(make_server, kit, how)
        assert kit.everything() == before, how
        assert kit.utilisation(vm) == util and set(kit.vcpus_cpu(vm).values()) <= {5, 6}
    x = kit.x
    assert kit.cpus_of(a) == {5, 6} and kit.cpus_of(b) == {7} and kit.unassigned() == {4}
    assert x.cpu_pool.get_started_VMs(a) == [vm] and x.VM.get_cpu_pool(vm) == [a]
    assert backend_pools(kit.server)[x.cpu_pool.get_uuid(a)]["sched"] == "credit2"
    # and the pools go on working
    assert failure(x.cpu_pool.deactivate, a) == ["POOL_BAD_STATE", "in use"]
    x.cpu_pool.add_host_CPU_live(b, kit.cpu[4])
    assert kit.cpus_of(b) == {4, 7} and kit.free_cpus() == 0
    x.cpu_pool.deactivate(b)
    assert kit.unassigned() == {4, 7}


def test_a_host_reboot_leaves_only_pool0_active(make_server):
    kit = _start(make_server)
    a, b, vm = _busy_host(kit)
    definitions = _definitions(kit)
    kit = _restart(make_server, kit, reboot=True)
    x = kit.x
    assert {ref: d for ref, d in _definitions(kit).items() if ref != kit.pool0} == {
        ref: d for ref, d in definitions.items() if ref != kit.pool0}
    for pool in (a, b):
        rec = x.cpu_pool.get_record(pool)
        assert rec["activated"] is False and rec["host_CPUs"] == [] and rec["started_VMs"] == []
    assert kit.cpus_of(kit.pool0) == set(range(CPUS))
    assert kit.owner() == {n: [kit.pool0] for n in range(CPUS)}
    assert kit.free_cpus() == 0 and kit.unassigned() == set()
    assert set(backend_pools(kit.server)) == {POOL0_UUID}
    assert x.VM.get_power_state(vm) == "Halted" and x.VM.get_cpu_pool(vm) == []
    assert x.VM.get_pool_name(vm) == "A"
    assert x.cpu_pool.get_started_VMs(kit.pool0) == [kit.dom0]
    assert failure(x.cpu_pool.activate, a) == ["INSUFFICIENT_CPUS", "2", "0"]
    assert failure(x.VM.start, vm, False, False) == ["POOL_BAD_STATE", "deactivated"]


def test_auto_power_on_pools_activate_before_auto_power_on_vms(make_server):
    kit = _start(make_server)
    x = kit.x
    auto = kit.pool("auto", auto_power_on=True, ncpu=2, proposed_CPUs=["6", "7"], sched_policy="credit2")
    vm = kit.vm(pool_name="auto", auto_power_on=True)
    manual = kit.pool("manual")
    stranded = kit.vm(pool_name="manual", auto_power_on=True)
    kit = _restart(make_server, kit, reboot=True)  # the host boots: Pool-0 has every CPU at first
    x = kit.x
    assert x.cpu_pool.get_activated(auto) is True and kit.cpus_of(auto) == {6, 7}
    assert backend_pools(kit.server)[x.cpu_pool.get_uuid(auto)]["sched"] == "credit2"
    assert kit.cpus_of(kit.pool0) == {0, 1, 2, 3, 4, 5} and kit.free_cpus() == 0
    assert x.VM.get_power_state(vm) == "Running"
    assert x.VM.get_cpu_pool(vm) == [auto] and x.cpu_pool.get_started_VMs(auto) == [vm]
    assert set(kit.vcpus_cpu(vm).values()) <= {6, 7}
    # a pool without auto_power_on stays down, and so does the auto_power_on VM that needs it
    assert x.cpu_pool.get_activated(manual) is False
    assert x.VM.get_power_state(stranded) == "Halted" and kit.server.alive()
    # a later toolstack restart changes nothing
    before = kit.everything()
    kit = _restart(make_server, kit)
    assert kit.everything() == before


def test_auto_pools_share_out_a_freshly_booted_host(make_server):
    kit = _start(make_server)
    first = kit.pool("a-first", auto_power_on=True, ncpu=3)
    second = kit.pool("b-second", auto_power_on=True, ncpu=2, proposed_CPUs=["1"])
    kit = _restart(make_server, kit, reboot=True)
    x = kit.x
    got_first, got_second, kept = kit.cpus_of(first), kit.cpus_of(second), kit.cpus_of(kit.pool0)
    assert len(got_first) == 3 and len(got_second) == 2 and 1 in got_second
    assert len(kept) == 3 and got_first | got_second | kept == set(range(CPUS))  # Pool-0 keeps the rest
    assert kit.free_cpus() == 0
    assert x.cpu_pool.get_started_VMs(kit.pool0) == [kit.dom0]


def test_an_auto_pool_that_cannot_activate_leaves_pool0_its_cpus(make_server):
    """Activation is all or nothing, at start-up too: Pool-0 has every CPU the auto-started pools
    did not claim (API.md §5), so a pool that fails to activate takes none from it."""
    kit = _start(make_server)
    small = kit.pool("a-small", auto_power_on=True, ncpu=2)
    big = kit.pool("z-big", auto_power_on=True, ncpu=CPUS - 1)  # Pool-0 keeps one at least: 7 > 6 - 1
    vm = kit.vm(pool_name="z-big", auto_power_on=True)
    kit = _restart(make_server, kit, reboot=True)
    x = kit.x
    assert kit.server.alive()
    assert x.cpu_pool.get_activated(small) is True and len(kit.cpus_of(small)) == 2
    assert x.cpu_pool.get_activated(big) is False and x.VM.get_power_state(vm) == "Halted"
    assert kit.cpus_of(kit.pool0) == set(range(CPUS)) - kit.cpus_of(small)
    assert kit.free_cpus() == 0 and kit.unassigned() == set()


def test_an_inactive_auto_pool_activates_at_a_toolstack_restart(make_server):
    kit = _start(make_server)
    x = kit.x
    kit.free(6, 7)
    auto = kit.pool("auto", auto_power_on=True, ncpu=2)
    x.cpu_pool.activate(auto)
    x.cpu_pool.deactivate(auto)
    vm = kit.vm(pool_name="auto", auto_power_on=True)
    kit = _restart(make_server, kit)
    x = kit.x
    assert kit.cpus_of(auto) == {6, 7} and kit.cpus_of(kit.pool0) == set(range(6))
    assert x.VM.get_power_state(vm) == "Running" and x.VM.get_cpu_pool(vm) == [auto]

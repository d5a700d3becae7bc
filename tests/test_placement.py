"""Issue 17: one rule for where a vCPU may run (xend_ext/placement.py), and the findings it fixed.

    where(vCPU) = its pool's pCPUs ∩ its pins − pCPUs reserved to other VMs

Every test reproduces one finding of the issue on a fresh 8-pCPU server through the official
client (and xm where the finding was xm's): a change that would leave a running VM nowhere to run
is refused before anything changes, naming the VM and the pCPU; a halted VM never blocks, and its
start says why it cannot run.
"""

from __future__ import annotations

import time

import pytest
from poolkit import CPUS, PoolKit, failure, unique
from vmkit import BOTH, MIB, NO_MEMORY_MAX_LIVE, NO_SDOM, lacks, sim_only
from xmkit import error, ok, xm

pytestmark = pytest.mark.backends(*BOTH)


@pytest.fixture
def kit(make_server, backend) -> PoolKit:
    return PoolKit(make_server("--cpus", str(CPUS), unix=False))


def running(kit: PoolKit, name: str, **fields) -> str:
    vm = kit.vm(name, VCPUs_max=1, VCPUs_at_startup=1, **fields)
    kit.x.VM.start(vm, False, False)
    return vm


# -- item 1: CPU moves no longer strand running VMs --------------------------------------------------

def test_a_cpu_move_leaving_a_vm_only_cpus_reserved_to_others_is_refused(kit):
    """cpupool-cpu-remove Pool-0 4; cpupool-start p1 (1 CPU); a VM in p1; cpu-occupy 3 A (A in
    Pool-0); cpupool-cpu-remove Pool-0 3; cpupool-cpu-add p1 3; cpupool-cpu-remove p1 4: the p1 VM
    would keep only pCPU 3, reserved to A."""
    x = kit.x
    p1 = kit.active_pool([4], "p1")
    inside = running(kit, "in-p1", pool_name="p1")
    a = running(kit, "A")
    x.host_cpu.set_occupants(kit.cpu[3], [a])
    kit.free(3)
    x.cpu_pool.add_host_CPU_live(p1, kit.cpu[3])
    details = kit.refused("OPERATION_NOT_ALLOWED", x.cpu_pool.remove_host_CPU_live, p1, kit.cpu[4])
    assert "in-p1" in details[1] and "pCPU 4" in details[1], details
    assert kit.vcpus_cpu(inside) == {0: 4}
    # once the reservation is gone the same move is fine
    x.host_cpu.clear_occupants(kit.cpu[3])
    x.cpu_pool.remove_host_CPU_live(p1, kit.cpu[4])
    assert kit.cpus_of(p1) == {3} and kit.vcpus_cpu(inside) == {0: 3}


def test_removing_the_cpu_a_running_vcpu_is_pinned_to_is_refused(kit):
    """vcpu-pin d1 0 7; cpupool-cpu-remove p1 7: d1's vCPU would be pinned outside its pool."""
    x = kit.x
    p1 = kit.active_pool([6, 7], "p1")
    d1 = running(kit, "d1", pool_name="p1")
    x.VM.pin_VCPU(d1, "0", "7", "dynamic")
    details = kit.refused("OPERATION_NOT_ALLOWED", x.cpu_pool.remove_host_CPU_live, p1, kit.cpu[7])
    assert "d1" in details[1] and "pCPU 7" in details[1] and "vCPU 0" in details[1], details
    x.cpu_pool.remove_host_CPU_live(p1, kit.cpu[6])  # the other CPU is free to go
    assert kit.cpus_of(p1) == {7} and kit.vcpus_cpu(d1) == {0: 7}


def test_a_halted_vm_never_blocks_a_cpu_move(kit):
    x = kit.x
    p1 = kit.active_pool([6, 7], "p1")
    halted = kit.vm("pinned-halted", pool_name="p1", VCPUs_params={"cpumap0": "7"})
    x.cpu_pool.remove_host_CPU_live(p1, kit.cpu[7])
    details = failure(x.VM.start, halted, False, False)
    assert details[:3] == ["VALUE_NOT_SUPPORTED", "cpumap0", "7"] and "pool p1" in details[3], details


# -- item 2: a halted VM's pool move keeps no pins outside its new pool -------------------------------

def test_a_halted_vm_pinned_outside_the_destination_pool_is_refused(kit):
    """cpupool-migrate se1 Pool-0 used to return 0, then start se1 failed on cpumap0."""
    x = kit.x
    kit.active_pool([6, 7], "p1")
    se1 = kit.vm("se1", pool_name="p1", VCPUs_params={"cpumap0": "6"})
    details = kit.refused("VALUE_NOT_SUPPORTED", x.VM.cpu_pool_migrate, se1, kit.pool0)
    assert details[1:3] == ["cpumap0", "6"] and "se1" in details[3] and "CPU 6" in details[3], details
    # unpinned first (static), it moves, may be pinned in Pool-0, and starts there
    x.VM.pin_VCPU(se1, "0", "all", "static")
    x.VM.cpu_pool_migrate(se1, kit.pool0)
    x.VM.pin_VCPU(se1, "0", "2", "static")
    x.VM.start(se1, False, False)
    assert x.VM.get_cpu_pool(se1) == [kit.pool0] and kit.vcpus_cpu(se1) == {0: 2}


def test_a_running_vms_stored_pins_must_fit_the_destination_too(kit):
    """The running domain's pins fit; its stored ones (the next start) do not: refused, or its
    next reboot could not run in the pool it moved to."""
    x = kit.x
    p1 = kit.active_pool([6, 7], "p1")
    vm = running(kit, "both-pins")
    x.VM.pin_VCPU(vm, "0", "1", "static")  # the next start: pCPU 1, in Pool-0 only
    details = kit.refused("VALUE_NOT_SUPPORTED", x.VM.cpu_pool_migrate, vm, p1)
    assert details[1:3] == ["cpumap0", "1"] and "stored definition" in details[3], details


@sim_only(NO_SDOM)
def test_a_halted_master_drags_no_halted_member_pinned_outside(kit):
    x = kit.x
    kit.active_pool([6, 7], "p1")
    master = kit.vm("master", pool_name="p1")
    member = kit.vm("member", pool_name="p1", VCPUs_params={"cpumap0": "7"})
    x.sched_domain.create({"master": master, "members": [member]})
    details = kit.refused("VALUE_NOT_SUPPORTED", x.VM.cpu_pool_migrate, master, kit.pool0)
    assert "member" in details[3] and details[1:3] == ["cpumap0", "7"], details


# -- start, restore: the same rule, and exactly why ----------------------------------------------------

def test_restore_into_an_inactive_pool_is_refused_and_leaves_nothing(kit):
    x = kit.x
    p1 = kit.active_pool([6, 7], "p1")
    vm = running(kit, "saved", pool_name="p1")
    image = unique("saved") + ".img"
    x.VM.save(vm, image)
    x.cpu_pool.deactivate(p1)
    assert failure(x.VM.restore, image, False) == ["POOL_BAD_STATE", "deactivated"]
    assert x.VM.get_power_state(vm) == "Halted"
    x.cpu_pool.activate(p1)
    x.VM.restore(image, False)
    assert x.VM.get_power_state(vm) == "Running" and x.VM.get_cpu_pool(vm) == [p1]


# -- item 11: no VM names a destroyed pool ---------------------------------------------------------------

def test_destroying_a_pool_leaves_no_vm_naming_it(kit):
    x = kit.x
    p1 = kit.active_pool([6, 7], "p1")
    halted = kit.vm("halted-in-p1", pool_name="p1")
    moving = running(kit, "runs-in-pool0")
    x.VM.set_pool_name(moving, "p1")  # its next start; it runs in Pool-0 now
    x.cpu_pool.deactivate(p1)
    token = kit.token(["vm"])
    x.cpu_pool.destroy(p1)
    assert x.VM.get_pool_name(halted) == "Pool-0" and x.VM.get_pool_name(moving) == "Pool-0"
    assert {e["ref"] for e in kit.events(["vm"], token)} >= {halted, moving}
    assert x.VM.get_power_state(moving) == "Running" and x.VM.get_cpu_pool(moving) == [kit.pool0]
    x.VM.start(halted, False, False)
    assert x.VM.get_cpu_pool(halted) == [kit.pool0]


# -- item 12 -----------------------------------------------------------------------------------------------

def test_removing_a_cpu_from_an_empty_pool_announces_only_what_changed(kit):
    """One cpupool-cpu-remove on an empty pool emitted 36 mod events, VMs of other pools among them:
    now the pool, its CPU and the host (free_cpus), nothing else."""
    x = kit.x
    p1 = kit.active_pool([6, 7], "p1")
    for n in range(3):
        running(kit, f"busy{n}")
    token = kit.token()
    x.cpu_pool.remove_host_CPU_live(p1, kit.cpu[7])
    events = kit.events(["*"], token)
    changed = sorted((e["class"], e["ref"]) for e in events if e["operation"] == "mod")
    assert changed == sorted([("cpu_pool", p1), ("host_cpu", kit.cpu[7]), ("host", kit.host)]), changed


def test_cpu_policy_excludes_only_reserved_cpus_of_the_vms_pool(kit):
    x = kit.x
    kit.active_pool([6, 7], "p1")
    a = running(kit, "A")
    x.host_cpu.set_occupants(kit.cpu[2], [a])
    x.host_cpu.set_occupants(kit.cpu[7], [a])
    inside = running(kit, "in-p1", pool_name="p1")
    outside = running(kit, "in-pool0")
    assert x.VM.get_cpu_policy(inside)["excluded_cpus"] == ["7"]
    assert x.VM.get_cpu_policy(outside)["excluded_cpus"] == ["2"]
    assert x.VM.get_cpu_policy(kit.vm("halted-p1", pool_name="p1"))["excluded_cpus"] == ["7"]
    for cpu in (2, 7):
        x.host_cpu.clear_occupants(kit.cpu[cpu])


def test_host_capabilities_list_the_backend_and_xm_info_shows_them(kit):
    x = kit.x
    caps = x.host.get_capabilities(kit.host)
    assert {"lifecycle", "pools", "cpu_occupy", "sched:credit", "sched:credit2"} <= set(caps)
    assert ("sched_domain" in caps) == (not lacks(kit.server, "sched_domain"))
    assert ("migrate" in caps) == (not lacks(kit.server, "migrate"))
    line = next(row for row in ok(xm(kit.server, "info")).splitlines() if row.startswith("capabilities"))
    assert line.split(":", 1)[1].split() == caps


def test_xm_pool_list_takes_several_names(kit):
    kit.active_pool([6], "p1")
    kit.pool("p2")
    rows = ok(xm(kit.server, "cpupool-list", "p1,p2")).splitlines()
    assert [r.split()[0] for r in rows[1:]] == ["p1", "p2"]
    assert [r.split()[0] for r in ok(xm(kit.server, "pool-list", "p2,p1")).splitlines()[1:]] == ["p1", "p2"]
    assert error(xm(kit.server, "cpupool-list", "p1,nope")) == "Error: Pool 'nope' does not exist."


def test_xm_list_long_shows_the_cpu_pool(kit):
    kit.active_pool([6], "p1")
    running(kit, "listed", pool_name="p1")
    assert "(cpu_pool p1)" in ok(xm(kit.server, "list", "-l", "listed"))


@sim_only(NO_SDOM)
def test_xm_moving_a_member_alone_says_so_in_words(kit):
    x = kit.x
    kit.active_pool([6, 7], "p1")
    master = running(kit, "boss")
    member = running(kit, "stub")
    x.sched_domain.create({"master": master, "members": [member]})
    message = error(xm(kit.server, "cpupool-migrate", "stub", "p1"))
    assert "OpaqueRef" not in message and "SCHED_DOMAIN_POOL_MISMATCH" not in message
    assert "domain 'stub' is in a scheduling domain" in message and "'Pool-0'" in message


# -- item 6: the running maximum memory is visible ----------------------------------------------------------

@sim_only(NO_MEMORY_MAX_LIVE)
def test_the_running_maximum_memory_is_visible(kit):
    x = kit.x
    vm = kit.vm("mm", memory_target=128 * MIB, memory_static_max=256 * MIB)
    x.VM.start(vm, False, False)
    x.VM.set_memory_max(vm, 192 * MIB, "dynamic")
    assert x.VM_metrics.get_memory_max(x.VM.get_metrics(vm)) == str(192 * MIB)
    assert x.VM.get_memory_static_max(vm) == str(256 * MIB)  # the definition is untouched
    long = ok(xm(kit.server, "list", "-l", "mm"))
    running_part = long[long.index("(running"):]
    assert "(maxmem 192)" in running_part and "(maxmem 256)" in long[:long.index("(running")]


# -- item 9: cancelling a group start rolls the started members back ---------------------------------------

def test_cancelling_an_async_group_start_rolls_back_the_started_members(kit):
    x = kit.x
    first = kit.vm("first", order=0, start_delay=2)
    second = kit.vm("second", order=1)
    group = x.VM_group.create({"name_label": "cancel-me", "VMs": [first, second]})
    task = x.Async.VM_group.start(group, False)
    deadline = time.monotonic() + 20
    while x.VM.get_power_state(first) != "Running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    x.task.cancel(task)
    while x.task.get_status(task) in ("pending", "cancelling"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert x.task.get_status(task) == "cancelled"
    assert x.VM.get_power_state(first) == "Halted" and x.VM.get_power_state(second) == "Halted"


# -- item 5 in xm: sedf is refused by name ----------------------------------------------------------------

def test_xm_refuses_a_sedf_pool_saying_which_schedulers_there_are(kit, tmp_path):
    config = tmp_path / "slow.pool"
    config.write_text('name = "slow"\nsched = "sedf"\ncpus = 1\n')
    message = error(xm(kit.server, "cpupool-new", str(config)))
    assert "sedf" in message and "credit, credit2" in message, message
    assert kit.x.cpu_pool.get_by_name_label("slow") == []

"""Refs are resolved again after every wait: a call waiting for a lock (held by a slow hypervisor
action, tests/faultbackend.py) while the object it names is destroyed answers HANDLE_INVALID, and
changes nothing."""

from __future__ import annotations

import threading
import time

import pytest
import XenAPI
from test_backend_faults import assert_agree, cpu
from vmkit import new_vm, session

SLOW = 3.0  # seconds the slow action takes: the holder keeps its lock that long


class Background(threading.Thread):
    """One call in its own thread, with its own client (sessions are not shared between threads)."""

    def __init__(self, server, call) -> None:
        super().__init__(daemon=True)
        self.x = session(server).xenapi
        self.call = call
        self.value = self.error = None
        self.start()

    def run(self) -> None:
        try:
            self.value = self.call(self.x)
        except XenAPI.Failure as exc:
            self.error = exc.details


def race(server, faults, slow_action, holder, waiter, destroy):
    """``holder`` takes a lock and waits on a slow ``slow_action``; ``waiter`` queues for that
    lock; ``destroy`` runs meanwhile. Returns the two finished calls."""
    faults.slow(slow_action, SLOW)
    first = Background(server, holder)
    time.sleep(0.4)
    second = Background(server, waiter)
    time.sleep(0.4)
    faults.fast()
    destroy()
    assert first.is_alive(), "the holder finished before the destroy: no race happened"
    first.join(30)
    second.join(30)
    return first, second


def test_add_member_of_a_vm_destroyed_while_it_waits(faulty):
    server, faults, x = faulty
    master, other, vm = (new_vm(x, n) for n in ("master", "other", "joins"))
    x.VM.start(master, False, False)
    sd = x.sched_domain.create({"master": master})
    first, second = race(server, faults, "set_sched_domains",
                         lambda y: y.sched_domain.create({"master": other}),
                         lambda y: y.sched_domain.add_member(sd, vm),
                         lambda: x.VM.destroy(vm))
    assert first.error is None
    assert second.error == ["HANDLE_INVALID", "VM", vm]
    assert x.sched_domain.get_members(sd) == []
    assert_agree(server, x)


def test_set_occupants_naming_a_vm_destroyed_while_it_waits(faulty):
    server, faults, x = faulty
    other, vm = new_vm(x, "other"), new_vm(x, "gone")
    first, second = race(server, faults, "set_occupancy",
                         lambda y: y.host_cpu.set_occupants(cpu(y, 2), [other]),
                         lambda y: y.host_cpu.set_occupants(cpu(y, 3), [vm]),
                         lambda: x.VM.destroy(vm))
    assert first.error is None
    assert second.error == ["HANDLE_INVALID", "VM", vm]
    assert x.host_cpu.get_occupants(cpu(x, 3)) == []
    assert_agree(server, x)


@pytest.mark.parametrize("waiting", [
    pytest.param(lambda y, vm: y.VM.start(vm, False, False), id="start"),
    pytest.param(lambda y, vm: y.VM.set_memory(vm, str(200 << 20), "static"), id="static-change"),
])
def test_a_call_waiting_for_a_vm_being_destroyed(faulty, waiting):
    server, faults, x = faulty
    vm = new_vm(x, "short-lived")
    faults.slow("undefine", SLOW)
    first = Background(server, lambda y: y.VM.destroy(vm))
    time.sleep(0.4)
    second = Background(server, lambda y: waiting(y, vm))
    first.join(30)
    second.join(30)
    faults.fast()
    assert first.error is None
    assert second.error == ["HANDLE_INVALID", "VM", vm]
    assert_agree(server, x)


def test_a_group_destroyed_while_an_operation_waits_for_it(faulty):
    server, faults, x = faulty
    members = [new_vm(x, f"m{i}") for i in range(2)]
    group = x.VM_group.create({"name_label": "doomed", "VMs": members})
    first, second = race(server, faults, "start",
                         lambda y: y.VM_group.start(group, False),
                         lambda y: y.VM_group.hard_shutdown(group),
                         lambda: x.VM_group.destroy(group))
    assert first.error is None  # it had its group already
    assert second.error == ["HANDLE_INVALID", "VM_group", group]
    assert {x.VM.get_power_state(vm) for vm in members} == {"Running"}  # the waiting shutdown did nothing
    assert_agree(server, x)


def test_a_pool_destroyed_while_a_move_waits(faulty):
    server, faults, x = faulty
    vm = new_vm(x, "mover")
    x.VM.start(vm, False, False)
    pool = x.cpu_pool.create({"name_label": "target"})
    first, second = race(server, faults, "pause",
                         lambda y: y.VM.pause(vm),
                         lambda y: y.VM.cpu_pool_migrate(vm, pool),
                         lambda: x.cpu_pool.destroy(pool))
    assert first.error is None
    assert second.error == ["HANDLE_INVALID", "cpu_pool", pool]
    assert x.VM.get_pool_name(vm) == "Pool-0"
    assert_agree(server, x)

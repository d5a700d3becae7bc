"""``sched_domain`` (API.md §7, the "nemesis" proposal of seed 001) through the official XenAPI client.

A scheduling domain makes its members share its master's timeslices: the master's weight and cap
apply to master and members together, as one entity of the scheduler model, which the simulated
backend reports in ``VM_metrics.VCPUs_utilisation``. The seed's demonstration is reproduced here:
cap a VM at 10, add a second VM to its scheduling domain, and both together get 10 % of one pCPU.

One 4-pCPU server serves most tests (each removes what it made); restarts, roles and migration get
servers of their own. Nothing is mocked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import XenAPI
from conftest import ROOT, ServerProcess
from poolkit import add_user
from vmkit import event_from, failure, new_vm, session, token_now, unique

from xend_ext import sxp

NULL = "OpaqueRef:NULL"
PIN0 = {"cpumap0": "0"}  # every VM of a utilisation test competes for pCPU 0


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    server = ServerProcess(tmp_path_factory.mktemp("sdom") / "state", "--cpus", "4", unix=False).start()
    yield server
    server.stop()


class Kit:
    """One test's client; removes the scheduling domains, VMs and pools it made when the test ends."""

    def __init__(self, server) -> None:
        self.server = server
        self.session = session(server)
        self.x = self.session.xenapi
        self.vms: list[str] = []
        self.pools: list[str] = []
        self.dom0 = next(v for v in self.x.VM.get_all() if self.x.VM.get_is_control_domain(v))
        self.pool0 = self.x.cpu_pool.get_by_name_label("Pool-0")[0]

    def vm(self, name: str | None = None, state: str = "Halted", **fields) -> str:
        """A 1-vCPU VM (VCPUs_max 1: cap is 0..100), started if asked."""
        fields.setdefault("VCPUs_max", 1)
        ref = new_vm(self.x, name or unique("sd"), **fields)
        self.vms.append(ref)
        if state != "Halted":
            self.x.VM.start(ref, False, False)
        if state == "Suspended":
            self.x.VM.suspend(ref)
        return ref

    def pool(self, cpus: list[int] | None = None) -> tuple[str, str]:
        """(ref, name) of a new pool; activated on ``cpus`` (taken from Pool-0) if given."""
        name = unique("sdpool")
        record = {"name_label": name}
        if cpus:
            by_number = {int(self.x.host_cpu.get_number(c)): c for c in self.x.host_cpu.get_all()}
            for n in cpus:
                self.x.cpu_pool.remove_host_CPU_live(self.pool0, by_number[n])
            record.update(ncpu=str(len(cpus)), proposed_CPUs=[str(n) for n in cpus])
        ref = self.x.cpu_pool.create(record)
        self.pools.append(ref)
        if cpus:
            self.x.cpu_pool.activate(ref)
        return ref, name

    def use(self, vm: str) -> float:
        """The share of one pCPU the VM's vCPUs get together (0 when it does not run)."""
        return sum(float(u) for u in self.x.VM_metrics.get_VCPUs_utilisation(self.x.VM.get_metrics(vm)).values())

    def close(self) -> None:
        x = self.x
        for sd in x.sched_domain.get_all():
            x.sched_domain.destroy(sd)
        for vm in self.vms:
            try:
                if x.VM.get_power_state(vm) != "Halted":
                    x.VM.hard_shutdown(vm)
                x.VM.destroy(vm)
            except Exception:  # noqa: BLE001 - destroyed by the test itself, or migrated away
                pass
        for pool in self.pools:
            if x.cpu_pool.get_activated(pool):
                x.cpu_pool.deactivate(pool)
            x.cpu_pool.destroy(pool)
        for cpu in x.host_cpu.get_unassigned_cpus():
            x.cpu_pool.add_host_CPU_live(self.pool0, cpu)
        self.session.xenapi.session.logout()


@pytest.fixture
def kit(srv):
    k = Kit(srv)
    yield k
    k.close()


def approx(value: float) -> pytest.approx:
    return pytest.approx(value, abs=1e-6)


# -- create ------------------------------------------------------------------------------------

def test_create_records_the_master_and_vm_sched_domain_points_back(kit):
    x = kit.x
    web, stub, other = kit.vm("web"), kit.vm(), kit.vm()
    sd = x.sched_domain.create({"master": web})
    rec = x.sched_domain.get_record(sd)
    assert rec == {"uuid": sd.removeprefix("OpaqueRef:"), "name_label": "web", "name_description": "",
                   "master": web, "members": [], "other_config": {}}
    assert x.sched_domain.get_by_uuid(rec["uuid"]) == sd
    assert x.sched_domain.get_by_name_label("web") == [sd]
    assert x.sched_domain.get_all() == [sd]
    assert x.VM.get_sched_domain(web) == sd
    assert x.VM.get_record(web)["sched_domain"] == sd
    assert x.VM.get_sched_domain(stub) == NULL
    assert x.VM.get_cpu_policy(web)["sched_domain"] == sd and x.VM.get_cpu_policy(stub)["sched_domain"] == NULL
    # the record may name, describe and fill it; the master given as a bare uuid (API.md §1)
    full = x.sched_domain.create({"master": x.VM.get_uuid(stub), "members": [other], "name_label": "stubs",
                                  "name_description": "d", "other_config": {"k": "v"}})
    assert x.sched_domain.get_record(full) == {
        "uuid": full.removeprefix("OpaqueRef:"), "name_label": "stubs", "name_description": "d",
        "master": stub, "members": [other], "other_config": {"k": "v"}}
    assert x.VM.get_sched_domain(stub) == full and x.VM.get_sched_domain(other) == full
    assert sorted(x.sched_domain.get_all()) == sorted([sd, full])


def test_create_refuses_a_vm_that_is_already_in_a_scheduling_domain(kit):
    x = kit.x
    master, member, free, free2 = kit.vm(), kit.vm(), kit.vm(), kit.vm()
    sd = x.sched_domain.create({"master": master, "members": [member]})
    before = x.sched_domain.get_all_records()
    assert failure(x.sched_domain.create, {"master": master}) == ["VM_ALREADY_IN_SCHED_DOMAIN", master, sd]
    assert failure(x.sched_domain.create, {"master": member}) == ["VM_ALREADY_IN_SCHED_DOMAIN", member, sd]
    assert failure(x.sched_domain.create, {"master": free, "members": [free2, member]}) == [
        "VM_ALREADY_IN_SCHED_DOMAIN", member, sd]
    # a VM cannot be its own member
    assert failure(x.sched_domain.create, {"master": free, "members": [free]})[:3] == [
        "VALUE_NOT_SUPPORTED", "members", free]
    assert x.sched_domain.get_all_records() == before
    assert x.VM.get_sched_domain(free) == NULL and x.VM.get_sched_domain(free2) == NULL


def test_create_refuses_domain0_and_a_member_in_another_pool(kit):
    x = kit.x
    master, vm = kit.vm(), kit.vm()
    _pool, name = kit.pool()
    elsewhere = kit.vm(pool_name=name)
    assert failure(x.sched_domain.create, {"master": kit.dom0})[0] == "OPERATION_NOT_ALLOWED"
    assert failure(x.sched_domain.create, {"master": master, "members": [kit.dom0]})[0] == "OPERATION_NOT_ALLOWED"
    assert failure(x.sched_domain.create, {"master": master, "members": [vm, elsewhere]}) == [
        "SCHED_DOMAIN_POOL_MISMATCH", elsewhere, "Pool-0"]
    assert failure(x.sched_domain.create, {"master": elsewhere, "members": [vm]}) == [
        "SCHED_DOMAIN_POOL_MISMATCH", vm, name]
    assert x.sched_domain.get_all() == []
    assert x.VM.get_sched_domain(kit.dom0) == NULL


def test_create_needs_a_master_that_exists(kit):
    x = kit.x
    assert failure(x.sched_domain.create, {})[:2] == ["VALUE_NOT_SUPPORTED", "master"]
    assert failure(x.sched_domain.create, {"master": "OpaqueRef:nope"}) == ["HANDLE_INVALID", "VM", "OpaqueRef:nope"]
    master = kit.vm()
    assert failure(x.sched_domain.create, {"master": master, "members": ["OpaqueRef:nope"]}) == [
        "HANDLE_INVALID", "VM", "OpaqueRef:nope"]
    assert x.sched_domain.get_all() == []


# -- add_member, remove_member, destroy --------------------------------------------------------

def test_add_member_refuses_what_create_refuses_and_changes_nothing(kit):
    x = kit.x
    master, member, other_master, other_member, free = kit.vm(), kit.vm(), kit.vm(), kit.vm(), kit.vm()
    _pool, name = kit.pool()
    elsewhere = kit.vm(pool_name=name)
    sd = x.sched_domain.create({"master": master, "members": [member]})
    other = x.sched_domain.create({"master": other_master, "members": [other_member]})
    before = x.sched_domain.get_all_records()
    add = x.sched_domain.add_member
    assert failure(add, sd, master) == ["VM_ALREADY_IN_SCHED_DOMAIN", master, sd]
    assert failure(add, sd, member) == ["VM_ALREADY_IN_SCHED_DOMAIN", member, sd]
    assert failure(add, sd, other_master) == ["VM_ALREADY_IN_SCHED_DOMAIN", other_master, other]
    assert failure(add, sd, other_member) == ["VM_ALREADY_IN_SCHED_DOMAIN", other_member, other]
    assert failure(add, sd, kit.dom0)[0] == "OPERATION_NOT_ALLOWED"
    assert failure(add, sd, elsewhere) == ["SCHED_DOMAIN_POOL_MISMATCH", elsewhere, "Pool-0"]
    assert failure(add, sd, "OpaqueRef:nope") == ["HANDLE_INVALID", "VM", "OpaqueRef:nope"]
    assert failure(add, "OpaqueRef:nope", free) == ["HANDLE_INVALID", "sched_domain", "OpaqueRef:nope"]
    assert x.sched_domain.get_all_records() == before
    add(sd, free)
    assert x.sched_domain.get_members(sd) == [member, free]
    assert x.VM.get_sched_domain(free) == sd


def test_remove_member_takes_only_a_member(kit):
    x = kit.x
    master, member, stranger, other_master, other_member = kit.vm(), kit.vm(), kit.vm(), kit.vm(), kit.vm()
    sd = x.sched_domain.create({"master": master, "members": [member]})
    x.sched_domain.create({"master": other_master, "members": [other_member]})
    before = x.sched_domain.get_all_records()
    for vm in (stranger, master, other_member, other_master):
        assert failure(x.sched_domain.remove_member, sd, vm)[:3] == ["VALUE_NOT_SUPPORTED", "vm", vm]
    assert x.sched_domain.get_all_records() == before
    x.sched_domain.remove_member(sd, member)
    assert x.sched_domain.get_members(sd) == []
    assert x.VM.get_sched_domain(member) == NULL
    assert x.VM.get_sched_domain(master) == sd  # an empty domain stays until destroyed
    assert failure(x.sched_domain.remove_member, sd, member)[:3] == ["VALUE_NOT_SUPPORTED", "vm", member]


def test_destroy_releases_the_members(kit):
    x = kit.x
    a = kit.vm(state="Running", VCPUs_params={**PIN0, "cap": "10"})
    b = kit.vm(state="Running", VCPUs_params=PIN0)
    sd = x.sched_domain.create({"master": a, "members": [b]})
    assert kit.use(a) + kit.use(b) == approx(0.10)
    x.sched_domain.destroy(sd)
    assert kit.use(a) == approx(0.10) and kit.use(b) == approx(0.90)  # their own again
    assert x.VM.get_sched_domain(a) == NULL and x.VM.get_sched_domain(b) == NULL
    assert failure(x.sched_domain.get_record, sd) == ["HANDLE_INVALID", "sched_domain", sd]
    assert failure(x.sched_domain.destroy, sd) == ["HANDLE_INVALID", "sched_domain", sd]
    x.sched_domain.create({"master": b, "members": [a]})  # both are free to join another


def test_generic_getters_setters_and_filters(kit):
    x = kit.x
    master, member = kit.vm(), kit.vm()
    sd = x.sched_domain.create({"master": master, "members": [member], "name_label": "before"})
    x.sched_domain.set_name_label(sd, "after")
    x.sched_domain.set_name_description(sd, "stub domains of web")
    x.sched_domain.set_other_config(sd, {"a": "1"})
    x.sched_domain.add_to_other_config(sd, "b", "2")
    assert failure(x.sched_domain.add_to_other_config, sd, "b", "3")[0] == "MAP_DUPLICATE_KEY"
    x.sched_domain.remove_from_other_config(sd, "a")
    assert x.sched_domain.get_name_label(sd) == "after"
    assert x.sched_domain.get_name_description(sd) == "stub domains of web"
    assert x.sched_domain.get_other_config(sd) == {"b": "2"}
    assert x.sched_domain.get_master(sd) == master
    assert x.sched_domain.get_members(sd) == [member]
    assert x.sched_domain.get_uuid(sd) == sd.removeprefix("OpaqueRef:")
    assert x.sched_domain.get_by_name_label("before") == []
    assert list(x.sched_domain.get_all_records_where('field "name_label"="after"')) == [sd]
    assert list(x.sched_domain.get_all_records_where(f'field "master"="{master}"')) == [sd]
    assert x.sched_domain.get_all_records_where('field "name_label"="before"') == {}
    # master and members change only through the messages
    for method in ("set_master", "set_members", "add_members", "remove_members"):
        assert failure(getattr(x.sched_domain, method), sd, member)[0] == "MESSAGE_METHOD_UNKNOWN"
    assert failure(x.VM.set_sched_domain, member, NULL)[0] == "MESSAGE_METHOD_UNKNOWN"


def _wait_task(x, task, timeout=10.0) -> dict:
    deadline = time.monotonic() + timeout
    while x.task.get_status(task) == "pending":
        assert time.monotonic() < deadline, "the task never finished"
        time.sleep(0.02)
    record = x.task.get_record(task)
    x.task.destroy(task)
    return record


def test_messages_run_as_async_tasks(kit):
    x = kit.x
    master, member, taken = kit.vm(), kit.vm(), kit.vm()
    done = _wait_task(x, x.Async.sched_domain.create({"master": master, "members": [taken]}))
    assert done["status"] == "success"
    sd = x.sched_domain.get_all()[0]
    assert done["result"] == f"<value>{sd}</value>"  # XAPI's form: an XML-RPC value
    assert x.sched_domain.get_master(sd) == master
    assert _wait_task(x, x.Async.sched_domain.add_member(sd, member))["status"] == "success"
    failed = _wait_task(x, x.Async.sched_domain.create({"master": taken}))
    assert (failed["status"], failed["error_info"]) == ("failure", ["VM_ALREADY_IN_SCHED_DOMAIN", taken, sd])
    assert _wait_task(x, x.Async.sched_domain.remove_member(sd, member))["status"] == "success"
    assert _wait_task(x, x.Async.sched_domain.destroy(sd))["status"] == "success"
    assert x.sched_domain.get_all() == []


# -- VMs going away ---------------------------------------------------------------------------

def test_destroying_the_masters_vm_dissolves_the_domain(kit):
    x = kit.x
    master = kit.vm(VCPUs_params={"cap": "10"})
    member = kit.vm(state="Running", VCPUs_params=PIN0)
    sd = x.sched_domain.create({"master": master, "members": [member]})
    assert kit.use(member) == approx(0.10)  # a halted master's cap still covers its members
    x.VM.destroy(master)
    assert x.sched_domain.get_all() == []
    assert failure(x.sched_domain.get_record, sd)[0] == "HANDLE_INVALID"
    assert x.VM.get_sched_domain(member) == NULL
    assert kit.use(member) == approx(1.0)  # scheduled on its own again


def test_destroying_a_members_vm_removes_it(kit):
    x = kit.x
    master, gone, stays = kit.vm(), kit.vm(), kit.vm()
    sd = x.sched_domain.create({"master": master, "members": [gone, stays]})
    x.VM.destroy(gone)
    assert x.sched_domain.get_members(sd) == [stays]
    assert x.sched_domain.get_master(sd) == master


def test_a_scheduling_domain_migrates_whole_or_not_at_all(make_server):
    """Issue 17 item 8: VM.migrate of a master (or a member) dissolved its scheduling domain on both
    hosts. Now a VM of a domain moves only with all the others (one group migration), and the
    domain is made again there; anything else is refused before anything moves."""
    here = make_server("--cpus", "2", unix=False)
    there = make_server("--cpus", "2", unix=False, state_dir=here.state_dir.parent / "there")
    x = session(here).xenapi
    master, member, outside = (new_vm(x, unique("mig")) for _ in range(3))
    for vm in (master, member, outside):
        x.VM.start(vm, False, False)
    sd = x.sched_domain.create({"master": master, "members": [member], "name_label": "sd-travels"})
    for vm in (master, member):
        err = failure(x.VM.migrate, vm, there.url, True)
        assert err[0] == "OPERATION_NOT_ALLOWED" and "scheduling domain" in err[1], err
    group = x.VM_group.create({"name_label": unique("sdg"), "VMs": [master, outside]})  # the member stays out
    err = failure(x.VM_group.migrate, group, there.url, True)
    assert err[0] == "OPERATION_NOT_ALLOWED" and x.VM.get_name_label(member) in err[1], err
    assert x.sched_domain.get_members(sd) == [member] and x.VM.get_power_state(master) == "Running"
    y = session(there).xenapi
    assert [r["name_label"] for r in y.VM.get_all_records().values()] == ["Domain-0"]
    x.VM_group.add_VM(group, member)
    uuids = [x.VM.get_uuid(v) for v in (master, member)]
    x.VM_group.migrate(group, there.url, True)
    assert x.sched_domain.get_all() == [] and failure(x.VM.get_record, master)[0] == "HANDLE_INVALID"
    master_there, member_there = (y.VM.get_by_uuid(u) for u in uuids)
    sds = y.sched_domain.get_all_records()
    assert [(r["master"], r["members"], r["name_label"]) for r in sds.values()] == [
        (master_there, [member_there], "sd-travels")]


# -- the seed's demonstration and the scheduler model ------------------------------------------

def test_seed_ten_percent_demonstration(kit):
    """Cap A at 10, add B to A's scheduling domain: A and B together get 10 % of one pCPU."""
    x = kit.x
    a = kit.vm("ten-a", state="Running", VCPUs_params={**PIN0, "cap": "10"})
    assert kit.use(a) == approx(0.10)  # alone on pCPU 0, capped
    b = kit.vm("ten-b", state="Running", VCPUs_params=PIN0)
    assert (kit.use(a), kit.use(b)) == (approx(0.10), approx(0.90))  # B takes what A's cap leaves
    sd = x.sched_domain.create({"master": a})
    assert (kit.use(a), kit.use(b)) == (approx(0.10), approx(0.90))  # an empty domain changes nothing
    x.sched_domain.add_member(sd, b)
    metrics = x.VM_metrics.get_VCPUs_utilisation(x.VM.get_metrics(b))
    assert metrics == {"0": approx(0.05)}
    assert (kit.use(a), kit.use(b)) == (approx(0.05), approx(0.05))  # sharing A's 10 %
    assert kit.use(a) + kit.use(b) <= 0.10 + 1e-9
    x.sched_domain.remove_member(sd, b)
    assert (kit.use(a), kit.use(b)) == (approx(0.10), approx(0.90))  # B is free again


def test_the_masters_cap_in_force_covers_the_domain(kit):
    x = kit.x
    a = kit.vm(state="Running", VCPUs_params={**PIN0, "cap": "10"})
    b = kit.vm(state="Running", VCPUs_params={**PIN0, "cap": "80"})  # a member's own cap does not apply
    c = kit.vm(state="Running", VCPUs_params=PIN0)
    sd = x.sched_domain.create({"master": a, "members": [b, c]})
    assert [kit.use(v) for v in (a, b, c)] == [approx(0.10 / 3)] * 3
    x.VM.set_sched_cap(a, "30", "dynamic")  # the running master's new cap applies at once
    assert [kit.use(v) for v in (a, b, c)] == [approx(0.10)] * 3
    x.VM.pause(a)  # a paused master takes nothing; its members still share its cap
    assert (kit.use(a), kit.use(b), kit.use(c)) == (0.0, approx(0.15), approx(0.15))
    x.VM.unpause(a)
    x.sched_domain.remove_member(sd, c)
    assert (kit.use(a), kit.use(b), kit.use(c)) == (approx(0.15), approx(0.15), approx(0.70))


def test_weight_sharing_against_another_vm(kit):
    """Master weight 512 + one member against an outsider of weight 256, all on one pCPU: the domain
    gets 2/3 (split between master and member), the outsider 1/3."""
    x = kit.x
    master = kit.vm(state="Running", VCPUs_params={**PIN0, "weight": "512"})
    member = kit.vm(state="Running", VCPUs_params={**PIN0, "weight": "256"})
    outsider = kit.vm(state="Running", VCPUs_params={**PIN0, "weight": "256"})
    assert [kit.use(v) for v in (master, member, outsider)] == [approx(0.5), approx(0.25), approx(0.25)]
    sd = x.sched_domain.create({"master": master, "members": [member]})
    assert kit.use(master) + kit.use(member) == approx(2 / 3)
    assert (kit.use(master), kit.use(member), kit.use(outsider)) == (approx(1 / 3), approx(1 / 3), approx(1 / 3))
    x.VM.set_sched_weight(member, "65535", "dynamic")  # a member's own weight does not count
    assert kit.use(outsider) == approx(1 / 3)
    x.VM.set_sched_weight(master, "256", "dynamic")  # the master's does: now 1:1 against the outsider
    assert (kit.use(master) + kit.use(member), kit.use(outsider)) == (approx(0.5), approx(0.5))
    x.sched_domain.destroy(sd)  # each on its own weight again: 256 : 65535 : 256
    total = 256 + 65535 + 256
    assert (kit.use(master), kit.use(member), kit.use(outsider)) == (
        approx(256 / total), approx(65535 / total), approx(256 / total))


def test_a_halted_masters_stored_cap_changes_reach_its_running_members(kit):
    """While the master is halted its stored weight and cap are in force for the domain (what the
    server pushes to the backend at start); changing them must reach the backend at once too."""
    x = kit.x
    master = kit.vm()  # halted, no cap
    member = kit.vm(state="Running", VCPUs_params=PIN0)
    x.sched_domain.create({"master": master, "members": [member]})
    assert kit.use(member) == approx(1.0)
    x.VM.set_sched_cap(master, "10", "static")
    assert kit.use(member) == approx(0.10)
    x.VM.set_VCPUs_params(master, {"cap": "40"})
    assert kit.use(member) == approx(0.40)


# -- pools ---------------------------------------------------------------------------------------

def test_moving_the_master_moves_its_members(kit):
    x = kit.x
    pool, name = kit.pool([2, 3])
    master = kit.vm(state="Running", VCPUs_params={"cap": "10"})
    running = kit.vm(state="Running")
    halted = kit.vm()
    sd = x.sched_domain.create({"master": master, "members": [running, halted]})
    x.VM.cpu_pool_migrate(master, pool)
    assert [x.VM.get_pool_name(v) for v in (master, running, halted)] == [name] * 3
    assert x.VM.get_cpu_pool(master) == [pool] and x.VM.get_cpu_pool(running) == [pool]  # moved live
    assert x.VM.get_cpu_pool(halted) == []  # starts there next time
    assert {int(c) for c in x.VM_metrics.get_VCPUs_CPU(x.VM.get_metrics(running)).values()} <= {2, 3}
    assert kit.use(master) + kit.use(running) == approx(0.10)  # still one entity
    assert x.sched_domain.get_members(sd) == [running, halted]
    x.VM.start(halted, False, False)
    assert x.VM.get_cpu_pool(halted) == [pool]
    assert kit.use(master) + kit.use(running) + kit.use(halted) == approx(0.10)


def test_moving_the_master_fails_as_a_whole_when_a_member_cannot_move(kit):
    x = kit.x
    pool, _name = kit.pool([2, 3])
    master = kit.vm(state="Running")
    running = kit.vm(state="Running")
    suspended = kit.vm(state="Suspended")
    x.sched_domain.create({"master": master, "members": [running, suspended]})
    before = {v: (x.VM.get_pool_name(v), x.VM.get_cpu_pool(v), x.VM.get_power_state(v))
              for v in (master, running, suspended)}
    assert failure(x.VM.cpu_pool_migrate, master, pool) == ["VM_BAD_POWER_STATE", suspended, "running", "suspended"]
    assert {v: (x.VM.get_pool_name(v), x.VM.get_cpu_pool(v), x.VM.get_power_state(v))
            for v in before} == before
    assert x.cpu_pool.get_started_VMs(pool) == []


def test_a_member_cannot_leave_the_masters_pool_alone(kit):
    x = kit.x
    pool, name = kit.pool([3])
    master = kit.vm()
    running = kit.vm(state="Running")
    halted = kit.vm()
    x.sched_domain.create({"master": master, "members": [running, halted]})
    assert failure(x.VM.cpu_pool_migrate, running, pool) == ["SCHED_DOMAIN_POOL_MISMATCH", running, "Pool-0"]
    assert failure(x.VM.cpu_pool_migrate, halted, pool) == ["SCHED_DOMAIN_POOL_MISMATCH", halted, "Pool-0"]
    assert failure(x.VM.set_pool_name, halted, name) == ["SCHED_DOMAIN_POOL_MISMATCH", halted, "Pool-0"]
    # the master's pool_name moves only with cpu_pool_migrate (which takes the members along)
    assert failure(x.VM.set_pool_name, master, name)[0] == "SCHED_DOMAIN_POOL_MISMATCH"
    x.VM.set_pool_name(halted, "Pool-0")  # no change is no move
    assert [x.VM.get_pool_name(v) for v in (master, running, halted)] == ["Pool-0"] * 3
    assert x.VM.get_cpu_pool(running) == [kit.pool0]


# -- events ----------------------------------------------------------------------------------

def _events(x, token) -> tuple[list[tuple[str, str, str]], dict, str]:
    """((class, operation, ref) of each event, {(class, ref): last snapshot}, next token)."""
    answer = event_from(x, ["sched_domain", "VM", "VM_metrics"], token, 2.0)
    seen = [(e["class"], e["operation"], e["ref"]) for e in answer["events"]]
    snapshots = {(e["class"], e["ref"]): e.get("snapshot") for e in answer["events"]}
    return seen, snapshots, answer["token"]


def test_changes_emit_sched_domain_vm_and_metrics_events(kit):
    x = kit.x
    a = kit.vm(state="Running", VCPUs_params=PIN0)
    b = kit.vm(state="Running", VCPUs_params=PIN0)
    metrics_a, metrics_b = x.VM.get_metrics(a), x.VM.get_metrics(b)
    token = token_now(x)
    sd = x.sched_domain.create({"master": a})
    seen, snaps, token = _events(x, token)
    assert ("sched_domain", "add", sd) in seen
    assert snaps[("sched_domain", sd)]["master"] == a
    assert snaps[("vm", a)]["sched_domain"] == sd
    x.sched_domain.add_member(sd, b)
    seen, snaps, token = _events(x, token)
    assert ("sched_domain", "mod", sd) in seen and snaps[("sched_domain", sd)]["members"] == [b]
    assert snaps[("vm", b)]["sched_domain"] == sd
    assert {("vm_metrics", "mod", metrics_a), ("vm_metrics", "mod", metrics_b)} <= set(seen)  # shares changed
    x.sched_domain.remove_member(sd, b)
    seen, snaps, token = _events(x, token)
    assert ("sched_domain", "mod", sd) in seen and snaps[("sched_domain", sd)]["members"] == []
    assert {("vm_metrics", "mod", metrics_a), ("vm_metrics", "mod", metrics_b)} <= set(seen)
    x.sched_domain.set_name_label(sd, "renamed")
    seen, snaps, token = _events(x, token)
    assert ("sched_domain", "mod", sd) in seen and snaps[("sched_domain", sd)]["name_label"] == "renamed"
    x.sched_domain.destroy(sd)
    seen, snaps, token = _events(x, token)
    assert ("sched_domain", "del", sd) in seen
    assert ("vm_metrics", "mod", metrics_a) in seen  # the master is scheduled on its own again
    # b left before: its share (half of pCPU 0, beside a) is the same, so its live state is not announced
    assert ("vm_metrics", "mod", metrics_b) not in seen


def test_vms_leaving_a_domain_get_a_vm_event(kit):
    """VM.sched_domain is a field of VM: a VM that leaves a domain (remove_member, destroy, its
    master's VM destroyed) changes, so a VM mod event must say so (API.md §3: every mutation
    emits an event)."""
    x = kit.x
    a, b = kit.vm(), kit.vm()
    sd = x.sched_domain.create({"master": a, "members": [b]})
    token = token_now(x)
    x.sched_domain.remove_member(sd, b)
    _seen, snaps, token = _events(x, token)
    assert snaps.get(("vm", b), {}).get("sched_domain") == NULL
    x.sched_domain.destroy(sd)
    _seen, snaps, token = _events(x, token)
    assert snaps.get(("vm", a), {}).get("sched_domain") == NULL
    sd = x.sched_domain.create({"master": a, "members": [b]})
    token = token_now(x)
    x.VM.destroy(a)
    _seen, snaps, token = _events(x, token)
    assert snaps.get(("vm", b), {}).get("sched_domain") == NULL


# -- persistence ---------------------------------------------------------------------------------

def _restart(make_server, server, how="stop", reboot=False):
    if how == "kill9":
        server.kill9()
    else:
        assert server.stop() == 0
    again = make_server("--cpus", "2", *(["--sim-reboot"] if reboot else []), state_dir=server.state_dir, unix=False)
    return again, session(again).xenapi


def _use(x, vm):
    return sum(float(u) for u in x.VM_metrics.get_VCPUs_utilisation(x.VM.get_metrics(vm)).values())


def _sim_state(server) -> list:
    return sxp.loads((Path(server.state_dir) / "sim-host.sxp").read_text(encoding="utf-8"))


def _boot(server) -> int:
    """How many times the simulated host has booted."""
    return int(sxp.child_value(_sim_state(server), "boot"))


def _backend_sdoms(server) -> list[dict]:
    """The scheduling domains the simulated hypervisor has (its state file)."""
    state = _sim_state(server)
    return [{"master": sxp.child_value(n, "master"), "cap": sxp.child_value(n, "cap"),
             "members": sxp.child_value(n, "members", "")}
            for n in state[1:] if isinstance(n, list) and n and n[0] == "sched_domain"]


def test_domains_survive_a_restart_a_kill9_and_a_host_reboot(make_server):
    server = make_server("--cpus", "2", unix=False)
    x = session(server).xenapi
    a = new_vm(x, "reboot-a", VCPUs_max=1, VCPUs_params={**PIN0, "cap": "10"}, auto_power_on=True)
    b = new_vm(x, "reboot-b", VCPUs_max=1, VCPUs_params=PIN0, auto_power_on=True)
    c = new_vm(x, "reboot-c", VCPUs_max=1)
    for vm in (a, b):
        x.VM.start(vm, False, False)
    sd = x.sched_domain.create({"master": a, "members": [b], "name_label": "ten", "other_config": {"k": "v"}})
    x.sched_domain.set_name_description(sd, "kept")
    before = x.sched_domain.get_record(sd)
    server, x = _restart(make_server, server)  # a toolstack restart: the domains ran on
    assert x.sched_domain.get_all_records() == {sd: before}
    assert (_use(x, a), _use(x, b)) == (approx(0.05), approx(0.05))
    x.sched_domain.add_member(sd, c)  # just before a kill -9
    before = x.sched_domain.get_record(sd)
    server, x = _restart(make_server, server, "kill9")
    assert x.sched_domain.get_all_records() == {sd: before}
    assert [x.VM.get_sched_domain(v) for v in (a, b, c)] == [sd] * 3
    boot = _boot(server)
    server, x = _restart(make_server, server, reboot=True)  # every domain stopped; auto_power_on restarts them
    assert _boot(server) == boot + 1
    assert [x.VM.get_power_state(v) for v in (a, b, c)] == ["Running", "Running", "Halted"]
    assert x.sched_domain.get_all_records() == {sd: before}
    assert (_use(x, a), _use(x, b)) == (approx(0.05), approx(0.05))  # scheduled as one again
    uuids = {x.VM.get_uuid(v) for v in (a, b, c)}
    (pushed,) = _backend_sdoms(server)  # the rebooted host knew none: the server pushed them at start
    assert {pushed["master"], *pushed["members"].split(",")} == uuids
    assert server.stop() == 0


# -- roles, capability -------------------------------------------------------------------------

def test_vm_operator_may_change_members_but_not_create_or_destroy(make_server, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    add_user(state, "op", "op-pw", "vm-operator")
    add_user(state, "viewer", "view", "read-only")
    server = make_server("--auth", "file", "--cpus", "2", state_dir=state, unix=False)

    def login(user, password):
        s = XenAPI.Session(server.url)
        s.xenapi.login_with_password(user, password, "1.0", "sdom tests")
        return s.xenapi

    add_user(state, "admin", "adm", "pool-admin")
    admin, op, viewer = login("admin", "adm"), login("op", "op-pw"), login("viewer", "view")
    master, member = new_vm(admin, "rbac-m"), new_vm(admin, "rbac-n")
    denied = failure(op.sched_domain.create, {"master": master})
    assert denied[:2] == ["RBAC_PERMISSION_DENIED", "sched_domain.create"]
    sd = admin.sched_domain.create({"master": master})
    op.sched_domain.add_member(sd, member)
    assert op.sched_domain.get_members(sd) == [member]
    op.sched_domain.remove_member(sd, member)
    assert failure(op.sched_domain.destroy, sd)[:2] == ["RBAC_PERMISSION_DENIED", "sched_domain.destroy"]
    assert failure(op.sched_domain.set_name_label, sd, "x")[:2] == [
        "RBAC_PERMISSION_DENIED", "sched_domain.set_name_label"]
    assert failure(viewer.sched_domain.add_member, sd, member)[:2] == [
        "RBAC_PERMISSION_DENIED", "sched_domain.add_member"]
    assert viewer.sched_domain.get_all_records()[sd]["master"] == master
    admin.sched_domain.destroy(sd)


SCHEMA = json.loads((ROOT / "schemas" / "xenapi.json").read_text(encoding="utf-8"))


def test_messages_declare_the_sched_domain_capability():
    """A backend without the capability answers NOT_IMPLEMENTED before the body runs (the dispatcher
    checks ``capability``). No backend lacks it yet, so what is checked is the declaration, in the
    published schema and in what the server itself describes."""
    messages = SCHEMA["classes"]["sched_domain"]["messages"]
    for name in ("create", "destroy", "add_member", "remove_member"):
        assert messages[name]["capability"] == "sched_domain", name
    assert messages["create"]["role"] == "pool-admin" and messages["destroy"]["role"] == "pool-admin"
    assert messages["add_member"]["role"] == "vm-operator" and messages["remove_member"]["role"] == "vm-operator"
    described = json.loads(subprocess.run([sys.executable, "-m", "xend_ext", "describe"], capture_output=True,
                                          text=True, check=True, cwd=ROOT).stdout)
    assert described["classes"]["sched_domain"] == SCHEMA["classes"]["sched_domain"]
    assert SCHEMA["classes"]["VM"]["fields"]["sched_domain"]["type"] == "sched_domain ref"


def test_messages_declare_the_errors_they_raise():
    """create raises SCHED_DOMAIN_POOL_MISMATCH (see the tests above), and VM.cpu_pool_migrate raises
    it for a member: the schema, which clients read, must say so."""
    assert "SCHED_DOMAIN_POOL_MISMATCH" in SCHEMA["classes"]["sched_domain"]["messages"]["create"]["errors"]
    assert "SCHED_DOMAIN_POOL_MISMATCH" in SCHEMA["classes"]["VM"]["messages"]["cpu_pool_migrate"]["errors"]

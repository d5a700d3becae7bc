"""cpu_pool per API.md §5 (xend 4.1's semantics, done right): every message and error, the
defined ⇄ activated state machine, the related fields of host, host_cpu and VM, VMs in pools,
isolation through the scheduler model, events and roles.

Every test has a fresh server simulating an 8-pCPU host (starting one takes a fraction of a
second), so a test's pools and VMs never leak into the next one.
"""

from __future__ import annotations

import threading
import time

import pytest
import XenAPI
from poolkit import CPUS, PoolKit, add_user, backend_pools, event_from, failure, unique
from vmkit import (
    BOOT_FIELDS,
    BOTH,
    NO_UTILISATION,
    backend_domain,
    modelled,
    on_xl,
    session,
    shares_fit,
    sim_only,
)

pytestmark = pytest.mark.backends(*BOTH)

POOL0_UUID = "00000000-0000-0000-0000-0000000000f0"


@pytest.fixture
def kit(make_server, backend) -> PoolKit:
    return PoolKit(make_server("--cpus", str(CPUS), unix=False))


def consistent(kit: PoolKit) -> None:
    """The related fields of API.md §4/§5 agree with each other and with the hypervisor."""
    x = kit.x
    pools = x.cpu_pool.get_all_records()
    owners = kit.owner()
    live = backend_pools(kit.server)
    assert all(len(owner) <= 1 for owner in owners.values())
    for ref, rec in pools.items():
        held = {n for n, owner in owners.items() if owner == [ref]}
        assert kit.numbers(rec["host_CPUs"]) == held
        assert rec["activated"] == (rec["uuid"] in live)
        assert held == (live[rec["uuid"]]["cpus"] if rec["activated"] else set())
        if not rec["activated"]:
            assert rec["started_VMs"] == []
    unassigned = {n for n, owner in owners.items() if not owner}
    assert kit.unassigned() == unassigned
    assert kit.free_cpus() == len(unassigned)
    assert sorted(x.host.get_resident_cpu_pools(kit.host)) == sorted(pools)
    for vm, rec in x.VM.get_all_records().items():
        in_pools = [ref for ref, p in pools.items() if vm in p["started_VMs"]]
        assert rec["cpu_pool"] == in_pools, (rec["name_label"], rec["power_state"])
        if rec["power_state"] == "Halted":
            assert rec["cpu_pool"] == []


# -- boot state -----------------------------------------------------------------------------------

def test_at_boot_every_cpu_is_in_pool0(kit):
    x = kit.x
    assert x.cpu_pool.get_all() == [kit.pool0]
    rec = x.cpu_pool.get_record(kit.pool0)
    assert rec["uuid"] == POOL0_UUID and rec["name_label"] == "Pool-0"
    assert rec["activated"] is True and rec["resident_on"] == kit.host
    assert kit.numbers(rec["host_CPUs"]) == set(range(CPUS))
    assert rec["started_VMs"] == [kit.dom0]
    assert kit.owner() == {n: [kit.pool0] for n in range(CPUS)}
    assert kit.free_cpus() == 0 and x.host_cpu.get_unassigned_cpus() == []
    assert x.host.get_resident_cpu_pools(kit.host) == [kit.pool0]
    assert x.VM.get_cpu_pool(kit.dom0) == [kit.pool0] and x.VM.get_pool_name(kit.dom0) == "Pool-0"
    assert backend_pools(kit.server) == {
        POOL0_UUID: {"name": "Pool-0", "sched": kit.server.host.sched, "cpus": set(range(CPUS))}}
    consistent(kit)


def test_pool0_can_be_neither_destroyed_deactivated_nor_renamed(kit):
    x = kit.x
    kit.refused("OPERATION_NOT_ALLOWED", x.cpu_pool.destroy, kit.pool0)
    kit.refused("OPERATION_NOT_ALLOWED", x.cpu_pool.deactivate, kit.pool0)
    kit.refused("OPERATION_NOT_ALLOWED", x.cpu_pool.set_name_label, kit.pool0, "Pool-1")
    # Domain-0 runs there: Pool-0 keeps its last CPU
    kit.free(*range(1, CPUS))
    assert kit.cpus_of(kit.pool0) == {0}
    kit.refused("LAST_CPU_NOT_REMOVEABLE", x.cpu_pool.remove_host_CPU_live, kit.pool0, kit.cpu[0])
    consistent(kit)


# -- create, lookups, getters -------------------------------------------------------------------

def test_create_makes_a_defined_inactive_pool_with_the_defaults(kit):
    x = kit.x
    unnamed = x.cpu_pool.create({})
    rec = x.cpu_pool.get_record(unnamed)
    assert rec["name_label"] == "Pool-Unnamed"
    assert rec["ncpu"] == "1" and rec["sched_policy"] == "" and rec["proposed_CPUs"] == []
    assert rec["auto_power_on"] is False and rec["other_config"] == {}
    assert rec["activated"] is False and rec["host_CPUs"] == [] and rec["started_VMs"] == []
    assert rec["resident_on"] == kit.host
    assert x.cpu_pool.get_by_uuid(rec["uuid"]) == unnamed
    # a full record; RO fields a client echoes back are ignored, never obeyed
    web = x.cpu_pool.create({"name_label": "web", "name_description": "front ends", "auto_power_on": True,
                             "ncpu": "3", "sched_policy": "credit2", "proposed_CPUs": ["5", "2"],
                             "other_config": {"owner": "ops"}, "activated": True, "host_CPUs": [kit.cpu[1]],
                             "started_VMs": [kit.dom0]})
    rec = x.cpu_pool.get_record(web)
    assert (rec["name_label"], rec["name_description"], rec["auto_power_on"], rec["ncpu"], rec["sched_policy"]) == (
        "web", "front ends", True, "3", "credit2")
    assert sorted(rec["proposed_CPUs"]) == ["2", "5"] and rec["other_config"] == {"owner": "ops"}
    assert rec["activated"] is False and rec["host_CPUs"] == [] and rec["started_VMs"] == []
    # nothing moved: creating is not activating
    assert kit.owner() == {n: [kit.pool0] for n in range(CPUS)} and kit.free_cpus() == 0
    assert set(backend_pools(kit.server)) == {POOL0_UUID}
    # inactive pools are resident too (xend's host.resident_cpu_pools lists all)
    assert sorted(x.host.get_resident_cpu_pools(kit.host)) == sorted([kit.pool0, unnamed, web])
    consistent(kit)


def test_lookups_and_generic_getters(kit):
    x = kit.x
    kit.free(6, 7)
    web = kit.pool("web", ncpu=2, proposed_CPUs=["7"], other_config={"k": "v"})
    db = kit.pool("db")
    x.cpu_pool.activate(web)
    uuid = x.cpu_pool.get_uuid(web)
    assert x.cpu_pool.get_by_uuid(uuid) == web
    assert x.cpu_pool.get_by_name_label("web") == [web] and x.cpu_pool.get_by_name_label("nope") == []
    assert sorted(x.cpu_pool.get_all()) == sorted([kit.pool0, web, db])
    assert x.cpu_pool.get_name_label(uuid) == "web"  # a bare uuid is accepted as a ref
    records = x.cpu_pool.get_all_records()
    assert sorted(records) == sorted([kit.pool0, web, db])
    for ref, rec in records.items():
        assert x.cpu_pool.get_record(ref) == rec
        for field, value in rec.items():
            got = getattr(x.cpu_pool, f"get_{field}")(ref)
            assert (sorted(got) if isinstance(got, list) else got) == (
                sorted(value) if isinstance(value, list) else value), field
    where = x.cpu_pool.get_all_records_where
    assert list(where('field "name_label"="web"')) == [web]
    assert sorted(where('field "activated"="true"')) == sorted([kit.pool0, web])
    assert list(where('field "activated"="false"')) == [db]
    assert sorted(where('field "name_label"="db" or field "name_label"="web"')) == sorted([db, web])
    assert list(where('not (field "activated"="true")')) == [db]


def test_unknown_uuid_and_ref(kit):
    x = kit.x
    missing = "12345678-1234-1234-1234-123456789abc"
    assert failure(x.cpu_pool.get_by_uuid, missing) == ["UUID_INVALID", "cpu_pool", missing]
    ref = "OpaqueRef:" + missing
    assert failure(x.cpu_pool.get_record, ref) == ["HANDLE_INVALID", "cpu_pool", ref]
    assert failure(x.cpu_pool.activate, ref) == ["HANDLE_INVALID", "cpu_pool", ref]
    assert failure(x.cpu_pool.destroy, ref) == ["HANDLE_INVALID", "cpu_pool", ref]
    cpu = "OpaqueRef:" + missing
    assert failure(x.cpu_pool.add_host_CPU_live, kit.pool0, cpu) == ["HANDLE_INVALID", "host_cpu", cpu]


def test_create_checks_the_name(kit):
    x = kit.x
    for good in ("a_b-c.d:e/f+g", "0", "X", "web.1"):
        assert x.cpu_pool.get_name_label(kit.pool(good)) == good
    before = kit.everything()
    for bad in ("", "a b", "semi;colon", "ünï", "tab\there", "quote\"d", "a,b"):
        details = failure(x.cpu_pool.create, {"name_label": bad})
        assert details[0] == "PARAMETER_ERROR" and len(details) == 2, (bad, details)
    for taken in ("Pool-0", "web.1"):
        details = failure(x.cpu_pool.create, {"name_label": taken})
        assert details[0] == "PARAMETER_ERROR" and len(details) == 2
    assert kit.everything() == before


def test_create_refuses_a_name_with_a_trailing_newline(kit):
    # the name regex is ^[A-Za-z0-9_\-.:/+]+$: a newline is none of these characters
    # (Python's re `$` also matches before a final "\n", so a match() with `$` lets it through)
    before = kit.everything()
    details = failure(kit.x.cpu_pool.create, {"name_label": "web\n"})
    assert details[0] == "PARAMETER_ERROR"
    assert kit.everything() == before


def test_create_checks_ncpu_sched_policy_and_proposed_cpus(kit):
    x = kit.x
    before = kit.everything()
    for ncpu in ("0", "-1"):
        assert failure(x.cpu_pool.create, {"name_label": unique("p"), "ncpu": ncpu}) == ["PARAMETER_ERROR", "ncpu"]
    for sched in ("rr", "CREDIT", "credit ", "arinc653"):
        assert failure(x.cpu_pool.create, {"name_label": unique("p"), "sched_policy": sched}) == [
            "UNKOWN_SCHED_POLICY"]
    for proposed in (["8"], ["x"], ["-1"], ["1", "99"]):
        details = failure(x.cpu_pool.create, {"name_label": unique("p"), "proposed_CPUs": proposed})
        assert details[0] == "INVALID_CPU" and len(details) == 2
    assert kit.everything() == before
    for sched in ("", "credit", "credit2"):
        assert x.cpu_pool.get_sched_policy(kit.pool(sched_policy=sched)) == sched


def test_sedf_is_refused_by_name_not_taken_as_a_label(kit):
    """Issue 17 item 5: a sedf pool used to schedule by credit weights. No backend here has sedf
    (Xen 4.17 has none): create, set and activate refuse it, saying which schedulers there are."""
    x = kit.x
    before = kit.everything()
    details = failure(x.cpu_pool.create, {"name_label": unique("p"), "sched_policy": "sedf"})
    assert details[:3] == ["VALUE_NOT_SUPPORTED", "sched_policy", "sedf"] and "credit, credit2" in details[3]
    pool = kit.pool()
    kit.refused(details, x.cpu_pool.set_sched_policy, pool, "sedf")
    assert x.cpu_pool.get_sched_policy(pool) == ""
    assert kit.everything() != before  # the pool made above, nothing else
    assert "sched:credit2" in x.host.get_capabilities(kit.host)
    assert "sched:sedf" not in x.host.get_capabilities(kit.host)


# -- destroy ------------------------------------------------------------------------------------

def test_destroy_only_an_inactive_pool(kit):
    x = kit.x
    pool = kit.active_pool([7], "gone")
    kit.refused(["POOL_BAD_STATE", "activated"], x.cpu_pool.destroy, pool)
    x.cpu_pool.deactivate(pool)
    uuid = x.cpu_pool.get_uuid(pool)
    x.cpu_pool.destroy(pool)
    assert x.cpu_pool.get_all() == [kit.pool0]
    assert x.cpu_pool.get_by_name_label("gone") == []
    assert x.host.get_resident_cpu_pools(kit.host) == [kit.pool0]
    assert failure(x.cpu_pool.get_record, pool) == ["HANDLE_INVALID", "cpu_pool", pool]
    assert failure(x.cpu_pool.get_by_uuid, uuid) == ["UUID_INVALID", "cpu_pool", uuid]
    assert failure(x.cpu_pool.destroy, pool) == ["HANDLE_INVALID", "cpu_pool", pool]
    assert kit.unassigned() == {7}  # its CPU stayed free
    # the name is free again
    assert x.cpu_pool.get_name_label(kit.pool("gone")) == "gone"
    consistent(kit)


# -- activate -----------------------------------------------------------------------------------

def test_activate_takes_free_proposed_cpus_first_then_other_free_ones(kit):
    x = kit.x
    kit.free(3, 4, 5, 6)
    # 1 is Pool-0's (not free): of the proposed ones only 5 and 6 count, then the lowest free ones
    pool = kit.pool("mixed", ncpu=3, proposed_CPUs=["6", "1", "5"])
    x.cpu_pool.activate(pool)
    assert kit.cpus_of(pool) == {3, 5, 6}
    rec = x.cpu_pool.get_record(pool)
    assert rec["activated"] is True and rec["started_VMs"] == [] and rec["ncpu"] == "3"
    owners = kit.owner()
    assert all(owners[n] == [pool] for n in (3, 5, 6))
    assert owners[4] == [] and all(owners[n] == [kit.pool0] for n in (0, 1, 2, 7))
    assert kit.free_cpus() == 1 and kit.unassigned() == {4}
    live = backend_pools(kit.server)[rec["uuid"]]
    assert live["cpus"] == {3, 5, 6} and live["name"] == "mixed"
    # none of the proposed CPUs is free: other free CPUs serve
    other = kit.pool("other", ncpu=1, proposed_CPUs=["0", "6"])
    x.cpu_pool.activate(other)
    assert kit.cpus_of(other) == {4}
    assert kit.free_cpus() == 0
    consistent(kit)


def test_activate_twice_and_with_too_few_free_cpus(kit):
    x = kit.x
    kit.free(6, 7)
    big = kit.pool("big", ncpu=3)
    kit.refused(["INSUFFICIENT_CPUS", "3", "2"], x.cpu_pool.activate, big)
    x.cpu_pool.set_ncpu(big, 2)
    x.cpu_pool.activate(big)
    assert kit.cpus_of(big) == {6, 7}
    kit.refused(["POOL_BAD_STATE", "activated"], x.cpu_pool.activate, big)
    kit.refused(["POOL_BAD_STATE", "activated"], x.cpu_pool.activate, kit.pool0)
    kit.refused(["INSUFFICIENT_CPUS", "1", "0"], x.cpu_pool.activate, kit.pool("none-left"))
    consistent(kit)


def test_activate_uses_the_pools_scheduler_or_the_hosts_default(kit):
    x = kit.x
    kit.free(4, 5, 6, 7)
    pools = {sched: kit.pool(sched_policy=sched) for sched in ("", *kit.server.host.schedulers)}
    for pool in pools.values():
        x.cpu_pool.activate(pool)
    live = backend_pools(kit.server)
    host_default = x.host.get_sched_policy(kit.host)
    assert host_default == kit.server.host.sched
    for sched, pool in pools.items():
        assert live[x.cpu_pool.get_uuid(pool)]["sched"] == (sched or host_default)
    # '' is the host's default; the getter shows '' or the scheduler it resolves to (xend)
    assert x.cpu_pool.get_sched_policy(pools[""]) in ("", host_default)
    consistent(kit)


def test_async_activate_runs_as_a_task(kit):
    x = kit.x
    kit.free(7)
    pool = kit.pool()
    task = getattr(x, "Async.cpu_pool.activate")(pool)
    deadline = time.monotonic() + 10
    while x.task.get_status(task) == "pending" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert x.task.get_status(task) == "success"
    assert float(x.task.get_progress(task)) == 1.0
    assert kit.cpus_of(pool) == {7}
    task = getattr(x, "Async.cpu_pool.activate")(pool)
    while x.task.get_status(task) == "pending" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert x.task.get_status(task) == "failure"
    assert x.task.get_error_info(task) == ["POOL_BAD_STATE", "activated"]


# -- deactivate ---------------------------------------------------------------------------------

def test_deactivate_needs_an_active_pool_without_vms_and_frees_its_cpus(kit):
    x = kit.x
    pool = kit.active_pool([6, 7], "work", sched_policy="credit2", other_config={"k": "v"})
    idle = kit.pool("idle")
    kit.refused(["POOL_BAD_STATE", "deactivated"], x.cpu_pool.deactivate, idle)
    vm = kit.vm(pool_name="work")
    x.VM.start(vm, False, False)
    kit.refused(["POOL_BAD_STATE", "in use"], x.cpu_pool.deactivate, pool)
    x.VM.pause(vm)
    kit.refused(["POOL_BAD_STATE", "in use"], x.cpu_pool.deactivate, pool)
    x.VM.hard_shutdown(vm)
    definition = {k: v for k, v in x.cpu_pool.get_record(pool).items()
                  if k not in ("activated", "host_CPUs", "started_VMs")}
    x.cpu_pool.deactivate(pool)
    rec = x.cpu_pool.get_record(pool)
    assert rec["activated"] is False and rec["host_CPUs"] == [] and rec["started_VMs"] == []
    assert {k: v for k, v in rec.items() if k in definition} == definition  # the definition stays
    assert kit.owner()[6] == [] and kit.owner()[7] == []
    assert kit.free_cpus() == 2 and kit.unassigned() == {6, 7}
    assert rec["uuid"] not in backend_pools(kit.server)
    kit.refused(["POOL_BAD_STATE", "deactivated"], x.cpu_pool.deactivate, pool)
    # and back: the same CPUs, the same scheduler
    x.cpu_pool.activate(pool)
    assert kit.cpus_of(pool) == {6, 7}
    assert backend_pools(kit.server)[rec["uuid"]]["sched"] == "credit2"
    consistent(kit)


# -- add_host_CPU_live / remove_host_CPU_live -----------------------------------------------------

def test_add_host_cpu_live(kit):
    x = kit.x
    kit.free(5, 6, 7)
    pool = kit.pool("grow", ncpu=1, proposed_CPUs=["5"])
    other = kit.pool("other", ncpu=1, proposed_CPUs=["6"])
    kit.refused(["POOL_BAD_STATE", "deactivated"], x.cpu_pool.add_host_CPU_live, pool, kit.cpu[7])
    x.cpu_pool.activate(pool)
    x.cpu_pool.activate(other)
    assert kit.cpus_of(pool) == {5} and kit.cpus_of(other) == {6}
    for taken in (0, 6, 5):  # Pool-0's, another pool's, its own
        details = kit.refused("INVALID_CPU", x.cpu_pool.add_host_CPU_live, pool, kit.cpu[taken])
        assert len(details) == 2
    x.cpu_pool.add_host_CPU_live(pool, kit.cpu[7])
    rec = x.cpu_pool.get_record(pool)
    assert kit.numbers(rec["host_CPUs"]) == {5, 7}
    assert rec["ncpu"] == "2" and {"5", "7"} <= set(rec["proposed_CPUs"])  # the definition follows
    assert kit.owner()[7] == [pool] and kit.free_cpus() == 0 and kit.unassigned() == set()
    assert backend_pools(kit.server)[rec["uuid"]]["cpus"] == {5, 7}
    consistent(kit)


def test_remove_host_cpu_live(kit):
    x = kit.x
    pool = kit.active_pool([5, 6], "shrink")
    idle = kit.pool("idle")
    kit.refused(["POOL_BAD_STATE", "deactivated"], x.cpu_pool.remove_host_CPU_live, idle, kit.cpu[5])
    kit.free(7)
    for elsewhere in (0, 7):  # Pool-0's, a free one
        details = kit.refused("INVALID_CPU", x.cpu_pool.remove_host_CPU_live, pool, kit.cpu[elsewhere])
        assert len(details) == 2
    x.cpu_pool.remove_host_CPU_live(pool, kit.cpu[6])
    rec = x.cpu_pool.get_record(pool)
    assert kit.numbers(rec["host_CPUs"]) == {5}
    assert rec["ncpu"] == "1" and "6" not in rec["proposed_CPUs"]
    assert kit.owner()[6] == [] and kit.unassigned() == {6, 7} and kit.free_cpus() == 2
    assert backend_pools(kit.server)[rec["uuid"]]["cpus"] == {5}
    vm = kit.vm(pool_name="shrink")
    x.VM.start(vm, False, False)
    details = kit.refused("LAST_CPU_NOT_REMOVEABLE", x.cpu_pool.remove_host_CPU_live, pool, kit.cpu[5])
    assert len(details) == 2
    x.VM.pause(vm)
    kit.refused("LAST_CPU_NOT_REMOVEABLE", x.cpu_pool.remove_host_CPU_live, pool, kit.cpu[5])
    # Pool-0 gets its CPUs back the same way
    x.cpu_pool.add_host_CPU_live(kit.pool0, kit.cpu[6])
    x.cpu_pool.add_host_CPU_live(kit.pool0, kit.cpu[7])
    assert kit.cpus_of(kit.pool0) == {0, 1, 2, 3, 4, 6, 7} and kit.free_cpus() == 0
    consistent(kit)


def test_an_active_pool_keeps_its_last_cpu_even_unused(kit):
    """Issue 17 item 4, seed 000: "An activated cpu-pool owns at least one physical CPU ... The last
    CPU of the cpu-pool cannot be removed explicitly." xend let an unused pool lose it (and then no
    VM could start or move there); the seed wins: refused, with or without VMs, changing nothing."""
    x = kit.x
    pool = kit.active_pool([6, 7], "last")
    x.cpu_pool.remove_host_CPU_live(pool, kit.cpu[7])
    details = kit.refused("LAST_CPU_NOT_REMOVEABLE", x.cpu_pool.remove_host_CPU_live, pool, kit.cpu[6])
    assert len(details) == 2
    assert kit.cpus_of(pool) == {6} and x.cpu_pool.get_ncpu(pool) == "1"
    # deactivating is how the last CPU goes back
    x.cpu_pool.deactivate(pool)
    assert kit.unassigned() == {6, 7}
    consistent(kit)


# -- proposed CPUs ------------------------------------------------------------------------------

def test_add_and_remove_proposed_cpus(kit):
    x = kit.x
    pool = kit.pool("prop")
    x.cpu_pool.add_to_proposed_CPUs(pool, "5")
    x.cpu_pool.add_to_proposed_CPUs(pool, "2")
    x.cpu_pool.add_to_proposed_CPUs(pool, "5")  # present already: nothing
    assert x.cpu_pool.get_proposed_CPUs(pool) == ["2", "5"]  # kept sorted, as xend
    for bad in (str(CPUS), "99", "-1"):
        details = kit.refused("INVALID_CPU", x.cpu_pool.add_to_proposed_CPUs, pool, bad)
        assert len(details) == 2
    for bad in ("x", ""):  # not an integer at all: the generic type check (API.md §1)
        kit.refused(["FIELD_TYPE_ERROR", "cpu"], x.cpu_pool.add_to_proposed_CPUs, pool, bad)
    x.cpu_pool.remove_from_proposed_CPUs(pool, "5")
    x.cpu_pool.remove_from_proposed_CPUs(pool, "3")  # absent: nothing
    assert x.cpu_pool.get_proposed_CPUs(pool) == ["2"]
    kit.free(2)
    x.cpu_pool.activate(pool)
    kit.refused(["POOL_BAD_STATE", "activated"], x.cpu_pool.add_to_proposed_CPUs, pool, "3")
    kit.refused(["POOL_BAD_STATE", "activated"], x.cpu_pool.remove_from_proposed_CPUs, pool, "2")
    kit.refused(["POOL_BAD_STATE", "activated"], x.cpu_pool.set_proposed_CPUs, pool, ["3"])
    x.cpu_pool.deactivate(pool)
    x.cpu_pool.set_proposed_CPUs(pool, ["7", "1"])
    assert sorted(x.cpu_pool.get_proposed_CPUs(pool)) == ["1", "7"]
    kit.refused("INVALID_CPU", x.cpu_pool.set_proposed_CPUs, pool, ["1", str(CPUS)])


def test_proposed_cpu_messages_take_an_integer(kit):
    """Xen-API declares ``add_to_proposed_CPUs(session, cpu_pool ref, integer cpu)`` (and remove
    alike), and integers may come as XML-RPC ints or as strings (API.md §1)."""
    x = kit.x
    pool = kit.pool("ints")
    x.cpu_pool.add_to_proposed_CPUs(pool, 3)
    x.cpu_pool.add_to_proposed_CPUs(pool, "4")
    assert x.cpu_pool.get_proposed_CPUs(pool) == ["3", "4"]
    x.cpu_pool.remove_from_proposed_CPUs(pool, 3)
    assert x.cpu_pool.get_proposed_CPUs(pool) == ["4"]
    assert failure(x.cpu_pool.add_to_proposed_CPUs, pool, CPUS)[0] == "INVALID_CPU"


# -- setters --------------------------------------------------------------------------------------

def test_setters_and_their_checks(kit):
    x = kit.x
    pool = kit.pool("s1")
    kit.pool("s2")
    x.cpu_pool.set_name_label(pool, "s1-new")
    assert x.cpu_pool.get_by_name_label("s1") == [] and x.cpu_pool.get_by_name_label("s1-new") == [pool]
    for bad in ("s2", "Pool-0", "has space", ""):
        details = kit.refused("PARAMETER_ERROR", x.cpu_pool.set_name_label, pool, bad)
        assert len(details) == 2
    x.cpu_pool.set_name_description(pool, "notes")
    assert x.cpu_pool.get_name_description(pool) == "notes"
    x.cpu_pool.set_ncpu(pool, 4)
    assert x.cpu_pool.get_ncpu(pool) == "4"
    x.cpu_pool.set_ncpu(pool, "2")
    assert x.cpu_pool.get_ncpu(pool) == "2"
    for bad in (0, -3):
        kit.refused(["PARAMETER_ERROR", "ncpu"], x.cpu_pool.set_ncpu, pool, bad)
    for sched in ("credit2", "credit", ""):
        x.cpu_pool.set_sched_policy(pool, sched)
        assert x.cpu_pool.get_sched_policy(pool) == sched
    kit.refused(["UNKOWN_SCHED_POLICY"], x.cpu_pool.set_sched_policy, pool, "fifo")
    x.cpu_pool.set_auto_power_on(pool, True)
    assert x.cpu_pool.get_auto_power_on(pool) is True
    x.cpu_pool.set_auto_power_on(pool, False)
    assert x.cpu_pool.get_auto_power_on(pool) is False
    x.cpu_pool.set_other_config(pool, {"a": "1"})
    x.cpu_pool.add_to_other_config(pool, "b", "2")
    kit.refused("MAP_DUPLICATE_KEY", x.cpu_pool.add_to_other_config, pool, "a", "x")
    x.cpu_pool.remove_from_other_config(pool, "a")
    x.cpu_pool.remove_from_other_config(pool, "zz")  # a missing key is ignored
    assert x.cpu_pool.get_other_config(pool) == {"b": "2"}
    for ro in ("uuid", "activated", "host_CPUs", "started_VMs", "resident_on"):
        assert failure(getattr(x.cpu_pool, f"set_{ro}"), pool, "x") == ["MESSAGE_METHOD_UNKNOWN", f"cpu_pool.set_{ro}"]
    # an active pool: its scheduler and proposed CPUs are fixed, the rest may change
    x.cpu_pool.set_ncpu(pool, 1)
    kit.free(7)
    x.cpu_pool.activate(pool)
    kit.refused(["POOL_BAD_STATE", "activated"], x.cpu_pool.set_sched_policy, pool, "credit2")
    kit.refused(["POOL_BAD_STATE", "activated"], x.cpu_pool.set_proposed_CPUs, pool, ["7"])
    x.cpu_pool.set_name_description(pool, "busy")
    x.cpu_pool.set_auto_power_on(pool, True)
    x.cpu_pool.add_to_other_config(pool, "c", "3")
    x.cpu_pool.set_ncpu(pool, 3)  # applies at the next activation (xend: no state check)
    rec = x.cpu_pool.get_record(pool)
    assert (rec["name_description"], rec["auto_power_on"], rec["other_config"], rec["ncpu"]) == (
        "busy", True, {"b": "2", "c": "3"}, "3")
    assert rec["activated"] is True and kit.cpus_of(pool) == {7}


# -- the state machine --------------------------------------------------------------------------

def test_state_machine_defined_activated_and_back(kit):
    x = kit.x
    kit.free(4, 5, 6, 7)
    pool = kit.pool("cycle", ncpu=2, proposed_CPUs=["7", "5"])
    for _ in range(2):
        assert x.cpu_pool.get_activated(pool) is False
        kit.refused(["POOL_BAD_STATE", "deactivated"], x.cpu_pool.deactivate, pool)
        kit.refused(["POOL_BAD_STATE", "deactivated"], x.cpu_pool.add_host_CPU_live, pool, kit.cpu[4])
        kit.refused(["POOL_BAD_STATE", "deactivated"], x.cpu_pool.remove_host_CPU_live, pool, kit.cpu[5])
        x.cpu_pool.activate(pool)
        assert kit.cpus_of(pool) == {5, 7} and kit.unassigned() == {4, 6}
        kit.refused(["POOL_BAD_STATE", "activated"], x.cpu_pool.activate, pool)
        kit.refused(["POOL_BAD_STATE", "activated"], x.cpu_pool.destroy, pool)
        consistent(kit)
        x.cpu_pool.deactivate(pool)
        assert kit.unassigned() == {4, 5, 6, 7} and kit.free_cpus() == 4
        consistent(kit)
    x.cpu_pool.destroy(pool)
    assert x.cpu_pool.get_all() == [kit.pool0] and kit.free_cpus() == 4
    consistent(kit)


# -- VMs and pools ----------------------------------------------------------------------------

def test_a_vm_starts_only_in_an_active_pool(kit):
    x = kit.x
    vm = kit.vm(pool_name="NoSuch")
    details = kit.refused("VALUE_NOT_SUPPORTED", x.VM.start, vm, False, False)
    assert details[1:3] == ["pool_name", "NoSuch"]
    pool = kit.pool("later", ncpu=2)
    x.VM.set_pool_name(vm, "later")
    kit.refused(["POOL_BAD_STATE", "deactivated"], x.VM.start, vm, False, False)
    kit.refused(["POOL_BAD_STATE", "deactivated"], x.VM.start, vm, True, False)
    assert backend_domain(kit.server, x.VM.get_uuid(vm)) is None
    kit.free(6, 7)
    x.cpu_pool.activate(pool)
    assert x.VM.get_cpu_pool(vm) == []  # halted: in no pool
    x.VM.start(vm, False, False)
    assert x.VM.get_cpu_pool(vm) == [pool]
    assert x.cpu_pool.get_started_VMs(pool) == [vm]
    assert x.cpu_pool.get_started_VMs(kit.pool0) == [kit.dom0]
    assert set(kit.vcpus_cpu(vm).values()) <= {6, 7}
    assert backend_domain(kit.server, x.VM.get_uuid(vm))["pool"] == x.cpu_pool.get_uuid(pool)
    consistent(kit)
    x.VM.clean_shutdown(vm)
    assert x.VM.get_cpu_pool(vm) == [] and x.cpu_pool.get_started_VMs(pool) == []
    # the default pool_name is Pool-0, and '' means Pool-0 too (xend)
    plain = kit.vm()
    assert x.VM.get_pool_name(plain) == "Pool-0"
    blank = kit.vm(pool_name="")
    for v in (plain, blank):
        x.VM.start(v, False, False)
        assert x.VM.get_cpu_pool(v) == [kit.pool0]
    # a destroyed pool leaves no VM naming it: they start in Pool-0 (issue 17 item 11)
    x.cpu_pool.deactivate(pool)
    x.cpu_pool.destroy(pool)
    assert x.VM.get_pool_name(vm) == "Pool-0"
    x.VM.start(vm, False, False)
    assert x.VM.get_cpu_pool(vm) == [kit.pool0]
    consistent(kit)


def test_pins_outside_the_pool_refuse_the_start(kit):
    x = kit.x
    kit.active_pool([4, 5], "pinned")
    vm = kit.vm(pool_name="pinned", VCPUs_max=2, VCPUs_at_startup=2, VCPUs_params={"cpumap0": "4", "cpumap1": "3-4"})
    details = kit.refused("VALUE_NOT_SUPPORTED", x.VM.start, vm, False, False)
    assert details[1:3] == ["cpumap1", "3-4"]
    x.VM.set_VCPUs_params(vm, {"cpumap0": "4", "cpumap1": "4-5"})
    x.VM.start(vm, False, False)
    assert kit.vcpus_cpu(vm)[0] == 4 and kit.vcpus_cpu(vm)[1] in (4, 5)
    # a Pool-0 VM may not be pinned into another pool's CPUs either
    outsider = kit.vm(VCPUs_params={"cpumap0": "5"})
    kit.refused("VALUE_NOT_SUPPORTED", x.VM.start, outsider, False, False)
    x.VM.set_VCPUs_params(outsider, {"cpumap0": "0-3"})
    x.VM.start(outsider, False, False)
    assert kit.vcpus_cpu(outsider)[0] in range(4)
    consistent(kit)


@on_xl()
def test_live_pinning_stays_inside_the_vms_pool(kit):
    """API.md §5: pinning (cpumap<N>) is restricted to the pool's CPUs, at start and live."""
    x = kit.x
    kit.active_pool([6, 7], "pins")
    vm = kit.vm(pool_name="pins", VCPUs_max=2, VCPUs_at_startup=2)
    x.VM.start(vm, False, False)
    x.VM.pin_VCPU(vm, 0, "7", "dynamic")  # inside: fine
    assert kit.vcpus_cpu(vm)[0] == 7
    for mode in ("dynamic", "perm"):
        details = kit.refused("VALUE_NOT_SUPPORTED", x.VM.pin_VCPU, vm, 1, "1", mode)
        assert details[0] == "VALUE_NOT_SUPPORTED"
    assert set(kit.vcpus_cpu(vm).values()) <= {6, 7}
    assert all(share > 0 for share in kit.utilisation(vm).values())


def test_cpu_pool_migrate_checks_the_running_domains_pins(kit):
    """A running VM is moved with the pins it runs with now (pin_VCPU dynamic), not only the stored
    ones: a vCPU pinned outside the target pool would have no CPU to run on."""
    x = kit.x
    kit.active_pool([5, 6], "src")
    dest = kit.active_pool([4], "dest")
    vm = kit.vm(pool_name="src")
    x.VM.start(vm, False, False)
    x.VM.pin_VCPU(vm, 0, "5", "dynamic")  # the stored definition has no pin
    kit.refused("VALUE_NOT_SUPPORTED", x.VM.cpu_pool_migrate, vm, dest)
    assert kit.vcpus_cpu(vm) == {0: 5} and shares_fit(kit.server, kit.utilisation(vm), {0: 1.0})


@on_xl()
def test_cpu_pool_migrate_moves_a_running_vm_live(kit):
    x = kit.x
    pool = kit.active_pool([6, 7], "dest")
    vm = kit.vm(VCPUs_max=2, VCPUs_at_startup=2)
    x.VM.start(vm, False, False)
    domid = x.VM.get_domid(vm)
    assert x.VM.get_cpu_pool(vm) == [kit.pool0]
    token = kit.token(["VM", "cpu_pool"])
    x.VM.cpu_pool_migrate(vm, pool)
    assert x.VM.get_cpu_pool(vm) == [pool] and x.VM.get_pool_name(vm) == "dest"
    assert x.VM.get_domid(vm) == domid and x.VM.get_power_state(vm) == "Running"  # live: the same domain
    assert x.cpu_pool.get_started_VMs(pool) == [vm]
    assert x.cpu_pool.get_started_VMs(kit.pool0) == [kit.dom0]
    assert set(kit.vcpus_cpu(vm).values()) <= {6, 7}
    assert shares_fit(kit.server, kit.utilisation(vm), {0: 1.0, 1: 1.0})
    assert backend_domain(kit.server, x.VM.get_uuid(vm))["pool"] == x.cpu_pool.get_uuid(pool)
    events = {(e["class"], e["ref"]): e for e in event_from(x, ["VM", "cpu_pool"], token, 2.0)["events"]}
    assert events[("vm", vm)]["snapshot"]["cpu_pool"] == [pool]
    assert events[("vm", vm)]["snapshot"]["pool_name"] == "dest"
    assert events[("cpu_pool", pool)]["snapshot"]["started_VMs"] == [vm]
    assert vm not in events[("cpu_pool", kit.pool0)]["snapshot"]["started_VMs"]
    consistent(kit)
    # a paused VM moves too, and back it goes
    x.VM.pause(vm)
    x.VM.cpu_pool_migrate(vm, kit.pool0)
    assert x.VM.get_cpu_pool(vm) == [kit.pool0] and x.VM.get_pool_name(vm) == "Pool-0"
    assert x.cpu_pool.get_started_VMs(pool) == []
    consistent(kit)


def test_cpu_pool_migrate_of_a_halted_vm_only_retargets_it(kit):
    x = kit.x
    idle = kit.pool("idle")
    vm = kit.vm()
    x.VM.cpu_pool_migrate(vm, idle)  # inactive is fine: it applies at the next start
    assert x.VM.get_pool_name(vm) == "idle" and x.VM.get_cpu_pool(vm) == []
    assert x.VM.get_power_state(vm) == "Halted" and x.cpu_pool.get_started_VMs(idle) == []
    kit.refused(["POOL_BAD_STATE", "deactivated"], x.VM.start, vm, False, False)
    kit.free(7)
    x.cpu_pool.activate(idle)
    x.VM.start(vm, False, False)
    assert x.VM.get_cpu_pool(vm) == [idle] and kit.vcpus_cpu(vm) == {0: 7}
    consistent(kit)


def test_cpu_pool_migrate_refusals(kit):
    x = kit.x
    active = kit.active_pool([6, 7], "active")
    idle = kit.pool("idle")
    kit.refused("OPERATION_NOT_ALLOWED", x.VM.cpu_pool_migrate, kit.dom0, active)
    vm = kit.vm(VCPUs_params={"cpumap0": "0"})
    x.VM.start(vm, False, False)
    kit.refused(["POOL_BAD_STATE", "deactivated"], x.VM.cpu_pool_migrate, vm, idle)
    kit.refused("VALUE_NOT_SUPPORTED", x.VM.cpu_pool_migrate, vm, active)  # pinned outside the target
    missing = "OpaqueRef:12345678-1234-1234-1234-123456789abc"
    assert failure(x.VM.cpu_pool_migrate, vm, missing) == ["HANDLE_INVALID", "cpu_pool", missing]
    assert x.VM.get_pool_name(vm) == "Pool-0" and x.VM.get_cpu_pool(vm) == [kit.pool0]
    suspended = kit.vm()
    x.VM.start(suspended, False, False)
    x.VM.suspend(suspended)
    details = kit.refused("VM_BAD_POWER_STATE", x.VM.cpu_pool_migrate, suspended, active)
    assert details[1] == suspended


def test_concurrent_activations_never_share_a_cpu(kit):
    kit.free(4, 5, 6, 7)
    pools = [kit.pool(f"race{i}", ncpu=2) for i in range(3)]
    outcomes: dict[str, object] = {}

    def activate(pool):
        client = session(kit.server).xenapi
        try:
            client.cpu_pool.activate(pool)
            outcomes[pool] = "ok"
        except XenAPI.Failure as exc:
            outcomes[pool] = exc.details

    threads = [threading.Thread(target=activate, args=(p,)) for p in pools]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(map(str, outcomes.values())) == sorted(["ok", "ok", str(["INSUFFICIENT_CPUS", "2", "0"])])
    winners = [p for p in pools if outcomes[p] == "ok"]
    assert kit.cpus_of(winners[0]) | kit.cpus_of(winners[1]) == {4, 5, 6, 7}
    assert kit.free_cpus() == 0
    consistent(kit)


def test_a_start_racing_a_deactivate_never_leaves_a_vm_in_an_inactive_pool(kit):
    x = kit.x
    pool = kit.active_pool([7], "race")
    vm = kit.vm(pool_name="race")
    starter, stopper = session(kit.server).xenapi, session(kit.server).xenapi

    def attempt(call, *args):
        try:
            call(*args)
        except XenAPI.Failure:
            pass

    for _ in range(5):
        if not x.cpu_pool.get_activated(pool):
            x.cpu_pool.activate(pool)
        threads = [threading.Thread(target=attempt, args=(starter.VM.start, vm, False, False)),
                   threading.Thread(target=attempt, args=(stopper.cpu_pool.deactivate, pool))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        if x.VM.get_power_state(vm) == "Running":  # the start won: the pool could not go
            assert x.cpu_pool.get_activated(pool) is True and x.VM.get_cpu_pool(vm) == [pool]
            x.VM.hard_shutdown(vm)
        else:
            assert x.cpu_pool.get_activated(pool) is False
        consistent(kit)


# -- isolation through the scheduler model ---------------------------------------------------

def test_pools_share_only_their_own_cpus(kit):
    """Each pool's VMs run on its pCPUs only; with the sim's scheduler model, they share them only
    among themselves (libvirt reports no utilisation: there the placement is checked)."""
    x = kit.x
    model = modelled(kit.server)
    a = kit.active_pool([7], "A")
    b = kit.active_pool([5, 6], "B")
    a1, a2 = kit.vm(pool_name="A"), kit.vm(pool_name="A")
    b1 = kit.vm(pool_name="B", VCPUs_max=2, VCPUs_at_startup=2)
    # Pool-0 keeps 0-4 (5 pCPUs) and is loaded with 10 busy vCPUs
    zs = [kit.vm(VCPUs_max=2, VCPUs_at_startup=2) for _ in range(5)]
    for vm in (a1, a2, b1, *zs):
        x.VM.start(vm, False, False)
    if model:
        assert kit.utilisation(a1) == pytest.approx({0: 0.5}) and kit.utilisation(a2) == pytest.approx({0: 0.5})
        assert kit.utilisation(b1) == pytest.approx({0: 1.0, 1: 1.0})
        for z in zs:
            assert kit.utilisation(z) == pytest.approx({0: 0.5, 1: 0.5})
    assert kit.vcpus_cpu(a1) == {0: 7} and kit.vcpus_cpu(a2) == {0: 7}
    assert set(kit.vcpus_cpu(b1).values()) <= {5, 6}
    for z in zs:
        assert set(kit.vcpus_cpu(z).values()) <= {0, 1, 2, 3, 4}
    # a2 moves to B: A's VM gets its CPU alone; in B two VMs of equal weight share two pCPUs
    # (credit's weight is per VM, spread over its vCPUs: a2's one vCPU gets one pCPU, b1's two half each)
    x.VM.cpu_pool_migrate(a2, b)
    if model:
        assert kit.utilisation(a1) == pytest.approx({0: 1.0})
        assert kit.utilisation(a2) == pytest.approx({0: 1.0})
        assert kit.utilisation(b1) == pytest.approx({0: 0.5, 1: 0.5})
        for z in zs:
            assert kit.utilisation(z) == pytest.approx({0: 0.5, 1: 0.5})
    assert set(kit.vcpus_cpu(a2).values()) <= {5, 6} and kit.vcpus_cpu(a1) == {0: 7}
    # more CPUs for A: live, and the model follows
    x.cpu_pool.remove_host_CPU_live(kit.pool0, kit.cpu[4])
    x.cpu_pool.add_host_CPU_live(a, kit.cpu[4])
    if model:
        assert kit.utilisation(a1) == pytest.approx({0: 1.0})
        for z in zs:
            assert kit.utilisation(z) == pytest.approx({0: 0.4, 1: 0.4}, abs=0.01)  # 10 vCPUs on 0-3
    assert set(kit.vcpus_cpu(a1).values()) <= {4, 7}
    for z in zs:
        assert set(kit.vcpus_cpu(z).values()) <= {0, 1, 2, 3}
    consistent(kit)


@sim_only(NO_UTILISATION)
def test_weights_compare_only_within_a_pool(kit):
    x = kit.x
    kit.active_pool([7], "A")
    kit.active_pool([6], "B")
    heavy = kit.vm(pool_name="A", VCPUs_params={"weight": "512"})
    light = kit.vm(pool_name="A", VCPUs_params={"weight": "256"})
    tiny = kit.vm(pool_name="B", VCPUs_params={"weight": "1"})
    huge = kit.vm(VCPUs_params={"weight": "65535"})  # Pool-0, 6 pCPUs
    for vm in (heavy, light, tiny, huge):
        x.VM.start(vm, False, False)
    assert kit.utilisation(heavy) == pytest.approx({0: 2 / 3}, abs=0.01)
    assert kit.utilisation(light) == pytest.approx({0: 1 / 3}, abs=0.01)
    assert kit.utilisation(tiny) == pytest.approx({0: 1.0})  # alone in B, whatever the weights elsewhere
    assert kit.utilisation(huge) == pytest.approx({0: 1.0})  # cannot take anything from A or B
    # the weight of a VM moved into B now counts against tiny's
    x.VM.cpu_pool_migrate(heavy, x.cpu_pool.get_by_name_label("B")[0])
    assert kit.utilisation(light) == pytest.approx({0: 1.0})
    assert kit.utilisation(heavy) == pytest.approx({0: 512 / 513}, abs=0.01)
    assert kit.utilisation(tiny) == pytest.approx({0: 1 / 513}, abs=0.01)


def test_a_paused_vm_reports_its_vcpus_on_its_pools_cpus(kit):
    """VM_metrics.VCPUs_CPU of every live VM names CPUs of its own pool, paused ones included."""
    x = kit.x
    kit.active_pool([6, 7], "P")
    vm = kit.vm(pool_name="P", VCPUs_max=2, VCPUs_at_startup=2)
    x.VM.start(vm, True, False)
    assert x.VM.get_power_state(vm) == "Paused" and x.VM.get_cpu_pool(vm) != []
    assert set(kit.vcpus_cpu(vm).values()) <= {6, 7}
    x.VM.unpause(vm)
    x.VM.pause(vm)
    assert set(kit.vcpus_cpu(vm).values()) <= {6, 7}


def test_vm_cpu_pool_and_started_vms_agree_in_every_power_state(kit):
    """VM.cpu_pool is the pool the VM runs in (xend: [] when not running) and a pool's
    started_VMs are the VMs running in it: the two are the same relation, seen from both ends."""
    x = kit.x
    pool = kit.active_pool([7], "S")
    vm = kit.vm(pool_name="S")
    for state in ("Running", "Paused", "Suspended", "Halted"):
        if state == "Running":
            x.VM.start(vm, False, False)
        elif state == "Paused":
            x.VM.pause(vm)
        elif state == "Suspended":
            x.VM.unpause(vm)
            x.VM.suspend(vm)
        else:
            x.VM.hard_shutdown(vm)
        assert x.VM.get_power_state(vm) == state
        in_pool = vm in x.cpu_pool.get_started_VMs(pool)
        assert x.VM.get_cpu_pool(vm) == ([pool] if in_pool else []), state
        assert in_pool == (state in ("Running", "Paused")), state
    consistent(kit)


# -- events -------------------------------------------------------------------------------------

def test_every_pool_message_emits_events(kit):
    x = kit.x
    watched = ["cpu_pool", "host_cpu", "host"]

    def changes(call, *args) -> dict:
        token = kit.token(watched)
        call(*args)
        events = event_from(x, watched, token, 3.0)["events"]
        return {(e["class"], e["ref"]): e for e in events}

    seen = changes(x.cpu_pool.create, {"name_label": "ev"})
    pool = x.cpu_pool.get_by_name_label("ev")[0]
    assert seen[("cpu_pool", pool)]["operation"] == "add"
    assert seen[("cpu_pool", pool)]["snapshot"]["name_label"] == "ev"

    def mod(call, *args) -> dict:
        seen = changes(call, pool, *args)
        event = seen[("cpu_pool", pool)]
        assert event["operation"] == "mod"
        return event["snapshot"]

    assert mod(x.cpu_pool.set_name_label, "ev2")["name_label"] == "ev2"
    assert mod(x.cpu_pool.set_name_description, "d")["name_description"] == "d"
    assert mod(x.cpu_pool.set_ncpu, 2)["ncpu"] == "2"
    assert mod(x.cpu_pool.set_sched_policy, "credit2")["sched_policy"] == "credit2"
    assert mod(x.cpu_pool.set_proposed_CPUs, ["6"])["proposed_CPUs"] == ["6"]
    assert mod(x.cpu_pool.add_to_proposed_CPUs, "7")["proposed_CPUs"] == ["6", "7"]
    assert mod(x.cpu_pool.remove_from_proposed_CPUs, "7")["proposed_CPUs"] == ["6"]
    assert mod(x.cpu_pool.set_auto_power_on, True)["auto_power_on"] is True
    assert mod(x.cpu_pool.set_other_config, {"a": "1"})["other_config"] == {"a": "1"}
    assert mod(x.cpu_pool.add_to_other_config, "b", "2")["other_config"] == {"a": "1", "b": "2"}
    assert mod(x.cpu_pool.remove_from_other_config, "a")["other_config"] == {"b": "2"}

    # CPUs leave Pool-0: Pool-0, the CPUs and the host's free count change
    for n in (6, 7):
        seen = changes(x.cpu_pool.remove_host_CPU_live, kit.pool0, kit.cpu[n])
        assert seen[("cpu_pool", kit.pool0)]["operation"] == "mod"
        assert seen[("host_cpu", kit.cpu[n])]["snapshot"]["cpu_pool"] == []
        assert seen[("host", kit.host)]["snapshot"]["free_cpus"] == str(8 - len(kit.cpus_of(kit.pool0)))

    seen = changes(x.cpu_pool.activate, pool)
    assert seen[("cpu_pool", pool)]["snapshot"]["activated"] is True
    assert kit.numbers(seen[("cpu_pool", pool)]["snapshot"]["host_CPUs"]) == {6, 7}
    for n in (6, 7):
        assert seen[("host_cpu", kit.cpu[n])]["snapshot"]["cpu_pool"] == [pool]
    assert seen[("host", kit.host)]["snapshot"]["free_cpus"] == "0"

    snapshot = mod(x.cpu_pool.remove_host_CPU_live, kit.cpu[7])
    assert kit.numbers(snapshot["host_CPUs"]) == {6}
    snapshot = mod(x.cpu_pool.add_host_CPU_live, kit.cpu[7])
    assert kit.numbers(snapshot["host_CPUs"]) == {6, 7}

    seen = changes(x.cpu_pool.deactivate, pool)
    assert seen[("cpu_pool", pool)]["snapshot"]["activated"] is False
    for n in (6, 7):
        assert seen[("host_cpu", kit.cpu[n])]["snapshot"]["cpu_pool"] == []
    assert seen[("host", kit.host)]["snapshot"]["free_cpus"] == "2"

    seen = changes(x.cpu_pool.add_host_CPU_live, kit.pool0, kit.cpu[6])
    assert seen[("host_cpu", kit.cpu[6])]["snapshot"]["cpu_pool"] == [kit.pool0]

    seen = changes(x.cpu_pool.destroy, pool)
    assert seen[("cpu_pool", pool)]["operation"] == "del" and "snapshot" not in seen[("cpu_pool", pool)]
    assert seen[("host", kit.host)]["snapshot"]["resident_cpu_pools"] == [kit.pool0]


def test_a_refused_pool_message_emits_nothing(kit):
    x = kit.x
    pool = kit.pool("quiet")
    token = kit.token(["cpu_pool", "host_cpu", "host"])
    failure(x.cpu_pool.activate, pool)  # INSUFFICIENT_CPUS
    failure(x.cpu_pool.deactivate, pool)
    failure(x.cpu_pool.set_ncpu, pool, 0)
    failure(x.cpu_pool.add_to_proposed_CPUs, pool, "99")
    assert event_from(x, ["cpu_pool", "host_cpu", "host"], token, 0.3)["events"] == []


# -- roles ----------------------------------------------------------------------------------------

def test_a_vm_operator_moves_vms_but_does_not_manage_pools(make_server, backend, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    add_user(state, "admin", "s3cret", "pool-admin")
    add_user(state, "op", "op-pw", "vm-operator")
    add_user(state, "viewer", "view", "read-only")
    server = make_server("--auth", "file", "--cpus", str(CPUS), state_dir=state, unix=False)

    def login(user, password):
        s = XenAPI.Session(server.url)
        s.xenapi.login_with_password(user, password, "1.0", "cpu_pool tests")
        return s.xenapi

    admin, op, viewer = login("admin", "s3cret"), login("op", "op-pw"), login("viewer", "view")
    pool0 = admin.cpu_pool.get_by_name_label("Pool-0")[0]
    cpu = {int(admin.host_cpu.get_number(r)): r for r in admin.host_cpu.get_all()}
    admin.cpu_pool.remove_host_CPU_live(pool0, cpu[7])
    admin.cpu_pool.remove_host_CPU_live(pool0, cpu[6])
    active = admin.cpu_pool.create({"name_label": "active", "proposed_CPUs": ["7"]})
    admin.cpu_pool.activate(active)
    idle = admin.cpu_pool.create({"name_label": "idle"})
    vm = admin.VM.create({"name_label": "guest", "memory_target": str(128 << 20), "memory_static_max": str(128 << 20),
                          "VCPUs_at_startup": "1", "VCPUs_max": "1", "VCPUs_params": {}, **BOOT_FIELDS})

    def denied(call, *args):
        details = failure(call, *args)
        assert details[0] == "RBAC_PERMISSION_DENIED", details

    for user in (op, viewer):
        denied(user.cpu_pool.create, {"name_label": "mine"})
        denied(user.cpu_pool.destroy, idle)
        denied(user.cpu_pool.activate, idle)
        denied(user.cpu_pool.deactivate, active)
        denied(user.cpu_pool.add_host_CPU_live, active, cpu[6])
        denied(user.cpu_pool.remove_host_CPU_live, pool0, cpu[0])
        denied(user.cpu_pool.add_to_proposed_CPUs, idle, "1")
        denied(user.cpu_pool.set_ncpu, idle, 2)
        denied(user.cpu_pool.set_name_label, idle, "renamed")
        # reading is for everyone
        assert user.cpu_pool.get_record(active)["activated"] is True
        assert sorted(user.cpu_pool.get_all()) == sorted([pool0, active, idle])
    denied(viewer.VM.cpu_pool_migrate, vm, active)
    denied(viewer.VM.set_pool_name, vm, "active")
    # the operator moves VMs between pools
    op.VM.set_pool_name(vm, "idle")
    op.VM.cpu_pool_migrate(vm, active)
    assert op.VM.get_pool_name(vm) == "active"
    op.VM.start(vm, False, False)
    op.VM.cpu_pool_migrate(vm, pool0)
    assert op.VM.get_cpu_pool(vm) == [pool0]
    op.VM.cpu_pool_migrate(vm, active)
    assert op.VM.get_cpu_pool(vm) == [active] and admin.cpu_pool.get_started_VMs(active) == [vm]
    # nothing the denied calls tried happened
    assert sorted(admin.cpu_pool.get_all()) == sorted([pool0, active, idle])
    assert admin.cpu_pool.get_activated(idle) is False and admin.cpu_pool.get_name_label(idle) == "idle"
    assert admin.host.get_free_cpus(admin.host.get_all()[0]) == "1"

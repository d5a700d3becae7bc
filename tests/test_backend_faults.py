"""Backend faults: every pool, group, scheduling-domain and allocation operation is run with its
N-th hypervisor action failing, for N = 1, 2, ... until the operation succeeds (tests/faultbackend.py,
the one stand-in, fails the action before the simulated host sees it). After each failure the
Xen-API and the backend (the simulated host's own state file) agree, and the failed operation left
nothing behind: the world is as it was (a group operation rolled back its members)."""

from __future__ import annotations

from pathlib import Path

import pytest
import XenAPI
from vmkit import MIB, new_vm

from xend_ext import sxp

MAX_ACTIONS = 20  # more actions than any operation here needs


# -- what each side says -------------------------------------------------------------------------

def api_world(x) -> dict:
    """What the Xen-API says, without what changes by itself (domain ids, start times)."""
    vms = x.VM.get_all_records()
    uuid = {ref: r["uuid"] for ref, r in vms.items()}
    out = {"vms": {}, "pools": {}, "sched_domains": {}, "occupants": {}}
    for r in vms.values():
        m = x.VM_metrics.get_record(r["metrics"])
        out["vms"][r["uuid"]] = {
            **{k: r[k] for k in ("name_label", "power_state", "pool_name", "memory_target", "memory_static_max",
                                 "VCPUs_at_startup", "VCPUs_max", "VCPUs_params", "groups")},
            "live": {k: m[k] for k in ("memory_actual", "VCPUs_number", "VCPUs_params")}}
    numbers = {ref: int(c["number"]) for ref, c in x.host_cpu.get_all_records().items()}
    for r in x.cpu_pool.get_all_records().values():
        out["pools"][r["uuid"]] = {"name_label": r["name_label"], "activated": r["activated"],
                                   "cpus": sorted(numbers[c] for c in r["host_CPUs"]), "ncpu": r["ncpu"],
                                   "proposed": sorted(r["proposed_CPUs"]),
                                   "started": sorted(uuid[v] for v in r["started_VMs"])}
    for r in x.sched_domain.get_all_records().values():
        out["sched_domains"][uuid[r["master"]]] = sorted(uuid[v] for v in r["members"])
    for ref, c in x.host_cpu.get_all_records().items():
        if c["occupants"]:
            out["occupants"][numbers[ref]] = sorted(uuid[v] for v in c["occupants"])
    return out


def sim_world(server) -> dict:
    """What the simulated host has, from its state file."""
    state = sxp.loads((Path(server.state_dir) / "sim-host.sxp").read_text(encoding="utf-8"))
    out = {"domains": {}, "pools": {}, "sched_domains": {}, "occupied": {}}
    for node in state[1:]:
        if not isinstance(node, list) or not node:
            continue
        get = lambda name, n=node: sxp.child_value(n, name)  # noqa: E731
        if node[0] == "domain":
            out["domains"][get("uuid")] = {"state": get("state"), "memory": get("memory"), "vcpus": get("vcpus"),
                                           "pool": get("pool")}
        elif node[0] == "cpupool":
            out["pools"][get("uuid")] = sorted(int(c) for c in (get("cpus") or "").split(",") if c)
        elif node[0] == "sched_domain":
            out["sched_domains"][get("master")] = {
                "members": sorted(m for m in (get("members") or "").split(",") if m),
                "weight": get("weight"), "cap": get("cap")}
        elif node[0] == "occupied":
            out["occupied"][int(get("cpu"))] = sorted(u for u in (get("domains") or "").split(",") if u)
    return out


def assert_agree(server, x) -> dict:
    """The Xen-API and the backend tell the same story; returns the API's side."""
    api, sim = api_world(x), sim_world(server)
    vms = api["vms"]
    assert {u: v["power_state"] for u, v in vms.items() if v["power_state"] != "Halted"} == {
        u: d["state"] for u, d in sim["domains"].items()}
    pool_uuid = {p["name_label"]: u for u, p in api["pools"].items()}
    for u, d in sim["domains"].items():
        assert pool_uuid[vms[u]["pool_name"] or "Pool-0"] == d["pool"], (vms[u]["name_label"], d)
        assert (vms[u]["live"]["memory_actual"], vms[u]["live"]["VCPUs_number"]) == (d["memory"], d["vcpus"])
    assert {u: p["cpus"] for u, p in api["pools"].items() if p["activated"]} == sim["pools"]
    assert {m: members for m, members in api["sched_domains"].items()} == {
        m: sd["members"] for m, sd in sim["sched_domains"].items()}
    for master, sd in sim["sched_domains"].items():  # the master's stored weight and cap cover the domain
        params = vms[master]["VCPUs_params"]
        assert (params.get("weight") or "256", params.get("cap") or "0") == (sd["weight"], sd["cap"])
    assert api["occupants"] == sim["occupied"]
    return api


def every_n(server, faults, x, operation, expected=("BACKEND_ERROR",)):
    """Run ``operation`` with action N failing, N = 1, 2, ...: each failure answers ``expected``
    (its first element) and leaves the world as it was; returns the number of actions it made
    when it finally succeeds."""
    for n in range(1, MAX_ACTIONS + 1):
        before = assert_agree(server, x)
        token = faults.arm(n)
        try:
            operation()
        except XenAPI.Failure as exc:
            calls = faults.calls(token)
            faults.disarm()
            assert calls and calls[-1].endswith(" FAILED") or any(c.endswith(" FAILED") for c in calls), calls
            assert exc.details[0] in expected, (n, calls, exc.details)
            after = assert_agree(server, x)
            assert after == before, (n, calls, exc.details)
            continue
        calls = faults.calls(token)
        faults.disarm()
        assert len(calls) == n - 1 and not any(c.endswith(" FAILED") for c in calls), calls
        assert_agree(server, x)
        return n - 1
    raise AssertionError(f"still failing after {MAX_ACTIONS} actions")


# -- scenes ---------------------------------------------------------------------------------------

def cpu(x, number):
    return next(ref for ref, c in x.host_cpu.get_all_records().items() if c["number"] == str(number))


def free(x, *numbers):
    pool0 = x.cpu_pool.get_by_name_label("Pool-0")[0]
    for n in numbers:
        x.cpu_pool.remove_host_CPU_live(pool0, cpu(x, n))


def running(x, name, **fields):
    vm = new_vm(x, name, **fields)
    x.VM.start(vm, False, False)
    return vm


# -- pools ------------------------------------------------------------------------------------------

POOL_OPS = ["activate", "deactivate", "add_host_CPU_live", "remove_host_CPU_live", "cpu_pool_migrate"]


@pytest.mark.parametrize("op", POOL_OPS)
def test_pool_operations(faulty, op):
    server, faults, x = faulty
    free(x, 6, 7)
    pool = x.cpu_pool.create({"name_label": "faulty", "ncpu": "1" if op == "add_host_CPU_live" else "2"})
    if op != "activate":
        x.cpu_pool.activate(pool)
    calls = {
        "activate": lambda: x.cpu_pool.activate(pool),
        "deactivate": lambda: x.cpu_pool.deactivate(pool),
        "add_host_CPU_live": lambda: x.cpu_pool.add_host_CPU_live(pool, cpu(x, 7)),
        "remove_host_CPU_live": lambda: x.cpu_pool.remove_host_CPU_live(pool, cpu(x, 7)),
    }
    if op == "cpu_pool_migrate":  # a master takes its running members along, all or none
        master, member = running(x, "master"), running(x, "member")
        x.sched_domain.create({"master": master, "members": [member]})
        calls[op] = lambda: x.VM.cpu_pool_migrate(master, pool)
    actions = every_n(server, faults, x, calls[op])
    assert actions == (2 if op == "cpu_pool_migrate" else 1)
    if op == "cpu_pool_migrate":
        assert {x.VM.get_pool_name(v) for v in (master, member)} == {"faulty"}


# -- groups -----------------------------------------------------------------------------------------

GROUP_OPS = {"start": "Halted", "clean_shutdown": "Running", "suspend": "Running", "resume": "Suspended"}


@pytest.mark.parametrize("op", list(GROUP_OPS))
def test_group_operations_roll_back(faulty, op):
    server, faults, x = faulty
    members = [new_vm(x, f"member{i}", order=str(i)) for i in range(3)]
    group = x.VM_group.create({"name_label": "ordered", "VMs": members})
    for vm in members:
        if GROUP_OPS[op] != "Halted":
            x.VM.start(vm, False, False)
        if GROUP_OPS[op] == "Suspended":
            x.VM.suspend(vm)
    args = (False,) if op in ("start", "resume") else ()
    actions = every_n(server, faults, x, lambda: getattr(x.VM_group, op)(group, *args),
                      expected=("OPERATION_PARTIALLY_FAILED",))
    assert actions == 3


# -- scheduling domains -------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["create", "add_member", "remove_member", "destroy"])
def test_sched_domain_operations(faulty, op):
    server, faults, x = faulty
    master, member = running(x, "master", VCPUs_params={"weight": "512", "cap": "80"}), running(x, "member")
    sd = None if op == "create" else x.sched_domain.create(
        {"master": master, "members": [] if op == "add_member" else [member]})
    call = {"create": lambda: x.sched_domain.create({"master": master, "members": [member]}),
            "add_member": lambda: x.sched_domain.add_member(sd, member),
            "remove_member": lambda: x.sched_domain.remove_member(sd, member),
            "destroy": lambda: x.sched_domain.destroy(sd)}[op]
    assert every_n(server, faults, x, call) == 1


# -- allocation ----------------------------------------------------------------------------------------

ALLOCATIONS = {
    "set_memory": (str(200 * MIB),), "set_VCPUs": ("2",), "pin_VCPU": ("0", "2-3"),
    "set_sched_weight": ("512",), "set_sched_cap": ("50",), "set_memory_max": (str(400 * MIB),),
}
MODES = ("dynamic", "static", "perm")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("message", list(ALLOCATIONS))
def test_allocation_changes(faulty, message, mode):
    """On a running master of a scheduling domain: a static or perm change tells the backend the
    definition and the domain's new set, a dynamic or perm one changes the running domain."""
    server, faults, x = faulty
    vm = running(x, "alloc", memory_static_max=str(256 * MIB), VCPUs_max="2")
    x.sched_domain.create({"master": vm, "members": [running(x, "stub")]})
    actions = every_n(server, faults, x, lambda: getattr(x.VM, message)(vm, *ALLOCATIONS[message], mode))
    assert actions == {"dynamic": 1, "static": 2, "perm": 3}[mode]


# -- destroy -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("role", ["master", "member"])
def test_destroy_of_a_vm_in_a_sched_domain_holding_a_pcpu(faulty, role):
    """The scheduling domain and the reservation let the VM go (the backend told), then the backend
    forgets its definition, then the store forgets the VM; a refused step puts it all back."""
    server, faults, x = faulty
    master, member = new_vm(x, "master"), new_vm(x, "member")
    x.sched_domain.create({"master": master, "members": [member]})
    victim, other = (master, member) if role == "master" else (member, master)
    x.VM.start(other, False, False)
    x.host_cpu.set_occupants(cpu(x, 5), [victim])
    assert every_n(server, faults, x, lambda: x.VM.destroy(victim)) == 3
    assert victim not in x.VM.get_all()

"""VM_metrics and the allocation messages (API.md §4, §8) on a real server, through the official client.

The record is the stored next-start definition, VM_metrics what runs now; the modes say which of the
two a change reaches: dynamic (running domain only), static (definition only), perm (both).
The utilisation numbers are the simulated host's scheduler model with every vCPU busy.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import xmlrpc.client

import pytest
import XenAPI
from conftest import ServerProcess, fails, ok
from vmkit import (
    BOTH,
    MIB,
    NO_MIGRATE,
    NO_UTILISATION,
    Kit,
    event_from,
    everything,
    failure,
    metrics,
    modelled,
    not_implemented_here,
    off_xl,
    on_xl,
    shares_fit,
    sim_only,
)

pytestmark = pytest.mark.backends(*BOTH)

GIB = 1024 * MIB


@pytest.fixture(scope="module")
def srv(tmp_path_factory, backend):
    server = ServerProcess(tmp_path_factory.mktemp("vm-allocation") / "state", unix=False, host=backend).start()
    yield server
    server.stop()


@pytest.fixture
def kit(srv):
    k = Kit(srv)
    yield k
    k.close()


def util(x, vm) -> list[float]:
    shares = metrics(x, vm)["VCPUs_utilisation"]
    return [shares[k] for k in sorted(shares, key=int)]


def measured_or_none(shares: list[float], vcpus: int = 1) -> bool:
    """A backend that measures (xl: a 10 s window) has no figure until its first window after the
    start ends, then one share of a pCPU per vCPU; libvirt's test driver has none at all."""
    return shares == [] or (len(shares) == vcpus and all(0.0 <= s <= 1.0 for s in shares))


# -- VM_metrics: what the scheduler gives ---------------------------------------------------------

@sim_only(NO_UTILISATION)
def test_two_equal_vms_pinned_to_one_pcpu_share_it(kit):
    x = kit.x
    a = kit.vm(VCPUs_params={"cpumap0": "0"})
    b = kit.vm(VCPUs_params={"cpumap0": "0"})
    x.VM.start(a, False, False)
    assert util(x, a) == [1.0]
    x.VM.start(b, False, False)
    assert util(x, a) == pytest.approx([0.5]) and util(x, b) == pytest.approx([0.5])
    for vm in (a, b):
        live = metrics(x, vm)
        assert live["VCPUs_CPU"] == {"0": "0"}
        assert live["VCPUs_params"] == {"weight": "256", "cap": "0", "cpumap0": "0"}
        assert live["VCPUs_number"] == "1"
    # utilisation travels as doubles, in a map keyed by the vCPU number as a string
    proxy = xmlrpc.client.ServerProxy(kit.server.url)
    s = ok(proxy.session.login_with_password("root", ""))
    shares = ok(proxy.VM_metrics.get_VCPUs_utilisation(s, x.VM.get_metrics(a)))
    assert list(shares) == ["0"] and isinstance(shares["0"], float)


@sim_only(NO_UTILISATION)
def test_weights_split_a_shared_pcpu(kit):
    x = kit.x
    heavy = kit.vm(VCPUs_params={"cpumap0": "0", "weight": "512"})
    light = kit.vm(VCPUs_params={"cpumap0": "0", "weight": "256"})
    x.VM.start(heavy, False, False)
    x.VM.start(light, False, False)
    assert util(x, heavy) == pytest.approx([2 / 3]) and util(x, light) == pytest.approx([1 / 3])


@sim_only(NO_UTILISATION)
def test_cap_limits_a_vm(kit):
    x = kit.x
    capped = kit.vm(VCPUs_params={"cap": "10"})
    x.VM.start(capped, False, False)
    assert util(x, capped) == pytest.approx([0.1])
    two = kit.vm(VCPUs_at_startup=2, VCPUs_params={"cap": "150"})
    x.VM.start(two, False, False)
    assert sum(util(x, two)) == pytest.approx(1.5) and max(util(x, two)) <= 1.0


@sim_only(NO_UTILISATION)
def test_a_paused_vm_uses_no_cpu_and_leaves_it_to_the_other(kit):
    x = kit.x
    a = kit.vm(VCPUs_params={"cpumap0": "0"})
    b = kit.vm(VCPUs_params={"cpumap0": "0"})
    x.VM.start(a, False, False)
    x.VM.start(b, False, False)
    x.VM.pause(b)
    assert util(x, a) == pytest.approx([1.0]) and util(x, b) == [0.0]
    x.VM.unpause(b)
    assert util(x, a) == pytest.approx([0.5])


@sim_only(NO_UTILISATION)
def test_after_a_shutdown_the_other_vm_gets_the_pcpu_and_an_event(kit):
    x = kit.x
    a = kit.vm(VCPUs_params={"cpumap0": "0"})
    b = kit.vm(VCPUs_params={"cpumap0": "0"})
    x.VM.start(a, False, False)
    x.VM.start(b, False, False)
    assert util(x, a) == pytest.approx([0.5])
    metrics_a = x.VM.get_metrics(a)
    token = event_from(x, ["vm_metrics"], "", 0.0)["token"]
    x.VM.clean_shutdown(b)
    assert util(x, a) == pytest.approx([1.0])
    events = {e["ref"]: e for e in event_from(x, ["vm_metrics"], token, 5.0)["events"]}
    assert metrics_a in events, "the metrics of the VM that kept running changed: an event must say so"
    assert events[metrics_a]["operation"] == "mod"
    assert events[metrics_a]["snapshot"]["VCPUs_utilisation"] == {"0": pytest.approx(1.0)}


@sim_only(NO_UTILISATION)
def test_a_live_weight_change_moves_both_vms_and_fires_both_events(kit):
    x = kit.x
    a = kit.vm(VCPUs_params={"cpumap0": "1"})
    b = kit.vm(VCPUs_params={"cpumap0": "1"})
    x.VM.start(a, False, False)
    x.VM.start(b, False, False)
    token = event_from(x, ["vm_metrics"], "", 0.0)["token"]
    x.VM.set_sched_weight(a, "768", "dynamic")
    assert util(x, a) == pytest.approx([0.75]) and util(x, b) == pytest.approx([0.25])
    events = {e["ref"] for e in event_from(x, ["vm_metrics"], token, 5.0)["events"]}
    assert {x.VM.get_metrics(a), x.VM.get_metrics(b)} <= events


@on_xl()
def test_live_pins_move_vcpus(kit):
    x = kit.x
    a = kit.vm()
    b = kit.vm()
    x.VM.start(a, False, False)
    x.VM.start(b, False, False)
    model = modelled(kit.server)  # the sim's scheduler model; libvirt reports none, xl measures
    assert not model or (util(x, a) == [1.0] and util(x, b) == [1.0])
    x.VM.pin_VCPU(a, "0", "5", "dynamic")
    x.VM.pin_VCPU(b, "0", "5", "dynamic")
    for vm in (a, b):
        live = metrics(x, vm)
        assert live["VCPUs_CPU"] == {"0": "5"} and live["VCPUs_params"]["cpumap0"] == "5"
        assert util(x, vm) == pytest.approx([0.5]) if model else measured_or_none(util(x, vm))
    x.VM.pin_VCPU(b, "0", "all", "dynamic")
    assert "cpumap0" not in metrics(x, b)["VCPUs_params"]
    assert metrics(x, a)["VCPUs_CPU"] == {"0": "5"}
    assert not model or (util(x, a) == [1.0] and util(x, b) == [1.0])


# -- the three modes, for every allocation message ---------------------------------------------------

# message -> (arguments, is the stored record changed?, is the live domain changed? (metrics, modelled))
# "modelled": the backend has the scheduler model's utilisation (the sim), which must follow too.
# On a backend lacking a message's capability (libvirt: weight and cap), every test of it checks that
# the message is refused with NOT_IMPLEMENTED and changes nothing.
CHANGES = {
    "set_memory": (
        [str(200 * MIB)],
        lambda r: r["memory_target"] == str(200 * MIB),
        lambda m, server: m["memory_actual"] == str(200 * MIB),
    ),
    "set_VCPUs": (
        ["3"],
        lambda r: r["VCPUs_at_startup"] == "3",
        lambda m, server: m["VCPUs_number"] == "3" and len(m["VCPUs_CPU"]) == 3
        and (len(m["VCPUs_utilisation"]) == 3 if modelled(server)
             else shares_fit(server, m["VCPUs_utilisation"], {"0": 0, "1": 0, "2": 0})),
    ),
    "set_sched_weight": (
        ["512"],
        lambda r: r["VCPUs_params"].get("weight") == "512",
        lambda m, server: m["VCPUs_params"]["weight"] == "512",
    ),
    "set_sched_cap": (
        ["50"],
        lambda r: r["VCPUs_params"].get("cap") == "50",
        lambda m, server: m["VCPUs_params"]["cap"] == "50"
        and (not modelled(server) or sum(m["VCPUs_utilisation"].values()) == pytest.approx(0.5)),
    ),
    "pin_VCPU": (
        ["0", "6-7"],
        lambda r: r["VCPUs_params"].get("cpumap0") == "6,7",
        lambda m, server: m["VCPUs_params"].get("cpumap0") == "6,7" and m["VCPUs_CPU"]["0"] in ("6", "7"),
    ),
}
EXPECT = {"dynamic": (False, True), "static": (True, False), "perm": (True, True)}


def _alloc_vm(kit):
    return kit.vm(memory_target=128 * MIB, memory_static_max=512 * MIB, VCPUs_at_startup=1, VCPUs_max=4)


def _state(kit, vm, message):
    _, stored, live = CHANGES[message]
    return stored(kit.x.VM.get_record(vm)), live(metrics(kit.x, vm), kit.server)


@pytest.mark.parametrize("mode", ["dynamic", "static", "perm"])
@pytest.mark.parametrize("message", list(CHANGES))
def test_modes_on_a_running_vm(kit, message, mode):
    x = kit.x
    vm = _alloc_vm(kit)
    x.VM.start(vm, False, False)
    assert _state(kit, vm, message) == (False, False)
    args = CHANGES[message][0]
    if not_implemented_here(kit.server, x, vm, message, *args, mode):
        return
    assert getattr(x.VM, message)(vm, *args, mode) == ""
    assert _state(kit, vm, message) == EXPECT[mode]
    # the next start runs the stored definition: dynamic reverts, static and perm hold
    x.VM.hard_shutdown(vm)
    x.VM.start(vm, False, False)
    stored = EXPECT[mode][0]
    assert _state(kit, vm, message) == (stored, stored)


@pytest.mark.parametrize("mode", ["static", "perm"])
@pytest.mark.parametrize("message", list(CHANGES))
def test_static_and_perm_on_a_halted_vm_apply_at_start(kit, message, mode):
    x = kit.x
    vm = _alloc_vm(kit)
    args = CHANGES[message][0]
    if not_implemented_here(kit.server, x, vm, message, *args, mode):
        return
    getattr(x.VM, message)(vm, *args, mode)
    assert CHANGES[message][1](x.VM.get_record(vm))
    x.VM.start(vm, False, False)
    assert _state(kit, vm, message) == (True, True)


@pytest.mark.parametrize("message", list(CHANGES))
def test_dynamic_on_a_halted_vm_is_refused(kit, message):
    x = kit.x
    vm = _alloc_vm(kit)
    before = everything(kit.server, x, vm)
    args = CHANGES[message][0]
    if not_implemented_here(kit.server, x, vm, message, *args, "dynamic"):
        return
    assert failure(getattr(x.VM, message), vm, *args, "dynamic") == ["VM_BAD_POWER_STATE", vm, "running", "halted"]
    assert failure(getattr(x.VM, message), vm, *args) == ["VM_BAD_POWER_STATE", vm, "running", "halted"]
    assert everything(kit.server, x, vm) == before


@pytest.mark.parametrize("message", list(CHANGES))
def test_dynamic_is_the_default_mode(kit, message):
    x = kit.x
    vm = _alloc_vm(kit)
    x.VM.start(vm, False, False)
    if not_implemented_here(kit.server, x, vm, message, *CHANGES[message][0]):
        return
    getattr(x.VM, message)(vm, *CHANGES[message][0])
    assert _state(kit, vm, message) == EXPECT["dynamic"]


@pytest.mark.parametrize("message", list(CHANGES))
@off_xl("the guest brings its vCPUs up once it runs; the count shows at the next poll",
        when=lambda message: message == "set_VCPUs")
def test_dynamic_on_a_paused_vm_changes_the_domain(kit, message):
    x = kit.x
    vm = _alloc_vm(kit)
    x.VM.start(vm, True, False)
    if not_implemented_here(kit.server, x, vm, message, *CHANGES[message][0], "dynamic"):
        return
    getattr(x.VM, message)(vm, *CHANGES[message][0], "dynamic")
    x.VM.unpause(vm)
    assert _state(kit, vm, message) == EXPECT["dynamic"]


@pytest.mark.parametrize("message", list(CHANGES))
def test_dynamic_on_a_suspended_vm_is_refused(kit, message):
    x = kit.x
    vm = _alloc_vm(kit)
    x.VM.start(vm, False, False)
    x.VM.suspend(vm)
    if not_implemented_here(kit.server, x, vm, message, *CHANGES[message][0], "dynamic"):
        return
    before = everything(kit.server, x, vm)
    err = failure(getattr(x.VM, message), vm, *CHANGES[message][0], "dynamic")
    assert err == ["VM_BAD_POWER_STATE", vm, "running", "suspended"]
    assert everything(kit.server, x, vm) == before


def test_an_unknown_mode_is_refused(kit):
    x = kit.x
    vm = _alloc_vm(kit)
    x.VM.start(vm, False, False)
    before = everything(kit.server, x, vm)
    err = failure(x.VM.set_memory, vm, str(200 * MIB), "sometimes")
    assert err[0] in ("VALUE_NOT_SUPPORTED", "FIELD_TYPE_ERROR") and "mode" in err[1], err
    assert everything(kit.server, x, vm) == before


# -- validation: refused in every mode, nothing changes --------------------------------------------

INVALID = [
    ("set_sched_weight", ["0"]),
    ("set_sched_weight", ["70000"]),
    ("set_sched_weight", ["-1"]),
    ("set_sched_cap", ["401"]),  # VCPUs_max is 4
    ("set_sched_cap", ["-1"]),
    ("pin_VCPU", ["0", "8"]),  # the host has pCPUs 0..7
    ("pin_VCPU", ["0", "99"]),
    ("pin_VCPU", ["0", "3-9"]),
    ("pin_VCPU", ["4", "1"]),  # the VM has vCPUs 0..3
    ("pin_VCPU", ["-1", "1"]),
    ("pin_VCPU", ["0", "nonsense"]),
    ("set_memory", [str(513 * MIB)]),  # memory_static_max is 512 MiB
    ("set_VCPUs", ["5"]),  # VCPUs_max is 4
]


@pytest.mark.parametrize("state", ["Halted", "Running"])
@pytest.mark.parametrize("mode", ["dynamic", "static", "perm"])
@pytest.mark.parametrize("message, args", INVALID, ids=[f"{m}-{'-'.join(a)}" for m, a in INVALID])
def test_invalid_allocations_are_refused(kit, message, args, mode, state):
    x = kit.x
    vm = _alloc_vm(kit)
    if state == "Running":
        x.VM.start(vm, False, False)
    if not_implemented_here(kit.server, x, vm, message, *args, mode):  # the capability is checked first
        return
    before = everything(kit.server, x, vm)
    err = failure(getattr(x.VM, message), vm, *args, mode)
    if state == "Halted" and mode == "dynamic":
        assert err[0] in ("VALUE_NOT_SUPPORTED", "VM_BAD_POWER_STATE"), err
    else:
        assert err[0] == "VALUE_NOT_SUPPORTED" and len(err) == 4, err
    assert everything(kit.server, x, vm) == before


@pytest.mark.parametrize("message, values", [("set_memory", ["0", "-4096"]), ("set_VCPUs", ["0", "-1"])])
def test_nothing_or_less_is_refused_in_every_mode(kit, message, values):
    """A domain with no memory or no vCPU cannot run: refused like VM.create refuses it, in every mode."""
    x = kit.x
    accepted = []
    for state in ("Halted", "Running"):
        for mode in ("dynamic", "static", "perm"):
            for value in values:
                vm = _alloc_vm(kit)
                if state == "Running":
                    x.VM.start(vm, False, False)
                before = everything(kit.server, x, vm)
                try:
                    getattr(x.VM, message)(vm, value, mode)
                except XenAPI.Failure as exc:
                    if not (state == "Halted" and mode == "dynamic"):
                        assert exc.details[0] == "VALUE_NOT_SUPPORTED", exc.details
                    assert everything(kit.server, x, vm) == before
                else:
                    record, live, _ = everything(kit.server, x, vm)
                    accepted.append((state, mode, value, record["memory_target"], record["VCPUs_at_startup"],
                                     live["memory_actual"], live["VCPUs_number"]))
    assert accepted == [], f"{message} accepted (state, mode, value, stored memory, stored vCPUs, live memory, " \
                           f"live vCPUs): {accepted}"


def test_cap_up_to_100_per_vcpu_is_accepted(kit):
    x = kit.x
    vm = _alloc_vm(kit)
    if not_implemented_here(kit.server, x, vm, "set_sched_cap", "400", "static"):
        # VCPUs_params is the stored definition on every backend: the same bounds hold there
        x.VM.set_VCPUs_params(vm, {"cap": "400", "weight": "65535"})
        x.VM.remove_from_VCPUs_params(vm, "weight")
        x.VM.add_to_VCPUs_params(vm, "weight", "1")
        assert x.VM.get_VCPUs_params(vm) == {"cap": "400", "weight": "1"}
        return
    x.VM.set_sched_cap(vm, "400", "static")
    assert x.VM.get_VCPUs_params(vm)["cap"] == "400"
    x.VM.set_sched_weight(vm, "65535", "static")
    x.VM.set_sched_weight(vm, "1", "static")
    assert x.VM.get_VCPUs_params(vm)["weight"] == "1"


def test_memory_the_host_cannot_give(kit):
    x = kit.x
    vm = kit.vm(memory_target=128 * MIB, memory_static_max=64 * GIB)
    x.VM.start(vm, False, False)
    before = everything(kit.server, x, vm)
    err = failure(x.VM.set_memory, vm, str(32 * GIB), "dynamic")
    assert err[0] == "HOST_NOT_ENOUGH_FREE_MEMORY", err
    err = failure(x.VM.set_memory, vm, str(32 * GIB), "perm")
    assert err[0] == "HOST_NOT_ENOUGH_FREE_MEMORY", err
    assert everything(kit.server, x, vm) == before
    # a definition the host could never start is refused as a change (issue 7: memory within the host)
    assert failure(x.VM.set_memory, vm, str(32 * GIB), "static")[0] == "VALUE_NOT_SUPPORTED"
    assert everything(kit.server, x, vm) == before
    # a definition made that large at create is refused at start, changing nothing
    big = kit.vm(memory_target=32 * GIB, memory_static_max=64 * GIB)
    before = everything(kit.server, x, big)
    assert failure(x.VM.start, big, False, False)[0] == "HOST_NOT_ENOUGH_FREE_MEMORY"
    assert everything(kit.server, x, big) == before


def test_live_vcpu_changes_keep_pins_and_utilisation_consistent(kit):
    x = kit.x
    vm = kit.vm(VCPUs_at_startup=1, VCPUs_max=4, VCPUs_params={"cpumap2": "4"})
    x.VM.start(vm, False, False)
    x.VM.set_VCPUs(vm, "3", "dynamic")
    live = metrics(x, vm)
    assert live["VCPUs_number"] == "3" and set(live["VCPUs_CPU"]) == {"0", "1", "2"}
    assert live["VCPUs_CPU"]["2"] == "4"
    x.VM.set_VCPUs(vm, "1", "dynamic")
    live = metrics(x, vm)
    assert live["VCPUs_number"] == "1" and set(live["VCPUs_CPU"]) == {"0"}
    assert shares_fit(kit.server, live["VCPUs_utilisation"], {"0": 1.0})


# -- definition validation at create and set ------------------------------------------------------

BAD_RECORDS = [
    ({"memory_target": str(512 * MIB), "memory_static_max": str(256 * MIB)}, "memory_target"),
    ({"memory_target": "0"}, "memory_target"),
    ({"memory_target": "-1"}, "memory_target"),
    ({"VCPUs_at_startup": "3", "VCPUs_max": "2"}, "VCPUs_at_startup"),
    ({"VCPUs_at_startup": "0"}, "VCPUs_at_startup"),
    ({"VCPUs_max": "0", "VCPUs_at_startup": "0"}, None),
    ({"VCPUs_params": {"weight": "abc"}}, "weight"),
    ({"VCPUs_params": {"weight": "0"}}, "weight"),
    ({"VCPUs_params": {"cap": "201"}}, "cap"),  # VCPUs_max is 2
    ({"VCPUs_params": {"cap": "x"}}, "cap"),
    ({"VCPUs_params": {"cpumap2": "0"}}, "cpumap2"),  # vCPUs 0 and 1 only
    ({"VCPUs_params": {"cpumap0": "8"}}, "cpumap0"),  # pCPUs 0..7 only
    ({"VCPUs_params": {"cpumapx": "0"}}, "cpumapx"),
    ({"no_such_field": "1"}, "no_such_field"),
]


@pytest.mark.parametrize("fields, field", BAD_RECORDS, ids=[str(f) for f, _ in BAD_RECORDS])
def test_create_refuses_a_bad_definition(kit, fields, field):
    x = kit.x
    before = set(x.VM.get_all())
    metrics_before = set(x.VM_metrics.get_all())
    token = event_from(x, ["vm", "vm_metrics"], "", 0.0)["token"]
    record = {"name_label": "refused", "memory_target": str(128 * MIB), "memory_static_max": str(256 * MIB),
              "VCPUs_at_startup": "1", "VCPUs_max": "2", **fields}
    err = failure(x.VM.create, record)
    assert err[0] == "VALUE_NOT_SUPPORTED" and len(err) == 4, err
    if field is not None:
        assert err[1] == field, err
    assert set(x.VM.get_all()) == before and set(x.VM_metrics.get_all()) == metrics_before
    assert x.VM.get_by_name_label("refused") == []
    assert event_from(x, ["vm", "vm_metrics"], token, 0.05)["events"] == []


def test_create_refuses_a_duplicate_name(kit):
    x = kit.x
    kit.vm("only-one")
    err = failure(x.VM.create, {"name_label": "only-one"})
    assert err[:3] == ["VALUE_NOT_SUPPORTED", "name_label", "only-one"]
    assert len(x.VM.get_by_name_label("only-one")) == 1
    assert failure(x.VM.create, {"name_label": "Domain-0"})[:2] == ["VALUE_NOT_SUPPORTED", "name_label"]


def test_create_with_the_largest_valid_definition(kit):
    x = kit.x
    vm = kit.vm(memory_target=256 * MIB, memory_static_max=256 * MIB, VCPUs_at_startup=2, VCPUs_max=2,
                VCPUs_params={"weight": "65535", "cap": "200", "cpumap0": "0-7", "cpumap1": "7"})
    assert x.VM.get_VCPUs_params(vm)["cpumap1"] == "7"


SETTERS = [
    ("set_memory_target", str(300 * MIB)),  # memory_static_max is 256 MiB
    ("set_memory_target", "0"),
    ("set_memory_static_max", str(64 * MIB)),  # below memory_target (128 MiB)
    ("set_VCPUs_at_startup", "3"),  # VCPUs_max is 2
    ("set_VCPUs_at_startup", "0"),
    ("set_VCPUs_max", "1"),  # with cpumap1 set below
    ("set_VCPUs_params", {"weight": "abc"}),
    ("set_VCPUs_params", {"cpumap2": "0"}),
    ("set_VCPUs_params", {"cap": "1000"}),
]


@pytest.mark.parametrize("setter, value", SETTERS, ids=[f"{s}-{v}" for s, v in SETTERS])
def test_setters_refuse_a_bad_definition(kit, setter, value):
    x = kit.x
    vm = kit.vm(VCPUs_params={"cpumap1": "1"})
    before = x.VM.get_record(vm)
    err = failure(getattr(x.VM, setter), vm, value)
    assert err[0] == "VALUE_NOT_SUPPORTED" and len(err) == 4, err
    assert x.VM.get_record(vm) == before


@pytest.mark.parametrize("key, value", [("weight", "abc"), ("weight", "0"), ("cap", "1000"), ("cpumap5", "0"),
                                        ("cpumap0", "99")])
def test_map_adders_refuse_a_bad_definition(kit, key, value):
    x = kit.x
    vm = kit.vm()
    before = x.VM.get_record(vm)
    err = failure(x.VM.add_to_VCPUs_params, vm, key, value)
    assert err[0] == "VALUE_NOT_SUPPORTED", err
    assert x.VM.get_record(vm) == before
    # and the VM still starts
    x.VM.start(vm, False, False)


def test_set_name_label_refuses_a_duplicate(kit):
    x = kit.x
    kit.vm("first-name")
    vm = kit.vm("second-name")
    assert failure(x.VM.set_name_label, vm, "first-name")[:3] == ["VALUE_NOT_SUPPORTED", "name_label", "first-name"]
    assert x.VM.get_name_label(vm) == "second-name"
    x.VM.set_name_label(vm, "second-name")  # its own name is fine


def test_allocation_arguments_are_type_checked(kit):
    vm = _alloc_vm(kit)
    kit.x.VM.start(vm, False, False)
    proxy = xmlrpc.client.ServerProxy(kit.server.url, allow_none=True)
    s = ok(proxy.session.login_with_password("root", ""))
    assert fails(proxy.VM.set_memory(s, vm, "lots", "dynamic")) == ["FIELD_TYPE_ERROR", "value"]
    assert fails(proxy.VM.set_sched_weight(s, vm, 1.5))[0] == "FIELD_TYPE_ERROR"
    assert fails(proxy.VM.pin_VCPU(s, vm, "zero", "1"))[0] == "FIELD_TYPE_ERROR"
    assert fails(proxy.VM.pin_VCPU(s, vm, 0)) == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.pin_VCPU", "3", "2"]
    assert fails(proxy.VM.set_VCPUs(s, vm, 2, "perm", "extra")) == ["MESSAGE_PARAMETER_COUNT_MISMATCH",
                                                                    "VM.set_VCPUs", "3", "4"]
    assert ok(proxy.VM.set_VCPUs(s, vm, 2)) == ""  # ints as ints are fine too
    assert ok(proxy.VM_metrics.get_VCPUs_number(s, ok(proxy.VM.get_metrics(s, vm)))) == "2"


# -- concurrent changes of one VM ------------------------------------------------------------------

@contextlib.contextmanager
def slow_destination(delay: float):
    """A TCP listener that takes each connection, waits, and hangs up without a word: a migration to it
    holds the VM's lock for a while, then fails."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    done = threading.Event()

    def serve():
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                done.wait(delay)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    finally:
        done.set()
        thread.join(10)
        listener.close()


def _wait(x, task):
    deadline = time.monotonic() + 20
    while x.task.get_status(task) == "pending":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return x.task.get_record(task)


@sim_only(NO_MIGRATE + ": the test holds the VM's lock with a migration")
def test_concurrent_definition_changes_are_not_lost(kit):
    """Weight, cap and pin changes queued behind a long operation on the VM must all be kept."""
    x = kit.x
    vm = _alloc_vm(kit)
    x.VM.start(vm, False, False)
    with slow_destination(0.4) as url:
        migrating = x.Async.VM.migrate(vm, url, False)
        time.sleep(0.2)  # the migration holds the VM's lock now
        tasks = [x.Async.VM.set_sched_weight(vm, "500", "static"),
                 x.Async.VM.set_sched_cap(vm, "50", "static"),
                 x.Async.VM.pin_VCPU(vm, "1", "2", "static")]
        assert _wait(x, migrating)["status"] == "failure"
        assert [_wait(x, t)["status"] for t in tasks] == ["success"] * 3
    assert x.VM.get_VCPUs_params(vm) == {"weight": "500", "cap": "50", "cpumap1": "2"}
    assert x.VM.get_power_state(vm) == "Running"


def test_create_ignores_the_fields_the_server_maintains(kit):
    """Clients echo whole records back: power_state, domid, is_control_domain, metrics are not theirs."""
    x = kit.x
    vm = kit.vm(power_state="Running", domid="7", is_control_domain=True, metrics="OpaqueRef:NULL")
    record = x.VM.get_record(vm)
    assert (record["power_state"], record["domid"], record["is_control_domain"]) == ("Halted", "-1", False)
    assert x.VM_metrics.get_VM(record["metrics"]) == vm
    x.VM.start(vm, False, False)
    x.VM.hard_shutdown(vm)  # an ordinary guest: it can be stopped

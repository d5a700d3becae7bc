"""The VM lifecycle through the official client (API.md §4), on one real server per module.

Every message in every state: the allowed ones do what XAPI and xend did, the forbidden ones fail
with ``VM_BAD_POWER_STATE [vm, expected, actual]`` and change nothing: not the record, not
VM_metrics, not the simulated host's domain. Domain-0 cannot be stopped, moved or destroyed.
"""

from __future__ import annotations

import datetime as dt
import time
import xmlrpc.client
from pathlib import Path

import pytest
import XenAPI
from conftest import ServerProcess, fails, ok
from vmkit import (
    BOTH,
    MIB,
    Kit,
    backend_domain,
    bring_to,
    event_from,
    everything,
    failure,
    lacks,
    metrics,
    modelled,
    on_sim,
    on_xl,
    shares_fit,
)

DOM0 = "OpaqueRef:00000000-0000-0000-0000-000000000000"
STATES = ("Halted", "Running", "Paused", "Suspended")

pytestmark = pytest.mark.backends(*BOTH)


@pytest.fixture(scope="module")
def srv(tmp_path_factory, backend):
    server = ServerProcess(tmp_path_factory.mktemp("vm-lifecycle") / "state", unix=False, host=backend).start()
    yield server
    server.stop()


@pytest.fixture
def kit(srv):
    k = Kit(srv)
    yield k
    k.close()


# -- create, start, and what VM_metrics shows ---------------------------------------------------

def test_create_keeps_the_definition_and_starts_halted(kit):
    x = kit.x
    vm = kit.vm(memory_target=192 * MIB, memory_static_max=512 * MIB, VCPUs_at_startup=2, VCPUs_max=4,
                VCPUs_params={"weight": "512", "cap": "150", "cpumap1": "2,3"})
    record = x.VM.get_record(vm)
    assert record["power_state"] == "Halted" and record["domid"] == "-1"
    assert record["memory_target"] == str(192 * MIB) and record["memory_static_max"] == str(512 * MIB)
    assert record["VCPUs_at_startup"] == "2" and record["VCPUs_max"] == "4"
    assert record["VCPUs_params"] == {"weight": "512", "cap": "150", "cpumap1": "2,3"}
    assert record["is_control_domain"] is False and record["resident_on"] == "OpaqueRef:NULL"
    assert vm == "OpaqueRef:" + record["uuid"]
    assert x.VM.get_by_uuid(record["uuid"]) == vm
    live = metrics(x, vm)
    assert live["VM"] == vm
    assert (live["memory_actual"], live["VCPUs_number"], live["VCPUs_utilisation"]) == ("0", "0", {})
    assert backend_domain(kit.server, record["uuid"]) is None


@on_xl()
def test_start_runs_the_stored_definition(kit):
    x = kit.x
    vm = kit.vm(memory_target=192 * MIB, memory_static_max=512 * MIB, VCPUs_at_startup=2, VCPUs_max=4,
                VCPUs_params={"weight": "512", "cap": "150", "cpumap1": "2,3"})
    x.VM.start(vm, False, False)
    record = x.VM.get_record(vm)
    assert record["power_state"] == "Running" and int(record["domid"]) >= 1
    assert record["resident_on"] == x.host.get_all()[0]
    live = metrics(x, vm)
    assert live["memory_actual"] == str(192 * MIB) and live["VCPUs_number"] == "2"
    assert live["VCPUs_params"] == {"weight": "512", "cap": "150", "cpumap1": "2,3"}
    assert live["VCPUs_CPU"]["1"] in ("2", "3") and set(live["VCPUs_CPU"]) == {"0", "1"}
    shares = live["VCPUs_utilisation"]
    assert set(shares) == {"0", "1"} if modelled(kit.server) else shares_fit(kit.server, shares, {"0": 0, "1": 0})
    started = dt.datetime.strptime(live["start_time"].value, "%Y%m%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    assert abs((dt.datetime.now(dt.UTC) - started).total_seconds()) < 600  # UTC, just now
    domain = backend_domain(kit.server, record["uuid"])
    assert domain["state"] == "Running" and domain["domid"] == record["domid"]
    assert domain["memory"] == str(192 * MIB) and domain["vcpus"] == "2" and domain["weight"] == "512"
    # the stored definition is unchanged by starting
    assert record["memory_target"] == str(192 * MIB) and record["VCPUs_at_startup"] == "2"


def test_start_paused_then_unpause_keeps_the_domid(kit):
    x = kit.x
    vm = kit.vm()
    x.VM.start(vm, True, False)
    assert x.VM.get_power_state(vm) == "Paused"
    domid = x.VM.get_domid(vm)
    assert int(domid) >= 1
    assert backend_domain(kit.server, x.VM.get_uuid(vm))["state"] == "Paused"
    assert metrics(x, vm)["memory_actual"] == str(128 * MIB)  # a paused domain keeps its memory
    x.VM.unpause(vm)
    assert (x.VM.get_power_state(vm), x.VM.get_domid(vm)) == ("Running", domid)


def test_pause_and_unpause(kit):
    x = kit.x
    vm = kit.vm()
    x.VM.start(vm, False, False)
    domid = x.VM.get_domid(vm)
    x.VM.pause(vm)
    assert (x.VM.get_power_state(vm), x.VM.get_domid(vm)) == ("Paused", domid)
    assert backend_domain(kit.server, x.VM.get_uuid(vm))["state"] == "Paused"
    x.VM.unpause(vm)
    assert (x.VM.get_power_state(vm), x.VM.get_domid(vm)) == ("Running", domid)
    assert backend_domain(kit.server, x.VM.get_uuid(vm))["state"] == "Running"


def test_host_not_enough_free_memory_on_start_changes_nothing(kit):
    x = kit.x
    vm = kit.vm(memory_target=64 * 1024 * MIB, memory_static_max=64 * 1024 * MIB)
    before = everything(kit.server, x, vm)
    err = failure(x.VM.start, vm, False, False)
    assert err[0] == "HOST_NOT_ENOUGH_FREE_MEMORY"
    assert everything(kit.server, x, vm) == before


# -- stopping ---------------------------------------------------------------------------------

def _assert_halted(kit, vm):
    x = kit.x
    record = x.VM.get_record(vm)
    assert (record["power_state"], record["domid"], record["resident_on"]) == ("Halted", "-1", "OpaqueRef:NULL")
    live = metrics(kit.x, vm)
    assert (live["memory_actual"], live["VCPUs_number"], live["VCPUs_CPU"]) == ("0", "0", {})
    assert backend_domain(kit.server, record["uuid"]) is None


@on_xl()
def test_clean_shutdown(kit):
    vm = kit.vm()
    bring_to(kit.x, vm, "Running")
    kit.x.VM.clean_shutdown(vm)
    _assert_halted(kit, vm)


@pytest.mark.parametrize("state", ["Running", "Paused", "Suspended"])
def test_hard_shutdown(kit, state):
    vm = kit.vm()
    bring_to(kit.x, vm, state)
    kit.x.VM.hard_shutdown(vm)
    _assert_halted(kit, vm)
    if on_sim(kit.server):
        image = Path(kit.server.state_dir) / "sim-images" / f"{kit.x.VM.get_uuid(vm)}.img"
        assert not image.exists()  # a suspended VM loses its suspend image
    kit.x.VM.start(vm, False, False)  # and it starts afresh
    assert kit.x.VM.get_power_state(vm) == "Running"


# -- rebooting ----------------------------------------------------------------------------------

@pytest.mark.parametrize("how, state", [("clean_reboot", "Running"), ("hard_reboot", "Running"),
                                        ("hard_reboot", "Paused")])
@on_xl(when=lambda how, state: (how, state) == ("clean_reboot", "Running"))
def test_reboot_gives_a_new_domid_and_applies_the_stored_definition(kit, how, state):
    x = kit.x
    vm = kit.vm(VCPUs_max=4)
    bring_to(x, vm, state)
    domid = x.VM.get_domid(vm)
    # change the definition only: the running domain keeps what it has until the reboot
    x.VM.set_memory_target(vm, str(200 * MIB))
    x.VM.set_VCPUs_at_startup(vm, "3")
    x.VM.set_VCPUs_params(vm, {"weight": "1024", "cap": "50"})
    assert metrics(x, vm)["memory_actual"] == str(128 * MIB)
    getattr(x.VM, how)(vm)
    record = x.VM.get_record(vm)
    assert record["power_state"] == "Running"
    assert record["domid"] != domid and int(record["domid"]) >= 1
    live = metrics(x, vm)
    assert live["memory_actual"] == str(200 * MIB) and live["VCPUs_number"] == "3"
    assert live["VCPUs_params"] == {"weight": "1024", "cap": "50"}
    domain = backend_domain(kit.server, record["uuid"])
    assert domain["domid"] == record["domid"] and domain["memory"] == str(200 * MIB)


# -- suspend and resume -------------------------------------------------------------------------

@pytest.mark.parametrize("start_paused", [False, True])
def test_suspend_and_resume(kit, start_paused):
    x = kit.x
    vm = kit.vm(memory_target=160 * MIB)
    bring_to(x, vm, "Running")
    domid = x.VM.get_domid(vm)
    uuid = x.VM.get_uuid(vm)
    free_running = int(x.host.get_memory_free(x.host.get_all()[0]))
    x.VM.suspend(vm)
    record = x.VM.get_record(vm)
    assert (record["power_state"], record["domid"], record["resident_on"]) == ("Suspended", "-1", "OpaqueRef:NULL")
    assert backend_domain(kit.server, uuid)["state"] == "Suspended"
    if on_sim(kit.server):  # the simulated host keeps the suspend image beside the state
        assert (Path(kit.server.state_dir) / "sim-images" / f"{uuid}.img").is_file()
    # a suspended domain holds no host memory
    assert int(x.host.get_memory_free(x.host.get_all()[0])) == free_running + 160 * MIB
    x.VM.resume(vm, start_paused, False)
    record = x.VM.get_record(vm)
    assert record["power_state"] == ("Paused" if start_paused else "Running")
    assert record["domid"] not in ("-1", domid)
    assert metrics(x, vm)["memory_actual"] == str(160 * MIB)
    assert backend_domain(kit.server, uuid)["state"] == record["power_state"]


def test_suspend_a_paused_vm(kit):
    x = kit.x
    vm = kit.vm()
    bring_to(x, vm, "Paused")
    x.VM.suspend(vm)
    assert x.VM.get_power_state(vm) == "Suspended"
    x.VM.resume(vm, False, False)
    assert x.VM.get_power_state(vm) == "Running"


# -- save and restore ---------------------------------------------------------------------------

@pytest.mark.parametrize("state", ["Running", "Paused"])
@on_xl(when=lambda state: state == "Running")
def test_save_writes_a_real_file_and_restore_brings_the_vm_back(kit, tmp_path, state):
    x = kit.x
    vm = kit.vm(memory_target=96 * MIB, VCPUs_params={"weight": "300"})
    bring_to(x, vm, state)
    uuid = x.VM.get_uuid(vm)
    start_time = metrics(x, vm)["start_time"]
    path = tmp_path / "vm.img"
    x.VM.save(vm, str(path))
    _assert_halted(kit, vm)
    assert path.is_file() and path.stat().st_size > 0
    if on_sim(kit.server):
        assert path.read_bytes().startswith(b"XEND-EXT-SIM-IMAGE")
    restored = x.VM.restore(str(path), False)
    assert restored == vm
    record = x.VM.get_record(vm)
    assert record["uuid"] == uuid
    assert record["power_state"] == state  # a paused VM comes back paused
    assert int(record["domid"]) >= 1
    live = metrics(x, vm)
    assert live["memory_actual"] == str(96 * MIB) and live["VCPUs_params"]["weight"] == "300"
    assert live["start_time"] == start_time  # the same guest, not a new boot


def test_restore_paused(kit, tmp_path):
    x = kit.x
    vm = kit.vm()
    bring_to(x, vm, "Running")
    path = tmp_path / "vm.img"
    x.VM.save(vm, str(path))
    assert x.VM.restore(str(path), True) == vm
    assert x.VM.get_power_state(vm) == "Paused"


def test_restore_defines_a_vm_that_was_destroyed(kit, tmp_path):
    x = kit.x
    name = "restored-after-destroy"
    vm = kit.vm(name, memory_target=100 * MIB, memory_static_max=300 * MIB, VCPUs_max=3,
                VCPUs_params={"weight": "700"}, other_config={"k": "v"})
    bring_to(x, vm, "Running")
    uuid = x.VM.get_uuid(vm)
    definition = {k: v for k, v in x.VM.get_record(vm).items()
                  if k in ("name_label", "memory_target", "memory_static_max", "VCPUs_max", "VCPUs_params",
                           "other_config")}
    path = tmp_path / "vm.img"
    x.VM.save(vm, str(path))
    x.VM.destroy(vm)
    assert failure(x.VM.get_record, vm)[0] == "HANDLE_INVALID"
    again = x.VM.restore(str(path), False)
    kit.made.append(again)
    record = x.VM.get_record(again)
    assert record["uuid"] == uuid and record["power_state"] == "Running"
    assert {k: record[k] for k in definition} == definition
    assert metrics(x, again)["memory_actual"] == str(100 * MIB)


def test_save_to_a_bad_path_changes_nothing(kit, tmp_path):
    x = kit.x
    vm = kit.vm()
    bring_to(x, vm, "Running")
    before = everything(kit.server, x, vm)
    for path in ("../outside.img", "/etc/outside.img", str(tmp_path / "no-such-dir" / "vm.img"), ""):
        assert failure(x.VM.save, vm, path)[0] == "VALUE_NOT_SUPPORTED"
        assert everything(kit.server, x, vm) == before


def test_restore_of_a_missing_or_tampered_file_fails(kit, tmp_path):
    x = kit.x
    vm = kit.vm()
    bring_to(x, vm, "Running")
    path = tmp_path / "vm.img"
    x.VM.save(vm, str(path))
    assert failure(x.VM.restore, str(tmp_path / "missing.img"), False)[0] == "VALUE_NOT_SUPPORTED"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01
    path.write_bytes(bytes(data))
    err = failure(x.VM.restore, str(path), False)
    assert err[0] in ("VALUE_NOT_SUPPORTED", "INVALID_VALUE") and str(path) in err, err
    _assert_halted(kit, vm)


# -- destroy ------------------------------------------------------------------------------------

def test_destroy_removes_the_vm_and_its_metrics(kit):
    x = kit.x
    vm = kit.vm()
    m = x.VM.get_metrics(vm)
    x.VM.destroy(vm)
    assert failure(x.VM.get_record, vm) == ["HANDLE_INVALID", "VM", vm]
    assert failure(x.VM_metrics.get_record, m)[0] == "HANDLE_INVALID"
    assert vm not in x.VM.get_all()


# -- every forbidden state ----------------------------------------------------------------------

ALLOWED = {
    "start": ("Halted",),
    "pause": ("Running",),
    "unpause": ("Paused",),
    "clean_shutdown": ("Running",),
    "hard_shutdown": ("Running", "Paused", "Suspended"),
    "clean_reboot": ("Running",),
    "hard_reboot": ("Running", "Paused"),
    "suspend": ("Running", "Paused"),
    "resume": ("Suspended",),
    "save": ("Running", "Paused"),
    "migrate": ("Running", "Paused"),
    "destroy": ("Halted",),
}
FORBIDDEN = [(message, state) for message, allowed in ALLOWED.items() for state in STATES if state not in allowed]


def _call(x, message, vm, tmp_path):
    if message in ("start", "resume"):
        return getattr(x.VM, message)(vm, False, False)
    if message == "save":
        return x.VM.save(vm, str(tmp_path / "refused.img"))
    if message == "migrate":
        return x.VM.migrate(vm, "http://127.0.0.1:1/", False)
    return getattr(x.VM, message)(vm)


@pytest.mark.parametrize("message, state", FORBIDDEN, ids=[f"{m}-{s}" for m, s in FORBIDDEN])
def test_forbidden_state_is_refused_and_changes_nothing(kit, tmp_path, message, state):
    x = kit.x
    vm = kit.vm()
    bring_to(x, vm, state)
    before = everything(kit.server, x, vm)
    token = event_from(x, ["vm", "vm_metrics"], "", 0.0)["token"]
    err = failure(_call, x, message, vm, tmp_path)
    if message == "migrate" and lacks(kit.server, "migrate"):  # the capability is checked first
        assert err == ["NOT_IMPLEMENTED", "migrate"]
    else:
        assert err[0] == "VM_BAD_POWER_STATE", err
        assert len(err) == 4 and err[1] == vm
        assert err[2] in [s.lower() for s in ALLOWED[message]]
        assert err[3] == state.lower()
    assert everything(kit.server, x, vm) == before
    assert not (tmp_path / "refused.img").exists()
    assert event_from(x, ["vm", "vm_metrics"], token, 0.05)["events"] == []


@pytest.mark.parametrize("state", ["Running", "Paused", "Suspended"])
def test_restore_onto_a_vm_that_is_not_halted_is_refused(kit, tmp_path, state):
    x = kit.x
    vm = kit.vm()
    bring_to(x, vm, "Running")
    path = tmp_path / "vm.img"
    x.VM.save(vm, str(path))
    bring_to(x, vm, state)
    before = everything(kit.server, x, vm)
    err = failure(x.VM.restore, str(path), False)
    assert err == ["VM_BAD_POWER_STATE", vm, "halted", state.lower()]
    assert everything(kit.server, x, vm) == before


# -- Domain-0 -----------------------------------------------------------------------------------

def test_domain0_runs_from_the_start(kit):
    x = kit.x
    record = x.VM.get_record(DOM0)
    assert record["name_label"] == "Domain-0" and record["is_control_domain"] is True
    assert (record["power_state"], record["domid"]) == ("Running", "0")
    assert x.VM.get_by_name_label("Domain-0") == [DOM0]
    live = metrics(x, DOM0)
    if kit.server.host.name == "libvirt":  # on a libvirt host but Xen's, the control domain is the host itself
        assert live["memory_actual"] == "0" and live["VCPUs_number"] == str(len(x.host_cpu.get_all()))
    else:  # a domain of its own (the sim's, or Xen's dom0)
        assert int(live["memory_actual"]) > 0 and 0 < int(live["VCPUs_number"]) <= len(x.host_cpu.get_all())
    assert backend_domain(kit.server, record["uuid"])["state"] == "Running"


DOM0_REFUSED = ["clean_shutdown", "hard_shutdown", "clean_reboot", "hard_reboot", "pause", "suspend", "save",
                "migrate", "destroy"]


@pytest.mark.parametrize("message", DOM0_REFUSED)
def test_domain0_cannot_be_stopped_moved_or_destroyed(kit, tmp_path, message):
    x = kit.x
    before = everything(kit.server, x, DOM0)
    err = failure(_call, x, message, DOM0, tmp_path)
    if message == "migrate" and lacks(kit.server, "migrate"):
        assert err == ["NOT_IMPLEMENTED", "migrate"]
    else:
        assert err[0] == "OPERATION_NOT_ALLOWED" and len(err) == 2, err
    after = everything(kit.server, x, DOM0)
    assert after == before
    assert after[0]["power_state"] == "Running" and after[0]["domid"] == "0"
    assert not (tmp_path / "refused.img").exists()


def test_domain0_cannot_be_started_unpaused_or_resumed(kit):
    x = kit.x
    for message in ("start", "unpause", "resume"):
        err = failure(_call, x, message, DOM0, None)
        assert err[0] in ("VM_BAD_POWER_STATE", "OPERATION_NOT_ALLOWED"), err
    assert x.VM.get_power_state(DOM0) == "Running"


# -- arguments on the wire ----------------------------------------------------------------------

def test_wrong_argument_counts(kit):
    proxy = xmlrpc.client.ServerProxy(kit.server.url, allow_none=True)
    s = ok(proxy.session.login_with_password("root", ""))
    vm = kit.vm()
    assert fails(proxy.VM.start(s)) == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.start", "1", "0"]
    assert fails(proxy.VM.start(s, vm, False, False, False)) == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.start",
                                                                "3", "4"]
    assert fails(proxy.VM.pause(s, vm, vm)) == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.pause", "1", "2"]
    assert fails(proxy.VM.save(s, vm)) == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.save", "2", "1"]
    assert fails(proxy.VM.migrate(s)) == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.migrate", "2", "0"]
    assert fails(proxy.VM.restore(s)) == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.restore", "1", "0"]
    assert fails(getattr(proxy, "Async.VM.start")(s)) == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "Async.VM.start",
                                                          "1", "0"]
    assert ok(proxy.VM.get_power_state(s, vm)) == "Halted"


def test_wrong_argument_types(kit):
    proxy = xmlrpc.client.ServerProxy(kit.server.url, allow_none=True)
    s = ok(proxy.session.login_with_password("root", ""))
    vm = kit.vm()
    assert fails(proxy.VM.start(s, vm, {"a": 1}, False)) == ["FIELD_TYPE_ERROR", "start_paused"]
    assert fails(proxy.VM.start(s, vm, False, 7)) == ["FIELD_TYPE_ERROR", "force"]
    assert fails(proxy.VM.start(s, 42, False, False))[0] in ("FIELD_TYPE_ERROR", "HANDLE_INVALID")
    bad = "OpaqueRef:11111111-2222-3333-4444-555555555555"
    assert fails(proxy.VM.start(s, bad, False, False)) == ["HANDLE_INVALID", "VM", bad]
    host = ok(proxy.host.get_all(s))[0]
    assert fails(proxy.VM.pause(s, host))[:2] == ["HANDLE_INVALID", "VM"]
    assert fails(proxy.VM.save(s, vm, ["not", "a", "string"])) == ["FIELD_TYPE_ERROR", "path"]
    assert fails(proxy.VM.migrate(s, vm, "http://127.0.0.1:1/", "maybe")) == ["FIELD_TYPE_ERROR", "live"]
    assert fails(proxy.VM.restore(s, True, False))[0] == "FIELD_TYPE_ERROR"  # (a number would be read as text)
    assert ok(proxy.VM.get_power_state(s, vm)) == "Halted"
    # the bare uuid is accepted wherever a ref is (xend clients)
    uuid = ok(proxy.VM.get_uuid(s, vm))
    assert ok(proxy.VM.start(s, uuid, "false", "false")) == ""
    assert ok(proxy.VM.get_power_state(s, vm)) == "Running"


# -- Async ---------------------------------------------------------------------------------------

def _wait_task(x, task, timeout=10.0):
    deadline = time.monotonic() + timeout
    while x.task.get_status(task) == "pending":
        assert time.monotonic() < deadline, "the task never finished"
        time.sleep(0.02)
    return x.task.get_record(task)


def test_async_start_succeeds(kit):
    x = kit.x
    vm = kit.vm()
    task = x.Async.VM.start(vm, False, False)
    assert task.startswith("OpaqueRef:")
    record = _wait_task(x, task)
    assert record["status"] == "success" and record["progress"] == 1.0 and record["error_info"] == []
    assert x.VM.get_power_state(vm) == "Running"


def test_async_start_of_a_running_vm_fails_in_the_task(kit):
    x = kit.x
    vm = kit.vm()
    bring_to(x, vm, "Running")
    before = everything(kit.server, x, vm)
    record = _wait_task(x, x.Async.VM.start(vm, False, False))
    assert record["status"] == "failure"
    assert record["error_info"] == ["VM_BAD_POWER_STATE", vm, "halted", "running"]
    assert everything(kit.server, x, vm) == before


# -- events --------------------------------------------------------------------------------------

def _changes(x, token, timeout=5.0):
    """{(class, ref): event} after token, waiting for at least one."""
    result = event_from(x, ["vm", "vm_metrics"], token, timeout)
    return {(e["class"], e["ref"]): e for e in result["events"]}, result["token"]


def test_every_lifecycle_step_emits_events(kit, tmp_path):
    x = kit.x
    token = event_from(x, ["vm", "vm_metrics"], "", 0.0)["token"]
    vm = kit.vm()
    m = x.VM.get_metrics(vm)
    seen, token = _changes(x, token)
    assert seen[("vm", vm)]["operation"] == "add" and seen[("vm", vm)]["snapshot"]["power_state"] == "Halted"
    assert seen[("vm_metrics", m)]["operation"] == "add"

    steps = [
        (lambda: x.VM.start(vm, True, False), "Paused"),
        (lambda: x.VM.unpause(vm), "Running"),
        (lambda: x.VM.pause(vm), "Paused"),
        (lambda: x.VM.unpause(vm), "Running"),
        (lambda: x.VM.clean_reboot(vm), "Running"),
        (lambda: x.VM.hard_reboot(vm), "Running"),
        (lambda: x.VM.suspend(vm), "Suspended"),
        (lambda: x.VM.resume(vm, False, False), "Running"),
        (lambda: x.VM.clean_shutdown(vm), "Halted"),
        (lambda: x.VM.start(vm, False, False), "Running"),
        (lambda: x.VM.hard_shutdown(vm), "Halted"),
        (lambda: x.VM.start(vm, False, False), "Running"),
        (lambda: x.VM.save(vm, str(tmp_path / "e.img")), "Halted"),
        (lambda: x.VM.restore(str(tmp_path / "e.img"), False), "Running"),
        (lambda: x.VM.hard_shutdown(vm), "Halted"),
    ]
    for step, state in steps:
        domid = x.VM.get_domid(vm)
        step()
        seen, token = _changes(x, token)
        assert ("vm", vm) in seen, (state, seen.keys())
        event = seen[("vm", vm)]
        assert event["operation"] == "mod" and event["snapshot"]["power_state"] == state
        assert event["snapshot"]["domid"] == x.VM.get_domid(vm)
        assert ("vm_metrics", m) in seen and seen[("vm_metrics", m)]["operation"] == "mod", state
        if state != "Halted" or domid != "-1":
            assert seen[("vm_metrics", m)]["snapshot"]["memory_actual"] == metrics(x, vm)["memory_actual"]

    x.VM.destroy(vm)
    seen, token = _changes(x, token)
    assert seen[("vm", vm)]["operation"] == "del" and "snapshot" not in seen[("vm", vm)]
    assert seen[("vm_metrics", m)]["operation"] == "del"


def test_event_subscription_to_one_vm(kit):
    x = kit.x
    a, b = kit.vm(), kit.vm()
    token = event_from(x, ["vm/" + a], "", 0.0)["token"]
    x.VM.start(b, False, False)
    x.VM.start(a, False, False)
    result = event_from(x, ["vm/" + a], token, 5.0)
    assert [(e["ref"], e["snapshot"]["power_state"]) for e in result["events"]] == [(a, "Running")]


def test_a_failed_start_emits_no_event(kit):
    x = kit.x
    vm = kit.vm(memory_target=64 * 1024 * MIB, memory_static_max=64 * 1024 * MIB)
    token = event_from(x, ["vm", "vm_metrics"], "", 0.0)["token"]
    with pytest.raises(XenAPI.Failure):
        x.VM.start(vm, False, False)
    assert event_from(x, ["vm", "vm_metrics"], token, 0.05)["events"] == []

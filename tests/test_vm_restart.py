"""Restarting xend-ext is a toolstack restart (API.md §9): domains outlive the server, which finds them
again at start; ``--sim-reboot`` models a host reboot; ``auto_power_on`` VMs start at every server start."""

from __future__ import annotations

from pathlib import Path

import pytest
from vmkit import MIB, backend_domain, bring_to, event_from, failure, metrics, new_vm, session, unique

LIVE = ("memory_actual", "VCPUs_number", "VCPUs_params", "VCPUs_CPU", "start_time")


def _x(server):
    return session(server).xenapi


def _restart(make_server, server, how="stop", *extra):
    """The same state dir served again (on a new port); returns the new server and a client."""
    if how == "kill9":
        server.kill9()
    else:
        assert server.stop() == 0
    again = make_server(*server.extra, *extra, state_dir=server.state_dir, unix=False)
    return again, _x(again)


# -- auto_power_on -------------------------------------------------------------------------------

def test_auto_power_on_vms_start_with_the_server_in_order(make_server):
    server = make_server(unix=False)
    x = _x(server)
    # names sort the other way round from `order`: the order decides
    late = new_vm(x, "a-late", auto_power_on=True, order=2)
    early = new_vm(x, "z-early", auto_power_on=True, order=1)
    middle = new_vm(x, "m-middle", auto_power_on=True, order=1)
    manual = new_vm(x, "manual")
    server, x = _restart(make_server, server)
    domids = {vm: int(x.VM.get_domid(vm)) for vm in (late, early, middle)}
    assert all(x.VM.get_power_state(vm) == "Running" for vm in domids)
    assert max(domids[early], domids[middle]) < domids[late]  # by order, not by name
    assert x.VM.get_power_state(manual) == "Halted"
    assert metrics(x, late)["memory_actual"] == str(128 * MIB)
    assert backend_domain(server, x.VM.get_uuid(late))["state"] == "Running"


def test_auto_power_on_skips_a_vm_that_cannot_start_and_starts_the_rest(make_server):
    server = make_server("--memory", "4096", unix=False)
    x = _x(server)
    too_big = new_vm(x, "too-big", auto_power_on=True, order=1, memory_target=8192 * MIB,
                     memory_static_max=8192 * MIB)
    fine = new_vm(x, "fine", auto_power_on=True, order=2)
    server, x = _restart(make_server, server)
    assert x.VM.get_power_state(too_big) == "Halted"
    assert x.VM.get_power_state(fine) == "Running"


def test_a_running_auto_power_on_vm_is_not_started_again(make_server):
    server = make_server(unix=False)
    x = _x(server)
    vm = new_vm(x, auto_power_on=True)
    x.VM.start(vm, False, False)
    domid = x.VM.get_domid(vm)
    server, x = _restart(make_server, server)
    assert (x.VM.get_power_state(vm), x.VM.get_domid(vm)) == ("Running", domid)


# -- toolstack restart ---------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["stop", "kill9"])
def test_domains_outlive_the_server(make_server, how):
    server = make_server(unix=False)
    x = _x(server)
    vms = {state: new_vm(x, unique(state.lower()), VCPUs_params={"weight": "400", "cpumap0": "3"})
           for state in ("Running", "Paused", "Suspended", "Halted")}
    for state, vm in vms.items():
        bring_to(x, vm, state)
    before = {vm: (x.VM.get_record(vm), metrics(x, vm)) for vm in vms.values()}
    server, x = _restart(make_server, server, how)
    for state, vm in vms.items():
        record, live = before[vm]
        now = x.VM.get_record(vm)
        assert now["power_state"] == state
        assert now["domid"] == record["domid"]  # the same domain, not a new one
        assert now == record
        now_live = metrics(x, vm)
        assert {k: now_live[k] for k in LIVE} == {k: live[k] for k in LIVE}
    # and life goes on: the suspended VM resumes, new domains get new domids
    x.VM.resume(vms["Suspended"], False, False)
    x.VM.start(vms["Halted"], False, False)
    domids = [x.VM.get_domid(vm) for vm in vms.values()]
    assert len(set(domids)) == 4 and "-1" not in domids
    x.VM.unpause(vms["Paused"])
    x.VM.clean_shutdown(vms["Running"])
    assert x.VM.get_power_state(vms["Running"]) == "Halted"


def test_sim_reboot_halts_every_guest(make_server, tmp_path):
    server = make_server(unix=False)
    x = _x(server)
    vms = {state: new_vm(x, unique(state.lower())) for state in ("Running", "Paused", "Suspended")}
    for state, vm in vms.items():
        bring_to(x, vm, state)
    auto = new_vm(x, "auto", auto_power_on=True)
    x.VM.start(auto, False, False)
    token = event_from(x, ["vm"], "", 0.0)["token"]
    server, x = _restart(make_server, server, "stop", "--sim-reboot")
    # whoever watched before the reboot learns that the guests stopped (objects come as "add" after a
    # restart: the server keeps no per-object history across restarts)
    events = {e["ref"]: e for e in event_from(x, ["vm"], token, 5.0)["events"]}
    for vm in vms.values():
        assert events[vm]["snapshot"]["power_state"] == "Halted"
    for vm in vms.values():
        record = x.VM.get_record(vm)
        assert (record["power_state"], record["domid"], record["resident_on"]) == ("Halted", "-1", "OpaqueRef:NULL")
        assert metrics(x, vm)["memory_actual"] == "0"
        assert backend_domain(server, record["uuid"]) is None
    assert not list((Path(server.state_dir) / "sim-images").glob("*.img"))  # the suspend image is gone
    assert x.VM.get_power_state(auto) == "Running"  # it came back with the host
    dom0 = x.VM.get_by_name_label("Domain-0")[0]
    assert (x.VM.get_power_state(dom0), x.VM.get_domid(dom0)) == ("Running", "0")
    # the VMs are defined still, and start again
    for vm in vms.values():
        x.VM.start(vm, False, False)
        assert x.VM.get_power_state(vm) == "Running"


def test_save_stop_start_restore(make_server, tmp_path):
    server = make_server(unix=False)
    x = _x(server)
    vm = new_vm(x, "saved-across", memory_target=200 * MIB, VCPUs_params={"weight": "600"})
    x.VM.start(vm, False, False)
    uuid = x.VM.get_uuid(vm)
    start_time = metrics(x, vm)["start_time"]
    path = tmp_path / "across.img"
    x.VM.save(vm, str(path))
    server, x = _restart(make_server, server)
    assert x.VM.get_power_state(vm) == "Halted"
    assert x.VM.restore(str(path), False) == vm
    record = x.VM.get_record(vm)
    assert (record["uuid"], record["power_state"]) == (uuid, "Running")
    live = metrics(x, vm)
    assert live["memory_actual"] == str(200 * MIB) and live["VCPUs_params"]["weight"] == "600"
    assert live["start_time"] == start_time


def test_restore_on_another_server_defines_the_vm(make_server, tmp_path):
    one = make_server(unix=False, state_dir=tmp_path / "one")
    other = make_server(unix=False, state_dir=tmp_path / "other")
    x = _x(one)
    vm = new_vm(x, "wanderer", memory_target=64 * MIB, VCPUs_max=3, other_config={"a": "b"})
    x.VM.start(vm, False, False)
    uuid = x.VM.get_uuid(vm)
    path = tmp_path / "wanderer.img"
    x.VM.save(vm, str(path))
    y = _x(other)
    ref = y.VM.restore(str(path), False)
    record = y.VM.get_record(ref)
    assert (record["uuid"], record["name_label"], record["power_state"]) == (uuid, "wanderer", "Running")
    assert (record["VCPUs_max"], record["other_config"]) == ("3", {"a": "b"})
    assert metrics(y, ref)["memory_actual"] == str(64 * MIB)
    # a third server where another VM has the name: refused before anything runs
    third = make_server(unix=False, state_dir=tmp_path / "third")
    z = _x(third)
    new_vm(z, "wanderer")
    err = failure(z.VM.restore, str(path), False)
    assert err[:3] == ["VALUE_NOT_SUPPORTED", "name_label", "wanderer"], err
    assert failure(z.VM.get_by_uuid, uuid)[0] == "UUID_INVALID"
    assert backend_domain(third, uuid) is None


def test_a_lost_store_rediscovers_running_domains(make_server):
    server = make_server(unix=False)
    x = _x(server)
    vm = new_vm(x, "survivor", memory_target=96 * MIB, VCPUs_at_startup=2, VCPUs_max=2,
                VCPUs_params={"weight": "500", "cap": "80", "cpumap1": "3"})
    x.VM.start(vm, False, False)
    uuid, domid = x.VM.get_uuid(vm), x.VM.get_domid(vm)
    server.stop()
    state = Path(server.state_dir)
    for path in [state / "state.xml", *state.glob("journal-*.sxp")]:
        path.unlink(missing_ok=True)
    server, x = _restart(make_server, server)
    found = x.VM.get_by_uuid(uuid)
    record = x.VM.get_record(found)
    assert (record["name_label"], record["power_state"], record["domid"]) == ("survivor", "Running", domid)
    assert (record["memory_target"], record["VCPUs_at_startup"]) == (str(96 * MIB), "2")
    assert record["VCPUs_params"]["weight"] == "500" and record["VCPUs_params"]["cap"] == "80"
    assert metrics(x, found)["memory_actual"] == str(96 * MIB)
    # the rediscovered definition is what runs, pins included: the next start runs the same
    assert record["VCPUs_params"] == metrics(x, found)["VCPUs_params"]
    x.VM.hard_shutdown(found)
    x.VM.start(found, False, False)
    assert x.VM.get_power_state(found) == "Running"
    assert metrics(x, found)["VCPUs_params"] == {"weight": "500", "cap": "80", "cpumap1": "3"}

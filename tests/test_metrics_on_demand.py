"""VM_metrics of halted VMs are made when asked, not held (issue 15, item 4).

The model holds the metrics of the VMs that have a domain; those of a halted VM answer through
the official client under the same ref, from the same fields, without an object kept for them.
The server runs in this process so its model's objects can be counted; the VM_metrics objects
an older version stored (snapshot and journal) are dropped at load, their refs kept.
"""

from __future__ import annotations

import asyncio

import pytest
import XenAPI
from inprocess import InProcessServer

from xend_ext.server import Config

pytestmark = pytest.mark.backends("sim")


def _events(x, token, timeout):
    return getattr(x.event, "from")(["vm_metrics"], token, float(timeout))


def _start(state_dir) -> tuple[InProcessServer, object]:
    server = InProcessServer(Config(state_dir=state_dir, listen=[("127.0.0.1", 0)], unix=None))
    session = XenAPI.Session(server.url)
    session.login_with_password("root", "")
    return server, session


def _on_loop(server: InProcessServer, coro):
    return asyncio.run_coroutine_threadsafe(coro, server.loop).result(30)


def _held(server: InProcessServer) -> tuple[int, int]:
    """(VM_metrics objects the model holds for halted VMs, VMs with a domain but no metrics held)."""
    db = server.server.db
    held = db.tables["VM_metrics"]
    halted = sum(db.get(m.values["VM"]).values["power_state"] == "Halted" for m in held.values())
    unheld = sum(vm.values["power_state"] != "Halted" and vm.values["metrics"] not in held for vm in db.values("VM"))
    return halted, unheld


def _new_vm(x, name):
    return x.VM.create({"name_label": name, "memory_target": str(128 << 20), "memory_static_max": str(256 << 20),
                        "VCPUs_at_startup": "1", "VCPUs_max": "2", "VCPUs_params": {}})


def _halted_metrics_read(x, vm):
    ref = x.VM.get_metrics(vm)
    record = x.VM_metrics.get_record(ref)
    assert record["VM"] == vm and record["memory_actual"] == "0" and record["VCPUs_number"] == "0"
    assert record["VCPUs_CPU"] == {} and record["VCPUs_params"] == {}
    assert x.VM_metrics.get_VM(ref) == vm and x.VM_metrics.get_memory_actual(ref) == "0"
    assert x.VM_metrics.get_by_uuid(record["uuid"]) == ref and x.VM_metrics.get_uuid(ref) == record["uuid"]
    return ref


def test_halted_vms_hold_no_metrics_and_read_them_as_before(tmp_path):
    server, session = _start(tmp_path / "state")
    x = session.xenapi
    try:
        vms = [_new_vm(x, f"vm-{i}") for i in range(4)]
        assert _held(server) == (0, 0)
        refs = {vm: _halted_metrics_read(x, vm) for vm in vms}
        every = x.VM_metrics.get_all_records()
        assert {r["VM"] for r in every.values()} >= set(vms) and set(refs.values()) <= set(every)
        assert len(x.VM_metrics.get_all()) == len(every)

        x.VM.start(vms[0], False, False)
        assert _held(server) == (0, 0) and refs[vms[0]] in server.server.db.tables["VM_metrics"]
        running = x.VM_metrics.get_record(refs[vms[0]])
        assert running["VM"] == vms[0] and int(running["memory_actual"]) > 0 and running["VCPUs_number"] == "1"
        token = _events(x, "", 0)["token"]

        x.VM.hard_shutdown(vms[0])
        assert _held(server) == (0, 0)
        assert _halted_metrics_read(x, vms[0]) == refs[vms[0]]  # the same ref, halted again
        events = _events(x, token, 5)["events"]
        assert [(e["operation"], e["ref"]) for e in events] == [("mod", refs[vms[0]])]
        assert events[0]["snapshot"]["memory_actual"] == "0"

        x.VM.destroy(vms[3])
        with pytest.raises(XenAPI.Failure) as err:
            x.VM_metrics.get_record(refs[vms[3]])
        assert err.value.details[0] == "HANDLE_INVALID"
        assert refs[vms[3]] not in x.VM_metrics.get_all()
    finally:
        session.logout()
        server.stop()

    server, session = _start(tmp_path / "state")  # a restart: the same refs, still none held
    x = session.xenapi
    try:
        assert _held(server) == (0, 0)
        for vm in vms[:3]:
            assert _halted_metrics_read(x, vm) == refs[vm]
    finally:
        session.logout()
        server.stop()


def test_metrics_an_older_version_stored_are_dropped_at_load(tmp_path):
    server, session = _start(tmp_path / "state")
    x = session.xenapi
    try:
        in_snapshot, in_journal = _new_vm(x, "in-snapshot"), _new_vm(x, "in-journal")
        db, store = server.server.db, server.server.store

        def stored(vm):  # a VM_metrics object as an older version wrote it
            ref = db.get(vm).values["metrics"]
            return ref, {"uuid": ref.removeprefix("OpaqueRef:"), "VM": vm}

        async def write_old_state():
            pending, seq = db.capture()
            tables = await pending
            tables["VM_metrics"] = dict([stored(in_snapshot)])
            store.set_capture(lambda: (tables, seq))
            await store.compact()
            ref, values = stored(in_journal)
            await server.server.services.commit(store.append(("create", "VM_metrics", ref, values)))
            store.set_capture(None)  # stop without a snapshot: the record stays to be replayed

        refs = {vm: x.VM.get_metrics(vm) for vm in (in_snapshot, in_journal)}
        _on_loop(server, write_old_state())
    finally:
        server.stop()

    server, session = _start(tmp_path / "state")
    x = session.xenapi
    try:
        assert _held(server) == (0, 0)
        for vm, ref in refs.items():
            assert _halted_metrics_read(x, vm) == ref
    finally:
        session.logout()
        server.stop()

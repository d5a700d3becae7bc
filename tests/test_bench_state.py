"""The bench's state builder writes what the server loads, and the reference reads the same VMs.

No timing here (bench/ measures, tests never time): the builder bypasses the Xen-API, so these
guard it against drifting from what a server loads and serves.
"""

from __future__ import annotations

import asyncio

from conftest import ServerProcess

from bench.reference_server import load_tables
from bench.statebuild import build_state_dir, cached_state_dir, vm_name
from bench.statedir import EXPORT_NAME
from xenapi_classes import build_registry
from xend_ext.store import Store


def test_built_state_opens_with_its_journal_replayed(tmp_path):
    built = build_state_dir(tmp_path / "state", 30, 45)
    assert built["snapshot_bytes"] > 0 and built["journal_bytes"] > 0
    store = Store(tmp_path / "state", build_registry().description())
    tables, seq = store.open()
    asyncio.run(store.close())
    guests = [row for row in tables["VM"].values() if row["is_control_domain"] != "true"]
    assert sorted(row["name_label"] for row in guests) == sorted(vm_name(i) for i in range(30))
    assert len({row["uuid"] for row in guests}) == 30
    # record k changed VM k % 30: the last 30 records (15..44) are the ones that remain, replayed
    assert sorted(row["name_description"] for row in guests) == sorted(f"revision {k}" for k in range(15, 45))
    assert seq >= 45
    vms = tables["VM"]
    assert tables["VM_metrics"] == {}  # made when asked (xenapi_classes/vm_metrics.py), not stored
    assert len({row["metrics"] for row in vms.values()}) == len(vms)
    assert all(row["metrics"].startswith("OpaqueRef:") for row in vms.values())


def test_reference_reads_the_same_vms(tmp_path):
    build_state_dir(tmp_path / "state", 12, 0)
    store = Store(tmp_path / "state", build_registry().description())
    tables, _ = store.open()
    asyncio.run(store.close())
    read = load_tables(str(tmp_path / "state" / EXPORT_NAME))
    assert set(read["VM"]) == set(tables["VM"])
    for ref, row in tables["VM"].items():
        assert read["VM"][ref]["name_label"] == row["name_label"]
        assert read["VM"][ref]["metrics"] == row["metrics"]


def test_cache_reuses_a_build_and_the_server_serves_it(tmp_path):
    path, built = cached_state_dir(tmp_path / "cache", 20, 20)
    assert built is not None
    again, rebuilt = cached_state_dir(tmp_path / "cache", 20, 20)
    assert (again, rebuilt) == (path, None)
    server = ServerProcess(path, unix=False).start()
    try:
        proxy, session = server.login()
        found = proxy.VM.get_all_records_where(session, f'field "name_label"="{vm_name(7)}"')["Value"]
        assert [record["name_label"] for record in found.values()] == [vm_name(7)]
        assert len(proxy.VM.get_all(session)["Value"]) >= 20  # the server may add Domain-0
    finally:
        server.stop()

"""A start streams the state into the model: no encoded copy of the whole state beside it.

The store hands each object of the snapshot to the model as it reads it, and applies the
journal's records to the model's objects (``Store.open_into``, ``model.Loader``).  These tests
count memory and compare results; they time nothing (bench/coldstart.py measures).
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

from bench.statedir import build_state_dir
from xenapi_classes import build_registry
from xend_ext.dispatch import Context
from xend_ext.events import EventHub
from xend_ext.model import Database
from xend_ext.server import Config, Server
from xend_ext.store import Store

VMS = 4000


def _open_model(path):
    registry = build_registry()
    store = Store(path, registry.description())
    db = Database(registry, store, EventHub())
    return db, store


def _extra_at_peak(load) -> tuple[int, int]:
    """(bytes held at the peak of ``load()`` beyond what it keeps, bytes it keeps)."""
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        kept = load()
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del kept
    return peak - after, after - before


def test_a_start_holds_the_model_and_one_block_not_the_encoded_tables(tmp_path):
    build_state_dir(tmp_path / "state", VMS, VMS)

    def streamed():
        db, store = _open_model(tmp_path / "state")
        seq = db.load_from(store)
        asyncio.run(store.close())
        return db, seq

    def through_tables():  # what a start did before: the encoded tables whole, then the model
        db, store = _open_model(tmp_path / "state")
        tables, seq = store.open()
        db.load(tables)
        del tables
        asyncio.run(store.close())
        return db, seq

    extra, model = _extra_at_peak(streamed)
    assert model > VMS * 1000  # the model of VMS VMs and their metrics was measured
    # beyond the model: one block of the file, one object, the loader's table of shared strings
    # (some 30 % of the model here)
    assert extra < model / 2, (extra, model)
    # the measure tells the two ways apart: the file and the tables were more than the model again
    old_extra, old_model = _extra_at_peak(through_tables)
    assert old_extra > old_model, (old_extra, old_model)


async def _write_every_kind_of_op(path) -> None:
    """A snapshot of a few VMs, then journal records of every op on them, left to be replayed."""
    server = Server(Config(state_dir=path, listen=[], unix=None, compact_min_bytes=1 << 62))
    await server.start()
    db = server.db
    vm_class = server.registry.classes["VM"]
    ctx = Context(server.services, "test")

    def make(i):
        values = {f.name: f.make_default() for f in vm_class.fields.values() if f.in_constructor}
        values.update(name_label=f"vm-{i}", other_config={"a": "1", "b": "2"})
        vm_class.on_create(ctx, values)
        vm = db.create("VM", values)
        vm_class.after_create(ctx, vm)
        return vm

    first, second, third = make(0), make(1), make(2)
    await server.store.compact()
    fourth = make(3)  # create records
    db.set(first, "name_description", "changed once")
    db.set(first, "name_description", 'changed "twice" (a#b)')
    db.map_add(first, "other_config", "c", "3")
    db.map_remove(first, "other_config", "a")
    db.set_add(second, "depends_on", first.ref)
    db.set_add(second, "depends_on", fourth.ref)
    db.set_remove(second, "depends_on", first.ref)
    db.map_add(fourth, "VCPUs_params", "weight", "512")
    metrics = db.find(third.values["metrics"])
    db.destroy(third)
    db.destroy(metrics)
    await server.services.commit(db.last_seq)
    server.store.set_capture(None)  # no final snapshot: the records stay to be replayed
    await server.stop()


def test_journal_replayed_on_the_model_gives_what_replaying_the_tables_gives(tmp_path):
    path = tmp_path / "state"
    asyncio.run(_write_every_kind_of_op(path))
    store = Store(path, build_registry().description())
    tables, seq = store.open()
    asyncio.run(store.close())
    db, store = _open_model(path)
    assert db.load_from(store) == seq
    asyncio.run(store.close())
    pending, _ = db.capture()
    assert tables.pop("VM_metrics") == {}  # read if an older version stored some; none stored now
    assert asyncio.run(pending) == tables
    vms = {vm.values["name_label"]: vm for vm in db.values("VM")}
    assert "vm-2" not in vms and vms["vm-3"].values["VCPUs_params"] == {"weight": "512"}
    assert vms["vm-0"].values["other_config"] == {"b": "2", "c": "3"}
    assert vms["vm-1"].values["depends_on"] == [vms["vm-3"].ref]
    # the indexes follow the replayed values
    assert [vm.ref for vm in db.find_by("VM", "depends_on", vms["vm-3"].ref)] == [vms["vm-1"].ref]
    assert db.find_by("VM", "depends_on", vms["vm-0"].ref) == []

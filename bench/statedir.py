"""Build a large state directory fast: ``python -m bench.statedir --vms N --journal M DIR``.

The objects are made by the server's own model and store, in this process, without HTTP: the
project's server starts on DIR (sim backend, no listener), ``N`` halted VMs (each with its
VM_metrics, as ``VM.create`` makes them) are added to the model and written as one snapshot,
then ``M`` journal records (VM name changes and ``other_config`` additions, round robin over
the VMs) are written and fsync'd in groups, and the server stops without a final snapshot, so
the next start has N VMs to load and M records to replay.  100,000 VMs + 100,000 records take
about a minute on the 2-core machine.

The VMs are defined the way ``VM.create`` defines them (typed values, the class's create
hooks); the per-field checks of the message (unique names) are skipped because the names are
unique by construction, which keeps the build linear.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from xend_ext.dispatch import Context
from xend_ext.server import Config, Server

BATCH = 2000  # records per group commit while writing the journal


def vm_values(i: int) -> dict:
    return {
        "name_label": f"vm-{i}",
        "name_description": f"generated VM {i}",
        "memory_static_max": str(256 << 20),
        "memory_target": str(256 << 20),
        "VCPUs_max": "2",
        "VCPUs_at_startup": "1",
        "PV_kernel": "/boot/vmlinuz-guest",
        "other_config": {"made-by": "bench.statedir"},
    }


def typed(cls, record: dict, db) -> dict:
    """The create values of ``record`` as VM.create types them (defaults for the rest)."""
    values = {f.name: f.make_default() for f in cls.fields.values() if f.in_constructor}
    values.update({key: cls.fields[key].type.coerce(raw, db, key) for key, raw in record.items()})
    return values


async def build(state_dir: Path, vms: int, records: int, *, quiet: bool = False) -> None:
    config = Config(state_dir=state_dir, listen=[], unix=None, compact_min_bytes=1 << 62)
    server = Server(config)
    await server.start()
    db, store = server.db, server.store
    vm_class = server.registry.classes["VM"]
    ctx = Context(server.services, "bench.statedir")
    first = db.count("VM")
    t0 = time.perf_counter()
    db.store = None  # the snapshot below holds them all: no journal record per object
    try:
        for i in range(first, first + vms):
            values = typed(vm_class, vm_values(i), db)
            vm_class.on_create(ctx, values)
            vm_class.after_create(ctx, db.create("VM", values))
    finally:
        db.store = store
    await store.compact()
    t1 = time.perf_counter()
    refs = [obj for obj in db.all("VM") if not obj.values["is_control_domain"]]
    for j in range(records):
        obj = refs[j % len(refs)] if refs else None
        if obj is None:
            break
        if j % 2:
            db.map_add(obj, "other_config", f"k{j}", str(j))
        else:
            db.set(obj, "name_label", f"{obj.values['name_label']}.{j}")
        if j % BATCH == BATCH - 1:
            await server.services.commit(db.last_seq)
    await server.services.commit(db.last_seq)
    t2 = time.perf_counter()
    store.set_capture(None)  # stop without a final snapshot: the records stay to be replayed
    await server.stop()
    if not quiet:
        stats = store.stats()
        print(f"{state_dir}: {db.count('VM')} VMs ({vms} new, snapshot {stats['snapshot_bytes']} bytes, "
              f"{t1 - t0:.1f} s), {records} journal records ({stats['journal_bytes']} bytes, {t2 - t1:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.statedir", description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=10_000, help="halted VMs to add (default 10000)")
    parser.add_argument("--journal", type=int, default=0, metavar="M",
                        help="journal records to leave after the snapshot (default 0)")
    parser.add_argument("dir", type=Path, help="the state directory (created; existing state is kept)")
    args = parser.parse_args(argv)
    asyncio.run(build(args.dir.absolute(), args.vms, args.journal))
    return 0


if __name__ == "__main__":
    sys.exit(main())
